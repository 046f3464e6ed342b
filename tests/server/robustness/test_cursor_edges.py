"""Where cursors often are: an empty document, the start of a file, the empty line after the final newline,
the end of a last line without one. Each is an ordinary request: an empty or a real completion, never an error.

First through the engine (tiny models: a prefix-only one, whose prompt at the start of a file is empty, and a
fill-in-the-middle one), then through a real `subcoder serve` process serving each as its base model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import capabilities, fast_settings, serve
from tinymodel import save_tiny_model
from tiny_models import save_tiny_model_dir

from subcoder.pruner.engine.completer import Completer
from subcoder.pruner.loader import load_model

DOC = "def add(a, b):\n    return a + b\n"
# (document, line, character, what the prefix is there)
CURSORS = [
    ("", 0, 0, "empty document"),
    (DOC, 0, 0, "start of a file"),
    (DOC, 2, 0, "the empty line after the final newline"),
    (DOC.rstrip("\n"), 1, 16, "end of a last line without a newline"),
    (DOC, 1, 4, "inside the file"),
    (DOC, 1, 99, "past the end of a line (LSP: the line's end)"),
]


@pytest.fixture(scope="module")
def prefix_only_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-prefix", "llama")


@pytest.fixture(scope="module")
def fim_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-fim", fim=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prefix_only_model_at_the_start_of_a_file(prefix_only_dir, dtype):
    completer = Completer(load_model(str(prefix_only_dir), dtype=dtype))
    assert not completer.fim
    # The same document again and again: the second request reuses the first one's (empty) session.
    for prefix, suffix in [("", ""), ("", ""), ("", DOC), ("def f(x):\n    return", ""), ("", ""), ("", DOC)]:
        result = completer.complete(prefix, suffix, max_new_tokens=6, key="file:///a.py")
        if not prefix:
            assert (result.text, result.prompt_tokens, result.stop_reason) == ("", 0, "empty")
        else:
            assert result.new_tokens > 0


def test_fill_in_the_middle_model_at_both_ends(fim_dir):
    completer = Completer(load_model(str(fim_dir), dtype="float32"))
    assert completer.fim
    for prefix, suffix in [("", ""), ("", DOC), (DOC, ""), ("", ""), (DOC, "")]:
        result = completer.complete(prefix, suffix, max_new_tokens=6, key="file:///a.py")
        assert result.prompt_tokens > 0 and result.new_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["prefix-only", "fim"])
async def test_every_cursor_gets_an_answer_from_a_real_server(model, prefix_only_dir, fim_dir, tmp_path):
    root = tmp_path / "empty-workspace"
    root.mkdir()
    # Sparsity 0: nothing is built, the base model serves every request. An empty workspace loads it once a
    # document of an enabled language is opened.
    settings = fast_settings(prefix_only_dir if model == "prefix-only" else fim_dir, sparsity=0)
    # The test's own cache (SUBCODER_CACHE_DIR, set by tests/conftest.py) shares the compiled kernel.
    async with serve(root, Path(os.environ["SUBCODER_CACHE_DIR"]), settings, caps=capabilities()) as s:
        await s.wait_state("idle")
        uris = [s.open(f"doc{i}.py", text) for i, (text, *_) in enumerate(CURSORS)]
        await s.wait_state("base")
        answered = []  # (where, inline items, completion items)
        for uri, (text, line, character, where) in zip(uris, CURSORS):
            inline = await s.inline(uri, line, character)
            listed = await s.completion(uri, line, character)
            assert inline is not None and listed is not None, where
            answered.append((where, len(inline.items), len(listed.items)))
        details = await s.command("subcoder.status")
        assert details["counters"]["requests"] == 2 * len(CURSORS), details["counters"]
        assert details["state"] == "base"
        shown = [m.message for m in s.client.messages]
        assert not [m for m in shown if "fail" in m or "error" in m.lower()], shown
        log = s.log_file.read_text()
        assert "completion failed" not in log and "is outside" not in log and "Traceback" not in log
        # Every cursor reached the model (none refused as outside the document); what the random tiny model
        # suggests there may be empty, and is at the start of a file for the prefix-only one.
        assert log.count("inlineCompletion: base model") == len(CURSORS), answered
        assert all(inline == listed for _, inline, listed in answered), answered
