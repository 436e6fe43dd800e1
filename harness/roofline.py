"""Roofline %: measured speed against what the calibrated hardware could physically do.

decode: each step must read every weight once (the embedding table only if it is also
  the output head) plus each sequence's KV cache up to its position. Limit:
  tokens/s = batch / (bytes per step / read bandwidth). Decode only reads, so the ceiling
  is the calibrated *read* bandwidth (harness/calibrate.py); calibrations made before it
  was measured fall back to copy bandwidth, and say so in the basis.
prefill: flops = batch x prompt_len x flops per token at the mean context (prompt/2).
  Limit: time = flops / calibrated matmul rate.
Over 100 % (plus, for decode, the calibration's own noise margin) is physically
impossible: flagged "suspect", never a win. Each side is judged on its own
("decode_suspect", "prefill_suspect"): a prefill above its roofline says nothing about
the decode figures of the same cell. "suspect" (either side) stays for readers of older
records.
A model whose decode bytes fit in the device's last-level cache is "cache-resident": the
DRAM roofline does not apply to it, so it gets no decode % and no decode flag.
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


def decode_ceiling(calibration: dict) -> tuple[float | None, float]:
    """(bytes/s decode can read, relative noise margin of that figure)."""
    read = calibration.get("read_bandwidth_Bps")
    if isinstance(read, (int, float)) and read > 0:
        noise = calibration.get("read_noise")
        return float(read), float(noise) if isinstance(noise, (int, float)) and 0 <= noise < 1 else 0.0
    copy = calibration.get("memory_bandwidth_Bps")
    return (float(copy), 0.0) if isinstance(copy, (int, float)) and copy > 0 else (None, 0.0)


#: what a quantized precision's matmuls compute in: integer weights (int8, llama.cpp's q8_0 and
#: q4_0) meet int8-quantized activations in integer multiply-adds; FP8 weights use FP8 units
QUANTIZED_COMPUTE = {"int8": "int8", "q8_0": "int8", "q4_0": "int8", "fp8": "fp8"}
FLOAT_COMPUTE = ("fp32", "bf16", "fp16")


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")


def prefill_ceiling(precision: str, peaks) -> tuple[float | None, str]:
    """(the matmul rate that bounds this precision's prefill, what the basis says about it).

    A float cell: its own dtype's calibrated rate. A quantized cell: the fastest of its
    compute type's calibrated rate and every calibrated float rate, because a weight-only
    engine may dequantize and multiply in float instead (torch int8 on a CPU does), and a
    ceiling must bound every route, never flag an honest one. Without its compute type's
    rate (calibrations before int8/FP8 were measured; FP8 on a CPU) there is no bound: no
    float peak can stand in for integer units that may be faster."""
    peaks = peaks if isinstance(peaks, dict) else {}
    if precision in FLOAT_COMPUTE:
        own = peaks.get(precision)
        return (float(own), "") if _positive(own) else (None, "")
    compute = QUANTIZED_COMPUTE.get(precision)
    if compute is None or not _positive(peaks.get(compute)):
        return None, f"no calibrated {compute or precision} matmul peak for {precision}"
    candidates = {k: float(peaks[k]) for k in (compute, *FLOAT_COMPUTE) if _positive(peaks.get(k))}
    best = max(candidates, key=candidates.__getitem__)
    return candidates[best], f"{precision} against the fastest calibrated matmul, {best} " \
                             f"{candidates[best] / 1e9:.3g} G{'OP' if best == 'int8' else 'FLOP'}/s"


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
    out: dict = {"basis": f"calibration {calibration.get('device')} on {calibration.get('host')}"}
    bw, margin = decode_ceiling(calibration)
    if bw:
        weight_bytes = args.decode_bytes_per_step(precision)
        llc = calibration.get("llc_bytes")
        if isinstance(llc, (int, float)) and llc > 0 and weight_bytes <= llc:
            out["decode_cache_resident"] = True
            out["basis"] += f" (decode: cache-resident, {weight_bytes / 2**20:.1f} MiB of weights in a " \
                            f"{llc / 2**20:.0f} MiB cache: no DRAM roofline)"
        else:
            limit = decode_limit_tps(args, precision, record.batch, record.prompt_len, record.gen_len, bw)
            out["decode_limit_tps"] = limit
            out["decode_pct"] = 100 * m["decode_tps"]["median"] / limit
            out["decode_margin_pct"] = 100 * margin
            if "read_bandwidth_Bps" not in calibration:
                out["basis"] += " (copy bandwidth: calibrated before read bandwidth was measured; overstates %)"
    peak, why = prefill_ceiling(precision, calibration.get("matmul_flops"))
    if why:
        out["basis"] += f" (prefill: {why})"
    ttft = m.get("ttft_s")
    if peak and isinstance(ttft, dict) and _positive(ttft.get("median")):
        t_min = prefill_limit_s(args, record.batch, record.prompt_len, peak)
        out["prefill_pct"] = 100 * t_min / ttft["median"]
    for side in SIDES:
        if f"{side}_pct" in out:
            out[f"{side}_suspect"] = out[f"{side}_pct"] > 100 * SUSPECT_ABOVE + out.get(f"{side}_margin_pct", 0.0)
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
