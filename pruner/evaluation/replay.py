"""Typing replay on the engine: the requests an editor sends while a line is typed, each one timed.

For a next-line task (a held-out file's line, the text before it and after it) the line is typed back at
its place: after every `every` characters, and once the whole line is there, the editor asks for a
completion with the typed text appended to the prefix and the rest of the file as suffix. The requests
of one task share a key, so each one after the first extends the previous prompt's KV cache, as the
server's Completer does for a document; the first is *cold* (a document never completed before).

This times the engine only: no LSP, no debounce, no reuse of a previous suggestion that the typed text
still matches (the server's "typed through"). Those are the same for every configuration; what differs
between configurations is the engine's cost per request, prompt and tokens decoded together, and that
is what a cost table must compare. `benchmarks/server_latency.py` times the whole server.
"""

from __future__ import annotations

import math
import statistics
import time


def typed_prefixes(task: dict, every: int) -> list[str]:
    """The prefixes of the requests sent while task["target"] is typed: one after every `every`
    characters and one at the line's end (no request for an empty line: nothing was typed)."""
    line = task["target"]
    stops = list(range(every, len(line), every)) + ([len(line)] if line else [])
    return [task["prefix"] + line[:k] for k in stops]


def replay(completer, tasks: list[dict], *, every: int = 4, max_new_tokens: int = 48) -> list[dict]:
    """Every request of every task, in typing order: its milliseconds, whether it was cold, the prompt
    and decoded token counts. Single-line completions, greedy, as the server asks inline."""
    out = []
    for task in tasks:
        key = f"replay:{task['id']}"
        completer.forget(key)  # cold means cold, even if this completer saw the task before
        for i, prefix in enumerate(typed_prefixes(task, every)):
            t0 = time.perf_counter()
            c = completer.complete(prefix, task["suffix"], max_new_tokens=max_new_tokens, mode="single-line", key=key)
            out.append({"task": task["id"], "ms": round((time.perf_counter() - t0) * 1000, 1), "cold": i == 0,
                        "prompt_tokens": c.prompt_tokens, "reused_tokens": c.reused_tokens,
                        "new_tokens": c.new_tokens})
        completer.forget(key)
    return out


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile (no interpolation: a latency that happened)."""
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


def summary(requests: list[dict]) -> dict:
    """p50 and p95 over all requests, the cold and the extending ones' medians, and how many of each."""
    if not requests:
        return {"requests": 0}
    ms = [r["ms"] for r in requests]
    cold = [r["ms"] for r in requests if r["cold"]]
    warm = [r["ms"] for r in requests if not r["cold"]]
    return {"requests": len(requests), "cold_requests": len(cold), "p50_ms": _quantile(ms, 0.5),
            "p95_ms": _quantile(ms, 0.95), "cold_p50_ms": statistics.median(cold) if cold else None,
            "extend_p50_ms": statistics.median(warm) if warm else None,
            "new_tokens": sum(r["new_tokens"] for r in requests)}
