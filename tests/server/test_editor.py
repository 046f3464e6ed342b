"""subcoder.server.editor: the rest of the last suggestion while the user types it, the result cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from subcoder.pruner.engine.completer import Completer
from subcoder.pruner.engine.stops import postprocess
from subcoder.server.editor import EditorCompleter, Shown
from tinymodel import make_tiny_model, make_tokenizer

FIM = SimpleNamespace(prefix="<|fim_prefix|>", suffix="<|fim_suffix|>", middle="<|fim_middle|>")
CODE = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(200))


@pytest.fixture(scope="module")
def loaded():
    tokenizer = make_tokenizer(fim=True)
    return SimpleNamespace(model=make_tiny_model(tokenizer), tokenizer=tokenizer, info=SimpleNamespace(fim=FIM))


def _editor(loaded, **kwargs) -> EditorCompleter:
    return EditorCompleter(Completer(loaded, context_tokens=256), **kwargs)


def test_shown_rest_only_while_typing_the_suggestion():
    shown = Shown("x = ", "\n", "foo(1, 2)", "single-line", 8, 40)
    assert shown.rest("x = fo", "\n", "single-line", 8) == "o(1, 2)"
    assert shown.rest("x = fa", "\n", "single-line", 8) == ""  # typed something else
    assert shown.rest("x = ", "\n", "single-line", 8) == ""  # nothing typed: decode again
    assert shown.rest("x = foo(1, 2)", "\n", "single-line", 8) == ""  # typed all of it
    assert shown.rest("x = fo", "\nz", "single-line", 8) == ""  # the suffix changed
    assert shown.rest("x = fo", "\n", "multi-line", 8) == ""
    assert shown.rest("x = fo", "\n", "single-line", 16) == ""
    closed = Shown("x = ", ")\n", "foo(1, 2)", "single-line", 8, 40)
    assert closed.rest("x = fo", ")\n", "single-line", 8) == "o(1, 2"  # trimmed like any suggestion


def test_typing_the_suggestion_keeps_its_rest(loaded):
    completer = _editor(loaded)
    suffix = "\n\nprint(1)\n"
    for i in range(40):  # a prompt whose (random-model) suggestion is long enough to type into
        prefix = CODE[: 37 * i] + "def add(a, b):\n    return "
        first = completer.complete(prefix, suffix, max_new_tokens=8, mode="multi-line", key="doc")
        if len(first.text.strip()) >= 4 and not first.text[:2].isspace():
            break
    else:
        pytest.skip("the tiny model suggested nothing long enough")
    got = completer.complete(prefix + first.text[:2], suffix, max_new_tokens=8, mode="multi-line", key="doc")
    assert got.stop_reason == "typed-ahead" and got.new_tokens == 0
    assert got.text == postprocess(first.text[2:], suffix, "multi-line")
    # Further along the same suggestion: still its rest (measured from the suggestion, not the last answer).
    got = completer.complete(prefix + first.text[:3], suffix, max_new_tokens=8, mode="multi-line", key="doc")
    assert got.stop_reason == "typed-ahead" and got.text == postprocess(first.text[3:], suffix, "multi-line")
    assert completer.stats.typed_ahead == 2
    # Typing something else, a changed suffix, another document, or after forget(): the model decodes.
    other = "\x01" if first.text[0] != "\x01" else "\x02"
    assert completer.complete(prefix + other, suffix, max_new_tokens=8, mode="multi-line",
                              key="doc").stop_reason != "typed-ahead"
    completer.complete(prefix, suffix, max_new_tokens=8, mode="multi-line", key="doc")
    assert completer.complete(prefix + first.text[:2], suffix + "x", max_new_tokens=8, mode="multi-line",
                              key="doc").stop_reason != "typed-ahead"
    assert completer.complete(prefix + first.text[:2], suffix, max_new_tokens=8, mode="multi-line",
                              key="other").stop_reason != "typed-ahead"
    completer.complete(prefix, suffix, max_new_tokens=8, mode="multi-line", key="doc")
    completer.forget("doc")
    assert completer.complete(prefix + first.text[:2], suffix, max_new_tokens=8, mode="multi-line",
                              key="doc").stop_reason != "typed-ahead"
    exact = _editor(loaded, follow_typing=False)
    exact.complete(prefix, suffix, max_new_tokens=8, mode="multi-line", key="doc")
    assert exact.complete(prefix + first.text[:2], suffix, max_new_tokens=8, mode="multi-line",
                          key="doc").stop_reason != "typed-ahead"


def test_result_cache(loaded):
    completer = EditorCompleter(Completer(loaded, context_tokens=128), results=1)
    a = completer.complete("def f(x):\n    return", "", max_new_tokens=6)
    b = completer.complete("def f(x):\n    return", "", max_new_tokens=6)
    assert b.stop_reason == "cached" and b.text == a.text and b.new_tokens == 0
    assert completer.stats.cache_hits == 1 and completer.engine.stats.requests == 1
    assert completer.complete("def f(x):\n    return", "", max_new_tokens=5).stop_reason != "cached"
    # one result kept: the first request's has been dropped
    assert completer.complete("def f(x):\n    return", "", max_new_tokens=6).stop_reason != "cached"


def test_answers_equal_the_engines(loaded):
    """Whatever the policy answers from, a decoded request's text is the engine's for the same prompt."""
    editor, engine = _editor(loaded), Completer(loaded, context_tokens=256)
    for typed in ("", "d", "de", "def h(x"):  # prompts within the budget: an uncut prefix, as a cold request's
        got = editor.complete(CODE[:300] + typed, "\n", max_new_tokens=8, mode="multi-line", key="doc")
        if got.stop_reason != "typed-ahead":
            want = engine.complete(CODE[:300] + typed, "\n", max_new_tokens=8, mode="multi-line")
            assert (got.text, got.prompt_tokens, got.new_tokens) == (want.text, want.prompt_tokens, want.new_tokens)


def test_warm_up_leaves_nothing_behind(loaded):
    completer = _editor(loaded)
    assert completer.warm_up() > 0
    assert not completer._results and not completer._shown and completer.stats.cache_hits == 0
    assert completer.engine.stats.requests == 0
    assert completer.fim and completer.info is loaded.info
