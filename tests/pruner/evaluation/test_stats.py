"""Intervals and paired tests on cases small enough to check by hand (and against scipy when present)."""

import math

import pytest

from subcoder.pruner.evaluation import stats


def test_wilson_known_values():
    # 0 of 10: [0, 0.2775]; 5 of 10: [0.2366, 0.7634] (the textbook values)
    lo, hi = stats.wilson(0, 10).low, stats.wilson(0, 10).high
    assert lo == 0.0 and math.isclose(hi, 0.2775, abs_tol=5e-5)
    iv = stats.wilson(5, 10)
    assert iv.estimate == 0.5
    assert math.isclose(iv.low, 0.2366, abs_tol=5e-5) and math.isclose(iv.high, 0.7634, abs_tol=5e-5)
    assert stats.wilson(10, 10).high == 1.0
    assert (stats.wilson(0, 0).low, stats.wilson(0, 0).high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson(11, 10)


def test_cluster_bootstrap_two_files_by_hand():
    # Two files: one all right, one all wrong. A resample draws 2 files: (A,A), (A,B), (B,B) with
    # probabilities 1/4, 1/2, 1/4, so the means are 1, 0.5, 0 and the 95% bounds are 0 and 1.
    iv = stats.cluster_bootstrap([1, 1, 0, 0], ["a", "a", "b", "b"], resamples=4000)
    assert iv.estimate == 0.5 and (iv.low, iv.high) == (0.0, 1.0)


def test_cluster_bootstrap_is_wider_than_tasks_alone_when_files_cluster():
    values = [1] * 10 + [0] * 10 + [1] * 10 + [0] * 10
    files = ["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"] * 10
    by_file = stats.cluster_bootstrap(values, files)
    by_task = stats.cluster_bootstrap(values, list(range(40)))
    assert by_file.high - by_file.low > 2 * (by_task.high - by_task.low)


def test_cluster_bootstrap_weights_pool_like_perplexity():
    # window losses (mean per token) 1.0 over 3 tokens and 2.0 over 1 token: pooled (3 + 2) / 4
    iv = stats.cluster_bootstrap([1.0, 2.0], ["a", "b"], weights=[3, 1])
    assert math.isclose(iv.estimate, 1.25)
    assert iv.low >= 1.0 and iv.high <= 2.0


def test_bootstrap_is_seeded_and_constant_data_is_exact():
    vals, files = [0.1, 0.5, 0.9, 0.3], ["a", "a", "b", "c"]
    assert stats.cluster_bootstrap(vals, files, seed=3) == stats.cluster_bootstrap(vals, files, seed=3)
    iv = stats.cluster_bootstrap([0.4] * 5, list("abcde"))
    assert iv.low == iv.high == pytest.approx(0.4)


def test_paired_bootstrap_cancels_what_is_shared():
    a = [0.2, 0.9, 0.4, 0.7]
    assert (stats.paired_bootstrap(a, a, list("aabb")).low, stats.paired_bootstrap(a, a, list("aabb")).high) == (0, 0)
    b = [x - 0.1 for x in a]  # a constant gap: the interval is that gap exactly, however noisy a is
    iv = stats.paired_bootstrap(a, b, list("aabb"))
    assert iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1], [1, 2], ["a"])


def test_mcnemar_exact_by_hand():
    # 0 vs 5 discordant: p = 2 * (1/2)^5 = 0.0625; 1 vs 9: 2 * (1 + 10) / 1024
    r = stats.mcnemar_exact([False] * 5 + [True] * 3, [True] * 5 + [True] * 3)
    assert (r.only_a, r.only_b) == (0, 5) and r.p_value == pytest.approx(0.0625)
    a = [True] + [False] * 9 + [True, False]
    b = [False] + [True] * 9 + [True, False]
    assert stats.mcnemar_exact(a, b).p_value == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact([True, False], [True, False]).p_value == 1.0
    assert stats.mcnemar_exact([True] * 3 + [False] * 3, [False] * 3 + [True] * 3).p_value == 1.0
    assert 0 < stats.mcnemar_exact([True] * 700, [False] * 700).p_value < 1e-200  # big n: exact, no overflow


def test_minimum_detectable_effect_and_its_inverse():
    # (1.96 + 0.8416) * 0.5 / sqrt(300) = 0.0809
    assert stats.minimum_detectable_effect(300, 0.5) == pytest.approx(0.0809, abs=1e-4)
    assert stats.tasks_needed(0.0809, 0.5) in (299, 300, 301)
    assert stats.paired_binary_sd(0.25) == 0.5
    assert stats.paired_binary_sd(0.2, 0.1) == pytest.approx(math.sqrt(0.19))
    assert stats.minimum_detectable_effect(0, 0.5) == math.inf


def test_against_scipy_when_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    ci = scipy_stats.binomtest(7, 20).proportion_ci(method="wilson")
    iv = stats.wilson(7, 20)
    assert iv.low == pytest.approx(ci.low) and iv.high == pytest.approx(ci.high)
    assert stats.mcnemar_exact([True] * 3 + [False] * 11, [False] * 3 + [True] * 11).p_value == pytest.approx(
        scipy_stats.binomtest(3, 14).pvalue)


def _synthetic_rows(effect, *, noise=0.02, files=12, seeds=4, rng_seed=1):
    """log-ppl = calibration offset + language offset + effect * match + seed noise + file noise."""
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    langs = ("python", "java", "cpp")
    calibs = (*langs, "prose")
    lang_off = {lang: 1.0 + 0.5 * i for i, lang in enumerate(langs)}
    calib_off = {c: 0.1 * i for i, c in enumerate(calibs)}
    file_off = {lang: rng.normal(0, 0.3, files) for lang in langs}
    tokens = {lang: rng.integers(100, 500, files) for lang in langs}
    rows = []
    for c in calibs:
        for s in range(seeds):
            draw = rng.normal(0, noise)  # one calibration draw moves every file alike
            for lang in langs:
                losses = lang_off[lang] + calib_off[c] + effect * (c == lang) + draw + file_off[lang] \
                         + rng.normal(0, noise, files)
                rows.append({"calibration": c, "language": lang, "seed": s, "losses": losses, "tokens": tokens[lang]})
    return rows


def test_match_effect_recovers_a_known_effect():
    iv = stats.match_effect(_synthetic_rows(-0.08), resamples=300)
    assert math.isclose(iv.estimate, -0.08, abs_tol=0.02)
    assert iv.contains(-0.08) and iv.high < 0


def test_match_effect_of_nothing_has_an_interval_around_zero():
    iv = stats.match_effect(_synthetic_rows(0.0), resamples=300)
    assert iv.contains(0.0) and abs(iv.estimate) < 0.02


def test_match_design_names_the_factors_and_puts_match_last():
    rows = [{"calibration": c, "language": lang, "seed": s} for c in ("java", "python") for lang in ("java", "python")
            for s in (0, 1)]
    X, names = stats.match_design(rows)
    assert names == ["intercept", "calibration=python", "language=python", "seed=1", "match"]
    assert X.shape == (8, 5) and list(X[:, -1]) == [1, 1, 0, 0, 0, 0, 1, 1]


def test_seeds_files_diff_sees_seed_noise_that_files_alone_miss():
    import numpy as np

    rng = np.random.default_rng(0)
    files = rng.normal(2.0, 0.3, 20)
    tokens = np.full(20, 100.0)
    # every seed shifts all files alike: the seed spread is the only thing separating a and b
    a = np.array([files + d for d in (-0.05, 0.05, -0.04, 0.04, 0.0)])
    b = np.array([files + d for d in (0.03, -0.03, 0.02, -0.02, 0.0)])
    iv = stats.seeds_files_diff(a, b, tokens, resamples=1000)
    assert math.isclose(iv.estimate, 0.0, abs_tol=1e-12) and iv.low < -0.01 and iv.high > 0.01
    one = stats.seeds_files_diff(a[:1], b[:1], tokens, resamples=200)  # one seed each: a fixed shift, no spread
    assert math.isclose(one.estimate, -0.08) and math.isclose(one.low, -0.08) and math.isclose(one.high, -0.08)
    alone = stats.seeds_files_diff(a, None, tokens, resamples=500)
    assert alone.contains(2.0 + float(np.mean(files) - 2.0))
    with pytest.raises(ValueError):
        stats.seeds_files_diff(a, b[:, :3], tokens)
