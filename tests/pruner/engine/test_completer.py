"""subcoder.pruner.engine.completer: greedy decoding, KV-cache reuse per key, cancellation, warm-up."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from subcoder.pruner.engine.completer import Completer
from subcoder.pruner.engine.options import EngineOptions
from subcoder.pruner.engine.stops import StopRule, postprocess
from subcoder.pruner.errors import Cancelled
from tinymodel import make_tiny_model, make_tokenizer

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
    warm = Completer(loaded, context_tokens=1024)
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


def test_every_request_decodes(loaded):
    """The engine keeps no answers: the same request twice decodes twice (its cache covers the prompt)."""
    completer = Completer(loaded, context_tokens=128)
    a = completer.complete("def f(x):\n    return", "", max_new_tokens=6, key="doc")
    b = completer.complete("def f(x):\n    return", "", max_new_tokens=6, key="doc")
    assert (b.text, b.new_tokens) == (a.text, a.new_tokens) and b.stop_reason not in ("cached", "typed-ahead")
    assert b.reused_tokens == b.prompt_tokens - 1
    assert completer.stats.requests == 2


def test_forget_drops_the_kv_cache(loaded):
    completer = Completer(loaded, context_tokens=256)
    completer.complete(CODE[:600], "", max_new_tokens=4, key="doc")
    completer.forget("doc")
    assert completer.complete(CODE[:600], "", max_new_tokens=4, key="doc").reused_tokens == 0


def test_sessions_are_bounded(loaded):
    completer = Completer(loaded, context_tokens=128, sessions=2)
    for key in ("a", "b", "c"):
        completer.complete("def f(x):\n    return", "", max_new_tokens=2, key=key)
    assert completer.complete("def f(x):\n    return", "", max_new_tokens=2, key="a").reused_tokens == 0
    assert completer.complete("def f(x):\n    return", "", max_new_tokens=2, key="c").reused_tokens > 0


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


def test_options_choose_the_decode_step(loaded):
    off = Completer(loaded, context_tokens=256, options=EngineOptions(fast_step=False, speculate=True))
    assert off.decoder is None and not off.speculate  # speculation needs the fused step to verify
    on = Completer(loaded, context_tokens=256, options=EngineOptions(fast_step=False), speculate=False)
    assert not on.speculate
    prefix = CODE[:700] + "def g(x):\n    "
    plain = Completer(loaded, context_tokens=256).complete(prefix, "", max_new_tokens=8, mode="multi-line")
    assert off.complete(prefix, "", max_new_tokens=8, mode="multi-line").text == plain.text


def test_warm_up_leaves_nothing_behind(loaded):
    completer = Completer(loaded, context_tokens=256)
    cold = completer.complete("def add(a, b):\n    return", "", max_new_tokens=6, key="doc")
    fresh = Completer(loaded, context_tokens=256)
    assert fresh.warm_up() > 0
    assert not fresh._sessions
    assert fresh.stats.requests == 0
    # a warmed-up completer answers exactly as a cold one
    again = fresh.complete("def add(a, b):\n    return", "", max_new_tokens=6, key="doc")
    assert (again.text, again.reused_tokens) == (cold.text, 0)
