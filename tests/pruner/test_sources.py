"""subcoder.pruner.sources: the one source-file filter (pure decisions, .gitignore, the walk) and what
workspace calibration reads through it, symbolic links pointing out of the workspace included."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from subcoder.pruner import sources
from subcoder.pruner.calibration import workspace_documents
from subcoder.pruner.sources import GitIgnore, SourceRules


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


SECRET = "API_KEY = 'outside-the-workspace'\n"


@pytest.fixture
def linked(tmp_path):
    """A workspace with links out of it (to a file, to /etc/passwd, to a folder) and one link inside it."""
    outside = write(tmp_path / "outside", {"secret.py": SECRET, "lib/stolen.py": SECRET})
    ws = write(tmp_path / "ws", {"src/real.py": "def real():\n    return 1\n"})
    (ws / "leak.py").symlink_to(outside / "secret.py")
    (ws / "passwd.py").symlink_to("/etc/passwd")
    (ws / "lib").symlink_to(outside / "lib", target_is_directory=True)
    (ws / "alias.py").symlink_to(ws / "src" / "real.py")
    return ws


# ----------------------------------------------------------------------------------------- pure decisions


@pytest.mark.parametrize("name, skipped", [
    ("node_modules", True), (".git", True), (".idea", True), ("cmake-build-debug", True), ("Pods", True),
    ("pods", False), ("generated", True), ("src", False), ("tests", False),  # the user's tests are theirs
])
def test_skip_folder(name, skipped):
    assert sources.skip_folder(name) is skipped


@pytest.mark.parametrize("name, skipped", [
    ("app.min.js", True), ("api_pb2.py", True), ("api_pb2_grpc.py", True), ("types.d.ts", True),
    ("x.pb.go", True), ("form.generated.cs", True), ("app.js.map", True), ("app.js", False), ("test_app.py", False),
])
def test_skip_name(name, skipped):
    assert sources.skip_name(name) is skipped


def test_skip_path_and_sizes():
    assert sources.skip_path("web/node_modules/x/index.js")
    assert sources.skip_path("src/api_pb2.py")
    assert not sources.skip_path("src/app/main.py")
    assert not sources.size_ok(0)
    assert sources.size_ok(1) and sources.size_ok(sources.MAX_FILE_BYTES)
    assert not sources.size_ok(sources.MAX_FILE_BYTES + 1)


def test_corpus_rules_fold_case_and_keep_hidden_folders():
    rules = SourceRules(skip_dirs=frozenset({"vendor"}), skip_hidden_dirs=False, fold_case=True, skip_names=(),
                        skip_dir_pattern=re.compile(r"^tests?$"), skip_name_pattern=re.compile(r"^test_"))
    assert sources.skip_path("a/Vendor/x.py", rules) and sources.skip_path("a/TESTS/x.py", rules)
    assert sources.skip_path("a/test_x.py", rules)
    assert not sources.skip_path("a/.hidden/x.py", rules) and not sources.skip_path("a/x.min.js", rules)


def test_acceptable_text():
    assert sources.acceptable_text("x = 1\n")
    assert not sources.acceptable_text("")
    assert not sources.acceptable_text(" \n\t\n")
    assert not sources.acceptable_text("x = 1\0\n")
    assert not sources.acceptable_text("x" * (sources.MAX_FILE_BYTES + 1))
    strict = SourceRules(min_bytes=10, max_mean_line=20, max_line=30, generated_markers=("do not edit",))
    assert sources.acceptable_text("x = 1\n" * 5, strict)
    assert not sources.acceptable_text("x = 1\n", strict)  # under min_bytes
    assert not sources.acceptable_text("x" * 25 + "\n" + "y" * 25, strict)  # mean line over 20, none over 30
    assert not sources.acceptable_text("x\n" * 20 + "y" * 31 + "\n", strict)  # one long line
    assert not sources.acceptable_text("// Code generated. DO NOT EDIT.\n" + "x = 1\n" * 5, strict)


def test_gitignore_rules():
    ignore = GitIgnore.parse("# comment\n*.gen.go\n!keep.gen.go\n/rootonly.rs\nbuild/\ndocs/**/*.py\n", "")
    assert ignore.match("a/x.gen.go", False) is True
    assert ignore.match("keep.gen.go", False) is False
    assert ignore.match("rootonly.rs", False) is True and ignore.match("sub/rootonly.rs", False) is None
    assert ignore.match("a/build", True) is True and ignore.match("a/build", False) is None
    assert ignore.match("docs/x/y/z.py", False) is True and ignore.match("src/z.py", False) is None
    nested = GitIgnore.parse("*.java\n", "sub")
    assert nested.match("sub/A.java", False) is True and nested.match("A.java", False) is None


# ----------------------------------------------------------------------------------------- the walk


def test_walk_order_and_folder_rules(tmp_path):
    write(tmp_path, {"b.py": "", "a.py": "", "z/c.py": "", "m/d.py": "", "m/n/e.py": "", ".hidden/f.py": "",
                     "node_modules/g.js": "", "ignored/h.py": "", ".gitignore": "ignored/\n"})
    assert [rel for rel, _ in sources.walk(tmp_path)] == [".gitignore", "a.py", "b.py", "m/d.py", "m/n/e.py", "z/c.py"]


def test_walk_never_follows_links(linked):
    assert sorted(rel for rel, _ in sources.walk(linked)) == ["src/real.py"]


def test_readers_refuse_what_resolves_outside(linked, tmp_path):
    assert sources.read_text(linked / "src" / "real.py", linked) is not None
    assert sources.read_text(linked / "leak.py", linked) is None
    assert sources.read_head(linked / "passwd.py", linked, 64) is None
    assert sources.read_head(linked / "lib" / "stolen.py", linked, 64) is None  # through a linked folder
    assert sources.read_head(tmp_path / "outside" / "secret.py", linked, 64) is None
    assert sources.read_head(linked / "alias.py", linked, 64) is None  # a link, even to inside: O_NOFOLLOW


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_readers_refuse_fifos(tmp_path):
    os.mkfifo(tmp_path / "pipe.py")
    assert sources.read_head(tmp_path / "pipe.py", tmp_path, 64) is None  # and does not hang


# ----------------------------------------------------------------------------------------- workspace calibration


def test_workspace_calibration_reads_nothing_from_outside(linked):
    docs = workspace_documents(linked, "python")
    assert [d["path"] for d in docs] == ["src/real.py"]  # the inside link's target once, under its own path
    assert not any("outside-the-workspace" in d["text"] or "root:" in d["text"] for d in docs)


def test_workspace_calibration_filters(tmp_path):
    code = "def f(x):\n    return x + 1\n"
    write(tmp_path, {
        "pkg/a.py": code, "pkg/test_a.py": code, "pkg/api_pb2.py": code, "pkg/blank.py": "\n\n",
        "pkg/latin1.py": "s = 'caf\xe9'\n".encode("latin-1"), "pkg/big.py": "x = 1\n" * 50_000,
        "pkg/out.gen.py": code, ".gitignore": "*.gen.py\n", "venv/lib/x.py": code, "pkg/b.js": "let b = 1;\n",
    })
    docs = workspace_documents(tmp_path, "python")
    assert [d["path"] for d in docs] == ["pkg/a.py", "pkg/test_a.py"]
    assert all(d["package"] == "workspace" and d["text"] == code for d in docs)
    assert len(workspace_documents(tmp_path, "python", max_files=1)) == 1


def test_corpus_limit_is_the_workspace_limit():
    from subcoder.pruner.corpora import build

    assert build.MAX_BYTES == sources.MAX_FILE_BYTES


# ----------------------------------------------------------------------------------------- data tables


def test_data_tables_are_dropped_and_code_kept():
    from subcoder.pruner import corpora
    from subcoder.pruner.sources import data_table

    python = corpora.read_documents("python", "calibration")
    flagged = sorted(d["path"] for d in python if data_table(d["text"]))
    assert flagged == ["rich/_emoji_codes.py", "rich/_palettes.py"]  # everything else there is code
    assert not data_table("CODES = {\n" + "".join(f'    "k{i}": {i},\n' for i in range(10)) + "}\n")  # short: code
    table = "CODES = {\n" + "".join(f'    "k{i}": {i},\n' for i in range(100)) + "}\n"
    crc = "static final int[] T = {\n" + "    0x00000000, 0xF26B8303, 0xE13B70F7,\n" * 40 + "};\n"
    code = "def f(x):\n    y = g(x, 1)\n    return {'a': y}\n" * 30
    assert data_table(table) and data_table(crc) and not data_table(code)
    assert not sources.acceptable_text(table) and sources.acceptable_text(code)


def test_workspace_calibration_skips_data_tables(tmp_path):
    (tmp_path / "codes.py").write_text("CODES = {\n" + "".join(f'    "k{i}": "{i}",\n' for i in range(100)) + "}\n")
    (tmp_path / "main.py").write_text("def main():\n    return 1\n")
    assert [d["path"] for d in workspace_documents(tmp_path, "python")] == ["main.py"]
