"""Prompt building: the token ids for the text around the cursor, within a token budget.

Pure apart from the tokenizer; used by the completer (the editor path) and by the evaluation.

- Fill-in-the-middle when the model has the three FIM tokens (`FIM_ORDERS`: PSM, the default, or
  SPM), the prefix alone otherwise. The budget is split between prefix (most of it) and suffix.
- The prefix is cut at a line start that stays put while the user types forward (`anchor`), so that
  consecutive prompts of one document share their leading tokens and the KV cache of the previous
  request covers all but the newly typed tokens.
- `resolve_mode` decides how much to complete: the rest of a line, or a block.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("auto", "single-line", "multi-line")
_CLOSERS = set(")]}>\"'`;,")
# Characters fetched per budgeted token before tokenizing a tail/head; code averages 3-4 chars per
# token, so 8 leaves room for long whitespace runs without tokenizing whole files.
_CHARS_PER_TOKEN = 8
# Positions a prompt leaves free below the model's maximum, for the tokens decoded after it.
_DECODE_ROOM = 256

# Fill-in-the-middle layouts. "psm": <prefix>P<suffix>S<middle>; "spm": <suffix>S<prefix>P<middle>.
# PSM is the default, by measurement on the default preset's dense model (what the server serves by
# default): 14.7% exact next-line in PSM against 5.3% in SPM on the same 150 held-out Python tasks, and
# in the server's typing replay SPM answered 87 of 127 requests with an empty suggestion against 5 in
# PSM. SPM's one advantage is cost: while the user types, everything before the cursor stays in place
# in an SPM prompt, so the KV cache covers the whole prompt, where PSM recomputes the ~100 suffix
# tokens after the cursor on every request (decoding requests' p50 0.74 s against 0.21 s). Figures:
# docs/PERFORMANCE.md, "Fill-in-the-middle prompt order", and docs/FRONTIER.md.
FIM_ORDERS = ("psm", "spm")
DEFAULT_FIM_ORDER = "psm"


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


def context_budget(model, context_tokens: int) -> int:
    """`context_tokens`, lowered to leave room for decoding within the model's position limit."""
    max_pos = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    return int(min(context_tokens, max_pos - _DECODE_ROOM))


def fim_token_ids(tokenizer, fim) -> tuple[int, int, int] | None:
    """The (prefix, suffix, middle) token ids of `fim` (FimTokens or None), or None when any is missing."""
    if fim is None:
        return None
    vocab = tokenizer.get_vocab()
    ids = tuple(vocab.get(tok) for tok in (fim.prefix, fim.suffix, fim.middle))
    return ids if None not in ids else None


class PromptBuilder:
    """Token ids for a prefix/suffix pair within a budget; pure apart from the tokenizer."""

    def __init__(self, tokenizer, fim=None, *, context_tokens: int = 1024, suffix_share: float = 0.125,
                 suffix_tokens: int | None = None, order: str = DEFAULT_FIM_ORDER):
        if order not in FIM_ORDERS:
            raise ValueError(f"FIM order must be one of {', '.join(FIM_ORDERS)}, not {order!r}")
        self.tokenizer = tokenizer
        self.context_tokens = int(context_tokens)
        self.suffix_share = suffix_share
        # at most this many suffix tokens (None: suffix_share of the budget); in PSM every request
        # recomputes them, so they set much of a typed request's cost (docs/PERFORMANCE.md)
        self.suffix_tokens = None if suffix_tokens is None else max(int(suffix_tokens), 1)
        self.order = order
        self.fim_ids = fim_token_ids(tokenizer, fim)
        self.lead_ids = self._leading_specials()

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
            cap = max(int(budget * self.suffix_share), 1) if self.suffix_tokens is None else self.suffix_tokens
            suffix_ids = self._head(suffix, min(cap, budget - 1))
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
