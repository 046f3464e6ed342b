"""subcoder.server.detect: language ranking, .gitignore, skipped folders, .h and shebang rules, speed."""

from __future__ import annotations


from conftest import write_tree

from subcoder.server.detect import detect


def test_ranks_by_bytes_and_skips_vendored(tmp_path):
    write_tree(tmp_path, {
        "src/a.py": "x = 1\n" * 100,
        "src/b.ts": "let y = 2;\n" * 20,
        "node_modules/lib/index.js": "z\n" * 100000,
        ".venv/lib/site.py": "z\n" * 100000,
        "build/out.js": "z\n" * 100000,
        "web/app.min.js": "z" * 100000,
        "README.md": "# hello\n" * 1000,
    })
    found = detect(tmp_path)
    assert [e.language for e in found.languages] == ["python", "typescript"]
    assert found.dominant() == "python"
    assert abs(sum(e.share for e in found.languages) - 1) < 1e-6


def test_gitignore_is_honoured(tmp_path):
    write_tree(tmp_path, {
        ".gitignore": "generated_code/\n*.gen.go\n!keep.gen.go\n/rootonly.rs\n",
        "generated_code/huge.go": "package x\n" * 10000,
        "x.gen.go": "package x\n" * 10000,
        "keep.gen.go": "package x\n",
        "rootonly.rs": "fn main() {}\n" * 10000,
        "sub/rootonly.rs": "fn main() {}\n",
        "sub/.gitignore": "*.java\n",
        "sub/Skip.java": "class A {}\n" * 10000,
        "Main.java": "class B {}\n",
    })
    found = {e.language: e for e in detect(tmp_path).languages}
    assert found["go"].files == 1 and found["rust"].files == 1 and found["java"].files == 1


def test_header_and_shebang_rules(tmp_path):
    write_tree(tmp_path, {
        "c/lib.h": "int add(int a, int b);\n",
        "c/lib.c": "int add(int a, int b) { return a + b; }\n",
        "cpp/widget.h": "namespace ui { class Widget {}; }\n",
        "bin/run": "#!/usr/bin/env python3\nprint('hi')\n" * 50,
        "bin/data": "no shebang here\n",
    })
    found = {e.language: e for e in detect(tmp_path).languages}
    assert found["c"].files == 2
    assert found["cpp"].files == 1
    assert found["python"].files == 1


def test_empty_and_missing_workspace(tmp_path):
    assert detect(tmp_path).languages == ()
    assert detect(tmp_path / "missing").dominant() is None


def test_ten_thousand_files(tmp_path):
    """Correctness at scale; the speed figure lives in benchmarks/detection.py, not in a timed test."""
    for d in range(100):
        folder = tmp_path / f"pkg{d}"
        folder.mkdir()
        for f in range(100):
            (folder / f"m{f}.{'py' if f % 4 else 'js'}").write_text("x = 1\n")
    found = detect(tmp_path)
    assert found.files_seen == 10_000 and found.dominant() == "python"


def test_links_out_of_the_workspace_count_nothing(tmp_path):
    """A cloned repository may link to files outside it: detection neither counts nor reads them."""
    outside = write_tree(tmp_path / "outside", {"big.rs": "fn main() {}\n" * 5000, "lib/m.go": "package m\n" * 5000,
                                                "tool": "#!/usr/bin/env ruby\nputs 1\n" * 100})
    ws = write_tree(tmp_path / "ws", {"src/a.py": "x = 1\n" * 10})
    (ws / "leak.rs").symlink_to(outside / "big.rs")
    (ws / "passwd.py").symlink_to("/etc/passwd")
    (ws / "lib").symlink_to(outside / "lib", target_is_directory=True)
    (ws / "run").symlink_to(outside / "tool")
    (ws / "alias.py").symlink_to(ws / "src" / "a.py")  # inside: counted once, under its own path
    found = detect(ws)
    assert [(e.language, e.files, e.bytes) for e in found.languages] == [("python", 1, 60)]
    assert found.files_seen == 1


def test_one_size_limit_with_calibration(tmp_path):
    from subcoder.pruner.sources import MAX_FILE_BYTES

    write_tree(tmp_path, {"small.go": "package x\n", "huge.rs": "x" * (MAX_FILE_BYTES + 1)})
    assert [e.language for e in detect(tmp_path).languages] == ["go"]
