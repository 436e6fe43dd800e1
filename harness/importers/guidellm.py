"""guidellm's benchmarks report (``--output kind=json``, default name ``benchmarks.json``).

Format (vllm-project/guidellm src/guidellm/benchmark/schemas/report.py
``GenerativeBenchmarksReport``, benchmark.py ``GenerativeBenchmark``,
src/guidellm/schemas/request_stats.py ``GenerativeRequestStats``, read at commit ee7a774,
2026-08; report schema version 2)::

    {"metadata": {"version": 2, "guidellm_version": "...", ...},
     "config": {"spec": {"backend": {"target": "http://127.0.0.1:8000", "model": "tiny", ...}, ...}},
                                     # 0.8: the server and model (default device endpoint:HOST:PORT, model)
     "benchmarks": [
       {"type_": "generative_benchmark",
        "config": {"strategy": {"type_": "concurrent", "streams": 4}, ...},   # older releases: "args"
        "metrics": {...},            # guidellm's own distributions (not read: recomputed here)
        "requests": {"successful": [REQUEST, ...], "incomplete": [...], "errored": [...]}}]}

    REQUEST = {"request_id": "...",
               "request_start_time": 1.7e9, "request_end_time": 1.7e9,  # older: start_time, end_time
               "request_latency": 0.41,                 # seconds
               "prompt_tokens": 64, "output_tokens": 32,
               "time_to_first_token_ms": 21.0,
               "inter_token_latency_ms": 12.5,           # (last - first token) / (output - 1): our TPOT
               "time_per_output_token_ms": 13.1,         # (last token - start) / output: includes TTFT, not read
               "info": {"error": "...", ...}, ...}       # older: "error" on the request

Strategies become the harness's scenario labels: synchronous -> single-stream,
concurrent -> concurrency (batch = streams), poisson -> server@RATE (the harness's server
scenario is Poisson too), constant -> constant@RATE, throughput -> throughput. Requests
guidellm left incomplete when a benchmark ended (cancelled by its own time or count
limit) are not counted as failures; their number is kept in the record.
"""
from __future__ import annotations

import json
import json.decoder
import json.scanner
from pathlib import Path
import re
from typing import Any, Optional

from harness.scenarios.request_metrics import BURST_GAP_S

from .common import MAX_REQUESTS, ImportedCell, ImportedRequest, ImportFormatError, Located, check_regular, depth_ok


def looks_like(head: bytes) -> bool:
    return head.lstrip().startswith(b"{") and b'"benchmarks"' in head


class LineFinder:
    """The line of a key path (``benchmarks[0].requests.successful[3].output_tokens``) in a
    JSON text. Built only when a message needs it: the text is parsed again by json's
    pure-Python scanner with a hook that keeps each object's start offset."""

    _STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

    def __init__(self, text: str):
        self.text = text
        self._doc = None
        self._starts: dict[int, int] = {}

    def _parse(self) -> None:
        starts = self._starts

        def parse_object(s_and_end, *args):
            obj, end = json.decoder.JSONObject(s_and_end, *args)
            starts[id(obj)] = s_and_end[1]
            return obj, end

        dec = json.JSONDecoder()
        dec.parse_object = parse_object
        dec.scan_once = json.scanner.py_make_scanner(dec)
        self._doc = dec.decode(self.text)

    def __call__(self, path: str) -> Optional[int]:
        try:
            if self._doc is None:
                self._parse()
        except (ValueError, RecursionError):
            return None
        node, at, last_key = self._doc, 0, None
        for key, idx in self._STEP.findall(path):
            if isinstance(node, dict) and key in node:
                at = self._starts.get(id(node), at)
                node, last_key = node[key], key
            elif isinstance(node, list) and idx and int(idx) < len(node):
                node, last_key = node[int(idx)], None
            else:
                break
            if isinstance(node, dict):
                at, last_key = self._starts.get(id(node), at), None
        if last_key is not None:  # point at the key itself, not its object's first line
            hit = self.text.find(json.dumps(last_key), at)
            at = hit if hit >= 0 else at
        return self.text.count("\n", 0, at) + 1


_STRATEGIES = {"synchronous": "single-stream", "concurrent": "concurrency", "throughput": "throughput",
               "poisson": "server", "constant": "constant"}


def read(path: Path) -> list[ImportedCell]:
    check_regular(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ImportFormatError(f"{path}:{line}: not UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ImportFormatError(f"{path}:{e.lineno}: not JSON ({e.msg} at column {e.colno}); expected guidellm's "
                                "benchmarks JSON (--output kind=json)") from None
    except RecursionError:
        raise ImportFormatError(f"{path}: JSON nested too deeply") from None
    if not depth_ok(doc):
        raise ImportFormatError(f"{path}: JSON nested too deeply")
    loc = Located(path, LineFinder(text))
    benchmarks = loc.get(doc, "benchmarks", "")
    if not isinstance(benchmarks, list) or not benchmarks:
        raise loc.fail("benchmarks", "expected a non-empty list of benchmarks")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    version = loc.string(meta.get("guidellm_version"), "metadata.guidellm_version")
    target, model = _backend(doc, loc)
    cells, total = [], 0
    for i, b in enumerate(benchmarks):
        where = f"benchmarks[{i}]"
        cell = _benchmark(b, where, loc, version)
        cell.endpoint, cell.model = target, model
        total += len(cell.requests)
        if total > MAX_REQUESTS:
            raise loc.fail(where, f"more than {MAX_REQUESTS:,} requests")
        cells.append(cell)
    return cells


def _backend(doc: dict, loc: Located) -> tuple[Optional[str], Optional[str]]:
    """The server URL and model name the run was made against (guidellm 0.8:
    ``config.spec.backend.{target, model}``); None where the export does not say."""
    config = doc.get("config")
    spec = config.get("spec") if isinstance(config, dict) else None
    backend = spec.get("backend") if isinstance(spec, dict) else None
    if not isinstance(backend, dict):
        return None, None
    return (loc.string(backend.get("target"), "config.spec.backend.target"),
            loc.string(backend.get("model"), "config.spec.backend.model"))


def _strategy(b: dict, where: str, loc: Located) -> tuple[str, Optional[int], Optional[float], dict]:
    holder = b.get("config") if isinstance(b.get("config"), dict) and "strategy" in b["config"] else b.get("args")
    hwhere = f"{where}.config" if holder is b.get("config") else f"{where}.args"
    strategy = loc.get(holder, "strategy", hwhere)
    swhere = f"{hwhere}.strategy"
    kind = loc.string(loc.get(strategy, "type_", swhere), f"{swhere}.type_", allow_none=False)
    if kind not in _STRATEGIES:
        raise loc.fail(f"{swhere}.type_", f"expected one of {', '.join(_STRATEGIES)}, got {kind!r}")
    label = _STRATEGIES[kind]
    conc = rate = None
    if kind == "synchronous":
        conc = 1
    elif kind == "concurrent":
        conc = loc.integer(loc.get(strategy, "streams", swhere), f"{swhere}.streams", allow_none=False)
    elif kind == "throughput":
        conc = loc.integer(strategy.get("max_concurrency"), f"{swhere}.max_concurrency")
    else:
        rate = loc.number(loc.get(strategy, "rate", swhere), f"{swhere}.rate", allow_none=False)
        conc = loc.integer(strategy.get("max_concurrency"), f"{swhere}.max_concurrency")
        label = f"{label}@{rate:g}"
    return label, conc, rate, {"strategy": kind}


def _benchmark(b: Any, where: str, loc: Located, version: Optional[str]) -> ImportedCell:
    if not isinstance(b, dict):
        raise loc.fail(where, "expected a benchmark object")
    label, conc, rate, details = _strategy(b, where, loc)
    groups = loc.get(b, "requests", where)
    reqs: list[ImportedRequest] = []
    for status in ("successful", "errored", "incomplete"):
        items = loc.get(groups, status, f"{where}.requests", required=False) or []
        gwhere = f"{where}.requests.{status}"
        if not isinstance(items, list):
            raise loc.fail(gwhere, "expected a list of requests")
        if status == "incomplete":
            details["incomplete_requests"] = len(items)
            continue
        reqs.extend(_request(r, f"{gwhere}[{j}]", loc, ok=status == "successful") for j, r in enumerate(items))
    if not reqs:
        raise loc.fail(f"{where}.requests", "no successful or errored request (guidellm --metrics sample_size=0 "
                                            "strips them; export with request stats kept)")
    return ImportedCell(tool="guidellm", scenario=label, requests=reqs, concurrency=conc, rate=rate,
                        tool_version=version, details=details)


def _first(loc: Located, r: dict, where: str, *keys: str) -> Any:
    for k in keys:
        if k in r:
            return r[k], f"{where}.{k}"
    return None, f"{where}.{keys[0]}"


def _request(r: Any, where: str, loc: Located, ok: bool) -> ImportedRequest:
    if not isinstance(r, dict):
        raise loc.fail(where, "expected a request object")
    rid = loc.string(r.get("request_id"), f"{where}.request_id") or where
    v, p = _first(loc, r, where, "request_start_time", "start_time")
    start = loc.number(v, p)
    v, p = _first(loc, r, where, "request_end_time", "end_time")
    end = loc.number(v, p)
    if not ok:
        info = r.get("info") if isinstance(r.get("info"), dict) else {}
        err = loc.string(info.get("error", r.get("error")), f"{where}.info.error") or "errored"
        return ImportedRequest(id=rid, ok=False, error=err.splitlines()[0] if err else "errored", t_start=start,
                               t_end=end)
    ttft_ms = loc.number(r.get("time_to_first_token_ms"), f"{where}.time_to_first_token_ms")
    itl_ms = loc.number(r.get("inter_token_latency_ms"), f"{where}.inter_token_latency_ms")
    latency = loc.number(r.get("request_latency"), f"{where}.request_latency")
    n_in = loc.integer(r.get("prompt_tokens"), f"{where}.prompt_tokens")
    n_out = loc.integer(r.get("output_tokens"), f"{where}.output_tokens")
    if latency is None and start is not None and end is not None:
        latency = end - start
    if latency is None:
        raise loc.fail(f"{where}.request_latency", "required for a successful request (or its start and end times)")
    ttft = None if ttft_ms is None else ttft_ms / 1e3
    if ttft is not None and ttft > latency * (1 + 1e-9) + 1e-9:
        raise loc.fail(f"{where}.time_to_first_token_ms", f"TTFT {ttft:.6g} s is longer than the request "
                                                          f"({latency:.6g} s)")
    tpot = None if itl_ms is None else itl_ms / 1e3
    # guidellm keeps no chunk times per request: a decode that took no time is a burst
    if not n_out or n_out < 2:
        seen: Optional[bool] = True  # no decode to observe
    else:
        seen = None if tpot is None else tpot >= BURST_GAP_S
    if start is not None and end is None:
        end = start + latency
    return ImportedRequest(id=rid, ok=True, t_start=start, t_end=end, ttft_s=ttft, e2e_s=latency,
                           tpot_s=tpot if seen is not False else None, itl_gaps_s=None, n_prompt=n_in,
                           n_generated=n_out, tpot_observed=seen)
