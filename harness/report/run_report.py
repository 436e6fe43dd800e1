"""`harness report`: the document built from result folders only, and its files
(report.md with plots/ beside it, and a self-contained report.html).

Sections: claim verdicts (harness.verdicts) and the procurement headline per device
(harness.report.headline) first, as a reader acts on them; then runs, per-device tables
(harness.report.device_tables), figures (harness.report.plots), methods.
"""
from __future__ import annotations

from dataclasses import dataclass
import datetime as _dt
from pathlib import Path
from typing import Optional

from harness import stats
from harness.cells import LoadedRun, ResultCell, load_runs
from harness.claims import load_claims
from harness.figures import is_estimate
from harness.report import device_tables
from harness.report.cell_summary import MAX_REASON, CellSummary, by_device, cell_summaries, labeler, shorten
from harness.report.document import Document, Table, to_markdown
from harness.report.headline import device_headline, headline_table, primary_keys
from harness.report.html import to_html
from harness.report.methods import methods_section
from harness.report.prices import load_prices
from harness.report.progress import Stages, stage
from harness.report.timeline import pick_timeline_cell
from harness.results import ResultsError
from harness.verdicts import Verdict, verify


#: the stages build_report announces (harness.report.progress), for the bar's length
REPORT_STAGES = 5


@dataclass
class ReportParts:
    """The document and what `report --print` shows of it on a terminal."""

    doc: Document
    verdicts: Optional[list[Verdict]]
    headline: Table  # the procurement headline, one row per device


def build_report(run_dirs, prices_path: str | Path | None = None, timeline_cell: Optional[str] = None,
                 claims_path: str | Path | None = None, with_plots: bool = True,
                 progress: Optional[Stages] = None) -> Document:
    return build_report_parts(run_dirs, prices_path, timeline_cell, claims_path, with_plots, progress).doc


def build_report_parts(run_dirs, prices_path: str | Path | None = None, timeline_cell: Optional[str] = None,
                       claims_path: str | Path | None = None, with_plots: bool = True,
                       progress: Optional[Stages] = None) -> ReportParts:
    stage(progress, "reading records")
    runs = load_runs(run_dirs)
    cells = [c for run in runs for c in run.cells]
    prices = load_prices(prices_path) if prices_path else None
    stage(progress, f"judging claims over {len(cells)} cells")
    verdicts = verify(load_claims(claims_path), cells) if claims_path else None

    doc = Document(title="Benchmark report: " + ", ".join(run.run_id for run in runs), cells=cells)
    sums = cell_summaries(cells)  # figures are bootstrapped a metric at a time, for all cells at once
    label = labeler(cells)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.p(f"Generated {now} by `harness report` from {len(runs)} run folder(s) and {len(cells)} cell(s). "
          "Every figure is the **median** of the repetitions with its **95 % bootstrap interval** in brackets; "
          "INVALID marks a cell whose outputs failed the accuracy gate (shown, never ranked best); "
          "an energy figure labelled *estimate* was not measured.")
    stage(progress, f"summarising {len(cells)} cells")
    devices = by_device(cells)
    # what a reader acts on comes first (issue 20): the verdicts, then per device the
    # procurement headline (tokens/J and cost per million tokens, with their meter)
    if verdicts is not None:
        doc.h(2, "Claim verdicts")
        doc.verdicts(verdicts)
    primary = primary_keys(cells)
    headline = headline_table([device_headline(dev, dcells, sums, label, prices, primary)
                               for dev, dcells in devices.items()], prices)
    doc.h(2, "At a glance")
    doc.table(headline)
    for dev, dcells in devices.items():
        warnings = _warnings(dcells, sums)
        if warnings:
            doc.h(3, dev)
            doc.ul(warnings)

    doc.h(2, "Runs")
    doc.table(_runs_table(runs))

    for dev, dcells in devices.items():
        doc.h(2, f"Device: {dev}")
        doc.h(3, "Throughput (llama-bench style)")
        doc.table(device_tables.throughput_table(dcells))
        doc.p(device_tables.roofline_basis(dcells))
        doc.h(3, "Procurement figures")
        doc.table(device_tables.procurement_table(dcells, sums, label, prices))
        doc.h(3, "Energy provenance")
        provenance = device_tables.provenance_table(dcells, label)
        if provenance is not None:
            doc.table(provenance)
        else:
            doc.p("No energy records.")

    from harness.report.request_tables import add_request_section  # issue 15: request cells, imported runs

    add_request_section(doc, cells)
    from harness.report.bounds_table import add_bounds_section  # issue 16: cells against their physical bounds

    add_bounds_section(doc, cells)
    if with_plots and cells:
        stage(progress, "drawing figures")
        _figures(doc, cells, sums, label, timeline_cell)
    methods_section(doc, prices)
    return ReportParts(doc, verdicts, headline)


def write_report(doc: Document, out_dir: str | Path) -> tuple[Path, Path]:
    """report.md (+ plots/*.png beside it) and report.html (self-contained). Never writes
    through a symlink: a run folder from elsewhere may hold report/, plots/ or report.md
    as a link to a file outside it, which is refused rather than overwritten."""
    from harness.results import write_bytes_nofollow

    out_dir = Path(out_dir)
    try:
        _real_dir(out_dir, parents=True)
        if doc.images:
            _real_dir(out_dir / "plots")
            for k, png in doc.images.items():
                write_bytes_nofollow(out_dir / "plots" / f"{k}.png", png)
        md = out_dir / "report.md"
        write_bytes_nofollow(md, to_markdown(doc).encode())
        html = out_dir / "report.html"
        write_bytes_nofollow(html, to_html(doc).encode())
    except OSError as e:
        raise ResultsError(f"{out_dir}: cannot write the report ({e.strerror or e})") from None
    return md, html


def _real_dir(path: Path, parents: bool = False) -> None:
    if path.is_symlink():
        raise ResultsError(f"{path}: is a symbolic link; refusing to write the report through it")
    path.mkdir(parents=parents, exist_ok=True)


def _runs_table(runs: list[LoadedRun]) -> Table:
    from harness.seal import mark_legend, run_status

    # lab, nodes and seal status per run (issue 17); an unsealed or failing run's label carries
    # its mark here and in every table that shows its figures, explained in the caption
    seals = [run.seal or run_status(run.run_dir) for run in runs]
    t = Table(["run", "lab", "suite", "node(s)", "check", "devices", "started", "harness", "git commit",
               "cells (ok / failed / invalid)", "repetitions"], right=("repetitions",),
              caption=mark_legend(seals) or "")
    for run, seal in zip(runs, seals):
        meta, cs = run.meta, run.cells
        started = meta.get("started_at")
        if isinstance(started, (int, float)):
            started = _dt.datetime.fromtimestamp(started, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        t.add([f"{run.run_id} {seal.mark}" if seal.mark else run.run_id, seal.lab or "-", meta.get("suite", "-"),
               seal.nodes_text(), seal.status_text(),
               ", ".join(sorted({c.device_label for c in cs})) or "-", started or "-",
               meta.get("harness_version", "-"), str((meta.get("inventory") or {}).get("git_commit") or "-")[:12],
               f"{sum(c.ok for c in cs)} / {sum(c.failed for c in cs)} / {sum(c.invalid for c in cs)}",
               # run.json comes from other labs: a config that is no mapping shows "-", never a traceback
               (meta.get("config") if isinstance(meta.get("config"), dict) else {}).get("repetitions", "-")],
              "invalid" if seal.status == "sealed+FAIL" else None)
    return t


def _warnings(dcells: list[ResultCell], sums: dict[int, CellSummary]) -> list[str]:
    out = []
    inv = [c for c in dcells if c.invalid]
    if inv:
        out.append(f"**{len(inv)} INVALID cell(s)** (failed the accuracy gate; never ranked best): "
                   + ", ".join(c.short for c in inv))
    failed = [c for c in dcells if c.failed]
    if failed:
        out.append(f"**{len(failed)} FAILED cell(s)**: " + ", ".join(f"{c.short} ({_first_line(c)})" for c in failed))
    sus = [c for c in dcells if (c.record.roofline or {}).get("suspect")]
    if sus:
        out.append(f"**SUSPECT**: {len(sus)} cell(s) above 100 % of the roofline (a measurement or work-model error, "
                   "not a win): " + ", ".join(c.short for c in sus))
    ok_roofs = [c.record.roofline or {} for c in dcells if c.ok]
    if not any(r.get("decode_pct") is not None for r in ok_roofs):
        resident = sum(bool(r.get("decode_cache_resident")) for r in ok_roofs)
        if resident:  # calibrated, but the weights fit the last-level cache: no DRAM roofline applies
            out.append(f"Decode roofline: {resident} cell(s) cache-resident (their weights fit the last-level "
                       "cache, so no DRAM roofline applies; see the roofline basis)")
        elif not any(r.get("basis") for r in ok_roofs):
            out.append("Roofline unknown: no calibration for this device (run `harness calibrate`)")
    est = [c for c in dcells if is_estimate(sums[id(c)].meters.get("tokens_per_joule"))]
    if est:
        out.append(f"Energy of {len(est)} cell(s) is an ESTIMATE (constant power x time), not a measurement")
    short = [c for c in dcells if c.record.energy and any(m.quality == "short-window" for m in c.record.energy.meters)]
    if short:
        out.append(f"{len(short)} cell(s) have meter windows too short for their meter (quality short-window)")
    # request-scenario cells have no decode repetitions of their own: not counted here
    ns = [n for c in dcells if c.ok and (n := sums[id(c)].summaries["decode_tps"].n)]
    if ns and min(ns) < stats.MIN_REPETITIONS:
        out.append(f"Only {min(ns)} repetition(s) per cell: intervals from fewer than {stats.MIN_REPETITIONS} do not "
                   f"hold their coverage; run at least {stats.DEFAULT_REPETITIONS}")
    unstable = []
    for c in dcells:
        if not c.ok:
            continue
        st = stats.stability(sums[id(c)].summaries["decode_tps"])
        if not st["stable"] and st["n"] >= stats.MIN_REPETITIONS:
            unstable.append((c, st))
    if unstable:
        worst = max(unstable, key=lambda t: t[1]["rel_half_width"] or 0)
        out.append(f"{len(unstable)} cell(s) have decode intervals wider than ±{100 * stats.STABLE_REL_HALF_WIDTH:g} % "
                   f"(widest {worst[0].short}: {worst[1]['reason']})")
    return out


def _first_line(c: ResultCell) -> str:
    """A failure's reason in full (the tables wrap it; issue 20: cut at 80 characters it
    hid the cause), joined onto one line; bounded only against a hostile results file."""
    msg = c.record.error.message if c.record.error else ""
    return shorten(" ".join(msg.split()), MAX_REASON) if msg else "no message"


def _figures(doc: Document, cells: list[ResultCell], sums: dict[int, CellSummary], label,
             timeline_cell: Optional[str]) -> None:
    from harness.report import plots

    doc.h(2, "Figures")
    devices = by_device(cells)
    series: dict[tuple, plots.Series] = {}
    points = []
    for c in cells:
        if c.failed:
            continue
        f = sums[id(c)]
        key = (c.device_label, label(c))
        s = series.setdefault(key, plots.Series(label(c) + (f" @ {c.record.device}" if len(devices) > 1 else ""),
                                                c.device_label))
        tpot = f.med("tpot_s")
        p = plots.CellPoint(s.label, s.device, c.record.batch, f.med("decode_tps"), f.med("j_per_token"),
                            f.med("tokens_per_joule"), tpot * 1000 if tpot is not None else None, valid=c.ok,
                            estimate=is_estimate(f.meters.get("tokens_per_joule"))
                            or is_estimate(f.meters.get("j_per_token")))
        s.points.append(p)
        points.append(p)
    doc.img("batch", plots.batch_figure(list(series.values())),
            "Decode tokens/s, J per generated token and generated tokens per joule against batch size "
            "(medians; hollow markers and dashed lines: energy estimates; red crosses: INVALID cells).")
    doc.img("tradeoff", plots.tradeoff_figure(points),
            "Latency (time per output token) against decode throughput and against J per generated token. "
            "The stepped lines are each device's Pareto front: no other valid configuration on that device is "
            "both faster and lower-latency (left) or both cheaper in energy and lower-latency (right).")
    tc, rows = pick_timeline_cell(cells, timeline_cell)
    if tc is not None:
        doc.img("timeline", plots.timeline_figure(rows, f"power timeline: {tc.record.cell_id} [{tc.run_id}]",
                                                  tc.record.energy.windows if tc.record.energy else None),
                f"Power of cell {tc.record.cell_id} (run {tc.run_id}) over its energy windows: idle before, "
                "prefill, generation, idle after (choose another with --timeline CELL_ID).")
    else:
        doc.p("No cell recorded a power timeline (no meter sampled power during these runs).")
