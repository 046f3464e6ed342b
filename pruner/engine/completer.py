"""Code completion from a causal LM: prompt building, greedy decoding with stop rules, KV-cache reuse.

A library module with no editor knowledge: the server (or the CLI) hands it the text before and after
the cursor and gets back the text to insert.

- Prompt: fill-in-the-middle (`<fim_prefix>{before}<fim_suffix>{after}<fim_middle>`, the PSM order
  Qwen2.5-Coder and StarCoder were trained on) when the model has the three tokens, the prefix alone
  otherwise. The token budget is split between prefix (most of it) and suffix.
- The prefix is cut at a line start that stays put while the user types forward, so that consecutive
  prompts of one document share their leading tokens and the KV cache of the previous request can be
  cropped to the common part and extended: typing forward costs only the new tokens.
- While the user types the text of the last suggestion for a document, the rest of that suggestion is
  the answer (no decoding), as editors keep showing ghost text that is being typed through.
- Greedy decoding in a manual loop (one forward per token over `past_key_values`), which is where the
  stop rules and the cancel flag live: `model.generate` could do neither between tokens cheaply.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import Cancelled
from .speculate import Decoding, PromptLookup

log = logging.getLogger(__name__)

MODES = ("auto", "single-line", "multi-line")
_CLOSERS = set(")]}>\"'`;,")
# Prefill in chunks of this many tokens, a cancel request being honoured between chunks. A prompt
# of the default budget (1,024 tokens) goes in one forward: measured on 790-token prompts (2 cores,
# 2026-12-02), chunks of 512 cost +11% on the default preset's 50% sub-model (2.29 vs 2.04 s), +6%
# on its dense base and +18% on SmolLM2's sub-model (1.02 vs 0.86 s), and no chunk size came within
# 1% of one forward on every model. A cancelled cold request therefore finishes its prefill first
# (~2 s), whose cache the next request for the same document then reuses.
PREFILL_CHUNK = 1024
SHORT_PREFILL = 8  # prompt extensions up to this many tokens go through the fused decode pass
# Characters fetched per budgeted token before tokenizing a tail/head; code averages 3-4 chars per
# token, so 8 leaves room for long whitespace runs without tokenizing whole files.
_CHARS_PER_TOKEN = 8


# A prompt of ~100 tokens for `Completer.warm_up`: long enough to take the batched (GEMM) prefill
# path, short enough to cost a fraction of a second.
_WARM_UP_CODE = "".join(f"def scale_{i}(values, factor={i}):\n    return [v * factor for v in values]\n\n"
                        for i in range(5))


@dataclass(frozen=True)
class Completion:
    text: str  # what to insert at the cursor ("" when there is nothing worth suggesting)
    prompt_tokens: int  # tokens in the prompt
    new_tokens: int  # tokens decoded
    reused_tokens: int  # prompt tokens whose KV entries came from the previous request
    seconds: float
    stop_reason: str = ""  # line | block | suffix | stop-token | length | cached | typed-ahead | empty
    mode: str = ""  # the resolved mode: single-line | multi-line
    passes: int = 0  # forward passes that decoding took (fewer than new_tokens when drafts held)


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    prefix_tokens: int
    suffix_tokens: int
    fim: bool
    cut: int  # characters of the prefix left out (the prompt starts at prefix[cut:])


def resolve_mode(mode: str, prefix: str, suffix: str) -> str:
    """`auto`: single-line when the cursor is mid-line or after code on its line, multi-line on a blank line."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "auto":
        return mode
    rest = suffix.split("\n", 1)[0]
    if rest.strip() and not set(rest.strip()) <= _CLOSERS:
        return "single-line"
    line = prefix.rsplit("\n", 1)[-1]
    return "multi-line" if not line.strip() else "single-line"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _first_code_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


class StopRule:
    """Decides, from the text generated so far, where the completion ends.

    `check(text)` returns the length of `text` to keep when generation must stop, else None.
    Single-line: the end of the first line with content (the rest of the cursor's line when the
    cursor is mid-line). Multi-line: a line that leaves the block (less indented than the cursor's
    line, or back at its level after going deeper: a closing bracket line is kept), two blank lines
    in a row, or a line that repeats the first line of code after the cursor.
    """

    def __init__(self, mode: str, prefix: str, suffix: str):
        self.mode = mode
        self.line_before = prefix.rsplit("\n", 1)[-1]
        self.mid_line = bool(suffix.split("\n", 1)[0].strip())
        self.base_indent = _indent(self.line_before)
        self.suffix_line = _first_code_line(suffix)

    def check(self, text: str) -> int | None:
        if self.mode == "single-line":
            return self._single(text)
        return self._multi(text)

    def _single(self, text: str) -> int | None:
        start = 0
        while True:
            nl = text.find("\n", start)
            if nl < 0:
                return None
            if self.mid_line or text[:nl].strip():
                return nl
            start = nl + 1

    def _multi(self, text: str) -> int | None:
        lines = text.split("\n")
        complete = lines[:-1]  # the last piece is still being written
        offset = 0
        went_deeper = False
        blank_run = 0
        for i, line in enumerate(complete):
            if i == 0:
                # The rest of the cursor's own line; on a blank line it sets the body's indentation.
                whole = self.line_before + line
                if not self.line_before.strip() and whole.strip() and _indent(whole) > self.base_indent:
                    went_deeper = True
                offset += len(line) + 1
                continue
            stripped = line.strip()
            if not stripped:
                blank_run += 1
                if blank_run >= 2:
                    return offset - 1
                offset += len(line) + 1
                continue
            blank_run = 0
            indent = _indent(line)
            if self.suffix_line and stripped == self.suffix_line:
                return max(offset - 1, 0)
            if indent < self.base_indent or (went_deeper and indent == self.base_indent):
                if stripped[0] in ")]}" and indent == self.base_indent:
                    return offset + len(line)  # keep the closing line, stop after it
                return max(offset - 1, 0)
            if indent > self.base_indent:
                went_deeper = True
            offset += len(line) + 1
        return None


def postprocess(text: str, suffix: str, mode: str) -> str:
    """Drop trailing whitespace, trim what already follows the cursor, drop suggestions that add nothing."""
    if "\ufffd" in text:
        # bytes that do not decode (a multi-byte character cut short, or a byte-level model's noise):
        # never insert them into the user's file
        text = text[: text.index("\ufffd")]
    text = text.rstrip()
    if not text.strip():
        return ""
    rest = suffix.split("\n", 1)[0].rstrip()
    if rest:
        # The model often closes what is already closed after the cursor: `foo(x)` with `)` there.
        for k in range(min(len(rest), len(text)), 0, -1):
            if text.endswith(rest[:k]):
                text = text[:-k].rstrip() if k == len(text) else text[:-k]
                break
    if not text.strip():
        return ""
    if suffix.lstrip().startswith(text.strip()) and (mode == "single-line" or "\n" in text.strip()):
        return ""  # the suggestion is what is already there
    return text


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# Fill-in-the-middle layouts. "psm": <prefix>P<suffix>S<middle>; "spm": <suffix>S<prefix>P<middle>.
# SPM is the default (benchmarks/fim_order.py, docs/PERFORMANCE.md): on the default preset's Python
# sub-model -- what the server serves -- it passed 11.0% of 200 HumanEval single-line infilling tasks
# against 3.0% for PSM (the dense base ranks them the other way: 5.0% vs 12.5%), and while the user
# types, everything before the cursor in an SPM prompt (the suffix, then the prefix) stays the same,
# so the KV cache covers it and only the newly typed tokens are computed; in PSM the suffix comes
# after the cursor and is recomputed on every keystroke (~120 tokens).
FIM_ORDERS = ("spm", "psm")


class PromptBuilder:
    """Token ids for a prefix/suffix pair within a budget; pure apart from the tokenizer."""

    def __init__(self, tokenizer, fim=None, *, context_tokens: int = 1024, suffix_share: float = 0.125,
                 order: str = "spm"):
        if order not in FIM_ORDERS:
            raise ValueError(f"FIM order must be one of {', '.join(FIM_ORDERS)}, not {order!r}")
        self.tokenizer = tokenizer
        self.context_tokens = int(context_tokens)
        self.suffix_share = suffix_share
        self.order = order
        self.fim_ids = self._fim_ids(fim)
        self.lead_ids = self._leading_specials()

    def _fim_ids(self, fim) -> tuple[int, int, int] | None:
        if fim is None:
            return None
        vocab = self.tokenizer.get_vocab()
        ids = tuple(vocab.get(tok) for tok in (fim.prefix, fim.suffix, fim.middle))
        return ids if None not in ids else None

    def _leading_specials(self) -> tuple[int, ...]:
        """Tokens the tokenizer puts before any text (a BOS for Llama-style models, nothing for Qwen)."""
        try:
            with_special = self.tokenizer("x", add_special_tokens=True)["input_ids"]
            plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        except Exception:  # a tokenizer that cannot tell: assume none
            return ()
        if plain and with_special[-len(plain):] == plain:
            return tuple(with_special[: len(with_special) - len(plain)])
        return ()

    def encode(self, text: str, offsets: bool = False):
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
        return (enc["input_ids"], enc["offset_mapping"]) if offsets else enc["input_ids"]

    def build(self, prefix: str, suffix: str = "", *, anchor: tuple[int, str] | None = None) -> Prompt:
        fixed = len(self.lead_ids) + (3 if self.fim_ids else 0)
        budget = max(self.context_tokens - fixed, 8)
        suffix_ids: list[int] = []
        if self.fim_ids and suffix:
            suffix_ids = self._head(suffix, max(int(budget * self.suffix_share), 1))
        prefix_ids, cut = self._tail(prefix, budget - len(suffix_ids), anchor)
        if self.fim_ids:
            p, s, m = self.fim_ids
            if self.order == "spm":
                ids = (*self.lead_ids, s, *suffix_ids, p, *prefix_ids, m)
            else:
                ids = (*self.lead_ids, p, *prefix_ids, s, *suffix_ids, m)
        else:
            ids = (*self.lead_ids, *prefix_ids)
        return Prompt(ids, len(prefix_ids), len(suffix_ids), self.fim_ids is not None, cut)

    def _head(self, suffix: str, budget: int) -> list[int]:
        """The first `budget` tokens of the suffix, ending at a line end when it had to be cut."""
        piece = suffix[: budget * _CHARS_PER_TOKEN]
        ids, offsets = self.encode(piece, offsets=True)
        if len(ids) <= budget and len(piece) == len(suffix):
            return ids
        end = offsets[min(budget, len(ids)) - 1][1] if ids else 0
        nl = piece.rfind("\n", 0, end)
        if nl > 0:
            return self.encode(piece[:nl])[:budget]
        return ids[:budget]

    def _tail(self, prefix: str, budget: int, anchor: tuple[int, str] | None) -> tuple[list[int], int]:
        """The prefix from a stable line start, within `budget` tokens.

        `anchor` is the previous request's cut (characters left out, and the text left out): when the
        new prefix starts with the same text and still fits, the cut stays, so both prompts share
        their leading tokens. A fresh cut keeps a quarter of the budget free for typing ahead.
        """
        if anchor is not None:
            cut, head = anchor
            if cut <= len(prefix) and prefix.startswith(head):
                ids = self.encode(prefix[cut:])
                if len(ids) <= budget:
                    return ids, cut
        if len(prefix) <= budget:  # at least one character per token: fits for sure
            return self.encode(prefix), 0
        base = max(len(prefix) - budget * _CHARS_PER_TOKEN, 0)
        ids, offsets = self.encode(prefix[base:], offsets=True)
        if base == 0 and len(ids) <= budget:
            return ids, 0
        target = budget - budget // 4
        start = offsets[max(len(ids) - target, 0)][0] if ids else 0
        nl = prefix.find("\n", base + start)
        cut = nl + 1 if 0 <= nl < len(prefix) - 1 else base + start
        ids = self.encode(prefix[cut:])
        return ids[-budget:], cut


@dataclass
class _Session:
    """The KV cache of one document's last request: the ids it holds and the prefix cut it used."""

    ids: list[int]
    cache: object
    anchor: tuple[int, str] | None = None


@dataclass(frozen=True)
class _Shown:
    """The last suggestion made for one document, to keep offering its rest while the user types it."""

    prefix: str
    suffix: str
    text: str
    mode: str
    max_new_tokens: int
    prompt_tokens: int

    def rest(self, prefix: str, suffix: str, mode: str, max_new_tokens: int) -> str:
        """What is left of the suggestion when `prefix` is the old prefix plus a beginning of it, else ""."""
        if (mode != self.mode or max_new_tokens != self.max_new_tokens or len(prefix) <= len(self.prefix)
                or len(prefix) - len(self.prefix) >= len(self.text) or suffix != self.suffix
                or not prefix.startswith(self.prefix)):
            return ""
        typed = prefix[len(self.prefix):]
        if not self.text.startswith(typed):
            return ""
        return postprocess(self.text[len(typed):], suffix, mode)


@dataclass
class _Stats:
    requests: int = 0
    cache_hits: int = 0
    typed_ahead: int = 0
    reused_tokens: int = 0
    prompt_tokens: int = 0
    drafted: int = 0  # speculative draft tokens verified
    accepted: int = 0  # of which the model confirmed


class Completer:
    """Completions from one loaded model; thread-safe (one decode at a time).

    `complete()` reuses the KV cache of the previous request with the same `key` when the new prompt
    shares leading tokens with it, and answers repeated prompts from a small result cache. With
    `follow_typing`, a request whose prefix is the previous one's plus the start of the previous
    suggestion gets the rest of that suggestion without decoding.
    """

    def __init__(self, loaded, *, context_tokens: int = 1024, sessions: int = 4, results: int = 64,
                 follow_typing: bool = True, fim_order: str = "spm", speculate: bool | None = None):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.info = getattr(loaded, "info", None)
        self.model.eval()
        max_pos = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        self.context_tokens = int(min(context_tokens, max_pos - 256))
        self.prompts = PromptBuilder(self.tokenizer, getattr(self.info, "fim", None), context_tokens=self.context_tokens,
                                     order=fim_order)
        self.stop_ids = self._stop_ids()
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes away).
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.stats = _Stats()
        from .kvcache import new_cache  # here, not on the decoding thread (lazy imports race)

        self._cache_factory = new_cache
        self._fast = _fast_decoder(self.model)
        if speculate is None:
            speculate = os.environ.get("SUBCODER_SPECULATE", "").strip() != "0"
        # Draft tokens from the context, verified several at a time (subcoder.pruner.engine.speculate): the same
        # greedy tokens, fewer passes over the weights. Needs the fused decode step to verify.
        self.speculate = bool(speculate) and self._fast is not None and self._fast.fused
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._max_sessions = sessions
        self._results: OrderedDict[tuple, Completion] = OrderedDict()
        self._max_results = results
        self._shown: OrderedDict[str, _Shown] = OrderedDict()
        self.follow_typing = follow_typing  # False: every request decodes (exact greedy output for its prompt)

    @property
    def fim(self) -> bool:
        return self.prompts.fim_ids is not None

    def _stop_ids(self) -> frozenset[int]:
        ids = set(getattr(self.tokenizer, "all_special_ids", None) or ())
        for source in (self.model.config, getattr(self.model, "generation_config", None)):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        vocab = self.tokenizer.get_vocab()
        for tok in ("<|endoftext|>", "<|file_sep|>", "<|fim_pad|>", "<|im_end|>", "<|repo_name|>", "<file_sep>"):
            if tok in vocab:
                ids.add(vocab[tok])
        ids.update(self.prompts.fim_ids or ())  # a FIM marker in the middle means the model is done
        return frozenset(int(i) for i in ids)

    def warm_up(self) -> float:
        """One short throwaway completion; returns its seconds.

        A freshly loaded model's first completion costs ~0.5 s more than later ones on the default
        sub-model (measured: first of a ~790-token prompt 3.70 s, the same request again 3.13 s).
        The extra goes to one-time work on the first GEMM, attention and decode-step calls. A
        ~100-token prompt and a few decoded tokens pay it (0.4 s) where nobody waits: a server does
        this before it swaps the model in. Leaves no session, result or statistics behind.
        """
        started = time.perf_counter()
        try:
            self.complete(_WARM_UP_CODE, "", max_new_tokens=4, mode="multi-line")
        finally:
            with self._lock:
                self._results.clear()
                self.stats = _Stats()
        return time.perf_counter() - started

    def forget(self, key: str) -> None:
        """Drop the KV cache kept for `key` (a closed document)."""
        with self._lock:
            self._sessions.pop(key, None)
            self._shown.pop(key, None)

    def complete(
        self,
        prefix: str,
        suffix: str = "",
        *,
        max_new_tokens: int = 64,
        mode: str = "auto",
        cancel: Callable[[], bool] | None = None,
        key: str | None = None,
    ) -> Completion:
        """Greedy completion at the cursor between `prefix` and `suffix`; raises `Cancelled` when `cancel()` turns true."""
        started = time.perf_counter()
        mode = resolve_mode(mode, prefix, suffix)
        with self._lock:
            shown = self._shown.get(key) if key is not None and self.follow_typing else None
            if shown is not None and (rest := shown.rest(prefix, suffix, mode, max_new_tokens)):
                # The user is typing the suggestion: the rest of it stands, as an editor keeps showing it
                # (greedy decoding over the longer prompt would mostly say the same, at the cost of a decode).
                self.stats.typed_ahead += 1
                return Completion(rest, shown.prompt_tokens, 0, shown.prompt_tokens, time.perf_counter() - started,
                                  "typed-ahead", mode)
            session = self._sessions.get(key) if key is not None else None
            prompt = self.prompts.build(prefix, suffix, anchor=session.anchor if session else None)
            result_key = (prompt.ids, max_new_tokens, mode, prefix[prompt.cut:][-64:], suffix[:256])
            if (hit := self._results.get(result_key)) is not None:
                self._results.move_to_end(result_key)
                self.stats.cache_hits += 1
                if key is not None:
                    self._remember(key, _Shown(prefix, suffix, hit.text, mode, max_new_tokens, hit.prompt_tokens)
                                   if hit.text else None)
                return Completion(hit.text, hit.prompt_tokens, 0, hit.prompt_tokens,
                                  time.perf_counter() - started, "cached", mode)
            text, new_tokens, reused, reason, passes = self._decode(prompt, prefix, suffix, mode, max_new_tokens,
                                                                    cancel, key)
            text = postprocess(text, suffix, mode)
            result = Completion(text, len(prompt.ids), new_tokens, reused, time.perf_counter() - started,
                                reason if text else "empty", mode, passes)
            self._results[result_key] = result
            while len(self._results) > self._max_results:
                self._results.popitem(last=False)
            self.stats.requests += 1
            self.stats.reused_tokens += reused
            self.stats.prompt_tokens += len(prompt.ids)
            if key is not None:
                self._remember(key, _Shown(prefix, suffix, text, mode, max_new_tokens, len(prompt.ids)) if text else None)
            return result

    def _remember(self, key: str, shown: _Shown | None) -> None:
        self._shown.pop(key, None)
        if shown is not None:
            self._shown[key] = shown
            while len(self._shown) > self._max_sessions:
                self._shown.popitem(last=False)

    @torch.inference_mode()
    def _decode(self, prompt: Prompt, prefix, suffix, mode, max_new_tokens, cancel, key):
        session = self._sessions.pop(key, None) if key is not None else None
        ids = list(prompt.ids)
        reused = 0
        if session is not None:
            # Keep at least one prompt token to feed: its logits start the decoding.
            reused = min(_common_prefix(session.ids, ids), len(ids) - 1)
            cache = session.cache
            _crop(cache, reused)
            fed = ids[:reused]
        if session is None or reused == 0:
            cache = self._new_cache()
            fed, reused = [], 0
        new = _Session(fed, cache, (prompt.cut, prefix[: prompt.cut]))
        if key is not None:
            self._sessions[key] = new
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        try:
            first = None
            for start in range(reused, len(ids), PREFILL_CHUNK):
                _check(cancel)
                chunk = ids[start : start + PREFILL_CHUNK]
                first = self._feed(chunk, cache)
                fed.extend(chunk)
            stop = StopRule(mode, prefix, suffix)
            generated: list[int] = []
            text, reason = "", "length"
            lookup = None
            if self.speculate:
                previous = session.ids[max(0, reused - 8):] if session is not None else ()
                lookup = PromptLookup(ids, previous)
            decoding = Decoding(first, step=lambda t: self._feed([t], cache), fed=fed, budget=max_new_tokens,
                                verify=lambda toks: self._fast.next_tokens(toks, cache), crop=lambda n: _crop(cache, n),
                                lookup=lookup)
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
            passes = decoding.passes
            return text, len(generated), reused, reason, passes
        except BaseException:
            # The cache holds exactly `fed`; anything else (an exception mid-forward) leaves it unknown.
            if cache_len(cache) != len(fed):
                self._sessions.pop(key, None)
            raise

    def _new_cache(self):
        return self._cache_factory(self.model.config)

    def _feed(self, ids: list[int], cache) -> int:
        """Append `ids` to `cache`; the greedy token after them."""
        if len(ids) <= SHORT_PREFILL and self._fast is not None:
            # One token is a decode step; a few (typed since the last request) one fused pass (~40
            # ms for 3 tokens on the default sub-model) instead of the model's forward (~75 ms,
            # mostly per-call overhead). Both find the argmax without every logit where they can.
            got = self._fast.next_tokens(ids, cache, len(ids) - 1)
            if got is not None:
                return got[-1]
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        # logits_to_keep=1: the vocabulary projection of every prompt position would cost more than
        # the rest of a 1,000-token prefill for a 49k-vocabulary model.
        out = self.model(input_ids=input_ids, **{self._cache_arg: cache}, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax())


def _fast_decoder(model):
    """The lean batch-1 decode step (subcoder.pruner.kernels.decode_step) for CPU models it supports, else None.
    `SUBCODER_FAST_STEP=0` turns it off (every token then goes through the model's forward)."""
    if os.environ.get("SUBCODER_FAST_STEP", "").strip() == "0" or model.device.type != "cpu":
        return None
    from ..kernels.decode_step import FastDecoder

    return FastDecoder.for_model(model)


def cache_len(cache) -> int:
    return int(cache.get_seq_length()) if cache is not None else 0


def _crop(cache, keep: int) -> None:
    extra = cache_len(cache) - keep
    if extra > 0:
        cache.crop(-extra)  # transformers 5: a negative count removes that many trailing tokens


def _check(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("completion cancelled")
