"""The report's tables for one device: throughput (llama-bench style), procurement
figures with cost per million tokens, and energy provenance per meter."""
from __future__ import annotations

from typing import Callable, Optional

from harness.cells import ResultCell
from harness.records import MeterEnergy
from harness.report.cell_summary import CellSummary, fmt, money, shorten
from harness.report.document import Table
from harness.report.prices import Prices, cost_per_million
from harness.report.table import bench_rows

Labeler = Callable[[ResultCell], str]


def throughput_table(cells: list[ResultCell]) -> Table:
    df = bench_rows([c.record for c in cells], ci=True).drop(columns=["device"])
    t = Table(list(df.columns), right=("batch", "t/s", "median [95% CI]", "n", "% roof", "J/token"),
              caption="t/s: mean ± sd over repetitions; median [95 % bootstrap CI]; % roof: share of the "
                      "calibrated roofline (SUSPECT above 100 %); J/token: gross, primary meter (scope)")
    cols = list(df.columns)
    acc, roof = cols.index("accuracy"), cols.index("% roof")
    for row in df.itertuples(index=False, name=None):  # iterrows builds a Series per row: slow at thousands
        vals = [str(v) for v in row]
        t.add(vals, "invalid" if any(v.startswith(("INVALID", "FAILED")) for v in vals)
              or "INVALID" in vals[acc] else ("suspect" if "SUSPECT" in vals[roof] else None))
    return t


def roofline_basis(cells: list[ResultCell]) -> str:
    basis = sorted({(c.record.roofline or {}).get("basis") for c in cells} - {None})
    return "Roofline basis: " + (", ".join(basis) if basis else
                                 "none: no calibration for this device (run `harness calibrate` on that machine)")


def procurement_table(cells: list[ResultCell], summaries: dict[int, CellSummary], label: Labeler,
                      prices: Optional[Prices]) -> Table:
    cols = ["backend", "batch", "test", "decode tok/s", "tokens/J", "J per 1k tokens", "tok/s per W",
            "avg W", "energy source"]
    if prices:
        cols += [f"cost per 1M tokens ({prices.currency}): hardware + energy = total"]
    t = Table(cols, right=("batch",) + tuple(cols[3:8]) + tuple(cols[9:]),
              caption="tokens/J and J per 1k tokens: generated tokens over whole requests (prefill included), "
                      "gross; tok/s per W: decode tokens/s / mean power during generation")
    for c in cells:
        f = summaries[id(c)]
        m = f.meters.get("tokens_per_joule") or f.meters.get("j_per_token")
        src = "-"
        if m:
            src = f"{m.meter}, {m.method}, {m.scope}" + (" — ESTIMATE" if m.is_estimate else "")
        elif c.ok:
            src = shorten(f.reasons.get("tokens_per_joule") or "no energy figure", 140)
        r = c.record
        row = [label(c), r.batch, f"pp{r.prompt_len}+tg{r.gen_len}", f.value("decode_tps"),
               f.value("tokens_per_joule"), f.value("j_per_1k_tokens"), f.value("tokens_per_s_per_watt"),
               fmt(m.avg_w, 3) if m else "-", src]
        if prices:
            if not c.ok:
                row.append(c.status_label)
            else:
                cost = cost_per_million(c, f.meters.get("tokens_per_joule"), prices)
                row.append(f"{money(cost.hardware)} + {money(cost.energy)} = {money(cost.total, prices.currency)}"
                           + (f" ({'; '.join(cost.notes)})" if cost.notes else ""))
        t.add(row, "invalid" if not c.ok else None)
    return t


def _work_windows(m: MeterEnergy, key: str, digits: int = 4) -> str:
    """A window figure over the work windows: prefill / generation of a batch cell, or the
    steady-state window of a request scenario."""
    if "steady" in m.windows:
        return f"{fmt((m.windows['steady'] or {}).get(key), digits)} (steady)"
    return " / ".join(fmt((m.windows.get(p) or {}).get(key), digits) for p in ("prefill", "generation"))


def provenance_table(cells: list[ResultCell], label: Labeler) -> Optional[Table]:
    """One row per meter of each cell (None when no cell has an energy record)."""
    t = Table(["backend", "batch", "meter", "method", "scope", "quality", "update period", "updates (prefill / gen)",
               "window s (prefill / gen)", "idle W", "avg W (gen)", "J/token (gen)", "notes"],
              right=("batch", "update period", "updates (prefill / gen)", "window s (prefill / gen)", "idle W",
                     "avg W (gen)", "J/token (gen)"))
    for c in cells:
        e = c.record.energy
        if e is None:
            continue
        if e.status != "ok":
            t.add([label(c), c.record.batch, "-", "-", "-", f"energy {e.status}", "-", "-", "-", "-", "-", "-", ""],
                  "invalid" if not c.ok else None)
            continue
        for m in e.meters:
            est = m.is_estimate
            notes = [m.reason] if m.reason and not est else []
            notes += m.warnings
            if c.invalid:
                notes.insert(0, "cell INVALID")
            per = m.update_period_s
            t.add([label(c), c.record.batch, m.meter, m.method, m.scope,
                   "ESTIMATE (not measured)" if est else m.quality, f"{per * 1000:.0f} ms" if per else "-",
                   _work_windows(m, "n_updates"), _work_windows(m, "duration_s", 3),
                   fmt(m.idle_w, 3), fmt(m.avg_w, 3),
                   fmt(m.j_per_generated_token_gross) + (" est." if est else ""),
                   shorten("; ".join(str(x) for x in notes), 200)],
                  "invalid" if not c.ok else ("estimate" if est else None))
    return t if t.rows else None
