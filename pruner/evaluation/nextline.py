"""Next-line completion on held-out code: exact match and edit similarity, greedy, one line.

Tasks are drawn deterministically (seed) from the held-out corpus split: a file, a line in it with
real content (at least 4 non-blank characters, not a comment-only or bracket-only line, with at least
3 lines before it); the prompt is everything before that line (the editor's prefix-only view; the
PromptBuilder keeps the last `context_tokens`), the target is the line. Generation stops at the end
of the first line with content. Both sides are compared with surrounding whitespace stripped.

`spread_tasks` and `score` are the frontier's version, built for intervals: several lines from
*every* held-out file (round-robin, so n tasks cover as many files as the split has), each task
carrying its file so the bootstrap can resample files, the text after the line as the FIM suffix,
and scoring through the engine's `Completer` in a given FIM layout, one result per task, resumable.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from .decode import BatchGenerator, Request, stop_after_line

_COMMENT = ("#", "//", "/*", "*", "--", '"""', "'''")


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(prediction: str, target: str) -> float:
    """1 - Levenshtein / max length, on stripped strings; two empty strings are identical (1.0)."""
    a, b = prediction.strip(), target.strip()
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def exact_match(prediction: str, target: str) -> bool:
    return prediction.strip() == target.strip()


def _good_line(line: str) -> bool:
    s = line.strip()
    return len(s) >= 4 and not s.startswith(_COMMENT) and any(c.isalnum() for c in s)


def tasks(language: str, n: int, seed: int = 0) -> list[dict]:
    from subcoder.pruner.calibration import corpus_documents

    docs = corpus_documents(language, "heldout")
    rng = random.Random(f"nextline:{seed}:{language}")
    order = list(range(len(docs)))
    rng.shuffle(order)
    out = []
    # At most 2 lines per file, cycling over the files, so a few big files do not dominate.
    for rnd in range(2):
        for i in order:
            if len(out) >= n:
                return out
            lines = docs[i]["text"].split("\n")
            candidates = [k for k in range(3, len(lines)) if _good_line(lines[k])]
            if len(candidates) <= rnd:
                continue
            k = random.Random(f"{seed}:{language}:{i}:{rnd}").choice(candidates)
            out.append({"id": f"{docs[i]['package']}:{docs[i]['path']}:{k + 1}",
                        "prefix": "\n".join(lines[:k]) + "\n", "target": lines[k]})
    return out


def nextline(gen: BatchGenerator, language: str, *, n: int = 100, seed: int = 0, batch_size: int = 8,
             max_new_tokens: int = 48, bar=None) -> dict:
    items = tasks(language, n, seed)
    reqs = [Request(t["prefix"], "", stop_after_line, max_new_tokens) for t in items]
    outs = gen.generate(reqs, batch_size=batch_size, progress=bar)
    em = [exact_match(o.text, t["target"]) for o, t in zip(outs, items)]
    es = [edit_similarity(o.text, t["target"]) for o, t in zip(outs, items)]
    return {"exact_match": sum(em) / len(items) if items else None,
            "edit_similarity": sum(es) / len(items) if items else None, "n": len(items)}


def spread_tasks(language: str, n: int, seed: int = 0, documents: list[dict] | None = None) -> list[dict]:
    """`n` next-line tasks spread over every held-out file: each file's candidate lines are sampled
    without replacement and taken one per file per round, so no file gives more than ceil(n / files)
    (a big file cannot dominate), and the result is the same for a given seed however large n is
    (the first n of a larger draw). Each task: id, file, package, prefix, suffix (the text after the
    line, for FIM layouts), target."""
    if documents is None:
        from subcoder.pruner.calibration import corpus_documents

        documents = corpus_documents(language, "heldout")
    order = list(range(len(documents)))
    random.Random(f"spread:{seed}:{language}").shuffle(order)
    picks: list[list[int]] = []
    for i in order:
        lines = documents[i]["text"].split("\n")
        candidates = [k for k in range(3, len(lines)) if _good_line(lines[k])]
        random.Random(f"spread:{seed}:{language}:{i}").shuffle(candidates)
        picks.append(candidates)
    out: list[dict] = []
    for rnd in range(max((len(p) for p in picks), default=0)):
        for i, candidates in zip(order, picks):
            if len(out) >= n:
                return out
            if rnd >= len(candidates):
                continue
            doc, k = documents[i], candidates[rnd]
            lines = doc["text"].split("\n")
            file = f"{doc['package']}:{doc['path']}"
            out.append({"id": f"{file}:{k + 1}", "file": file, "package": doc["package"],
                        "prefix": "\n".join(lines[:k]) + "\n", "suffix": "\n".join(lines[k + 1:]),
                        "target": lines[k]})
    return out


def coverage(tasks_: list[dict]) -> dict:
    """How many tasks, files and packages a task list draws on, and the most tasks from one file."""
    per_file: dict[str, int] = {}
    for t in tasks_:
        per_file[t["file"]] = per_file.get(t["file"], 0) + 1
    return {"tasks": len(tasks_), "files": len(per_file), "packages": len({t["package"] for t in tasks_}),
            "max_per_file": max(per_file.values(), default=0)}


def score(complete: Callable[[str, str], str], tasks_: list[dict], *, layout: str, done: list[dict] | None = None,
          save: Callable[[list[dict]], None] | None = None, save_every: int = 10, bar=None) -> list[dict]:
    """One result per task: {id, file, exact, similarity, prediction, seconds}. `complete(prefix, suffix)` is
    the engine's single-line completion (the suffix is "" for the prefix-only layout); `done` are
    results kept from an interrupted run (matched by id), `save` is called with all results so far
    every `save_every` tasks and at the end."""
    kept = {r["id"]: r for r in (done or [])}
    results: list[dict] = []
    for i, t in enumerate(tasks_):
        r = kept.get(t["id"])
        if r is None:
            started = time.perf_counter()
            text = complete(t["prefix"], t["suffix"] if layout != "prefix" else "")
            r = {"id": t["id"], "file": t["file"], "exact": exact_match(text, t["target"]),
                 "similarity": round(edit_similarity(text, t["target"]), 4), "prediction": text,
                 "seconds": round(time.perf_counter() - started, 3)}
        results.append(r)
        if bar is not None:
            bar(1)
        if save is not None and (i + 1) % save_every == 0:
            save(results)
    if save is not None:
        save(results)
    return results
