"""Kills mutants of harness/roofline.py (issue 19): the prefill and decode limits by hand,
SUSPECT at and around 100 %, and the calibration's fallbacks."""
import pytest

from harness.records import CellRecord
from harness.roofline import decode_ceiling, prefill_limit_s, roofline, side_suspect
from workloads.zoo import ZOO

A = ZOO["smollm2-135m"]


def record(precision="fp32", tps=1.0, ttft=1.0, batch=2, prompt=64, gen=32, dtype="fp32"):
    return CellRecord(cell_id="c", backend="b", backend_type="torch", model="smollm2-135m", dtype=dtype,
                      batch=batch, prompt_len=prompt, gen_len=gen, scenario="offline", status="ok", valid=True,
                      precision=precision, metrics={"decode_tps": {"median": tps}, "ttft_s": {"median": ttft}})


def _prefill_flops(batch, prompt):
    """By hand: 2 flops per multiply-add over every matmul weight + the head, plus q.k and p.v
    over the mean context prompt // 2 keys, per prompt token."""
    per_layer = A.dim * (A.dim + 2 * A.kv_dim) + A.dim * A.dim + 3 * A.dim * A.ffn_dim
    params = A.n_layers * per_layer + A.vocab_size * A.dim
    per_token = 2 * (params + 2 * A.n_layers * A.dim * (prompt // 2))
    return batch * prompt * per_token


def _decode_step_bytes(batch, prompt, gen, bytes_per_weight=4, kv_bytes=4):
    skipped = 0 if A.tie_embeddings else A.vocab_size * A.dim
    weights = int((A.param_count() - skipped) * bytes_per_weight)
    kv = batch * (prompt + gen / 2) * 2 * A.n_layers * A.kv_dim * kv_bytes
    return weights + kv


def test_prefill_limit_by_hand():
    assert prefill_limit_s(A, 3, 10, 1e12) == pytest.approx(_prefill_flops(3, 10) / 1e12, rel=1e-12)
    # an odd prompt: the mean context is prompt // 2 whole keys
    assert prefill_limit_s(A, 1, 11, 1e12) == pytest.approx(_prefill_flops(1, 11) / 1e12, rel=1e-12)


CAL = {"device": "d", "host": "h", "read_bandwidth_Bps": 40e9, "read_noise": 0.0,
       "matmul_flops": {"fp32": 1e12, "fp16": 4e12, "bf16": 3e12}}


@pytest.mark.parametrize("share,suspect", [(0.999, False), (1.0, False), (1.001, True)])
def test_prefill_suspect_at_and_around_100_percent(share, suspect):
    t_min = _prefill_flops(2, 64) / 1e12
    r = roofline(record(ttft=t_min / share), CAL)
    assert r["prefill_pct"] == pytest.approx(100 * share, rel=1e-9)
    assert r["prefill_suspect"] is suspect
    assert r["suspect"] is suspect


@pytest.mark.parametrize("share,suspect", [(0.999, False), (1.0, False), (1.001, True)])
def test_decode_suspect_at_and_around_100_percent_without_noise(share, suspect):
    limit = 2 * 40e9 / _decode_step_bytes(2, 64, 32)
    r = roofline(record(tps=share * limit, ttft=1e3), CAL)
    assert r["decode_limit_tps"] == pytest.approx(limit, rel=1e-12)
    assert r["decode_pct"] == pytest.approx(100 * share, rel=1e-9)
    assert r["decode_margin_pct"] == 0.0
    assert r["decode_suspect"] is suspect and r["prefill_suspect"] is False
    assert r["suspect"] is suspect


@pytest.mark.parametrize("precision,compute,peak", [("fp32", None, 1e12), ("fp16", None, 4e12), ("bf16", None, 3e12),
                                                    ("q8_0", "int8", None), ("q4_0", "int8", None),
                                                    ("int8", "int8", None), ("fp8", "fp8", None)])
def test_prefill_peak_is_the_precisions_own_and_none_for_quantized_without_theirs(precision, compute, peak):
    """A quantized cell computes in integer or FP8 units: without their calibrated rate (a
    calibration from before they were measured) no float peak bounds it, so no prefill
    figure (and no SUSPECT from it); the basis says why."""
    t = 2.0
    r = roofline(record(precision=precision, ttft=t), CAL)
    if peak is None:
        assert "prefill_pct" not in r and "prefill_suspect" not in r
        assert r["basis"] == f"calibration d on h (prefill: no calibrated {compute} matmul peak for {precision})"
        assert r["decode_pct"] > 0  # the decode side still has its roofline
    else:
        assert r["prefill_pct"] == pytest.approx(100 * _prefill_flops(2, 64) / peak / t, rel=1e-9)
        assert "prefill:" not in r["basis"]


@pytest.mark.parametrize("precision,peaks,ceiling,name", [
    # integer weights against the int8 rate when it is the fastest route...
    ("q8_0", {"fp32": 1e12, "int8": 5e12}, 5e12, "int8"),
    ("q4_0", {"fp32": 1e12, "int8": 5e12}, 5e12, "int8"),
    ("int8", {"fp32": 1e12, "int8": 5e12, "fp8": 9e12}, 5e12, "int8"),
    # ...and against a float rate when that is faster: a weight-only engine may dequantize
    ("int8", {"fp32": 1e12, "bf16": 7e12, "int8": 5e12}, 7e12, "bf16"),
    ("fp8", {"bf16": 1e15, "int8": 2e15, "fp8": 2e15}, 2e15, "fp8"),
    ("fp8", {"bf16": 3e15, "fp8": 2e15}, 3e15, "bf16"),
])
def test_a_quantized_cell_is_bounded_by_the_fastest_route_it_could_take(precision, peaks, ceiling, name):
    t = 2.0
    r = roofline(record(precision=precision, ttft=t), dict(CAL, matmul_flops=peaks))
    assert r["prefill_pct"] == pytest.approx(100 * _prefill_flops(2, 64) / ceiling / t, rel=1e-9)
    assert f"prefill: {precision} against the fastest calibrated matmul, {name} " in r["basis"]
    # just under the fastest route is not SUSPECT; just over it is
    fast = roofline(record(precision=precision, ttft=_prefill_flops(2, 64) / ceiling / 0.999),
                    dict(CAL, matmul_flops=peaks))
    slow_peak_only = roofline(record(precision=precision, ttft=_prefill_flops(2, 64) / ceiling * 0.999),
                              dict(CAL, matmul_flops=peaks))
    assert fast["prefill_suspect"] is False and slow_peak_only["prefill_suspect"] is True


@pytest.mark.parametrize("bad", ["5e12", True, -1.0, 0, float("inf"), float("nan"), None, [5e12]])
def test_a_calibrations_bad_int8_rate_is_no_rate(bad):
    """Calibrations travel in run.json from other labs: a rate that is not a positive finite
    number gives no prefill figure, never a crash or a percentage against nonsense."""
    r = roofline(record(precision="q8_0"), dict(CAL, matmul_flops={"fp32": 1e12, "int8": bad}))
    assert "prefill_pct" not in r and "no calibrated int8 matmul peak for q8_0" in r["basis"]
    r = roofline(record(precision="q8_0"), dict(CAL, matmul_flops={"fp32": "fast", "int8": 5e12}))
    assert r["prefill_pct"] == pytest.approx(100 * _prefill_flops(2, 64) / 5e12, rel=1e-9)


def test_no_prefill_side_without_a_time_to_first_token():
    rec = CellRecord(cell_id="c", backend="b", backend_type="torch", model="smollm2-135m", dtype="fp32", batch=1,
                     prompt_len=64, gen_len=32, scenario="offline", status="ok", valid=True, precision="fp32",
                     metrics={"decode_tps": {"median": 1.0}})
    r = roofline(rec, CAL)
    assert "prefill_pct" not in r and r["decode_pct"] > 0


def test_decode_ceiling_prefers_read_bandwidth_and_its_noise():
    assert decode_ceiling({"read_bandwidth_Bps": 5, "read_noise": 0.25, "memory_bandwidth_Bps": 9}) == (5.0, 0.25)
    assert decode_ceiling({"read_bandwidth_Bps": 5, "read_noise": 0}) == (5.0, 0.0)
    # a noise outside [0, 1) is not a margin: ignored
    assert decode_ceiling({"read_bandwidth_Bps": 5, "read_noise": 1}) == (5.0, 0.0)
    assert decode_ceiling({"read_bandwidth_Bps": 5, "read_noise": -0.1}) == (5.0, 0.0)
    assert decode_ceiling({"read_bandwidth_Bps": 5, "read_noise": "x"}) == (5.0, 0.0)
    # no (or a zero) read bandwidth: the copy bandwidth, with no margin
    assert decode_ceiling({"read_bandwidth_Bps": 0, "memory_bandwidth_Bps": 9, "read_noise": 0.5}) == (9.0, 0.0)
    assert decode_ceiling({"read_bandwidth_Bps": "x", "memory_bandwidth_Bps": 9}) == (9.0, 0.0)
    assert decode_ceiling({"memory_bandwidth_Bps": 0}) == (None, 0.0)
    assert decode_ceiling({"memory_bandwidth_Bps": "9"}) == (None, 0.0)
    assert decode_ceiling({}) == (None, 0.0)
    # any positive bandwidth counts, however small
    assert decode_ceiling({"read_bandwidth_Bps": 0.5}) == (0.5, 0.0)
    assert decode_ceiling({"memory_bandwidth_Bps": 0.5}) == (0.5, 0.0)
    assert type(decode_ceiling({"read_bandwidth_Bps": 5})[0]) is float
    assert type(decode_ceiling({"memory_bandwidth_Bps": 7})[0]) is float


def test_noise_margin_moves_the_decode_threshold_by_exactly_its_size():
    cal = dict(CAL, read_noise=0.1)
    limit = 2 * 40e9 / _decode_step_bytes(2, 64, 32)
    assert roofline(record(tps=1.099 * limit, ttft=1e3), cal)["decode_suspect"] is False
    assert roofline(record(tps=1.101 * limit, ttft=1e3), cal)["decode_suspect"] is True
    assert roofline(record(tps=1.101 * limit, ttft=1e3), cal)["decode_margin_pct"] == pytest.approx(10.0)


def test_cache_resident_boundary_is_weights_at_most_the_cache():
    weights = A.decode_bytes_per_step("fp32")
    at = roofline(record(), dict(CAL, llc_bytes=weights))
    assert at["decode_cache_resident"] is True and "decode_pct" not in at
    mib = weights / 2**20
    assert at["basis"] == (f"calibration d on h (decode: cache-resident, {mib:.1f} MiB of weights in a "
                           f"{weights / 2**20:.0f} MiB cache: no DRAM roofline)")
    big = roofline(record(), dict(CAL, llc_bytes=1024 * 2**20))
    assert big["basis"].endswith(f"{mib:.1f} MiB of weights in a 1024 MiB cache: no DRAM roofline)")
    below = roofline(record(), dict(CAL, llc_bytes=weights - 1))
    assert "decode_cache_resident" not in below and "decode_pct" in below
    assert "decode_pct" in roofline(record(), dict(CAL, llc_bytes=0))
    assert "decode_pct" in roofline(record(), dict(CAL, llc_bytes="big"))


def test_basis_names_the_calibration():
    r = roofline(record(), CAL)
    assert r["basis"] == "calibration d on h"
    copy = roofline(record(), {"device": "d", "host": "h", "memory_bandwidth_Bps": 1e9})
    assert copy["basis"] == ("calibration d on h (copy bandwidth: calibrated before read bandwidth was measured; "
                             "overstates %)")


def test_unknown_when_metrics_or_precision_missing():
    rec = record()
    rec.metrics = {"ttft_s": {"median": 1.0}}
    assert roofline(rec, CAL) == {}
    rec.metrics = {"decode_tps": {"mean": 1.0}, "ttft_s": {"median": 1.0}}
    assert roofline(rec, CAL) == {}
    assert roofline(record(precision="fp8_e9"), CAL) == {}
    assert roofline(record(), {}) == {}


def test_no_bandwidth_means_no_decode_side():
    r = roofline(record(), {"matmul_flops": {"fp32": 1e12}})
    assert "decode_pct" not in r and "decode_suspect" not in r
    assert r["prefill_suspect"] is False and r["suspect"] is False
    assert "prefill_pct" not in roofline(record(), {"read_bandwidth_Bps": 1e9})


@pytest.mark.parametrize("side,roof,expected", [
    ("prefill", {"prefill_pct": 100.0}, False),
    ("prefill", {"prefill_pct": 100.01}, True),
    ("decode", {"decode_pct": 100.0, "suspect": True}, False),
    ("decode", {"decode_suspect": False, "decode_pct": 500.0}, False),
    ("decode", {"decode_suspect": True, "decode_pct": 5.0}, True),
    # an old record: only the prefill pct is known, at exactly 100 % it cannot explain the flag
    ("decode", {"prefill_pct": 100.0, "suspect": True}, True),
    ("decode", {"prefill_pct": 100.01, "suspect": True}, False),
    ("prefill", {"decode_pct": None, "suspect": True}, True),
    ("decode", None, False),
])
def test_side_suspect_boundaries(side, roof, expected):
    assert side_suspect(roof, side) is expected


@pytest.mark.parametrize("peaks,basis", [
    ({"fp32": 1.79e11, "int8": 3.43e11}, "q8_0 against the fastest calibrated matmul, int8 343 GOP/s"),
    ({"fp32": 1.2345e12, "int8": 3.43e11}, "q8_0 against the fastest calibrated matmul, fp32 1.23e+03 GFLOP/s"),
])
def test_the_basis_states_the_ceiling_used_with_its_unit(peaks, basis):
    r = roofline(record(precision="q8_0"), dict(CAL, matmul_flops=peaks))
    assert r["basis"] == f"calibration d on h (prefill: {basis})"
