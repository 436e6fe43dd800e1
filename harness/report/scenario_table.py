"""Latency-throughput table for cells run under a LoadGen-style scenario (single-stream,
concurrency, server@rate): one row per cell, request-level percentiles."""
from __future__ import annotations

import pandas as pd


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def is_scenario_record(r: dict) -> bool:
    return str(r.get("scenario", "offline")) != "offline"


def scenario_rows(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        base = {"model": r.get("model"), "dtype": r.get("precision", r.get("dtype")), "backend": r.get("backend"),
                "scenario": r.get("scenario")}
        summary = (r.get("summary") or [None])[0]
        if r.get("status") == "failed" or not summary:
            msg = ((r.get("error") or {}).get("message") or "").splitlines()[:1]
            rows.append({**base, "req/s": "FAILED", "note": msg[0][:60] if msg else "-"})
            continue
        j = summary.get("j_per_output_token")
        rows.append({**base, "req/s": f"{summary['achieved_rps']:.2f}", "out tok/s": f"{summary['output_tps']:.1f}",
                     "TTFT p50 ms": _ms(summary.get("ttft_p50_s")), "TTFT p99 ms": _ms(summary.get("ttft_p99_s")),
                     "TPOT p50 ms": _ms(summary.get("tpot_p50_s")), "ITL p99 ms": _ms(summary.get("itl_p99_s")),
                     "goodput": f"{100 * summary['goodput_fraction']:.0f} %" if summary.get("goodput_fraction") is not None else "-",
                     "J/out-token": f"{j:.4g}" if j is not None else "-",
                     "failed": summary.get("failed", 0),
                     "note": "INVALID" if r.get("valid") is False else ""})
    return pd.DataFrame(rows)
