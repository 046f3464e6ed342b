"""Progress reports and cancellation for long library calls.

Library code reports through a plain callback; the CLI maps it to tqdm bars, the server to LSP
work-done progress. Cancellation is a callable polled between units of work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import Cancelled


@dataclass(frozen=True)
class Progress:
    stage: str  # download | convert | calibrate | prune | save
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def report(progress: ProgressFn | None, stage: str, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(Progress(stage, done, total, message))


def check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled")
