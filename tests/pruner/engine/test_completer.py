"""subcoder.pruner.engine.completer: prompt building, stop rules, greedy decoding, KV-cache reuse, cancellation."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from subcoder.pruner.errors import Cancelled
from subcoder.pruner.engine.completer import Completer, PromptBuilder, StopRule, postprocess, resolve_mode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from tinymodel import make_tiny_model, make_tokenizer  # noqa: E402

FIM = SimpleNamespace(prefix="<|fim_prefix|>", suffix="<|fim_suffix|>", middle="<|fim_middle|>")
CODE = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(200))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(fim=True)


@pytest.fixture(scope="module")
def loaded(tokenizer):
    return SimpleNamespace(model=make_tiny_model(tokenizer), tokenizer=tokenizer, info=SimpleNamespace(fim=FIM))


@pytest.fixture(scope="module")
def loaded_plain(tokenizer):
    return SimpleNamespace(model=make_tiny_model(tokenizer, seed=1), tokenizer=tokenizer, info=SimpleNamespace(fim=None))


# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, suffix, expected",
    [
        ("x = foo(", "", "single-line"),
        ("x = foo(", ")\n", "single-line"),
        ("x = ", "bar()\n", "single-line"),
        ("def f():\n    ", "\n", "multi-line"),
        ("def f():\n", "", "multi-line"),
    ],
)
def test_auto_mode(prefix, suffix, expected):
    assert resolve_mode("auto", prefix, suffix) == expected


def test_bad_mode():
    with pytest.raises(ValueError):
        resolve_mode("paragraph", "", "")


def test_single_line_stops_at_first_line_with_content():
    rule = StopRule("single-line", "x = 1", "")
    assert rule.check("2 + 3") is None
    assert rule.check("2 + 3\ny") == 5
    at_end = StopRule("single-line", "def f():", "")
    assert at_end.check("\n    return 1\n") == len("\n    return 1")
    mid = StopRule("single-line", "foo(", "bar)")
    assert mid.check("\nx") == 0


def test_multi_line_stops_at_block_end_and_suffix_repeat():
    rule = StopRule("multi-line", "def f(x):\n    ", "\n\ndef g():\n    pass\n")
    text = "y = x\n    return y\n\ndef h():\n"
    assert text[: rule.check(text)] == "y = x\n    return y\n"
    brace = StopRule("multi-line", "if (x) {\n", "")
    text = "    foo();\n}\nbar();\n"
    assert text[: brace.check(text)] == "    foo();\n}"
    repeat = StopRule("multi-line", "    ", "    return total\n")
    text = "total = a + b\n    return total\n"
    assert text[: repeat.check(text)] == "total = a + b"
    blanks = StopRule("multi-line", "", "")
    assert blanks.check("a = 1\n\n\nb") == len("a = 1\n")


def test_postprocess_trims_overlap_and_drops_duplicates():
    assert postprocess("a, b)", ")\n", "single-line") == "a, b"
    assert postprocess("   \n", "", "multi-line") == ""
    assert postprocess("bar()", "bar()\n", "single-line") == ""
    assert postprocess("x = 1  ", "", "single-line") == "x = 1"


def test_prompt_fim_layout_and_budget(tokenizer):
    builder = PromptBuilder(tokenizer, FIM, context_tokens=128)
    vocab = tokenizer.get_vocab()
    prompt = builder.build(CODE, "print(1)\n" * 100)
    assert prompt.fim and len(prompt.ids) <= 128
    # SPM (the default): the suffix first, then the prefix, so typing only appends to the prompt
    assert prompt.ids[0] == vocab["<|fim_suffix|>"] and prompt.ids[-1] == vocab["<|fim_middle|>"]
    assert prompt.ids[1 + prompt.suffix_tokens] == vocab["<|fim_prefix|>"]
    assert 0 < prompt.suffix_tokens <= 128 // 8
    psm = PromptBuilder(tokenizer, FIM, context_tokens=128, order="psm").build(CODE, "print(1)\n" * 100)
    assert psm.ids[0] == vocab["<|fim_prefix|>"] and psm.ids[1 + psm.prefix_tokens] == vocab["<|fim_suffix|>"]
    assert sorted(psm.ids) == sorted(prompt.ids)
    assert CODE[prompt.cut - 1] == "\n", "the prefix is cut at a line start"
    plain = PromptBuilder(tokenizer, None, context_tokens=128).build("def f(", "x)")
    assert not plain.fim and tokenizer.decode(list(plain.ids)) == "def f("


def test_prompt_cut_is_stable_while_typing(tokenizer):
    builder = PromptBuilder(tokenizer, FIM, context_tokens=256)
    first = builder.build(CODE, "")
    anchor = (first.cut, CODE[: first.cut])
    typed = builder.build(CODE + "def g(", "", anchor=anchor)
    assert typed.cut == first.cut
    assert typed.ids[: first.prefix_tokens - 1] == first.ids[: first.prefix_tokens - 1]


def test_spm_prompt_grows_only_at_its_end_while_typing(tokenizer):
    """What makes typing cheap: the previous prompt (less its last token or two, where the newly typed
    characters merge) is a prefix of the next one, suffix included."""
    builder = PromptBuilder(tokenizer, FIM, context_tokens=256)
    suffix = "\n    return total\n\n\nprint(f(3))\n"
    first = builder.build(CODE + "    total = ", suffix)
    anchor = (first.cut, (CODE + "    total = ")[: first.cut])
    typed = builder.build(CODE + "    total = sum(", suffix, anchor=anchor)
    keep = len(first.ids) - 3  # the <middle> token and the last prefix tokens may change
    assert typed.ids[:keep] == first.ids[:keep]
    assert typed.suffix_tokens == first.suffix_tokens > 0


# --- decoding ----------------------------------------------------------------------------------


def _reference(loaded, prefix, suffix, n, mode):
    """Greedy text through model.generate, with the same prompt and stop/post-processing rules."""
    completer = Completer(loaded, context_tokens=256)
    prompt = completer.prompts.build(prefix, suffix)
    out = loaded.model.generate(
        torch.tensor([prompt.ids]), max_new_tokens=n, do_sample=False, eos_token_id=sorted(completer.stop_ids),
        pad_token_id=0,
    )
    new = [t for t in out[0, len(prompt.ids):].tolist() if t not in completer.stop_ids]
    text = loaded.tokenizer.decode(new)
    rule = StopRule(mode, prefix, suffix)
    for k in range(1, len(new) + 1):
        if (keep := rule.check(loaded.tokenizer.decode(new[:k]))) is not None:
            text = loaded.tokenizer.decode(new[:k])[:keep]
            break
    return postprocess(text, suffix, mode)


@pytest.mark.parametrize("which", ["loaded", "loaded_plain"])
def test_greedy_matches_generate(which, request):
    loaded = request.getfixturevalue(which)
    prefix, suffix = CODE[:700] + "def g(x):\n    ", "\n"
    result = Completer(loaded, context_tokens=256).complete(prefix, suffix, max_new_tokens=12, mode="multi-line")
    assert result.text == _reference(loaded, prefix, suffix, 12, "multi-line")
    assert result.prompt_tokens <= 256 and result.new_tokens <= 12


def test_kv_reuse_gives_the_same_text_as_a_cold_run(loaded):
    warm = Completer(loaded, context_tokens=1024, follow_typing=False)
    prefix = CODE[:1500]  # fits the budget whole, so cold and warm prompts are the same
    first = warm.complete(prefix, "\n", max_new_tokens=8, mode="multi-line", key="doc")
    assert first.reused_tokens == 0
    for typed in ("d", "de", "def", "def h(x", "def h(x):\n    "):
        got = warm.complete(prefix + typed, "\n", max_new_tokens=8, mode="multi-line", key="doc")
        cold = Completer(loaded, context_tokens=1024).complete(prefix + typed, "\n", max_new_tokens=8, mode="multi-line")
        assert got.prompt_tokens == cold.prompt_tokens
        assert got.text == cold.text
        assert got.reused_tokens > got.prompt_tokens // 2, "typing forward reuses most of the prompt"
    other = warm.complete(prefix, "", max_new_tokens=8, key="other-doc")
    assert other.reused_tokens == 0


def test_typing_the_suggestion_keeps_its_rest(loaded):
    completer = Completer(loaded, context_tokens=256)
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
    exact = Completer(loaded, context_tokens=256, follow_typing=False)
    exact.complete(prefix, suffix, max_new_tokens=8, mode="multi-line", key="doc")
    assert exact.complete(prefix + first.text[:2], suffix, max_new_tokens=8, mode="multi-line",
                          key="doc").stop_reason != "typed-ahead"


def test_result_cache(loaded):
    completer = Completer(loaded, context_tokens=128)
    a = completer.complete("def f(x):\n    return", "", max_new_tokens=6)
    b = completer.complete("def f(x):\n    return", "", max_new_tokens=6)
    assert b.stop_reason == "cached" and b.text == a.text and b.new_tokens == 0


def test_cancel_between_tokens_keeps_the_cache_usable(loaded):
    completer = Completer(loaded, context_tokens=256)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        completer.complete(CODE[:1500], "", max_new_tokens=32, mode="multi-line", cancel=cancel, key="k")
    with pytest.raises(Cancelled):
        completer.complete("x", "", cancel=lambda: True)
    after = completer.complete(CODE[:1500], "", max_new_tokens=4, mode="multi-line", key="k")
    assert after.reused_tokens > 0
    cold = Completer(loaded, context_tokens=256).complete(CODE[:1500], "", max_new_tokens=4, mode="multi-line")
    assert after.text == cold.text


def test_undecodable_bytes_are_never_suggested():
    from subcoder.pruner.engine.completer import postprocess

    assert postprocess("x = 1\ufffd\ufffd", "", "single-line") == "x = 1"
    assert postprocess("\ufffdabc", "", "single-line") == ""


def test_warm_up_leaves_nothing_behind(loaded):
    completer = Completer(loaded, context_tokens=256)
    cold = completer.complete("def add(a, b):\n    return", "", max_new_tokens=6, key="doc")
    fresh = Completer(loaded, context_tokens=256)
    assert fresh.warm_up() > 0
    assert not fresh._sessions and not fresh._results and not fresh._shown
    assert fresh.stats.requests == 0
    # a warmed-up completer answers exactly as a cold one
    again = fresh.complete("def add(a, b):\n    return", "", max_new_tokens=6, key="doc")
    assert (again.text, again.reused_tokens) == (cold.text, 0)
