"""Roofline %: measured speed against what the calibrated hardware could physically do.

decode: each step must read every weight once (the embedding table only if it is also
  the output head) plus each sequence's KV cache up to its position. Limit:
  tokens/s = batch / (bytes per step / bandwidth).
prefill: flops = batch x prompt_len x flops per token at the mean context (prompt/2).
  Limit: time = flops / calibrated matmul rate.
Over 100 % is physically impossible: flagged "suspect", never a win. Each side is judged
on its own ("decode_suspect", "prefill_suspect"): a prefill above its roofline says
nothing about the decode figures of the same cell. "suspect" (either side) stays for
readers of older records.
"""
from __future__ import annotations

from harness.records import CellRecord
from workloads.zoo import PRECISION_BYTES, ZOO, ModelArgs

SUSPECT_ABOVE = 1.0
SIDES = ("decode", "prefill")


def decode_limit_tps(args: ModelArgs, dtype: str, batch: int, prompt_len: int, gen_len: int, bandwidth: float) -> float:
    mean_context = prompt_len + gen_len / 2
    step_bytes = args.decode_bytes_per_step(dtype) + batch * mean_context * args.kv_bytes_per_token(dtype)
    return batch * bandwidth / step_bytes


def prefill_limit_s(args: ModelArgs, batch: int, prompt_len: int, flops_per_s: float) -> float:
    return batch * prompt_len * args.matmul_flops_per_token(context=prompt_len // 2) / flops_per_s


def roofline(record: CellRecord, calibration: dict | None) -> dict:
    """{"decode_pct", "prefill_pct", "decode_suspect", "prefill_suspect", "suspect", "basis"} for one ok
    batch record (a side without its calibrated peak has neither pct nor flag); {} when unknown."""
    args = ZOO.get(record.model)
    m = record.metrics
    if not calibration or args is None or not isinstance(m.get("decode_tps"), dict) \
            or "median" not in m["decode_tps"]:
        return {}
    # what the weights really are (a q8_0 cell of an fp32 suite moves q8_0 bytes)
    precision = record.shown_precision
    if precision not in PRECISION_BYTES:
        return {}
    matmul_dtype = precision if precision in ("fp32", "bf16", "fp16") else "fp16"
    out: dict = {"basis": f"calibration {calibration.get('device')} on {calibration.get('host')}"}
    bw = calibration.get("memory_bandwidth_Bps")
    if bw:
        limit = decode_limit_tps(args, precision, record.batch, record.prompt_len, record.gen_len, bw)
        out["decode_limit_tps"] = limit
        out["decode_pct"] = 100 * m["decode_tps"]["median"] / limit
    peak = (calibration.get("matmul_flops") or {}).get(matmul_dtype)
    if peak:
        t_min = prefill_limit_s(args, record.batch, record.prompt_len, peak)
        out["prefill_pct"] = 100 * t_min / m["ttft_s"]["median"]
    for side in SIDES:
        if f"{side}_pct" in out:
            out[f"{side}_suspect"] = out[f"{side}_pct"] > 100 * SUSPECT_ABOVE
    out["suspect"] = any(out.get(f"{side}_suspect", False) for side in SIDES)
    return out


def side_suspect(roof: dict | None, side: str) -> bool:
    """Is this side ("decode" or "prefill") of a record's roofline above 100 %?

    Records written before the per-side flags carry only "suspect" (either side): the
    side's own percentage decides where it is recorded; without it the old flag counts
    for this side unless the other side's percentage explains it."""
    roof = roof or {}
    if roof.get(f"{side}_suspect") is not None:
        return bool(roof[f"{side}_suspect"])
    if roof.get(f"{side}_pct") is not None:
        return roof[f"{side}_pct"] > 100 * SUSPECT_ABOVE
    other = next(s for s in SIDES if s != side)
    return bool(roof.get("suspect")) and not (roof.get(f"{other}_pct") or 0) > 100 * SUSPECT_ABOVE
