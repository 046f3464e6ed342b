"""Draft tokens for speculative greedy decoding, looked up in the context (no draft model).

Decoding one token reads every weight of the model once; verifying a few guessed tokens in one pass
reads them once too and costs little more (measured on Qwen2.5-Coder-0.5B's sub-model, ~800
positions: one token 28 ms, two 31-36 ms, four ~50 ms). The guesses cost nothing when they come from
text that is already there: code repeats its identifiers and idioms, and an editor asks again and
again at nearly the same place, so the previous suggestion usually says what comes next. Verified
guesses keep exactly the tokens plain greedy decoding produces (the model's own argmax decides);
wrong guesses cost the extra rows of one pass.

`PromptLookup` proposes the tokens that followed the latest earlier occurrence of the last n tokens
(n from `n_max` down to `n_min`), preferring the previous request's text for this document and then
the live sequence, and sizes the draft by how the last ones fared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class PromptLookup:
    """n-gram index over a token sequence that grows as tokens are decoded, plus an older sequence."""

    def __init__(self, live: Sequence[int], previous: Sequence[int] = (), *, n_min: int = 2, n_max: int = 4,
                 max_draft: int = 6):
        self.n_min, self.n_max, self.max_draft = n_min, n_max, max_draft
        self.live: list[int] = list(live)
        self.previous: list[int] = list(previous)
        self._prev_index = self._build(self.previous, len(self.previous))
        # live n-grams ending strictly before the last position: the tail's own occurrence is not a match
        self._live_index = self._build(self.live, len(self.live) - 1)
        self.draft_len = 2  # adapted: grows while drafts are accepted in full, shrinks on a miss

    def _build(self, seq: list[int], upto: int) -> dict[tuple[int, ...], int]:
        index: dict[tuple[int, ...], int] = {}
        for end in range(1, upto + 1):
            self._add(index, seq, end)
        return index

    def _add(self, index: dict, seq: list[int], end: int) -> None:
        """Record the n-grams ending at `end` (exclusive): the latest occurrence wins."""
        for n in range(self.n_min, self.n_max + 1):
            if end - n >= 0:
                index[tuple(seq[end - n:end])] = end

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.live.append(t)
            self._add(self._live_index, self.live, len(self.live) - 1)

    def propose(self) -> list[int]:
        """Up to `draft_len` tokens expected after the live sequence (empty: no match)."""
        for n in range(min(self.n_max, len(self.live)), self.n_min - 1, -1):
            key = tuple(self.live[-n:])
            for seq, index, room in ((self.previous, self._prev_index, self.max_draft),
                                     (self.live, self._live_index, self.draft_len)):
                end = index.get(key)
                if end is not None and end < len(seq):
                    # the previous request's text earns a longer draft: it is the model's own output
                    # (or the document) at nearly the same place
                    k = max(self.draft_len, room if seq is self.previous else self.draft_len)
                    return seq[end:end + k]
        return []

    def feedback(self, proposed: int, accepted: int) -> None:
        """How many of the last draft's tokens the model confirmed: all of them lengthens the next draft."""
        if accepted == proposed:
            self.draft_len = min(self.max_draft, self.draft_len + 1)
        else:
            self.draft_len = max(1, accepted)


class Decoding:
    """Greedy tokens one at a time, with draft verification when a lookup and `verify` are given.

    `first` is the greedy token after the prompt. `tokens()` yields each next greedy token. Asking
    for the one after it feeds it to the model (`step`: one token -> the greedy token after it) --
    or, when the lookup has a draft, feeds it with the draft in one pass (`verify`: tokens -> the
    greedy token after each) and keeps the draft's confirmed prefix, whose tokens then come out
    without another pass. `fed` is kept equal to what the cache holds (`crop(n)` cuts the cache to
    n positions); `passes` counts forward passes. Only greedy tokens cross this interface, never
    logits: the model side may find the argmax without computing every logit (GreedyHead).
    """

    def __init__(self, first: int, *, step: Callable[[int], int], fed: list[int], budget: int,
                 verify: Callable[[list[int]], Sequence[int]] | None = None, crop=None,
                 lookup: PromptLookup | None = None):
        self.step, self.verify, self.crop = step, verify, crop
        self.fed, self.budget = fed, budget
        self.lookup = lookup if verify is not None and crop is not None else None
        self.passes = self.drafted = self.accepted = 0
        self._first = int(first)

    def tokens(self):
        # Known next tokens, in order: all but the last are in the cache (confirmed drafts); the
        # last is the model's argmax after them, not yet fed.
        confirmed = [self._first]
        yielded = 0
        while True:
            token = confirmed.pop(0)
            yield token
            yielded += 1
            if confirmed:
                continue  # a confirmed draft: in the cache already, and its successor is known
            self.passes += 1
            draft = []
            if self.lookup is not None:
                self.lookup.extend([token])
                draft = self.lookup.propose()[: self.budget - yielded]
            if draft:
                confirmed = self._verify(token, draft)
            else:
                nxt = self.step(token)
                self.fed.append(token)
                confirmed = [int(nxt)]

    def _verify(self, token: int, draft: list[int]) -> list[int]:
        best = [int(t) for t in self.verify([token, *draft])]  # best[j]: the greedy token after draft[:j]
        j = 0
        while j < len(draft) and best[j] == draft[j]:
            j += 1
        self.crop(len(self.fed) + 1 + j)  # drop the refuted draft tokens' keys and values
        self.fed.append(token)
        self.fed.extend(draft[:j])
        self.lookup.extend(draft[:j])
        self.lookup.feedback(len(draft), j)
        self.drafted += len(draft)
        self.accepted += j
        return [*draft[:j], best[j]]
