"""Latency-throughput table for cells run under a request scenario (single-stream,
concurrency, server@rate): one row per cell, request-level percentiles. Batch cells
go in the llama-bench table (harness.report.table); energy is read the same way in both."""
from __future__ import annotations

import pandas as pd

from harness.records import CellRecord
from harness.report.table import energy_text


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def scenario_rows(records: list[CellRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        base = {"model": r.model, "dtype": r.shown_precision, "backend": r.backend, "scenario": r.scenario}
        summary = (r.summary or [None])[0]
        if r.failed or not summary:
            msg = (r.error.message if r.error else "").splitlines()[:1]
            rows.append({**base, "req/s": "FAILED", "note": msg[0][:60] if msg else "-"})
            continue
        good = summary.get("goodput_fraction")
        rows.append({**base, "req/s": f"{summary['achieved_rps']:.2f}", "out tok/s": f"{summary['output_tps']:.1f}",
                     "TTFT p50 ms": _ms(summary.get("ttft_p50_s")), "TTFT p99 ms": _ms(summary.get("ttft_p99_s")),
                     "TPOT p50 ms": _ms(summary.get("tpot_p50_s")), "ITL p99 ms": _ms(summary.get("itl_p99_s")),
                     "goodput": f"{100 * good:.0f} %" if good is not None else "-",
                     "J/out-token": energy_text(r, "j_per_token"),
                     "failed": summary.get("failed", 0),
                     "note": "INVALID" if r.valid is False else ""})
    return pd.DataFrame(rows)

