"""The figures reports, compare and verify show: metric definitions, which energy meter
a figure comes from, and a cell's per-repetition samples of a metric.

There is one energy path for every cell: batch and request scenarios both carry an
EnergyRecord of MeterEnergy entries (harness.records), so a figure is picked and read
the same way whatever scenario produced it.

Which meter, when a cell has several, is one rule (primary_meter) that every table,
verdict, comparison and the procurement headline call:

1. a meter the run's suite marks `primary: true` (run.json `config.meters`; matched by
   name, or by type, which default names start with: `rapl` marks `rapl:package-0`);
2. then the better quality: a measurement over an estimate, a full window over a short
   one, a flagged or unrated figure last (_QUALITY_RANK);
3. then the widest scope (SCOPE_WIDTH: wall, then board or module, then package, then
   DRAM: the wider, the more of what is paid for it sees);
4. then the first configured meter.

Quality before scope: a wider meter's figure is not a better answer when its own window
says it cannot be trusted as far as a narrower meter's; the figure always carries its
scope, so the reader sees which was quoted.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Iterable, Optional, Sequence

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

# which meter a figure is read from, after a `primary: true` mark: a measurement over an
# estimate, a full window over a short one (speed-mismatch flags every meter of a cell alike:
# a flagged measurement still beats an estimate); any other quality (clock-skew, unrated) last
_QUALITY_RANK = {"ok": 0, "short-window": 1, "speed-mismatch": 1, "estimate": 2}
#: how much of the machine a scope sees; a wider one is closer to what is paid for
SCOPE_WIDTH = {"wall": 4, "npu-module": 3, "gpu-board": 3, "cpu-package": 2, "dram": 1}


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


def primary_keys(meta: Any) -> tuple[str, ...]:
    """The meters a run's suite marks `primary: true`, from its run.json (`config.meters`):
    each entry's `name`, else its `type` (every default meter name starts with its type:
    nvml:0, rapl:package-0, csv-log:file). run.json comes from other labs and from older
    harness versions: whatever is not of that shape marks nothing (never an exception)."""
    config = meta.get("config") if isinstance(meta, dict) else None
    meters = config.get("meters") if isinstance(config, dict) else None
    keys: list[str] = []
    for m in meters if isinstance(meters, list) else []:
        if not isinstance(m, dict) or m.get("primary") is not True:
            continue
        key = m.get("name") if isinstance(m.get("name"), str) and m.get("name") else m.get("type")
        if isinstance(key, str) and key:
            keys.append(key)
    return tuple(keys)


def is_marked(meter: Any, primary: Iterable[str]) -> bool:
    """Is this meter name one that a `primary: true` key names (the name itself, or a meter
    of that type: key `rapl` marks rapl:package-0 and rapl:dram-0)?"""
    return isinstance(meter, str) and any(meter == k or meter.startswith(k + ":") for k in primary)


def quality_of(m: MeterEnergy) -> str:
    """The quality the rule ranks: an estimate is one whatever its window says."""
    return "estimate" if m.method == "estimate" else m.quality


def meter_rank(m: MeterEnergy, index: int, primary: Iterable[str] = ()) -> tuple:
    """The one rule's sort key (smaller first): marked `primary: true`, then quality, then
    the widest scope, then the configured order (index in the cell's meters)."""
    q = quality_of(m)
    return (0 if is_marked(m.meter, primary) else 1, _QUALITY_RANK.get(q, 3) if isinstance(q, str) else 3,
            -SCOPE_WIDTH.get(m.scope, 0) if isinstance(m.scope, str) else 0, index)


def meter_candidates(record: CellRecord, metric: str, kind: str,
                     scope: Optional[str] = None) -> list[tuple[int, MeterEnergy]]:
    """(index, meter) of the cell's meters that have a finite figure of the metric."""
    out = []
    for i, m in enumerate(record.energy.meters if record.energy else []):
        if scope and m.scope != scope:
            continue
        v = meter_figure(m, metric, kind)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        out.append((i, m))
    return out


def primary_meter(record: CellRecord, metric: str = "tokens_per_joule", kind: str = "gross",
                  scope: Optional[str] = None, primary: Sequence[str] = ()) -> Optional[MeterEnergy]:
    """The meter whose figure every table, verdict and the headline show for this cell: one
    the suite marks `primary: true` (`primary`: primary_keys of its run.json), then a
    measurement over an estimate and a full window over a short one, then the widest scope,
    then the first configured meter. None if no meter has the figure."""
    cands = [(meter_rank(m, i, primary), m) for i, m in meter_candidates(record, metric, kind, scope)]
    return min(cands, key=lambda t: t[0])[1] if cands else None


def why_meter(record: CellRecord, chosen: MeterEnergy, metric: str = "tokens_per_joule", kind: str = "gross",
              primary: Sequence[str] = ()) -> str:
    """Why primary_meter chose `chosen` among the cell's meters, in words, e.g. "widest
    scope of 2 meters (fake-smi, fake-wall)" or "best quality (ok) of 2 meters (board,
    wall); set aside: wall (short-window)"."""
    cands = [(meter_rank(m, i, primary), m) for i, m in meter_candidates(record, metric, kind)]
    names = ", ".join(sorted({m.meter for _, m in cands} | {chosen.meter}))
    marked = [m for _, m in cands if is_marked(m.meter, primary)]
    if is_marked(chosen.meter, primary):
        return "marked `primary: true` in the suite"
    unmarked = f"; no figure from the `primary: true` meter ({', '.join(primary)})" if primary and not marked else ""
    mine = next((r for r, m in cands if m is chosen), None)
    if mine is None or len(cands) == 1:
        return "the only meter" + unmarked
    estimate = "an ESTIMATE: " if chosen.is_estimate else ""
    if chosen.is_estimate and all(m.is_estimate for _, m in cands):
        return "an ESTIMATE: no meter measured this device" + unmarked
    worse = [m for r, m in cands if r[1] > mine[1]]
    ties = [r for r, m in cands if r[1] == mine[1] and m is not chosen]
    steps = [f"best quality ({quality_of(chosen)})"] if worse else []
    if ties:
        steps.append("widest scope" if all(r[2] > mine[2] for r in ties) else "first configured of the widest scope")
    text = f"{estimate}{', then '.join(steps)} of {len(cands)} meters ({names})"
    if worse:
        text += "; set aside: " + ", ".join(f"{m.meter} ({quality_of(m)})" for m in worse)
    return text + unmarked


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
                 scope: Optional[str] = None, primary: Optional[Sequence[str]] = None) -> MetricValue:
    """Per-repetition samples of a metric for one cell.

    An energy figure is read from primary_meter's meter; a ResultCell's `primary: true`
    marks come from its run.json (primary_keys) unless `primary` names them; a bare
    CellRecord has none (the rest of the rule still applies).

    Timing metrics are the record's own samples. An energy figure comes from one meter
    window per cell (work repeated inside it), so it has no per-repetition samples of its
    own: its spread is derived from the repetitions' timings (J_i = J x t_i / median(t),
    with t = request time for tokens/J, decode time for J/token, TTFT for J/prompt token).
    That interval reflects timing variation only, not meter error.
    """
    rec = cell.record if isinstance(cell, ResultCell) else cell
    if primary is None:
        primary = primary_keys(cell.meta) if isinstance(cell, ResultCell) else ()
    metric = canonical_metric(metric)
    if metric not in METRICS:
        raise KeyError(metric)
    if rec.failed:
        return MetricValue(metric, [], reason="cell failed")
    if not METRICS[metric].energy:
        s = samples(rec, metric)
        return MetricValue(metric, s, reason=None if s else f"no {metric} samples")
    if metric == "tokens_per_s_per_watt":
        m = primary_meter(rec, "tokens_per_s_per_watt", kind, scope, primary)
        dec = samples(rec, "decode_tps")
        if m is None or not dec or not m.avg_w:
            return MetricValue(metric, [], m, reason=energy_unavailable_reason(rec))
        return MetricValue(metric, [d / m.avg_w for d in dec], m)
    m = primary_meter(rec, metric, kind, scope, primary)
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
