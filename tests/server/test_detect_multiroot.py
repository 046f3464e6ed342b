"""subcoder.server.detect.detect_all: a multi-root workspace's languages, ranked over every folder."""

from __future__ import annotations

from conftest import write_tree

from subcoder.server.detect import detect, detect_all


def test_the_dominant_language_is_chosen_over_all_folders(tmp_path):
    # The first folder alone says python; all three together are mostly Go.
    write_tree(tmp_path / "tools", {"a.py": "x = 1\n" * 100})
    write_tree(tmp_path / "api", {"main.go": "package main\n" * 100})
    write_tree(tmp_path / "worker", {"run.go": "package main\n" * 100})
    roots = [tmp_path / "tools", tmp_path / "api", tmp_path / "worker"]
    assert detect(roots[0]).dominant() == "python"
    found = detect_all(roots)
    assert found.dominant() == "go" and found.root == str(roots[0])
    go = next(e for e in found.languages if e.language == "go")
    assert go.files == 2 and abs(sum(e.share for e in found.languages) - 1) < 1e-6


def test_a_folder_inside_another_is_counted_once(tmp_path):
    write_tree(tmp_path, {"app/a.py": "x = 1\n" * 100, "b.go": "package b\n" * 30})
    found = detect_all([tmp_path / "app", tmp_path])
    python = next(e for e in found.languages if e.language == "python")
    assert python.files == 1 and found.dominant() == "python"


def test_one_folder_is_plain_detect(tmp_path):
    write_tree(tmp_path, {"a.rs": "fn main() {}\n"})
    assert detect_all([tmp_path]).languages == detect(tmp_path).languages
