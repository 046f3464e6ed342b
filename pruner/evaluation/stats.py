"""Intervals and paired tests for evaluation results; pure functions over plain numbers.

Tasks from one file are not independent (a model that knows a file's idiom gets several of its
lines), so intervals resample *files*, not tasks: the cluster bootstrap (Davison & Hinkley 1997,
ch. 3.8). Comparisons between two configurations are paired on the same tasks: the bootstrap of
the difference resamples files and keeps each task's two outcomes together, and binary outcomes
get the exact McNemar test (a two-sided binomial test on the discordant pairs). Used by the
frontier (`frontier.py`) and meant for the study's verdicts too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Hashable, Sequence

import numpy as np

RESAMPLES = 2000  # bootstrap resamples: percentile bounds at 95% move by well under 1% of the width beyond this


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for a proportion (better than the normal one near 0 and 1, and never
    outside [0, 1]); n = 0 gives the uninformative [0, 1]."""
    if n <= 0:
        return Interval(float("nan"), 0.0, 1.0, level)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = _z(level)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 and n successes one bound is exactly 0 or 1; the closed form leaves rounding dust there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, level)


def _group_sums(values, weights, groups) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the sum of weight*value and the sum of weights, groups in first-seen order."""
    index: dict[Hashable, int] = {}
    ids = np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (len(v) == len(w) == len(ids)):
        raise ValueError("values, weights and groups must have the same length")
    if len(v) == 0:
        raise ValueError("no values")
    return np.bincount(ids, w * v, minlength=len(index)), np.bincount(ids, w, minlength=len(index))


def group_means(values: Sequence[float], groups: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Per group (first-seen order): the mean of its values and how many there are, e.g. per-file rates
    and task counts: the (files,) form `seeds_files_diff` resamples."""
    sums, counts = _group_sums(values, None, groups)
    return sums / counts, counts


def _resampled_means(sums, totals, resamples: int, seed: int) -> np.ndarray:
    """The weighted mean of each bootstrap resample of the groups (drawn with replacement, as many
    as there are): a resample is a vector of counts per group, multinomial(G, 1/G each)."""
    g = len(sums)
    counts = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=resamples)
    den = counts @ totals
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ sums) / den


def _percentile(estimate: float, draws: np.ndarray, level: float) -> Interval:
    draws = draws[np.isfinite(draws)]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(lo), float(hi), level)


def cluster_bootstrap(values: Sequence[float], groups: Sequence[Hashable], *, weights: Sequence[float] | None = None,
                      resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile interval of the (weighted) mean of `values`, resampling whole groups (files).

    `weights` make it a ratio estimator: per-window mean losses weighted by their token counts give
    the pooled loss per token, as perplexity is defined."""
    sums, totals = _group_sums(values, weights, groups)
    estimate = sums.sum() / totals.sum()
    return _percentile(estimate, _resampled_means(sums, totals, resamples, seed), level)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], groups: Sequence[Hashable], *,
                     weights: Sequence[float] | None = None, resamples: int = RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> Interval:
    """Interval of mean(a - b) over the same tasks, resampling files with both outcomes of each task
    kept together (so what the two configurations share cancels out)."""
    if len(a) != len(b):
        raise ValueError("a and b must score the same tasks")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return cluster_bootstrap(diff, groups, weights=weights, resamples=resamples, seed=seed, level=level)


@dataclass(frozen=True)
class McNemar:
    only_a: int  # tasks a got right and b wrong
    only_b: int  # tasks b got right and a wrong
    p_value: float


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact McNemar test: under no difference each discordant pair is a fair coin, so the two-sided
    p-value is twice the binomial tail of the smaller count (at most 1); no discordant pair gives 1."""
    if len(a) != len(b):
        raise ValueError("a and b must score the same tasks")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = Fraction(sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)), 2**n)
    return McNemar(only_a, only_b, float(min(Fraction(1), 2 * tail)))


def minimum_detectable_effect(n: int, sd: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided test at `alpha` detects with `power`, from `n`
    paired tasks whose per-task differences have standard deviation `sd` (normal approximation)."""
    if n <= 0:
        return float("inf")
    return (_z(1 - alpha) + NormalDist().inv_cdf(power)) * sd / math.sqrt(n)


def tasks_needed(d: float, sd: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Paired tasks needed to detect a true mean difference `d` (the inverse of the above)."""
    if d <= 0:
        raise ValueError("d must be positive")
    return math.ceil(((_z(1 - alpha) + NormalDist().inv_cdf(power)) * sd / d) ** 2)


def paired_binary_sd(discordant: float, d: float = 0.0) -> float:
    """Standard deviation of a paired 0/1 difference (values -1, 0, +1) when a share `discordant` of
    the tasks differ and the mean difference is `d`: sqrt(discordant - d^2)."""
    return math.sqrt(max(discordant - d * d, 0.0))


# --------------------------------------------------------------------------- repeated calibration draws
#
# The study has two sources of noise: which files were evaluated (the same files for every sub-model
# of one language) and which files the calibration drew (a seed per sub-model). Its intervals resample
# both: files with one set of counts shared by every sub-model (so what the sub-models share cancels
# out), and each calibration's seeds on their own (its draws are independent of the others').


def _file_counts(n_files: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.multinomial(n_files, np.full(n_files, 1.0 / n_files), size=resamples)  # (R, F)


def _seed_means(per_seed: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, F): the mean over a resample of the seeds (rows of `per_seed`, drawn with replacement)."""
    s = per_seed.shape[0]
    pick = rng.integers(0, s, size=(resamples, s))
    return per_seed[pick].mean(axis=1)


def seeds_files_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]] | None, tokens: Sequence[float], *,
                     resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of (mean loss of a) - (mean loss of b), or of a's mean loss alone when b is None.

    `a` and `b` are (seeds, files) arrays of per-token losses on the same files (any number of seeds,
    one seed allowed: then only the files vary); `tokens` weighs each file (the pooled loss per token).
    A resample draws the files once for both and each side's seeds on their own."""
    A = np.asarray(a, dtype=np.float64)
    B = None if b is None else np.asarray(b, dtype=np.float64)
    w = np.asarray(tokens, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != len(w) or (B is not None and (B.ndim != 2 or B.shape[1] != len(w))):
        raise ValueError("a and b must be (seeds, files) arrays over the files `tokens` weighs")
    rng = np.random.default_rng(seed)
    counts = _file_counts(len(w), resamples, rng) * w  # (R, F) weights per resample
    total = counts.sum(axis=1)

    def pooled(x: np.ndarray) -> np.ndarray:
        return (_seed_means(x, resamples, rng) * counts).sum(axis=1) / total

    estimate = float(A.mean(axis=0) @ w / w.sum())
    draws = pooled(A)
    if B is not None:
        estimate -= float(B.mean(axis=0) @ w / w.sum())
        draws = draws - pooled(B)
    return _percentile(estimate, draws, level)


def ols(design: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) least-squares coefficients; a rank-deficient design gets the minimum-norm solution."""
    X, Y = np.asarray(design, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if weights is not None:
        root = np.sqrt(np.asarray(weights, dtype=np.float64))
        X, Y = X * root[:, None], Y * root
    return np.linalg.lstsq(X, Y, rcond=None)[0]


def match_design(rows: Sequence[dict]) -> tuple[np.ndarray, list[str]]:
    """The design of log-ppl ~ calibration + language + match + seed for rows {calibration, language,
    seed}: an intercept, one indicator per level after the first of each factor, and `match` (the
    calibration is the evaluated language) last."""
    cols: list[np.ndarray] = [np.ones(len(rows))]
    names = ["intercept"]
    for factor in ("calibration", "language", "seed"):
        levels = sorted({str(r[factor]) for r in rows})
        for level in levels[1:]:
            cols.append(np.array([float(str(r[factor]) == level) for r in rows]))
            names.append(f"{factor}={level}")
    cols.append(np.array([float(r["calibration"] == r["language"]) for r in rows]))
    names.append("match")
    return np.column_stack(cols), names


def match_effect(rows: Sequence[dict], *, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """The language-match effect on log-perplexity (negative: own-language calibration lowers it), with a
    cluster-bootstrap interval.

    Each row is one sub-model evaluated on one language: {calibration, language, seed, losses, tokens},
    `losses` the per-token loss on each of that language's evaluation files and `tokens` their weights
    (the same files, in the same order, for every row of a language). A resample draws each language's
    files and the set of seeds with replacement, recomputes every row's pooled loss, and refits."""
    rows = list(rows)
    X, names = match_design(rows)
    j = names.index("match")
    if not X[:, j].any() or X[:, j].all():
        raise ValueError("the match effect needs rows with and without a match")
    y = np.array([np.dot(r["losses"], r["tokens"]) / np.sum(r["tokens"]) for r in rows])
    estimate = float(ols(X, y)[j])
    rng = np.random.default_rng(seed)
    languages = sorted({r["language"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    draws = np.empty(resamples)
    for k in range(resamples):
        file_w = {}
        for lang in languages:
            tok = np.asarray(next(r["tokens"] for r in rows if r["language"] == lang), dtype=np.float64)
            file_w[lang] = rng.multinomial(len(tok), np.full(len(tok), 1.0 / len(tok))) * tok
        picked = rng.integers(0, len(seeds), size=len(seeds))
        seed_w = {s: float(np.sum(picked == i)) for i, s in enumerate(seeds)}
        yk = np.array([np.dot(r["losses"], file_w[r["language"]]) / max(file_w[r["language"]].sum(), 1e-12)
                       for r in rows])
        wk = np.array([seed_w[r["seed"]] for r in rows])
        keep = wk > 0
        draws[k] = ols(X[keep], yk[keep], wk[keep])[j]
    return _percentile(estimate, draws, level)
