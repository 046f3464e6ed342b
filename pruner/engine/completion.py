"""What a completion is, and the one `complete()` every completion source shares.

Torch-free, so that sources without a local model (the server's remote backend) share it too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

from .prompt import resolve_mode


@dataclass(frozen=True)
class Completion:
    text: str  # what to insert at the cursor ("" when there is nothing worth suggesting)
    prompt_tokens: int  # tokens in the prompt
    new_tokens: int  # tokens decoded
    reused_tokens: int  # prompt tokens whose KV entries came from the previous request
    seconds: float
    # line | block | stop-token | length | empty; a caller's own policies add theirs (the server's
    # editor: cached | typed-ahead)
    stop_reason: str = ""
    mode: str = ""  # the resolved mode: single-line | multi-line
    passes: int = 0  # forward passes that decoding took (fewer than new_tokens when drafts held)


def empty_completion(mode: str, started: float) -> Completion:
    """Nothing to continue from (a prefix-only model at the start of a document: no token, so no logits to
    start decoding with): an empty completion, not an error."""
    return Completion("", 0, 0, 0, time.perf_counter() - started, "empty", mode, 0)


class CompletionSource:
    """Anything that completes code: `prompt()` builds what `decode()` continues; `complete()` is both."""

    def prompt(self, prefix: str, suffix: str = "", *, key: str | None = None):
        raise NotImplementedError

    def decode(self, prompt, prefix: str, suffix: str, *, max_new_tokens: int, mode: str,
               cancel: Callable[[], bool] | None = None, key: str | None = None) -> Completion:
        raise NotImplementedError

    @staticmethod
    def begin(prompt, prefix: str, suffix: str, mode: str) -> tuple[float, str, Completion | None]:
        """What every `decode` starts with: the clock, the resolved mode, and the answer when there is
        nothing to decode from (an empty prompt), else None."""
        started = time.perf_counter()
        mode = resolve_mode(mode, prefix, suffix)
        return started, mode, (empty_completion(mode, started) if not prompt.ids else None)

    def complete(self, prefix: str, suffix: str = "", *, max_new_tokens: int = 64, mode: str = "auto",
                 cancel: Callable[[], bool] | None = None, key: str | None = None) -> Completion:
        """Greedy completion at the cursor between `prefix` and `suffix`; raises `Cancelled` when `cancel()` turns true."""
        started = time.perf_counter()
        prompt = self.prompt(prefix, suffix, key=key)
        result = self.decode(prompt, prefix, suffix, max_new_tokens=max_new_tokens, mode=mode, cancel=cancel, key=key)
        return dataclasses.replace(result, seconds=time.perf_counter() - started)
