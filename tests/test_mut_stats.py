"""Kills mutants of harness/stats.py's judging helpers (issue 19): the median of finite samples,
the interval's relative half-width, the stability rule, and the percentile interval against
numpy's own quantile (an independent implementation of the same "linear" rule)."""
import math

import numpy as np
import pytest

from harness import stats
from harness.stats import Summary


def test_median_ignores_none_and_non_finite():
    assert stats.median([3.0, None, float("nan"), 1.0, float("inf"), 2.0]) == 2.0
    assert stats.median([4.0, 1.0]) == 2.5
    assert stats.median([]) is None and stats.median(None) is None
    assert stats.median([None, float("nan")]) is None
    assert type(stats.median([1, 2, 4])) is float


def summary(median, lo, hi, n=10):
    return Summary(median=median, mean=median, sd=0.0, n=n, ci_low=lo, ci_high=hi, confidence=0.95,
                   method="percentile")


def test_rel_half_width():
    assert summary(10.0, 9.0, 12.0).rel_half_width == pytest.approx(0.15)
    assert summary(-10.0, -12.0, -9.0).rel_half_width == pytest.approx(0.15)  # |median|
    assert summary(0.0, -1.0, 1.0).rel_half_width is None
    assert summary(None, 1.0, 2.0).rel_half_width is None
    assert summary(1.0, None, 2.0).rel_half_width is None
    assert summary(1.0, 1.0, None).rel_half_width is None
    assert summary(10.0, 9.0, 12.0).to_dict()["rel_half_width"] == pytest.approx(0.15)


@pytest.mark.parametrize("hw,stable", [(0.49, True), (0.5, True), (0.51, False)])
def test_stable_at_the_5_percent_target(hw, stable):
    # median 10: a half-width of 0.5 is exactly 5 %
    s = stats.stability(summary(10.0, 10.0 - hw, 10.0 + hw, n=8))
    assert s["stable"] is stable and s["n"] == 8
    assert s["rel_half_width"] == pytest.approx(hw / 10)
    if stable:
        assert s["recommended_n"] == 8
        assert s["reason"] == f"interval within +-{hw * 10:.1f} % of the median"
    else:
        assert s["recommended_n"] == math.ceil(8 * (0.051 / 0.05) ** 2)  # 9
        assert s["reason"] == ("interval +-5.1 % of the median (target +-5 %): about 9 repetitions would reach it")


def test_unstable_recommends_n_by_inverse_square_root():
    # +-10 % at n = 10: 10 x (0.10 / 0.05)^2 = 40
    s = stats.stability(summary(10.0, 9.0, 11.0, n=10))
    assert s["stable"] is False and s["recommended_n"] == 40
    # the cap, and what is said beyond it
    s = stats.stability(summary(10.0, 0.0, 20.0, n=10), max_recommended=100)
    assert s["recommended_n"] == 100  # 10 x 20^2 = 4000 > 100
    assert s["reason"].endswith("more than 100 repetitions would be needed: make the machine quieter instead")
    s = stats.stability(summary(10.0, 9.0, 11.0, n=10), max_recommended=40)
    assert s["recommended_n"] == 40 and s["reason"].endswith("about 40 repetitions would reach it")


def test_too_few_repetitions():
    s = stats.stability(summary(10.0, 9.99, 10.01, n=4))
    assert s == {"stable": False, "n": 4, "rel_half_width": pytest.approx(0.001), "recommended_n": 10,
                 "reason": "4 repetition(s): at least 5 are needed for a 95 % interval that holds its coverage"}
    # wide as well as few: the 1/sqrt(n) figure when it is larger than the default
    s = stats.stability(summary(10.0, 5.0, 15.0, n=4))  # +-50 %: 4 x 100 = 400
    assert s["recommended_n"] == 400
    assert stats.stability(summary(10.0, 5.0, 15.0, n=4), max_recommended=50)["recommended_n"] == 50
    # at exactly min_repetitions the rule is the half-width's
    assert stats.stability(summary(10.0, 9.99, 10.01, n=5))["stable"] is True
    s = stats.stability(summary(10.0, 9.9, 10.1, n=2), min_repetitions=3)
    assert s["recommended_n"] == 10 and s["reason"].startswith("2 repetition(s): at least 3 are needed")
    # few and only slightly wide: the default wins
    assert stats.stability(summary(10.0, 9.0, 11.0, n=2))["recommended_n"] == 10  # 2 x 4 = 8 < 10
    # a custom target
    assert stats.stability(summary(10.0, 9.0, 11.0, n=10), target_rel_half_width=0.1)["stable"] is True


def test_no_interval():
    s = stats.stability(summary(0.0, -1.0, 1.0, n=6))
    assert s == {"stable": False, "n": 6, "rel_half_width": None, "recommended_n": 6,
                 "reason": "no interval (median is zero or undefined)"}
    s = stats.stability(summary(None, None, None, n=2))
    assert s["rel_half_width"] is None and s["recommended_n"] == 10


@pytest.mark.parametrize("n,conf", [(2000, 0.95), (10, 0.95), (7, 0.9), (1, 0.95), (4, 0.5), (999, 0.99)])
def test_percentile_interval_matches_numpy_linear_quantile(n, conf):
    rng = np.random.default_rng(n)
    theta = rng.normal(size=(3, n))
    lows, highs = stats._percentile_interval(theta, conf)
    a = (1 - conf) / 2
    for r in range(3):
        assert lows[r] == pytest.approx(np.quantile(theta[r], a, method="linear"), rel=1e-12, abs=1e-12)
        assert highs[r] == pytest.approx(np.quantile(theta[r], 1 - a, method="linear"), rel=1e-12, abs=1e-12)


def test_percentile_interval_has_none_where_a_row_holds_nan():
    theta = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, np.nan, 3.0, 4.0], [np.inf, 1.0, 1.0, 1.0]])
    lows, highs = stats._percentile_interval(theta, 0.5)
    assert lows[0] == pytest.approx(np.quantile([1, 2, 3, 4], 0.25)) and highs[0] == pytest.approx(3.25)
    assert lows[1] is None and highs[1] is None
    # an infinite end (0.75 x 1 + 0.25 x inf) drops the whole interval, the finite low end too
    assert lows[2] is None and highs[2] is None


def test_quantile_rule_positions_by_hand():
    # n = 10, 95 %: alpha 0.025 -> 0.025 x 10 + 0.975 = 1.225 -> j = 0, j + 1 = 1, g = 0.225;
    # 0.975 x 10 + 0.025 = 9.775 -> j = 8, j + 1 = 9, g = 0.775
    j, jp1, g = stats._quantile_rule(10, 0.95)
    assert j.tolist() == [0, 8] and jp1.tolist() == [1, 9]
    assert g.tolist() == pytest.approx([0.225, 0.775])
    # n = 1: every position clips to the only value, and the low tail has no weight
    j, jp1, g = stats._quantile_rule(1, 0.95)
    assert j.tolist() == [0, 0] and jp1.tolist() == [0, 0]
    # 0.025 + 0.975 = 1.0 -> j = 0, g = 0; 0.975 + 0.025 = 1.0 -> the same
    assert g.tolist() == pytest.approx([0.0, 0.0])


def test_default_recommendation_cap_is_1000():
    s = stats.stability(summary(10.0, 0.0, 20.0, n=10))  # 10 x 20^2 = 4000 wanted
    assert s["recommended_n"] == 1000
    assert s["reason"].endswith("more than 1000 repetitions would be needed: make the machine quieter instead")


def test_infinite_resamples_give_no_interval_and_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 x inf inside the interpolation must stay silent
        lows, highs = stats._percentile_interval(np.array([[np.inf], [2.0]]), 0.95)
    assert lows == [None, 2.0] and highs == [None, 2.0]


def test_a_nan_row_has_no_interval_even_where_the_quantiles_miss_it():
    # 8 resamples, 50 %: the ends sit at positions 2.25 and 5.75; the NaN sorts last (index 7)
    theta = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, np.nan], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    lows, highs = stats._percentile_interval(theta, 0.5)
    assert lows[0] is None and highs[0] is None
    assert lows[1] == pytest.approx(np.quantile(theta[1], 0.25)) and highs[1] == pytest.approx(np.quantile(theta[1], 0.75))


def test_median_of_an_odd_count_is_the_middle_value():
    assert stats.median([5.0, 1.0, 4.0, 2.0, 3.0]) == 3.0
    assert stats.median([7.0]) == 7.0


def test_summaries_see_only_the_finite_samples():
    s = stats.summarize([1.0, None, float("nan"), 2.0, float("inf"), 3.0])
    assert s.n == 3 and s.median == 2.0 and s.mean == 2.0
    empty = stats.summarize(None)
    assert empty.n == 0 and empty.median is None and empty.ci_low is None
    assert stats.summarize([None, float("nan")]).n == 0
