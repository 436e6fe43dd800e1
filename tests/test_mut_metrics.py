"""Kills mutants of harness/metrics.py (issue 19): every README formula, expected values by hand."""
import math

import pytest

from harness.metrics import RepSample, Samples, cell_metrics, sample_summary


def test_sample_summary_by_hand():
    s = sample_summary([1.0, 2.0, 4.0, 9.0])
    assert s["mean"] == 4.0
    # sample sd (n-1): deviations -3,-2,0,5 -> 9+4+0+25 = 38 / 3
    assert s["sd"] == pytest.approx(math.sqrt(38 / 3))
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 9.0 and s["n"] == 4
    assert s["samples"] == [1.0, 2.0, 4.0, 9.0]


def test_sample_summary_single_value_has_zero_sd():
    s = sample_summary([5.0])
    assert s["sd"] == 0.0 and s["n"] == 1 and s["mean"] == 5.0


def test_cell_metrics_formulas():
    # batch 4, prompt 8, gen 5 (4 decode steps); TTFT 0.5 s, e2e 2.5 s -> decode 2 s
    s = Samples(batch=4, prompt_len=8, gen_len=5, reps=[
        RepSample(ttft_s=0.5, e2e_s=2.5, step_times_s=[0.25, 0.75, 1.5, 2.0]),
        RepSample(ttft_s=0.25, e2e_s=1.25, step_times_s=None),
    ])
    m = cell_metrics(s)
    assert m["prefill_tps"]["samples"] == pytest.approx([4 * 8 / 0.5, 4 * 8 / 0.25])
    assert m["decode_tps"]["samples"] == pytest.approx([4 * 4 / 2.0, 4 * 4 / 1.0])
    # TPOT divides by G-1 = 4, not G = 5
    assert m["tpot_s"]["samples"] == pytest.approx([0.5, 0.25])
    assert m["ttft_s"]["samples"] == pytest.approx([0.5, 0.25])
    assert m["e2e_s"]["samples"] == pytest.approx([2.5, 1.25])
    # ITL: gaps from decode start 0.25, 0.5, 0.75, 0.5 (the rep without step times adds none)
    itl = m["itl_s"]
    assert itl["n"] == 4
    gaps = sorted([0.25, 0.5, 0.75, 0.5])
    assert itl["p50"] == pytest.approx(0.5)
    # linear interpolation: p90 at rank 0.9*3 = 2.7 -> 0.5 + 0.7*(0.75-0.5)
    assert itl["p90"] == pytest.approx(gaps[2] + 0.7 * (gaps[3] - gaps[2]))
    assert itl["p99"] == pytest.approx(gaps[2] + 0.97 * (gaps[3] - gaps[2]))


def test_no_step_times_means_no_itl():
    s = Samples(batch=1, prompt_len=2, gen_len=3, reps=[RepSample(ttft_s=1.0, e2e_s=2.0)])
    assert "itl_s" not in cell_metrics(s)
    assert s.to_dict() == {"ttft_s": [1.0], "e2e_s": [2.0], "step_times_s": [None]}


def test_sample_summary_two_values_has_sample_sd_and_float_samples():
    # integer input (e.g. token counts) is stored as floats, so records serialise alike
    s = sample_summary([1, 3])
    assert s["sd"] == pytest.approx(math.sqrt(2.0))  # (1^2 + 1^2) / (2 - 1)
    assert all(type(x) is float for x in s["samples"])


def test_itl_gaps_start_at_decode_start():
    # steps finish at 0.2 s and 0.3 s after decode start: gaps 0.2 and 0.1
    s = Samples(batch=1, prompt_len=2, gen_len=3,
                reps=[RepSample(ttft_s=1.0, e2e_s=1.3, step_times_s=[0.2, 0.3])])
    itl = cell_metrics(s)["itl_s"]
    assert itl["p50"] == pytest.approx(0.15, rel=1e-9)
    assert itl["p90"] == pytest.approx(0.1 + 0.9 * 0.1, rel=1e-9)
    assert itl["n"] == 2
