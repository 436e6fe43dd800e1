"""What every importer shares: bounded, located reading of another tool's export, the
typed per-request row each importer produces, and the cell record built from those rows.

Why the harness recomputes the figures from per-request rows instead of copying the
tool's summary: each tool names and defines its metrics differently (guidellm's
``time_per_output_token_ms`` includes the first token, aiperf's "inter token latency" is
our TPOT; README "Interop"), so the imported cell gets the harness's own definitions
(harness.scenarios.request_metrics) over the tool's own timings, and its record says who
measured it (``sut.measured_by``, a warning, the run's ``imported`` block).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import math
import os
from pathlib import Path
import stat
from typing import Any, Optional
from urllib.parse import urlsplit

import numpy as np

from harness.records import CellError, CellRecord, EnergyRecord, PlannedCell
from harness.results import ResultsError
from harness.scenarios.request_metrics import BURST_FRACTION, BURST_GAP_S

#: Exports come from elsewhere: read with bounds. A guidellm JSON keeps every prompt and
#: output text, so a long run is tens of MB; an aiperf record line is a few kB.
MAX_FILE_BYTES = 1 << 30
MAX_LINE_BYTES = 16 << 20
MAX_REQUESTS = 2_000_000
MAX_DEPTH = 64


class ImportFormatError(ResultsError):
    """An export that is not what its tool writes: one message naming file, line and key
    (the CLI prints it and exits 2)."""


def check_regular(path: Path) -> int:
    """The file's size; refuses what is not a regular file or is over MAX_FILE_BYTES."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImportFormatError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImportFormatError(f"{path}: not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise ImportFormatError(f"{path}: {st.st_size:,} bytes, over the {MAX_FILE_BYTES >> 20} MiB import limit")
    return st.st_size


def depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


class Located:
    """Typed reads from one parsed JSON value, with errors as ``file:line: key: expected ...``.

    ``line_of(path)`` gives the line a key path sits on (the caller finds it; for a
    one-record-per-line file it is that line)."""

    def __init__(self, file: Path, line_of):
        self.file, self.line_of = file, line_of

    def fail(self, key: str, msg: str) -> ImportFormatError:
        line = self.line_of(key)
        return ImportFormatError(f"{self.file}:{line}: {key}: {msg}" if line else f"{self.file}: {key}: {msg}")

    def get(self, obj: Any, key: str, path: str, *, required: bool = True) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(path, f"expected an object, got {_kind(obj)}")
        if key not in obj:
            if required:
                raise self.fail(f"{path}.{key}" if path else key, "required key missing")
            return None
        return obj[key]

    def number(self, value: Any, path: str, *, allow_none: bool = True, minimum: float = 0.0) -> Optional[float]:
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"expected a number, got {_kind(value)} {_short(value)}")
        v = float(value)
        if not math.isfinite(v) or v < minimum:
            raise self.fail(path, f"expected a finite number >= {minimum:g}, got {_short(value)}")
        return v

    def integer(self, value: Any, path: str, *, allow_none: bool = True) -> Optional[int]:
        if value is None and allow_none:
            return None
        v = self.number(value, path, allow_none=False)
        if v != int(v):
            raise self.fail(path, f"expected a whole number, got {_short(value)}")
        return int(v)

    def string(self, value: Any, path: str, *, allow_none: bool = True) -> Optional[str]:
        if value is None and allow_none:
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {_kind(value)}")
        return value[:500]


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), type(v).__name__)


def _short(v: Any, n: int = 40) -> str:
    r = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return r if len(r) <= n else r[:n] + "..."


@dataclass
class ImportedRequest:
    """One request as another tool timed it, in seconds and token counts."""

    id: str
    ok: bool
    error: Optional[str] = None
    t_start: Optional[float] = None  # unix seconds
    t_end: Optional[float] = None
    ttft_s: Optional[float] = None
    e2e_s: Optional[float] = None
    tpot_s: Optional[float] = None  # (last token - first token) / (output tokens - 1)
    itl_gaps_s: Optional[list[float]] = None  # gaps between streamed chunks, where the tool kept them
    n_prompt: Optional[int] = None
    n_generated: Optional[int] = None
    tpot_observed: Optional[bool] = None


@dataclass
class ImportedCell:
    """One benchmark of an export: its load, its requests, and how it was labelled."""

    tool: str  # aiperf | guidellm
    scenario: str  # single-stream | concurrency | server@R | constant@R | throughput
    requests: list[ImportedRequest]
    concurrency: Optional[int] = None
    rate: Optional[float] = None
    tool_version: Optional[str] = None
    model: Optional[str] = None  # as the export names it
    endpoint: Optional[str] = None  # the server URL the tool ran against, where the export names it
    details: dict = field(default_factory=dict)  # the tool's own labels, kept as provenance


def observed(gaps: Optional[list[float]], n_generated: Optional[int]) -> Optional[bool]:
    """The harness's burst rule (harness.scenarios.request_metrics.tpot_observed) on the
    tool's chunk gaps: more than BURST_FRACTION of them under BURST_GAP_S, or one chunk for
    several tokens, means the decode was not observed."""
    if not n_generated or n_generated < 2:
        return True
    if gaps is None:
        return None  # the tool kept no chunk times: cannot tell
    if not gaps:
        return False  # one chunk carried every token
    return float(np.mean(np.asarray(gaps) < BURST_GAP_S)) <= BURST_FRACTION


def _pct(values: list[float], with_samples: bool = True) -> Optional[dict]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return None
    out = {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)),
           "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": int(v.size),
           "median": float(np.median(v))}
    if with_samples:
        # per-request values: what `harness compare` and the report's intervals resample
        out["samples"] = v.tolist()
    return out


def metrics_of(reqs: list[ImportedRequest]) -> dict:
    """The request-scenario metrics (the keys harness.scenarios.request_metrics writes)."""
    ok = [r for r in reqs if r.ok]
    errors: dict[str, int] = {}
    for r in reqs:
        if not r.ok:
            key = (r.error or "error").split(":")[0][:80]
            errors[key] = errors.get(key, 0) + 1
    observed_ok = [r for r in ok if r.tpot_observed is not False]
    gaps = [g for r in observed_ok if r.itl_gaps_s for g in r.itl_gaps_s]
    starts = [r.t_start for r in reqs if r.t_start is not None]
    ends = [r.t_end for r in reqs if r.t_end is not None]
    span = (max(ends) - min(starts)) if starts and ends else 0.0
    gen = sum(r.n_generated or 0 for r in ok)
    m: dict[str, Any] = {
        "requests": len(reqs), "ok": len(ok), "failed": len(reqs) - len(ok), "errors": errors,
        "count_mismatch": 0, "prompt_mismatch": 0, "prompt_unverified": sum(1 for r in ok if r.n_prompt is None),
        "ttft_s": _pct([r.ttft_s for r in ok]), "tpot_s": _pct([r.tpot_s for r in observed_ok]),
        "e2e_s": _pct([r.e2e_s for r in ok]),
        "tpot_not_observed": sum(1 for r in ok if r.tpot_observed is False),
        "itl_s": _pct(gaps, with_samples=False) if gaps else None,
        "itl_requests_skipped": sum(1 for r in observed_ok if r.itl_gaps_s is None and (r.n_generated or 0) >= 2),
        "issue_lag_s": None, "span_s": span, "output_tokens": gen,
        "prompt_tokens": sum(r.n_prompt or 0 for r in ok),
        "requests_per_s": len(ok) / span if span > 0 else None,
        "output_tokens_per_s": gen / span if span > 0 else None,
    }
    m["goodput"] = {"limits": {"ttft_s": None, "tpot_s": None}, "requests": len(ok),
                    "fraction": len(ok) / len(reqs) if reqs else None, "requests_per_s": m["requests_per_s"]}
    return m


def _summary_row(c: ImportedCell, m: dict) -> dict:
    def g(key, stat):
        v = m.get(key)
        return v.get(stat) if v else None

    return {"scenario": c.scenario.split("@")[0], "rate": c.rate, "offered_rate": None, "concurrency": c.concurrency,
            "requests": m["requests"], "failed": m["failed"], "count_mismatch": 0,
            "achieved_rps": m["requests_per_s"], "output_tps": m["output_tokens_per_s"],
            "ttft_p50_s": g("ttft_s", "p50"), "ttft_p99_s": g("ttft_s", "p99"),
            "tpot_p50_s": g("tpot_s", "p50"), "tpot_p99_s": g("tpot_s", "p99"),
            "itl_p50_s": g("itl_s", "p50"), "itl_p90_s": g("itl_s", "p90"), "itl_p99_s": g("itl_s", "p99"),
            "goodput_rps": m["goodput"]["requests_per_s"], "goodput_fraction": m["goodput"]["fraction"],
            "steady_output_tps": None, "j_per_output_token": None, "energy_meter": None, "energy_quality": None}


@dataclass
class Labels:
    """How the imported cells are named, so that they line up with a harness run's cells
    (`harness compare` matches model, precision, batch, lengths and scenario)."""

    backend: Optional[str] = None  # default: the tool's name
    model: Optional[str] = None  # default: the model the export names, else "unknown"
    dtype: str = "unknown"
    device: Optional[str] = None  # default: endpoint_device(the export's URL), else "endpoint"
    batch: Optional[int] = None  # default: the tool's concurrency, else the peak requests in flight
    prompt_len: Optional[int] = None  # default: median prompt tokens
    gen_len: Optional[int] = None  # default: median output tokens


def endpoint_device(url: Optional[str]) -> Optional[str]:
    """The device label the openai-http backend gives the same server (``endpoint:HOST:PORT``),
    so that an imported run and the harness's own run of one server share the report's
    table of that system (harness.report.request_tables.system_key)."""
    if not url:
        return None
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        return None
    if not u.hostname:
        return None
    return f"endpoint:{u.hostname}:{port}" if port else f"endpoint:{u.hostname}"


def peak_in_flight(reqs: list[ImportedRequest]) -> int:
    """Most requests in flight at once, from their start and end times."""
    events = sorted([(r.t_start, 1) for r in reqs if r.t_start is not None and r.t_end is not None]
                    + [(r.t_end, -1) for r in reqs if r.t_start is not None and r.t_end is not None],
                    key=lambda e: (e[0], e[1]))
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return max(peak, 1)


def _median_int(values: list[Optional[int]]) -> int:
    v = [x for x in values if x is not None]
    return int(round(float(np.median(v)))) if v else 0


def build_record(c: ImportedCell, labels: Labels, source: dict) -> CellRecord:
    """The cell record of one imported benchmark, in the request-scenario shape, labelled
    with the tool that measured it."""
    m = metrics_of(c.requests)
    ok = [r for r in c.requests if r.ok]
    batch = labels.batch or c.concurrency or peak_in_flight(c.requests)
    prompt_len = labels.prompt_len or _median_int([r.n_prompt for r in ok])
    gen_len = labels.gen_len or _median_int([r.n_generated for r in ok])
    backend = labels.backend or c.tool
    model = labels.model or c.model or "unknown"
    cell = PlannedCell(backend=backend, backend_type=f"imported:{c.tool}", model=model, dtype=labels.dtype,
                       batch=batch, prompt_len=prompt_len, gen_len=gen_len, scenario=c.scenario, rate=c.rate)
    t0 = min((r.t_start for r in c.requests if r.t_start is not None), default=None)
    rows = [{"id": r.id, "prompt_len": r.n_prompt, "n_prompt": r.n_prompt, "n_requested": None,
             "n_generated": r.n_generated, "n_chunks": None if r.itl_gaps_s is None else len(r.itl_gaps_s) + 1,
             "arrival_s": None if r.t_start is None or t0 is None else r.t_start - t0, "issue_lag_s": None,
             "ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "tpot_s": r.tpot_s, "tpot_observed": r.tpot_observed,
             "error": r.error, "count_mismatch": False, "prompt_mismatch": False, "finish_reason": None}
            for r in c.requests]
    provenance = {"measured_by": c.tool, "tool_version": c.tool_version, "imported_by": "harness import",
                  "endpoint": c.endpoint, "model_served": c.model, **source,
                  "tool_labels": c.details}
    warnings = [f"measured by {c.tool}, imported by `harness import` from {source.get('source_file')}: the harness "
                "did not issue these requests; figures are recomputed from the tool's per-request timings"]
    if m["tpot_not_observed"]:
        warnings.append(f"{m['tpot_not_observed']} request(s) arrived in one burst: TPOT not observed")
    status = "ok" if ok else "failed"
    return CellRecord(
        cell_id=cell.id, backend=backend, backend_type=cell.backend_type, model=model, dtype=labels.dtype,
        batch=batch, prompt_len=prompt_len, gen_len=gen_len, scenario=c.scenario, status=status, valid=status == "ok",
        device=labels.device or endpoint_device(c.endpoint) or "endpoint", precision=labels.dtype,
        error=None if ok else CellError(message=f"no successful request in the {c.tool} export", kind="exception"),
        describe={"measured_by": c.tool, "tool_version": c.tool_version},
        tokens={"requests": m["requests"], "output_tokens": m["output_tokens"], "prompt_tokens": m["prompt_tokens"]},
        metrics=m,
        energy=EnergyRecord(status="unavailable", window="steady",
                            reason=f"imported from {c.tool}: no energy was measured"),
        accuracy={"status": f"not checked (imported from {c.tool})", "passed": None, "logits_passed": None},
        warnings=warnings, scenario_config={"type": c.scenario.split("@")[0], "imported_from": c.tool,
                                            "concurrency": c.concurrency, "rate": c.rate},
        summary=[_summary_row(c, m)], requests=rows, sut=provenance, started_at=t0,
        wall_s=m["span_s"] or None)
