"""Giving memory back to the system after a large model is dropped."""

from __future__ import annotations

import ctypes
import gc
import sys


def release_memory() -> None:
    """Hand freed heap memory back to the system: loading a model frees hundreds of MB of transient buffers
    (and dropping the base model its weights) that glibc otherwise keeps mapped in its arenas, where they
    count in the window's resident memory (measured: 2.2 GB before, 1.7 GB after, for the 0.5B sub-model)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass
