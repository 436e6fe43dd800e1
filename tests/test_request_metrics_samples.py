"""Request metrics carry the median and their per-request samples, as every other metric
does, so compare and verify can bootstrap them (an imported run and a harness run alike)."""
import statistics

from harness.scenarios import request_metrics as rm


def test_request_metric_has_median_and_samples():
    values = [0.3, 0.1, 0.2, float("nan"), None, 0.5]
    got = rm._pct(values)
    assert got["median"] == statistics.median([0.3, 0.1, 0.2, 0.5]) == 0.25
    assert sorted(got["samples"]) == [0.1, 0.2, 0.3, 0.5] and got["n"] == 4
    assert "samples_subsampled" not in got


def test_many_requests_keep_evenly_spaced_order_statistics():
    n = rm.MAX_SAMPLES * 3 + 7
    got = rm._pct([float(i) for i in range(n)])
    assert len(got["samples"]) == rm.MAX_SAMPLES and got["samples_subsampled"] is True
    assert got["samples"][0] == 0.0 and got["samples"][-1] == float(n - 1)
    assert abs(statistics.median(got["samples"]) - (n - 1) / 2) <= 2  # the subsample keeps the median


def test_gaps_keep_no_samples():
    assert "samples" not in rm._pct([0.1, 0.2], with_samples=False)
