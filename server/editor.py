"""Editor policy over an engine `Completer`: what an editor's stream of requests needs beyond decoding.

An editor asks again at nearly every keystroke. Two answers need no decode:

- typed-ahead: while the user types the text of the last suggestion for a document, the rest of
  that suggestion is the answer, as editors keep showing ghost text that is being typed through
  (greedy decoding over the longer prompt would mostly say the same, at the cost of a decode);
- cached: a request whose prompt, mode and budget equal an earlier one's gets its result again.

Everything else goes to the engine, which reuses the document's KV cache. `EditorCompleter` has the
engine's `complete()` contract, so the server calls it as it would the engine.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from subcoder.pruner.engine.completer import Completer, Completion
from subcoder.pruner.engine.prompt import resolve_mode
from subcoder.pruner.engine.stops import postprocess


@dataclass(frozen=True)
class Shown:
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
class EditorStats:
    cache_hits: int = 0
    typed_ahead: int = 0


class EditorCompleter:
    """An engine `Completer` behind the typed-ahead rule and a result cache; thread-safe.

    `results` completions are cached, least recently used dropped first; a suggestion is kept for
    as many documents as the engine keeps KV caches. With `follow_typing=False` every request that
    misses the result cache decodes.
    """

    def __init__(self, engine: Completer, *, results: int = 64, follow_typing: bool = True):
        self.engine = engine
        self.follow_typing = follow_typing
        self.stats = EditorStats()
        self._lock = threading.Lock()
        self._results: OrderedDict[tuple, Completion] = OrderedDict()
        self._max_results = results
        self._shown: OrderedDict[str, Shown] = OrderedDict()
        self._max_shown = engine.max_sessions

    @property
    def fim(self) -> bool:
        return self.engine.fim

    @property
    def info(self):
        return self.engine.info

    def warm_up(self) -> float:
        """The engine's warm-up (it leaves nothing in this object's caches either)."""
        return self.engine.warm_up()

    def forget(self, key: str) -> None:
        """Drop what is kept for `key` (a closed document): its KV cache and its last suggestion."""
        with self._lock:
            self._shown.pop(key, None)
        self.engine.forget(key)

    def complete(self, prefix: str, suffix: str = "", *, max_new_tokens: int = 64, mode: str = "auto",
                 cancel: Callable[[], bool] | None = None, key: str | None = None) -> Completion:
        """As `Completer.complete`, answered from the last suggestion or the result cache where they apply."""
        started = time.perf_counter()
        mode = resolve_mode(mode, prefix, suffix)
        with self._lock:
            shown = self._shown.get(key) if key is not None and self.follow_typing else None
            if shown is not None and (rest := shown.rest(prefix, suffix, mode, max_new_tokens)):
                self.stats.typed_ahead += 1
                return Completion(rest, shown.prompt_tokens, 0, shown.prompt_tokens, time.perf_counter() - started,
                                  "typed-ahead", mode)
            prompt = self.engine.prompt(prefix, suffix, key=key)
            # The prompt's ids decide the answer; the text around the cursor is in the key too, as
            # the stop rule and the trim read it (the cut prefix's end, the suffix's start).
            result_key = (prompt.ids, max_new_tokens, mode, prefix[prompt.cut:][-64:], suffix[:256])
            if (hit := self._results.get(result_key)) is not None:
                self._results.move_to_end(result_key)
                self.stats.cache_hits += 1
                if key is not None:
                    self._remember(key, Shown(prefix, suffix, hit.text, mode, max_new_tokens, hit.prompt_tokens)
                                   if hit.text else None)
                return Completion(hit.text, hit.prompt_tokens, 0, hit.prompt_tokens,
                                  time.perf_counter() - started, "cached", mode)
            result = self.engine.decode(prompt, prefix, suffix, max_new_tokens=max_new_tokens, mode=mode,
                                        cancel=cancel, key=key)
            result = dataclasses.replace(result, seconds=time.perf_counter() - started)
            self._results[result_key] = result
            while len(self._results) > self._max_results:
                self._results.popitem(last=False)
            if key is not None:
                self._remember(key, Shown(prefix, suffix, result.text, mode, max_new_tokens, result.prompt_tokens)
                               if result.text else None)
            return result

    def _remember(self, key: str, shown: Shown | None) -> None:
        self._shown.pop(key, None)
        if shown is not None:
            self._shown[key] = shown
            while len(self._shown) > self._max_shown:
                self._shown.popitem(last=False)
