"""subcoder.pruner.engine.prompt: modes, FIM layouts, the token budget, a cut that stays put while typing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from subcoder.pruner.engine.prompt import PromptBuilder, context_budget, fim_token_ids, resolve_mode
from tinymodel import make_tokenizer

FIM = SimpleNamespace(prefix="<|fim_prefix|>", suffix="<|fim_suffix|>", middle="<|fim_middle|>")
CODE = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(200))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(fim=True)


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


def test_bad_fim_order(tokenizer):
    with pytest.raises(ValueError, match="FIM order"):
        PromptBuilder(tokenizer, FIM, order="mps")


def test_fim_ids_need_all_three_tokens(tokenizer):
    vocab = tokenizer.get_vocab()
    assert fim_token_ids(tokenizer, FIM) == (vocab["<|fim_prefix|>"], vocab["<|fim_suffix|>"], vocab["<|fim_middle|>"])
    assert fim_token_ids(tokenizer, SimpleNamespace(prefix="<|fim_prefix|>", suffix="<nope>",
                                                    middle="<|fim_middle|>")) is None
    assert fim_token_ids(tokenizer, None) is None


def test_context_budget_leaves_room_to_decode():
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=1024))
    assert context_budget(model, 4096) == 1024 - 256
    assert context_budget(model, 512) == 512
    assert context_budget(SimpleNamespace(config=SimpleNamespace()), 4096) == 4096


def test_prompt_fim_layout_and_budget(tokenizer):
    builder = PromptBuilder(tokenizer, FIM, context_tokens=128)
    vocab = tokenizer.get_vocab()
    prompt = builder.build(CODE, "print(1)\n" * 100)
    assert prompt.fim and len(prompt.ids) <= 128
    # PSM (the default): prefix, suffix, then the middle the model writes
    assert prompt.ids[0] == vocab["<|fim_prefix|>"] and prompt.ids[-1] == vocab["<|fim_middle|>"]
    assert prompt.ids[1 + prompt.prefix_tokens] == vocab["<|fim_suffix|>"]
    assert 0 < prompt.suffix_tokens <= 128 // 8
    # SPM: the suffix first, then the prefix, so typing only appends to the prompt
    spm = PromptBuilder(tokenizer, FIM, context_tokens=128, order="spm").build(CODE, "print(1)\n" * 100)
    assert spm.ids[0] == vocab["<|fim_suffix|>"] and spm.ids[1 + spm.suffix_tokens] == vocab["<|fim_prefix|>"]
    assert sorted(spm.ids) == sorted(prompt.ids)
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
    builder = PromptBuilder(tokenizer, FIM, context_tokens=256, order="spm")
    suffix = "\n    return total\n\n\nprint(f(3))\n"
    first = builder.build(CODE + "    total = ", suffix)
    anchor = (first.cut, (CODE + "    total = ")[: first.cut])
    typed = builder.build(CODE + "    total = sum(", suffix, anchor=anchor)
    keep = len(first.ids) - 3  # the <middle> token and the last prefix tokens may change
    assert typed.ids[:keep] == first.ids[:keep]
    assert typed.suffix_tokens == first.suffix_tokens > 0


def test_suffix_budget_in_tokens(tokenizer):
    """`suffix_tokens` caps the text after the cursor (what a PSM request recomputes), whatever the
    prompt budget; the prefix takes the room it leaves, and a short suffix is kept whole."""
    long_suffix = "print(1)\n" * 100
    share = PromptBuilder(tokenizer, FIM, context_tokens=512).build(CODE, long_suffix)
    capped = PromptBuilder(tokenizer, FIM, context_tokens=512, suffix_tokens=12).build(CODE, long_suffix)
    assert share.suffix_tokens > 12 >= capped.suffix_tokens > 0
    assert len(capped.ids) <= 512 and capped.prefix_tokens > share.prefix_tokens
    # the cut suffix is the head of the full one, up to a line end
    vocab = tokenizer.get_vocab()
    start = 2 + capped.prefix_tokens
    text = tokenizer.decode(list(capped.ids[start:start + capped.suffix_tokens]))
    assert long_suffix.startswith(text) and long_suffix[len(text)] == "\n"
    short = PromptBuilder(tokenizer, FIM, context_tokens=512, suffix_tokens=12).build(CODE, "x)\n")
    assert tokenizer.decode(list(short.ids[2 + short.prefix_tokens:-1])) == "x)\n"
    assert capped.ids[1 + capped.prefix_tokens] == vocab["<|fim_suffix|>"]
