"""harness.stats on synthetic samples with known answers."""
import math

import numpy as np
import pytest

from harness import stats


def test_summary_of_known_samples():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0 and s.n == 5
    assert s.mean == pytest.approx(22.0)
    assert s.ci_low <= 3.0 <= s.ci_high
    assert s.method == "percentile" and s.confidence == 0.95


def test_degenerate_inputs():
    assert stats.summarize([]).median is None
    one = stats.summarize([5.0])
    assert one.median == 5.0 and one.ci_low is None and one.ci_high is None
    flat = stats.summarize([2.0, 2.0, 2.0])
    assert (flat.ci_low, flat.ci_high) == (2.0, 2.0)
    nan = stats.summarize([1.0, float("nan"), None, 3.0])
    assert nan.n == 2 and nan.median == 2.0


def test_seeded_and_deterministic():
    x = np.random.default_rng(3).normal(10, 1, 12)
    a, b = stats.summarize(x), stats.summarize(x)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    c, d = stats.summarize(x, statistic="mean", seed=1), stats.summarize(x, statistic="mean", seed=2)
    assert (c.ci_low, c.ci_high) != (d.ci_low, d.ci_high)  # the seed is really used


def _coverage(trials, n, method, statistic, rng):
    hits = 0
    for _ in range(trials):
        x = rng.normal(10.0, 1.0, n)  # median = mean = 10
        s = stats.summarize(x, method=method, statistic=statistic, n_resamples=999, seed=int(rng.integers(1 << 30)))
        hits += s.ci_low <= 10.0 <= s.ci_high
    return hits / trials


@pytest.mark.parametrize("method,statistic", [("percentile", "median"), ("BCa", "mean")])
def test_interval_coverage_is_near_nominal(method, statistic):
    # 200 seeded trials: the binomial sd of the coverage at p=0.95 is 1.5 %; the bootstrap
    # under-covers slightly at n=20, so accept 0.87..0.995.
    cov = _coverage(200, 20, method, statistic, np.random.default_rng(42))
    assert 0.87 <= cov <= 0.995, cov


def test_interval_narrows_with_more_repetitions():
    rng = np.random.default_rng(7)
    w5 = np.median([stats.summarize(rng.normal(10, 1, 5)).rel_half_width for _ in range(30)])
    w40 = np.median([stats.summarize(rng.normal(10, 1, 40)).rel_half_width for _ in range(30)])
    assert w40 < w5 / 2


def test_ratio_of_two_known_distributions():
    # A ~ logN(log 4, 0.1), B ~ logN(log 2, 0.1): ratio of medians is exactly 2.
    rng = np.random.default_rng(11)
    hits, trials = 0, 100
    for _ in range(trials):
        a = np.exp(rng.normal(math.log(4), 0.1, 15))
        b = np.exp(rng.normal(math.log(2), 0.1, 15))
        r = stats.ratio(a, b, n_resamples=999, seed=int(rng.integers(1 << 30)))
        assert r.method == "independent" and r.n_a == 15
        hits += r.ci_low <= 2.0 <= r.ci_high
    assert hits / trials >= 0.85
    a = np.exp(np.random.default_rng(1).normal(math.log(4), 0.1, 200))
    b = np.exp(np.random.default_rng(2).normal(math.log(2), 0.1, 200))
    r = stats.ratio(a, b)
    assert r.ratio == pytest.approx(2.0, rel=0.05)
    assert r.ci_low < r.ratio < r.ci_high and r.ci_high - r.ci_low < 0.2


def test_ratio_separates_clearly_different_configurations():
    rng = np.random.default_rng(5)
    r = stats.ratio(rng.normal(100, 3, 10), rng.normal(10, 0.3, 10))
    assert 9 < r.ci_low <= r.ratio <= r.ci_high < 11


def test_ratio_with_a_single_sample_side():
    r = stats.ratio([10.0], [4.0, 5.0, 6.0, 5.0, 5.0])
    assert r.ratio == pytest.approx(2.0)
    assert r.ci_low is not None and r.ci_low <= 2.0 <= r.ci_high
    assert stats.ratio([1.0], [2.0]).ci_low is None
    assert stats.ratio([], [1.0, 2.0]).ratio is None
    assert stats.ratio([1.0, 2.0], [0.0, 0.0]).ratio is None


def test_pooled_ratio_by_workload():
    base = [10.0, 50.0, 200.0, 1000.0]
    exact = stats.pooled_ratio([([3 * b] * 5, [b] * 5) for b in base])
    assert exact.ratio == pytest.approx(3.0) and exact.ci_low == pytest.approx(3.0) and exact.method == "pooled"
    assert exact.n_a == 4
    rng = np.random.default_rng(9)
    base = rng.uniform(1, 1000, 12)
    noisy = stats.pooled_ratio([(3 * b * np.exp(rng.normal(0, 0.05, 10)), b * np.exp(rng.normal(0, 0.05, 10)))
                                for b in base])
    assert noisy.ci_low < 3.0 < noisy.ci_high and noisy.ci_high / noisy.ci_low < 1.25
    assert stats.pooled_ratio([([2.0, 2.0], [])]).ratio is None  # a workload with an empty side is left out
    assert stats.pooled_ratio([([2.0], [1.0]), ([3.0, 3.3], [1.0, 1.1])]).ci_low is None  # its spread is unknown


def test_pooled_interval_carries_each_workloads_own_uncertainty():
    """Two workloads whose own intervals are wide: the pooled interval is not the narrow range
    of their two point ratios (what a resample of workloads alone gave: 1.19x [1.18, 1.21])."""
    rng = np.random.default_rng(5)
    pairs = [(118 * np.exp(rng.normal(0, 0.12, 10)), 100 * np.exp(rng.normal(0, 0.12, 10))),
             (121 * np.exp(rng.normal(0, 0.15, 10)), 100 * np.exp(rng.normal(0, 0.15, 10)))]
    own = [stats.ratio(a, b) for a, b in pairs]
    pooled = stats.pooled_ratio(pairs)
    assert pooled.ratio == pytest.approx(math.sqrt(own[0].ratio * own[1].ratio))
    assert pooled.ci_low <= pooled.ratio <= pooled.ci_high
    # widths of ratios compare in logs (relative widths): 1.1x-1.2x is as wide as 2.2x-2.4x
    assert math.log(pooled.ci_high / pooled.ci_low) >= min(math.log(r.ci_high / r.ci_low) for r in own)
    assert pooled.ci_low < min(r.ratio for r in own) and pooled.ci_high > max(r.ratio for r in own)
    assert stats.pooled_ratio(pairs) == pooled  # seeded: the same samples give the same interval


def test_bca_falls_back_where_undefined():
    s = stats.summarize([1.0, 1.0, 1.0, 1.0, 2.0], method="BCa")
    assert s.ci_low is not None and math.isfinite(s.ci_low)


def test_stability_and_recommended_repetitions():
    few = stats.stability(stats.summarize([10.0, 10.1, 9.9]))
    assert not few["stable"] and few["recommended_n"] >= stats.DEFAULT_REPETITIONS
    tight = stats.stability(stats.summarize(np.random.default_rng(0).normal(100, 0.5, 10)))
    assert tight["stable"], tight
    wide = stats.stability(stats.summarize(np.random.default_rng(0).normal(100, 20, 10)))
    assert not wide["stable"] and wide["recommended_n"] > 10
    assert stats.MIN_REPETITIONS == 5 and stats.DEFAULT_REPETITIONS == 10


def test_fmt_ci():
    assert stats.fmt_ci(None, 1) == "-"
    assert stats.fmt_ci(1.23456, 2.5) == "[1.23, 2.5]"
