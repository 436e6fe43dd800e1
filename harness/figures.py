"""The figures reports, compare and verify show: metric definitions, which energy meter
a figure comes from, and a cell's per-repetition samples of a metric.

There is one energy path for every cell: batch and request scenarios both carry an
EnergyRecord of MeterEnergy entries (harness.records), so a figure is picked and read
the same way whatever scenario produced it.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional

from harness import stats
from harness.cells import ResultCell
from harness.records import CellRecord, MeterEnergy


DECODE, PREFILL, BOTH = ("decode",), ("prefill",), ("decode", "prefill")


@dataclass(frozen=True)
class MetricDef:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    energy: bool = False
    # the roofline(s) (harness.roofline) that bound this metric: which side of a cell
    # must be physically possible for a figure of this metric to count
    rooflines: tuple[str, ...] = DECODE


METRICS: dict[str, MetricDef] = {m.name: m for m in (
    MetricDef("decode_tps", "decode throughput", "tok/s", True),
    MetricDef("prefill_tps", "prefill throughput", "tok/s", True, rooflines=PREFILL),
    MetricDef("ttft_s", "time to first token", "s", False, rooflines=PREFILL),
    MetricDef("tpot_s", "time per output token", "s", False),
    MetricDef("e2e_s", "request latency", "s", False, rooflines=BOTH),
    MetricDef("tokens_per_joule", "generated tokens per joule", "tok/J", True, energy=True),
    MetricDef("j_per_token", "joules per generated (decode) token", "J/tok", False, energy=True),
    MetricDef("j_per_prompt_token", "joules per prompt (prefill) token", "J/tok", False, energy=True,
              rooflines=PREFILL),
    MetricDef("j_per_1k_tokens", "joules per 1000 generated tokens", "J/1k tok", False, energy=True),
    MetricDef("tokens_per_s_per_watt", "decode tokens/s per watt", "tok/s/W", True, energy=True),
)}
ALIASES = {"tokens_per_j": "tokens_per_joule", "tok_per_j": "tokens_per_joule", "tokens_per_s": "decode_tps",
           "decode_tokens_per_s": "decode_tps", "j_per_generated_token": "j_per_token",
           "joules_per_token": "j_per_token", "tpot": "tpot_s", "ttft": "ttft_s"}

# which meter a table shows: a measurement over an estimate, a full window over a short one
# (speed-mismatch flags every meter of a cell alike: a flagged measurement still beats an estimate)
_QUALITY_RANK = {"ok": 0, "short-window": 1, "speed-mismatch": 1, "estimate": 2}


def canonical_metric(name: str) -> str:
    return ALIASES.get(name, name)


def is_estimate(m: Optional[MeterEnergy]) -> bool:
    return m is not None and m.is_estimate


def meter_figure(m: MeterEnergy, metric: str, kind: str = "gross") -> Optional[float]:
    """The metric's value from one meter (None where the meter has no figure)."""
    if metric in ("tokens_per_joule", "j_per_token", "j_per_prompt_token"):
        return m.figure(metric, kind)
    if metric == "j_per_1k_tokens":
        tpj = m.figure("tokens_per_joule", kind)
        return 1000.0 / tpj if tpj else None
    if metric == "tokens_per_s_per_watt":
        return m.avg_w  # the divisor; the caller divides decode tok/s by it
    raise KeyError(metric)


def primary_meter(record: CellRecord, metric: str = "tokens_per_joule", kind: str = "gross",
                  scope: Optional[str] = None) -> Optional[MeterEnergy]:
    """The meter whose figure a table shows: a measurement over an estimate, a full window
    over a short one; the first configured meter among equals. None if no meter has it."""
    cands = []
    for i, m in enumerate(record.energy.meters if record.energy else []):
        if scope and m.scope != scope:
            continue
        v = meter_figure(m, metric, kind)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        q = "estimate" if m.method == "estimate" else m.quality
        cands.append((_QUALITY_RANK.get(q, 3), i, m))
    return min(cands, key=lambda t: (t[0], t[1]))[2] if cands else None


def energy_unavailable_reason(record: CellRecord) -> str:
    e = record.energy
    if e is None:
        return "no energy figure"
    if e.status != "ok":
        return f"energy {e.status}"
    reasons = sorted({m.reason for m in e.meters if m.reason})
    return "no energy figure" + (f" ({'; '.join(reasons)})" if reasons else "")


def samples(record: CellRecord, key: str) -> list[float]:
    """The metric's per-repetition samples; a summary without samples gives its median alone."""
    m = record.metric(key) or {}
    s = m.get("samples")
    if s:
        return [float(v) for v in s if v is not None]
    return [float(m["median"])] if m.get("median") is not None else []


@dataclass
class MetricValue:
    """A cell's samples for one metric (per repetition) and where they came from."""

    metric: str
    samples: list[float]
    meter: Optional[MeterEnergy] = None  # energy metrics: the meter used
    reason: Optional[str] = None  # why there is no value

    @property
    def n(self) -> int:
        return len(self.samples)

    def summary(self) -> stats.Summary:
        return stats.summarize(self.samples)


def metric_value(cell: ResultCell | CellRecord, metric: str, kind: str = "gross",
                 scope: Optional[str] = None) -> MetricValue:
    """Per-repetition samples of a metric for one cell.

    Timing metrics are the record's own samples. An energy figure comes from one meter
    window per cell (work repeated inside it), so it has no per-repetition samples of its
    own: its spread is derived from the repetitions' timings (J_i = J x t_i / median(t),
    with t = request time for tokens/J, decode time for J/token, TTFT for J/prompt token).
    That interval reflects timing variation only, not meter error.
    """
    rec = cell.record if isinstance(cell, ResultCell) else cell
    metric = canonical_metric(metric)
    if metric not in METRICS:
        raise KeyError(metric)
    if rec.failed:
        return MetricValue(metric, [], reason="cell failed")
    if not METRICS[metric].energy:
        s = samples(rec, metric)
        return MetricValue(metric, s, reason=None if s else f"no {metric} samples")
    if metric == "tokens_per_s_per_watt":
        m = primary_meter(rec, "tokens_per_s_per_watt", kind, scope)
        dec = samples(rec, "decode_tps")
        if m is None or not dec or not m.avg_w:
            return MetricValue(metric, [], m, reason=energy_unavailable_reason(rec))
        return MetricValue(metric, [d / m.avg_w for d in dec], m)
    m = primary_meter(rec, metric, kind, scope)
    if m is None:
        return MetricValue(metric, [], reason=energy_unavailable_reason(rec))
    value = meter_figure(m, metric, kind)
    e2e, ttft = samples(rec, "e2e_s"), samples(rec, "ttft_s")
    if metric == "j_per_prompt_token":
        t = ttft
    elif metric == "j_per_token" and len(e2e) == len(ttft):
        t = [a - b for a, b in zip(e2e, ttft)]
    else:
        t = e2e
    t = [x for x in t if x > 0]
    if len(t) < 2:
        return MetricValue(metric, [value], m)
    med = float(sorted(t)[len(t) // 2]) if len(t) % 2 else sum(sorted(t)[len(t) // 2 - 1:len(t) // 2 + 1]) / 2
    if METRICS[metric].higher_is_better:  # tokens per joule falls as time grows
        return MetricValue(metric, [value * med / x for x in t], m)
    return MetricValue(metric, [value * x / med for x in t], m)


def improvement(subject: MetricValue, baseline: MetricValue) -> stats.Ratio:
    """How many times better the subject is (> 1: better), with its interval."""
    if METRICS[subject.metric].higher_is_better:
        return stats.ratio(subject.samples, baseline.samples)
    return stats.ratio(baseline.samples, subject.samples)
