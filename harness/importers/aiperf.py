"""NVIDIA aiperf's per-request export, ``artifacts/<run>/profile_export.jsonl``.

Format (ai-dynamo/aiperf docs/tutorials/working-with-profile-exports.md and
aiperf/common/models/record_models.py ``MetricRecordInfo``, read at commit db4f639, 2025-10):
one JSON object per line::

    {"metadata": {"session_num": 45, "x_request_id": "...", "request_start_ns": 1759813207532900363,
                  "request_ack_ns": ..., "request_end_ns": 1759813207838764604, "benchmark_phase": "profiling",
                  "was_cancelled": false, ...},
     "metrics": {"time_to_first_token": {"value": 255.9, "unit": "ms"},
                 "request_latency": {"value": 297.5, "unit": "ms"},
                 "inter_token_latency": {"value": 5.2, "unit": "ms"},      # (latency - TTFT) / (OSL - 1): our TPOT
                 "inter_chunk_latency": {"value": [4.9, 5.3, ...], "unit": "ms"},  # chunk gaps: our ITL
                 "input_sequence_length": {"value": 550, "unit": "tokens"},
                 "output_sequence_length": {"value": 9, "unit": "tokens"}, ...},
     "error": null | {"code": 499, "type": "RequestCancellationError", "message": "..."}}

Times are exported in display units (``ms``; aiperf's MetricTimeUnit tags are ns, us,
ms, sec). Only ``benchmark_phase: profiling`` records are the measurement (warm-up
records are skipped). aiperf's per-record file does not carry the load settings
(concurrency, rate), the server or aiperf's version: they are read from the run summary
aiperf writes beside it (``profile_export_aiperf.json``, :func:`sidecar`) where it is
there; else give ``--batch``/``--scenario``/``--device``, or the peak requests in flight
is used as the concurrency.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from harness.scenarios.request_metrics import BURST_GAP_S

from .common import (MAX_LINE_BYTES, MAX_REQUESTS, ImportedCell, ImportedRequest, ImportFormatError, Located,
                     check_regular, observed)

TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "sec": 1.0, "s": 1.0}


def looks_like(first_line: bytes) -> bool:
    # request_start_ns too: guidellm 0.8 writes its whole report on one line, which also
    # starts with {"metadata" and holds "metrics"; an aiperf record always has the key
    return (first_line.lstrip().startswith(b"{") and b'"metadata"' in first_line and b'"metrics"' in first_line
            and b'"request_start_ns"' in first_line)


def read(path: Path, scenario: Optional[str] = None, concurrency: Optional[int] = None,
         rate: Optional[float] = None) -> list[ImportedCell]:
    import json

    check_regular(path)
    reqs: list[ImportedRequest] = []
    skipped_phases: dict[str, int] = {}
    with open(path, "rb") as f:
        n = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            n += 1
            if len(raw) > MAX_LINE_BYTES:
                raise ImportFormatError(f"{path}:{n}: line longer than {MAX_LINE_BYTES >> 20} MiB; "
                                        "not an aiperf record")
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ImportFormatError(f"{path}:{n}: not UTF-8 (byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise ImportFormatError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno}); expected one aiperf "
                                        "record per line (profile_export.jsonl)") from None
            except RecursionError:
                raise ImportFormatError(f"{path}:{n}: JSON nested too deeply") from None
            loc = Located(path, lambda key, n=n: n)
            r, phase = _request(rec, loc)
            if phase != "profiling":
                skipped_phases[phase] = skipped_phases.get(phase, 0) + 1
                continue
            reqs.append(r)
            if len(reqs) > MAX_REQUESTS:
                raise ImportFormatError(f"{path}:{n}: more than {MAX_REQUESTS:,} records")
    if not reqs:
        raise ImportFormatError(f"{path}: no aiperf profiling record (expected profile_export.jsonl: one JSON "
                                "object per line with metadata, metrics and error)")
    label = scenario or ("concurrency" if rate is None else f"server@{rate:g}")
    side = sidecar(path)
    details = {"skipped_phases": skipped_phases} if skipped_phases else {}
    if side.note:
        details["sidecar"] = side.note
    if concurrency is None and rate is None and label == "concurrency":
        concurrency = side.concurrency
    return [ImportedCell(tool="aiperf", scenario=label, requests=reqs, concurrency=concurrency, rate=rate,
                         tool_version=side.version, model=side.model, endpoint=side.url, details=details)]


@dataclass
class Sidecar:
    """What aiperf's run summary beside the records says about the run (all optional)."""

    version: Optional[str] = None
    url: Optional[str] = None
    model: Optional[str] = None
    concurrency: Optional[int] = None  # of the profiling phase, when it ran at a fixed concurrency
    note: Optional[str] = None  # why the summary was not read


SIDECAR = "profile_export_aiperf.json"
MAX_SIDECAR_BYTES = 64 << 20


def sidecar(records: Path) -> Sidecar:
    """aiperf 0.13 writes ``profile_export_aiperf.json`` beside ``profile_export.jsonl``: its
    ``aiperf_version`` and ``input_config`` (``endpoint.urls``, ``models.items[].name``,
    ``phases[]`` with the profiling phase's ``type: concurrency`` and ``concurrency``) name
    what the per-record file does not. Optional, and only a label: a missing or malformed
    summary leaves the labels to the command line (and says why in the record's details)."""
    import json

    f = records.parent / SIDECAR
    if not f.exists():
        return Sidecar()
    try:
        if not f.is_file() or f.stat().st_size > MAX_SIDECAR_BYTES:
            return Sidecar(note=f"{f.name}: not a regular file under {MAX_SIDECAR_BYTES >> 20} MiB; not read")
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        return Sidecar(note=f"{f.name}: not read ({type(e).__name__})")
    if not isinstance(doc, dict):
        return Sidecar(note=f"{f.name}: not a JSON object; not read")

    def text(v: Any) -> Optional[str]:
        return v[:200] if isinstance(v, str) and v else None

    ic = doc.get("input_config") if isinstance(doc.get("input_config"), dict) else {}
    urls = (ic.get("endpoint") or {}).get("urls") if isinstance(ic.get("endpoint"), dict) else None
    items = (ic.get("models") or {}).get("items") if isinstance(ic.get("models"), dict) else None
    url = text(urls[0]) if isinstance(urls, list) and len(urls) == 1 else None  # several: no one server
    model = text(items[0].get("name")) if isinstance(items, list) and len(items) == 1 \
        and isinstance(items[0], dict) else None
    conc = None
    for ph in ic.get("phases") or [] if isinstance(ic.get("phases"), list) else []:
        if isinstance(ph, dict) and ph.get("kind") == "profiling" and ph.get("type") == "concurrency":
            c = ph.get("concurrency")
            conc = c if isinstance(c, int) and not isinstance(c, bool) and c > 0 else None
    return Sidecar(version=text(doc.get("aiperf_version")), url=url, model=model, concurrency=conc)


def _metric(loc: Located, metrics: dict, name: str, kind: str) -> Any:
    """A metric's value in seconds (kind time), tokens (count) or a list of seconds."""
    m = metrics.get(name)
    if m is None:
        return None
    path = f"metrics.{name}"
    value = loc.get(m, "value", path)
    unit = loc.string(loc.get(m, "unit", path), f"{path}.unit", allow_none=False)
    if kind == "count":
        return loc.integer(value, f"{path}.value")
    if unit not in TIME_UNITS:
        raise loc.fail(f"{path}.unit", f"expected a time unit ({', '.join(TIME_UNITS)}), got {unit!r}")
    scale = TIME_UNITS[unit]
    if kind == "list":
        if not isinstance(value, list):
            raise loc.fail(f"{path}.value", "expected a list of numbers")
        # fast path: a list of plain finite numbers >= 0 (the common case, thousands per request)
        if all(type(v) in (int, float) for v in value):
            arr = np.asarray(value, dtype=float)
            if np.isfinite(arr).all() and (arr >= 0).all():
                return (arr * scale).tolist()
        return [loc.number(v, f"{path}.value[{i}]", allow_none=False) * scale for i, v in enumerate(value)]
    v = loc.number(value, f"{path}.value")
    return None if v is None else v * scale


def _request(rec: Any, loc: Located) -> tuple[ImportedRequest, str]:
    meta = loc.get(rec, "metadata", "")
    metrics = loc.get(rec, "metrics", "", required=False) or {}
    if not isinstance(metrics, dict):
        raise loc.fail("metrics", "expected an object")
    err = loc.get(rec, "error", "", required=False)
    phase = loc.string(loc.get(meta, "benchmark_phase", "metadata", required=False), "metadata.benchmark_phase") \
        or "profiling"
    start_ns = loc.integer(loc.get(meta, "request_start_ns", "metadata"), "metadata.request_start_ns",
                           allow_none=False)
    end_ns = loc.integer(loc.get(meta, "request_end_ns", "metadata", required=False), "metadata.request_end_ns")
    rid = loc.string(loc.get(meta, "x_request_id", "metadata", required=False), "metadata.x_request_id") \
        or str(loc.get(meta, "session_num", "metadata", required=False))
    if err is not None:
        if not isinstance(err, dict):
            raise loc.fail("error", "expected an object or null")
        etype = loc.string(err.get("type"), "error.type") or "error"
        msg = loc.string(err.get("message"), "error.message") or ""
        code = err.get("code")
        return ImportedRequest(id=rid, ok=False, error=f"{etype}: {code} {msg}".strip(), t_start=start_ns * 1e-9,
                               t_end=None if end_ns is None else end_ns * 1e-9), phase
    ttft = _metric(loc, metrics, "time_to_first_token", "time")
    e2e = _metric(loc, metrics, "request_latency", "time")
    tpot = _metric(loc, metrics, "inter_token_latency", "time")
    gaps = _metric(loc, metrics, "inter_chunk_latency", "list")
    n_out = _metric(loc, metrics, "output_sequence_length", "count")
    n_in = _metric(loc, metrics, "input_sequence_length", "count")
    if e2e is None and end_ns is not None:
        e2e = (end_ns - start_ns) * 1e-9
    if e2e is None:
        raise loc.fail("metrics.request_latency", "required for a successful request (or metadata.request_end_ns)")
    if ttft is not None and ttft > e2e * (1 + 1e-9) + 1e-9:
        raise loc.fail("metrics.time_to_first_token", f"TTFT {ttft:.6g} s is longer than the request ({e2e:.6g} s)")
    if tpot is None and ttft is not None and n_out and n_out >= 2:
        tpot = (e2e - ttft) / (n_out - 1)
    seen = observed(gaps, n_out)
    if seen is None and tpot is not None and tpot < BURST_GAP_S:
        seen = False  # no chunk gaps kept, and the decode took no time: the tokens came in one burst
    return ImportedRequest(id=rid, ok=True, t_start=start_ns * 1e-9,
                           t_end=end_ns * 1e-9 if end_ns is not None else start_ns * 1e-9 + e2e,
                           ttft_s=ttft, e2e_s=e2e, tpot_s=tpot if seen is not False else None, itl_gaps_s=gaps,
                           n_prompt=n_in, n_generated=n_out, tpot_observed=seen), phase
