"""Code completion from a causal LM: prefill, greedy decoding with speculation, KV-cache reuse per key.

A library module with no editor knowledge: a caller hands it the text before and after the cursor
and gets back the text to insert. The steps of a request:

  prompt (`prompt.PromptBuilder`, cut where the key's previous prompt was cut)
  → reuse: crop the key's KV cache to the part it shares with the new prompt
  → prefill the rest (cancel honoured between chunks)
  → decode greedily (`speculate.Decoding`: drafts from the context verified several per pass)
    until a stop token, the stop rule (`stops.StopRule`) or the token budget; cancel honoured
    between tokens
  → `stops.postprocess`.

Greedy decoding runs in a manual loop (one forward per token over the cache), which is where the
stop rules and the cancel flag live: `model.generate` could do neither between tokens cheaply.
Editor policy (answering from the last suggestion while the user types it, a result cache) lives
with the server, in `subcoder.server.editor`.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import Cancelled
from .completion import Completion, CompletionSource
from .options import EngineOptions
from .prompt import DEFAULT_FIM_ORDER, Prompt, PromptBuilder, context_budget
from .speculate import Decoding, PromptLookup
from .stops import StopRule, postprocess, stop_ids

# Prefill in chunks of this many tokens, a cancel request being honoured between chunks. A prompt
# of the default budget goes in one forward, as chunking it cost 6-18% depending on the model
# (docs/PERFORMANCE.md, "Decode loop constants"); a cancelled cold request therefore finishes its
# prefill first, and the next request for the same document reuses that cache.
PREFILL_CHUNK = 1024
# Prompt extensions up to this many tokens (typed since the last request) go through the fused
# decode pass, which costs about half of the model's forward for a few tokens (same section).
SHORT_PREFILL = 8

# A prompt of ~100 tokens for `Completer.warm_up`: long enough to take the batched (GEMM) prefill
# path, short enough to cost a fraction of a second.
_WARM_UP_CODE = "".join(f"def scale_{i}(values, factor={i}):\n    return [v * factor for v in values]\n\n"
                        for i in range(5))


@dataclass
class _Session:
    """The KV cache of one key's last request: the ids it holds and the prefix cut it used."""

    ids: list[int]
    cache: object
    anchor: tuple[int, str] | None = None


@dataclass
class Stats:
    requests: int = 0
    reused_tokens: int = 0
    prompt_tokens: int = 0
    drafted: int = 0  # speculative draft tokens verified
    accepted: int = 0  # of which the model confirmed


class Completer(CompletionSource):
    """Completions from one loaded model; thread-safe (one decode at a time).

    Requests with the same `key` (a document) reuse the KV cache of the previous one as far as the
    two prompts share leading tokens; `sessions` keys are kept, least recently used dropped first.
    `options` (default: `EngineOptions.from_env()`) chooses the decode step and speculation;
    `speculate=` overrides the option. Every request decodes: the text is exactly the greedy
    text for its prompt, whatever was asked before.
    """

    def __init__(self, loaded, *, context_tokens: int = 1024, sessions: int = 4, fim_order: str = DEFAULT_FIM_ORDER,
                 options: EngineOptions | None = None, speculate: bool | None = None, suffix_tokens: int | None = None):
        options = EngineOptions.from_env() if options is None else options
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info = getattr(loaded, "info", None)
        self.model.eval()
        self.context_tokens = context_budget(self.model, context_tokens)
        self.prompts = PromptBuilder(self.tokenizer, getattr(self.info, "fim", None), context_tokens=self.context_tokens,
                                     suffix_tokens=suffix_tokens, order=fim_order)
        self.stop_ids = stop_ids(self.tokenizer, self.model, self.prompts.fim_ids)
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes away).
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.stats = Stats()
        from .kvcache import new_cache  # here, not on the decoding thread (lazy imports race)

        self._cache_factory = new_cache
        self.decoder = _fast_decoder(self.model, options)
        # Draft tokens from the context, verified several at a time (speculate.py): the same greedy
        # tokens, fewer passes over the weights. Needs the fused decode step to verify.
        wanted = options.speculate if speculate is None else bool(speculate)
        self.speculate = wanted and self.decoder is not None and self.decoder.fused
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self.max_sessions = sessions

    @property
    def fim(self) -> bool:
        return self.prompts.fim_ids is not None

    def warm_up(self) -> float:
        """One short throwaway completion; returns its seconds.

        A freshly loaded model's first completion pays one-time work on the first GEMM, attention
        and decode-step calls (~0.5 s on the default sub-model; docs/PERFORMANCE.md, "Decode loop
        constants"). A ~100-token prompt and a few decoded tokens pay it where nobody waits: a
        server does this before it swaps the model in. Leaves no session or statistics behind.
        """
        started = time.perf_counter()
        try:
            self.complete(_WARM_UP_CODE, "", max_new_tokens=4, mode="multi-line")
        finally:
            with self._lock:
                self.stats = Stats()
        return time.perf_counter() - started

    def forget(self, key: str) -> None:
        """Drop the KV cache kept for `key` (a closed document)."""
        with self._lock:
            self._sessions.pop(key, None)

    def prompt(self, prefix: str, suffix: str = "", *, key: str | None = None) -> Prompt:
        """The prompt a request for `key` would decode from now (cut where its last prompt was cut)."""
        with self._lock:
            session = self._sessions.get(key) if key is not None else None
            return self.prompts.build(prefix, suffix, anchor=session.anchor if session else None)

    def decode(self, prompt: Prompt, prefix: str, suffix: str, *, max_new_tokens: int, mode: str,
               cancel: Callable[[], bool] | None = None, key: str | None = None) -> Completion:
        """`complete` for a prompt built by `prompt()` from the same prefix and suffix."""
        started, mode, empty = self.begin(prompt, prefix, suffix, mode)
        if empty is not None:
            return empty
        with self._lock:
            text, new_tokens, reused, reason, passes = self._decode(prompt, prefix, suffix, mode, max_new_tokens,
                                                                    cancel, key)
            text = postprocess(text, suffix, mode)
            self.stats.requests += 1
            self.stats.reused_tokens += reused
            self.stats.prompt_tokens += len(prompt.ids)
        return Completion(text, len(prompt.ids), new_tokens, reused, time.perf_counter() - started,
                          reason if text else "empty", mode, passes)

    @torch.inference_mode()
    def _decode(self, prompt: Prompt, prefix, suffix, mode, max_new_tokens, cancel, key):
        session = self._sessions.pop(key, None) if key is not None else None
        ids = list(prompt.ids)
        reused = 0
        if session is not None:
            # Keep at least one prompt token to feed: its logits start the decoding.
            reused = min(_common_prefix(session.ids, ids), len(ids) - 1)
            cache = session.cache
            crop_cache(cache, reused)
            fed = ids[:reused]
        if session is None or reused == 0:
            cache = self.new_cache()
            fed, reused = [], 0
        new = _Session(fed, cache, (prompt.cut, prefix[: prompt.cut]))
        if key is not None:
            self._sessions[key] = new
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        try:
            first = None
            for start in range(reused, len(ids), PREFILL_CHUNK):
                _check(cancel)
                chunk = ids[start : start + PREFILL_CHUNK]
                first = self.feed(chunk, cache)
                fed.extend(chunk)
            stop = StopRule(mode, prefix, suffix)
            generated: list[int] = []
            text, reason = "", "length"
            lookup = None
            if self.speculate:
                previous = session.ids[max(0, reused - 8):] if session is not None else ()
                lookup = PromptLookup(ids, previous)
            decoding = Decoding(first, step=lambda t: self.feed([t], cache), fed=fed, budget=max_new_tokens,
                                verify=lambda toks: self.decoder.next_tokens(toks, cache),
                                crop=lambda n: crop_cache(cache, n), lookup=lookup)
            try:
                for token in decoding.tokens():
                    if token in self.stop_ids:
                        reason = "stop-token"
                        break
                    generated.append(token)
                    text = self.tokenizer.decode(generated, skip_special_tokens=True)
                    if (keep := stop.check(text)) is not None:
                        text, reason = text[:keep], ("line" if mode == "single-line" else "block")
                        break
                    if len(generated) >= max_new_tokens:
                        break
                    _check(cancel)
            finally:
                self.stats.drafted += decoding.drafted
                self.stats.accepted += decoding.accepted
            return text, len(generated), reused, reason, decoding.passes
        except BaseException:
            # The cache holds exactly `fed`; anything else (an exception mid-forward) leaves it unknown.
            if cache_len(cache) != len(fed):
                self._sessions.pop(key, None)
            raise

    def new_cache(self):
        """An empty KV cache for this model."""
        return self._cache_factory(self.model.config)

    def feed(self, ids: list[int], cache) -> int:
        """Append `ids` to `cache`; the greedy token after them."""
        if len(ids) <= SHORT_PREFILL and self.decoder is not None:
            # One token is a decode step; a few (typed since the last request) one fused pass
            # instead of the model's forward, whose per-call overhead dominates for a few tokens.
            # Both find the argmax without every logit where they can.
            got = self.decoder.next_tokens(ids, cache, len(ids) - 1)
            if got is not None:
                return got[-1]
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        # logits_to_keep=1: the vocabulary projection of every prompt position would cost more than
        # the rest of a 1,000-token prefill for a 49k-vocabulary model.
        out = self.model(input_ids=input_ids, **{self._cache_arg: cache}, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax())


def _fast_decoder(model, options: EngineOptions):
    """The lean batch-1 decode step (subcoder.pruner.kernels.decode_step) for CPU models it supports,
    else None (every token then goes through the model's forward)."""
    if not options.fast_step or model.device.type != "cpu":
        return None
    from ..kernels.decode_step import FastDecoder

    return FastDecoder.for_model(model, kernel=options.sparse_kernel, fused=options.fused_step,
                                 head_screen=options.head_screen)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cache_len(cache) -> int:
    """Positions held by a KV cache (0 for None)."""
    return int(cache.get_seq_length()) if cache is not None else 0


def crop_cache(cache, keep: int) -> None:
    """Cut a KV cache back to its first `keep` positions."""
    extra = cache_len(cache) - keep
    if extra > 0:
        cache.crop(-extra)  # transformers 5: a negative count removes that many trailing tokens


def _check(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("completion cancelled")
