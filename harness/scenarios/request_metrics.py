"""Latency and throughput figures of a request scenario, from what the load generator
timed.

Per successful request r:

* TTFT_r = first token - arrival; e2e_r = last token - arrival
* TPOT_r = (last token - first token) / (n_generated_r - 1), n_generated from the SUT's
  own count (the server's ``usage``), never from chunks
* inter-token latency: gaps between consecutive streamed tokens, pooled over requests
  whose stream delivered one chunk per token
* burst delivery: a request whose tokens arrived all at once (a server that buffers the
  whole stream, or sends it as one chunk) has its TPOT and ITL "not observed"
  (``tpot_observed: false`` on its row, counted in ``tpot_not_observed``): its decode
  time is hidden in its TTFT, and a TPOT of 0.0 ms would be a confident wrong figure.
  They are left out of the TPOT and ITL percentiles, and cannot meet a TPOT limit.
  The rule (:func:`tpot_observed`): more than 80 % of its inter-chunk gaps under 50 µs.
* requests/s and output tokens/s over the span first arrival -> last end
* goodput: requests/s that finished without error *and* met every limit
  (``limits.ttft_s`` on TTFT_r, ``limits.tpot_s`` on TPOT_r)
* steady-state window (``harness.scenarios.loadgen.SteadyWindow``): throughput over
  that window alone, and the output tokens and completions inside it that energy per
  token and per request divide by.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from backends.base import RequestResult
from harness.scenarios.loadgen import SteadyWindow


@dataclass
class LimitsConfig:
    """Latency limits a request must meet to count towards goodput (None: no limit)."""

    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None

    def problems(self) -> list[tuple[str, str]]:
        return [(k, f"expected a limit > 0 seconds, got {getattr(self, k)!r}")
                for k in ("ttft_s", "tpot_s") if getattr(self, k) is not None and not getattr(self, k) > 0]


#: per-request samples kept in a record, so compare and verify can bootstrap request
#: metrics like any other; beyond this, evenly spaced order statistics stand in for them
MAX_SAMPLES = 20_000


def _pct(values: Sequence[float], with_samples: bool = True) -> dict | None:
    """Percentiles of per-request values, plus the median and the samples themselves
    (the statistic and the data every other metric of a record carries)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return None
    out = {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
           "p99": float(np.percentile(v, 99)), "mean": float(v.mean()), "min": float(v.min()),
           "max": float(v.max()), "n": int(v.size), "median": float(np.median(v))}
    if with_samples:
        if v.size > MAX_SAMPLES:
            v = np.sort(v)[np.linspace(0, v.size - 1, MAX_SAMPLES).round().astype(int)]
            out["samples_subsampled"] = True
        out["samples"] = v.tolist()
    return out


# Burst delivery. 50 µs: the client parses one buffered SSE line in about 10 µs, while
# no LLM decodes a token that fast (20,000 tokens/s for one stream); so a gap this short
# means the token was already in the socket buffer with the previous one. 80 %, not all:
# a reader thread is still descheduled now and then (the GIL's 5 ms switch interval under
# many request threads), which opens a few long gaps inside a burst. A server that
# streams several tokens per step (speculative decoding) stays under it up to 4 tokens
# per step (75 % of gaps near zero), and its TPOT is still the mean over the decode.
BURST_GAP_S = 50e-6
BURST_FRACTION = 0.8


def tpot_observed(r: RequestResult) -> bool:
    """False when r's tokens came in one burst: one chunk carrying them all, or more
    than BURST_FRACTION of the gaps between chunks under BURST_GAP_S."""
    if r.n_generated < 2:
        return True  # no decode to observe: TPOT is undefined, not hidden
    if len(r.token_times) < 2:
        return False
    gaps = np.diff(r.token_times)
    return float(np.mean(gaps < BURST_GAP_S)) <= BURST_FRACTION


def _per_request(r: RequestResult) -> dict:
    ttft = r.t_first_token - r.t_arrival if r.ok and r.t_first_token is not None else None
    e2e = r.t_end - r.t_arrival if r.ok and r.t_end is not None else None
    observed = tpot_observed(r) if r.ok else None
    tpot = None
    if observed and r.n_generated >= 2 and r.t_first_token is not None and r.t_end is not None:
        tpot = (r.t_end - r.t_first_token) / (r.n_generated - 1)
    return {"ttft_s": ttft, "e2e_s": e2e, "tpot_s": tpot, "tpot_observed": observed}


def _tokens_between(r: RequestResult, a: float, b: float) -> float:
    """Tokens of r that arrived in [a, b]: chunks in the window, scaled to the true count."""
    if not r.token_times:
        return 0.0
    inside = sum(1 for t in r.token_times if a <= t <= b)
    return inside * (r.n_generated / len(r.token_times)) if r.n_generated else float(inside)


def request_metrics(results: Sequence[RequestResult], window: SteadyWindow | None = None,
                    limits: LimitsConfig | None = None) -> dict:
    """Every latency and throughput figure of one pass (definitions: module docstring)."""
    limits = limits or LimitsConfig()
    ok = [r for r in results if r.ok]
    per = [_per_request(r) for r in ok]
    out: dict[str, Any] = {"requests": len(results), "ok": len(ok), "failed": len(results) - len(ok)}
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = r.error.split(":")[0][:80]
            errors[key] = errors.get(key, 0) + 1
    out["errors"] = errors
    out["count_mismatch"] = sum(1 for r in ok if r.count_mismatch)
    out["prompt_mismatch"] = sum(1 for r in ok if r.prompt_mismatch)
    out["prompt_unverified"] = sum(1 for r in ok if r.n_prompt is None)  # the SUT gave no prompt count
    out["ttft_s"] = _pct([p["ttft_s"] for p in per])
    out["tpot_s"] = _pct([p["tpot_s"] for p in per])
    out["e2e_s"] = _pct([p["e2e_s"] for p in per])
    out["tpot_not_observed"] = sum(1 for p in per if p["tpot_observed"] is False)
    gaps, skipped = [], 0
    for r, p in zip(ok, per):
        if p["tpot_observed"] is False:
            continue  # counted in tpot_not_observed
        if len(r.token_times) == r.n_generated and r.n_generated >= 2:
            gaps.extend(np.diff(r.token_times).tolist())
        elif r.n_generated >= 2:
            skipped += 1
    out["itl_s"] = _pct(gaps, with_samples=False)  # gaps, not requests: too many to keep
    out["itl_requests_skipped"] = skipped  # streams that merged tokens into fewer chunks
    out["issue_lag_s"] = _pct([r.t_issue - r.t_arrival for r in results if r.t_arrival is not None])
    starts = [r.t_arrival for r in results if r.t_arrival is not None]
    ends = [r.t_end for r in results if r.t_end is not None]
    span = (max(ends) - min(starts)) if starts and ends else 0.0
    out["span_s"] = span
    gen = sum(r.n_generated for r in ok)
    out["output_tokens"] = gen
    out["prompt_tokens"] = sum((r.n_prompt if r.n_prompt is not None else r.prompt_len) for r in ok)
    out["requests_per_s"] = len(ok) / span if span > 0 else None
    out["output_tokens_per_s"] = gen / span if span > 0 else None
    good = 0
    for r, p in zip(ok, per):
        if limits.ttft_s is not None and (p["ttft_s"] is None or p["ttft_s"] > limits.ttft_s):
            continue
        if limits.tpot_s is not None and (p["tpot_s"] is not None and p["tpot_s"] > limits.tpot_s
                                          or p["tpot_observed"] is False):
            continue  # a TPOT that was not observed cannot be shown to meet the limit
        good += 1
    out["goodput"] = {"limits": dataclasses.asdict(limits), "requests": good,
                      "fraction": good / len(results) if results else None,
                      "requests_per_s": good / span if span > 0 else None}
    if window is not None:
        out["steady"] = steady_metrics(results, window)
    return out


def steady_metrics(results: Sequence[RequestResult], window: SteadyWindow) -> dict:
    w: dict[str, Any] = {"valid": window.valid, "note": window.note}
    if not window.valid:
        return w
    a, b = window.t_begin, window.t_end
    toks = sum(_tokens_between(r, a, b) for r in results)
    done = sum(1 for r in results if r.ok and r.t_end is not None and a <= r.t_end <= b)
    w.update(duration_s=b - a, unix_begin=window.unix_begin, unix_end=window.unix_end,
             output_tokens=toks, requests_completed=done,
             output_tokens_per_s=toks / (b - a), requests_per_s=done / (b - a))
    return w


def request_rows(results: Sequence[RequestResult], t0: float, token_times: bool = False) -> list[dict]:
    """Raw per-request samples for a record (times relative to the run start)."""
    rows = []
    for r in results:
        p = _per_request(r) if r.ok else {"ttft_s": None, "e2e_s": None, "tpot_s": None, "tpot_observed": None}
        row = {"id": r.id, "prompt_len": r.prompt_len, "n_prompt": r.n_prompt, "n_requested": r.n_requested,
               "n_generated": r.n_generated, "n_chunks": r.n_chunks,
               "arrival_s": None if r.t_arrival is None else r.t_arrival - t0,
               "issue_lag_s": None if r.t_arrival is None else r.t_issue - r.t_arrival,
               **p, "error": r.error, "count_mismatch": r.count_mismatch, "prompt_mismatch": r.prompt_mismatch,
               "finish_reason": r.finish_reason}
        if r.notes:
            row["notes"] = r.notes
        if token_times:
            row["token_times_s"] = [t - t0 for t in r.token_times]
        rows.append(row)
    return rows


def format_table(rows: Iterable[dict]) -> str:
    """A plain-text latency-throughput table of summary rows (RequestRun.summary_row)."""
    cols = [("rate", "rate/s", "{:.2f}"), ("offered_rate", "drawn/s", "{:.2f}"), ("achieved_rps", "req/s", "{:.2f}"),
            ("output_tps", "out tok/s", "{:.1f}"),
            ("ttft_p50_s", "TTFT p50 ms", "ms"), ("ttft_p99_s", "TTFT p99 ms", "ms"),
            ("tpot_p50_s", "TPOT p50 ms", "ms"), ("itl_p99_s", "ITL p99 ms", "ms"),
            ("goodput_rps", "goodput/s", "{:.2f}"), ("goodput_fraction", "good %", "pct"),
            ("failed", "failed", "{}")]
    lines = [" | ".join(h for _, h, _ in cols)]
    for r in rows:
        cells = []
        for k, h, f in cols:
            v = r.get(k)
            if v is None:
                s = "-"
            elif f == "ms":
                s = f"{1000 * v:.1f}"
            elif f == "pct":
                s = f"{100 * v:.0f}"
            else:
                s = f.format(v)
            cells.append(s.rjust(len(h)))
        lines.append(" | ".join(cells))
    return "\n".join(lines)
