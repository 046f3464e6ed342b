"""Next-line completion on held-out code: exact match and edit similarity, greedy, one line.

Tasks are drawn deterministically (seed) from the held-out corpus split: a file, a line in it with
real content (at least 4 non-blank characters, not a comment-only or bracket-only line, with at least
3 lines before it); the prompt is everything before that line (the editor's prefix-only view; the
PromptBuilder keeps the last `context_tokens`), the target is the line. Generation stops at the end
of the first line with content. Both sides are compared with surrounding whitespace stripped.
"""

from __future__ import annotations

import random

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
