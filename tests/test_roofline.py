"""Roofline %: the work model per precision, and the SUSPECT flag."""
import pytest

from harness.records import CellRecord
from harness.roofline import decode_limit_tps, roofline, side_suspect
from workloads.zoo import ZOO

CAL = {"device": "cpu", "host": "h", "memory_bandwidth_Bps": 20e9, "matmul_flops": {"fp32": 1e12, "fp16": 2e12}}


def record(precision, tps, dtype="fp32", ttft=1.0, model="smollm2-135m"):
    return CellRecord(cell_id="c", backend="b", backend_type="torch", model=model, dtype=dtype, batch=1,
                      prompt_len=64, gen_len=64, scenario="offline", status="ok", valid=True, precision=precision,
                      metrics={"decode_tps": {"median": tps}, "ttft_s": {"median": ttft}})


def test_decode_limit_is_weight_bytes_over_bandwidth_at_batch_1():
    a = ZOO["smollm2-135m"]
    limit = decode_limit_tps(a, "fp32", 1, 0, 0, 20e9)
    assert limit == pytest.approx(20e9 / a.decode_bytes_per_step("fp32"))


@pytest.mark.parametrize("precision,bytes_per_weight", [("fp32", 4), ("fp16", 2), ("q8_0", 34 / 32)])
def test_a_quantized_cell_is_judged_by_the_bytes_it_really_moves(precision, bytes_per_weight):
    a = ZOO["smollm2-135m"]
    r = roofline(record(precision, 40.0), CAL)
    kv = (64 + 32) * a.kv_bytes_per_token(precision)
    expect = 40.0 / (20e9 / (a.param_count() * bytes_per_weight + kv))
    assert r["decode_pct"] == pytest.approx(100 * expect, rel=1e-3)


def test_faster_than_physics_is_suspect():
    assert roofline(record("fp32", 500.0), CAL)["suspect"] is True
    assert roofline(record("fp32", 20.0), CAL)["suspect"] is False


def test_each_side_is_judged_on_its_own():
    fast_prefill = roofline(record("fp32", 20.0, ttft=1e-6), CAL)
    assert fast_prefill["prefill_pct"] > 100 and fast_prefill["decode_pct"] < 100
    assert fast_prefill["prefill_suspect"] is True and fast_prefill["decode_suspect"] is False
    assert fast_prefill["suspect"] is True  # either side, for older readers
    fast_decode = roofline(record("fp32", 500.0), CAL)
    assert (fast_decode["decode_suspect"], fast_decode["prefill_suspect"]) == (True, False)
    no_matmul = roofline(record("fp32", 500.0), dict(CAL, matmul_flops={}))
    assert "prefill_pct" not in no_matmul and "prefill_suspect" not in no_matmul
    assert side_suspect(no_matmul, "decode") and not side_suspect(no_matmul, "prefill")


@pytest.mark.parametrize("roof,decode,prefill", [
    ({"decode_pct": 80.0, "prefill_pct": 150.0, "suspect": True}, False, True),  # the pcts decide
    ({"decode_pct": 140.0, "suspect": True}, True, False),  # the decode pct explains the old flag
    ({"decode_pct": 80.0, "suspect": True}, False, True),  # only the prefill side can explain it
    ({"suspect": True}, True, True),  # nothing says which side: both are suspect
    ({"decode_pct": 80.0, "suspect": False}, False, False),
    ({}, False, False),
])
def test_records_from_before_the_per_side_flags_stay_readable(roof, decode, prefill):
    assert (side_suspect(roof, "decode"), side_suspect(roof, "prefill")) == (decode, prefill)


def test_unknown_without_calibration_or_model():
    assert roofline(record("fp32", 20.0), None) == {}
    assert roofline(record("fp32", 20.0, model="custom"), CAL) == {}


# --- issue 18: the decode ceiling is read bandwidth, with the calibration's noise margin ---

READ_CAL = dict(CAL, memory_bandwidth_Bps=20e9, read_bandwidth_Bps=30e9, read_noise=0.03)


def _decode_bytes(precision="fp32", batch=1, prompt=64, gen=64):
    """Bytes one decode step reads, by hand: weights (untied embedding skipped) + mean KV."""
    a = ZOO["smollm2-135m"]
    per_weight = {"fp32": 4, "fp16": 2}[precision]
    weights = (a.param_count() - (0 if a.tie_embeddings else a.vocab_size * a.dim)) * per_weight
    kv = batch * (prompt + gen / 2) * 2 * a.n_layers * a.kv_dim * per_weight
    return weights + kv


def test_decode_roofline_uses_read_not_copy_bandwidth():
    limit = 30e9 / _decode_bytes()
    r = roofline(record("fp32", 0.5 * limit), READ_CAL)
    assert r["decode_pct"] == pytest.approx(50.0, rel=1e-6)
    assert "copy bandwidth" not in r["basis"]


def test_a_cell_between_copy_and_read_ceilings_is_not_suspect():
    # the issue-18 case: faster than copy bandwidth allows, slower than read bandwidth
    copy_limit, read_limit = 20e9 / _decode_bytes(), 30e9 / _decode_bytes()
    tps = (copy_limit + read_limit) / 2
    assert roofline(record("fp32", tps), CAL)["decode_suspect"] is True  # old copy-only calibration
    assert roofline(record("fp32", tps), READ_CAL)["decode_suspect"] is False


@pytest.mark.parametrize("share,suspect", [(1.02, False), (1.0299, False), (1.0301, True), (1.2, True)])
def test_suspect_only_above_100_percent_plus_the_stated_noise_margin(share, suspect):
    read_limit = 30e9 / _decode_bytes()
    r = roofline(record("fp32", share * read_limit), READ_CAL)
    assert r["decode_margin_pct"] == pytest.approx(3.0)
    assert r["decode_suspect"] is suspect


def test_old_calibration_falls_back_to_copy_and_says_so():
    r = roofline(record("fp32", 1.0), CAL)
    assert "copy bandwidth" in r["basis"]
    assert r["decode_pct"] == pytest.approx(100 * 1.0 / (20e9 / _decode_bytes()), rel=1e-6)


def test_a_model_that_fits_in_the_last_level_cache_is_cache_resident():
    weights_mib = (ZOO["smollm2-135m"].decode_bytes_per_step("fp32")) / 2**20
    big_cache = dict(READ_CAL, llc_bytes=int((weights_mib + 1) * 2**20))
    small_cache = dict(READ_CAL, llc_bytes=int((weights_mib - 1) * 2**20))
    resident = roofline(record("fp32", 1e6), big_cache)  # absurdly fast: but from cache
    assert resident.get("decode_cache_resident") is True
    assert "decode_pct" not in resident and not resident.get("decode_suspect")
    assert "cache-resident" in resident["basis"]
    assert roofline(record("fp32", 1e6), small_cache)["decode_suspect"] is True
