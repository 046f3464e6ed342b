"""Speculative greedy decoding with drafts looked up in the context: the same tokens as plain greedy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from subcoder.pruner.engine.completer import Completer
from subcoder.pruner.engine.options import EngineOptions
from subcoder.pruner.engine.speculate import PromptLookup
from tinymodel import make_tiny_model, make_tokenizer

FIM = SimpleNamespace(prefix="<|fim_prefix|>", suffix="<|fim_suffix|>", middle="<|fim_middle|>")


def test_lookup_proposes_what_followed_the_latest_earlier_match():
    look = PromptLookup([1, 2, 3, 4, 5, 9, 9, 1, 2], n_min=2, n_max=3)
    look.draft_len = 3
    assert look.propose() == [3, 4, 5]  # "1 2" occurred before, followed by 3 4 5
    look.extend([7])
    assert look.propose() == []  # "2 7", "1 2 7" never occurred
    look.extend([1, 2])
    assert look.propose() == [7, 1, 2]  # the latest occurrence of "7 1 2"? no: of "1 2" (ends at 9) -> 7 ...


def test_lookup_prefers_the_previous_request_and_adapts_the_draft_length():
    look = PromptLookup([5, 6, 7, 8], previous=[0, 7, 8, 40, 41, 42, 43, 44, 45, 46], max_draft=5)
    assert look.propose() == [40, 41, 42, 43, 44]  # the previous text earns the longest draft
    look.feedback(5, 2)
    assert look.draft_len == 2
    look.feedback(2, 2)
    assert look.draft_len == 3


def test_lookup_never_matches_the_tail_with_itself():
    look = PromptLookup([3, 4], n_min=2)
    assert look.propose() == []


@pytest.fixture(scope="module")
def loaded():
    from subcoder.pruner import kernels as sparse

    ok, reason = sparse.kernel_available()
    if not ok:
        pytest.skip(reason)
    tok = make_tokenizer(fim=True)
    model = make_tiny_model(tok, seed=3)
    masks = {n: torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(5)) < 0.5
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    sparse.sparsify(model, masks)
    return SimpleNamespace(model=model, tokenizer=tok, info=SimpleNamespace(fim=FIM))


CODE = "".join(f"def add{i % 7}(a, b):\n    return a + b + {i % 3}\n\n" for i in range(60))


@pytest.mark.slow
def test_speculative_completions_equal_plain_greedy(loaded):
    fast = Completer(loaded, context_tokens=512, speculate=True)
    plain = Completer(loaded, context_tokens=512, speculate=False)
    assert fast.speculate and not plain.speculate
    cut = len(CODE) // 2
    for extra in range(0, 40, 3):  # typing forward: each request extends the previous prompt (cache reuse)
        prefix, suffix = CODE[: cut + extra], CODE[cut + extra:]
        for mode in ("multi-line", "single-line"):
            a = fast.complete(prefix, suffix, max_new_tokens=40, mode=mode, key=f"doc-{mode}")
            b = plain.complete(prefix, suffix, max_new_tokens=40, mode=mode, key=f"doc-{mode}")
            assert a.text == b.text, (extra, mode)
            assert a.new_tokens == b.new_tokens
    assert fast.stats.drafted > 0  # drafts were verified (a random model refutes most of them)
    # the cache the speculative decoder left behind is exact: a continuation from it equals a cold start
    prefix = CODE[: cut + 45]
    warm = fast.complete(prefix, CODE[cut + 45:], max_new_tokens=30, mode="multi-line", key="doc-multi-line")
    cold = Completer(loaded, context_tokens=512, speculate=False).complete(prefix, CODE[cut + 45:], max_new_tokens=30,
                                                                           mode="multi-line")
    assert warm.text == cold.text


def test_speculation_off_without_the_fused_step(loaded, monkeypatch):
    assert not Completer(loaded, options=EngineOptions(fused_step=False)).speculate
    monkeypatch.setenv("SUBCODER_FUSED_STEP", "0")  # the default options come from the environment
    assert not Completer(loaded).speculate


def test_confirmed_and_refuted_drafts_keep_greedy_tokens_and_an_exact_cache(loaded, monkeypatch):
    """Drafts that are partly right (an oracle that knows plain greedy's tokens and spoils every
    third draft's last token): accepted runs, refutations, stops inside a draft, the length limit."""
    import subcoder.pruner.engine.speculate as speculate

    plain = Completer(loaded, context_tokens=512, speculate=False)
    cases = [(CODE[:700], CODE[700:], "multi-line", 40), (CODE[:1200], "", "multi-line", 25),
             (CODE[:950], CODE[950:], "single-line", 40)]
    for prefix, suffix, mode, limit in cases:
        fed: list[int] = []
        real_feed = plain.feed
        monkeypatch.setattr(plain, "feed", lambda ids, cache: (fed.extend(ids), real_feed(ids, cache))[1])
        want = plain.complete(prefix, suffix, max_new_tokens=limit, mode=mode)
        monkeypatch.undo()
        prompt_len = want.prompt_tokens
        oracle = fed[prompt_len:]  # every greedy token but the last was fed back
        calls = {"n": 0}

        def propose(self):
            calls["n"] += 1
            start = len(self.live) - prompt_len
            draft = list(oracle[start:start + 1 + calls["n"] % 5])
            if draft and calls["n"] % 3 == 0:
                draft[-1] = (draft[-1] + 1) % 300
            return draft

        monkeypatch.setattr(speculate.PromptLookup, "propose", propose)
        fast = Completer(loaded, context_tokens=512, speculate=True)
        got = fast.complete(prefix, suffix, max_new_tokens=limit, mode=mode, key="k")
        assert (got.text, got.new_tokens) == (want.text, want.new_tokens)
        assert fast.stats.accepted > 0 and fast.stats.drafted > fast.stats.accepted
        # the cache left behind holds exactly what the session says: continuing from it is exact
        again = fast.complete(prefix + "x", suffix, max_new_tokens=10, mode=mode, key="k")
        monkeypatch.undo()
        cold = Completer(loaded, context_tokens=512, speculate=False).complete(prefix + "x", suffix, max_new_tokens=10,
                                                                               mode=mode)
        assert again.text == cold.text
