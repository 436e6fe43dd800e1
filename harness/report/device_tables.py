"""The report's tables for one device: throughput (llama-bench style), procurement
figures with cost per million tokens, and energy provenance per meter."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from harness.cells import ResultCell
from harness.records import MeterEnergy
from harness.report.cell_summary import MAX_REASON, CellSummary, fmt, shorten
from harness.report.document import Table
from harness.report.prices import Prices, cost_per_million
from harness.report.table import bench_rows
from harness.stats import STABLE_REL_HALF_WIDTH

Labeler = Callable[[ResultCell], str]


def throughput_table(cells: list[ResultCell]) -> Table:
    """The llama-bench table with one central figure: the median and its 95 % interval (the
    terminal's mean ± sd column is left out here: two central numbers side by side left the
    reader asking which to quote; the sd stays in the records)."""
    # request-scenario cells have no prefill/decode repetitions: their table is request_tables'
    cells = [c for c in cells if not c.record.is_request_scenario]
    if not cells:
        return Table(["note"], [["no batch (offline) cells on this device: see Request scenarios"]], [None])
    # the backend of an unsealed or failing run carries its mark (harness.seal), as labels do
    # the cells, not bare records: their run.json says which meter is `primary: true`
    df = bench_rows([replace(c, record=replace(c.record, backend=f"{c.record.backend} {c.mark}")) if c.mark else c
                     for c in cells], ci=True)
    # bench_rows' t/s is the median [95 % CI] (with ~ where noisy); a second, mean ± sd, column
    # would leave the reader asking which to quote: only the one central figure is shown
    central = "t/s"
    flags = [str(v) for v in df["t/s"]]  # INVALID / FAILED as bench_rows says them
    if "median [95% CI]" in df.columns:  # a bench_rows with both: keep the median
        df = df.drop(columns=["t/s"]).rename(columns={"median [95% CI]": "t/s"})
    df = df.drop(columns=[c for c in ("device",) if c in df.columns])
    t = Table(list(df.columns), right=("batch", central, "n", "% roof", "J/token"),
              caption="t/s: median of the repetitions [95 % bootstrap CI] (~: interval wider than "
                      f"±{100 * STABLE_REL_HALF_WIDTH:g} % of the median); % roof: share of the calibrated roofline "
                      "(SUSPECT above 100 %); J/token: gross, primary meter (scope); a failed cell's accuracy column "
                      "holds its whole reason")
    cols = list(df.columns)
    acc, roof, med = cols.index("accuracy"), cols.index("% roof"), cols.index(central)
    failures = iter([shorten(" ".join(c.record.error.message.split()), MAX_REASON)
                     if c.record.error and c.record.error.message else "-" for c in cells if c.record.failed])
    for flag, row in zip(flags, df.itertuples(index=False, name=None)):  # iterrows: a Series per row, slow
        vals = [str(v) for v in row]
        if flag == "FAILED":
            vals[med], vals[acc] = "FAILED", next(failures)  # the reason in full, not its first 60 characters
        elif flag.startswith("INVALID") and not vals[med].startswith("INVALID"):
            vals[med] = f"INVALID {vals[med]}"
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
            src = shorten(f.reasons.get("tokens_per_joule") or "no energy figure", MAX_REASON)
        r = c.record
        row = [label(c), r.batch, f"pp{r.prompt_len}+tg{r.gen_len}", f.value("decode_tps"),
               f.value("tokens_per_joule"), f.value("j_per_1k_tokens"), f.value("tokens_per_s_per_watt"),
               fmt(m.avg_w, 3) if m else "-", src]
        if prices:
            if not c.ok:
                row.append(c.status_label)
            else:
                cost = cost_per_million(c, f.meters.get("tokens_per_joule"), prices)
                row.append(cost.text(prices.currency) + (f" ({'; '.join(cost.notes)})" if cost.notes else ""))
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
                   shorten("; ".join(str(x) for x in notes), MAX_REASON)],
                  "invalid" if not c.ok else ("estimate" if est else None))
    return t if t.rows else None
