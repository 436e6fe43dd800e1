"""Roofline %: the work model per precision, and the SUSPECT flag."""
import pytest

from harness.records import CellRecord
from harness.roofline import decode_limit_tps, roofline
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


def test_unknown_without_calibration_or_model():
    assert roofline(record("fp32", 20.0), None) == {}
    assert roofline(record("fp32", 20.0, model="custom"), CAL) == {}
