"""`harness compare`: configurations (run, backend, device) side by side on the
workloads they share, with ratios, intervals and a judgement, as Markdown or a
terminal table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness import stats
from harness.cells import ResultCell
from harness.figures import METRICS, MetricValue, metric_value
from harness.records import MeterEnergy
from harness.report.document import md_escape
from harness.report.cell_summary import energy_tag, median_ci
from harness.results import ResultsError

COMPARE_METRICS = ("decode_tps", "prefill_tps", "ttft_s", "tpot_s", "tokens_per_joule", "j_per_token")
FEW_WORKLOADS = 3  # below this, drawing workloads with replacement says little about how they vary
MAX_TERMINAL_ROWS = 120  # above this, the terminal gets counts per metric; --markdown holds every row


@dataclass
class CompareRow:
    workload: tuple  # ResultCell.workload_key
    metric: str
    ref: ResultCell
    other: ResultCell
    ref_summary: stats.Summary
    other_summary: stats.Summary
    ratio: stats.Ratio  # other / reference (raw metric)
    judgement: str
    ref_samples: list[float]  # per repetition, what the pooled interval across workloads resamples
    other_samples: list[float]
    ref_meter: Optional[MeterEnergy] = None
    other_meter: Optional[MeterEnergy] = None


@dataclass
class RunComparison:
    configs: list[tuple]  # ResultCell.config_key, in the order the runs were given
    refs: dict[tuple, tuple]  # each compared configuration -> its reference (A)
    config_labels: dict[tuple, str]
    rows: list[CompareRow]
    overall: dict[tuple, stats.Ratio]  # (other config, metric) -> geometric mean over workloads (pooled)
    unmatched: list[ResultCell]
    # how the references were chosen: "backend" (each backend of a later run against the same
    # backend name in the first run) or "first" (everything against the first configuration)
    pairing: str = "backend"
    note: str = ""  # why the pairing is not the one asked for, said to the reader

    def rows_by_config(self) -> dict[tuple, list[CompareRow]]:
        out: dict[tuple, list[CompareRow]] = {}
        for r in self.rows:
            out.setdefault(r.other.config_key, []).append(r)
        return out


#: a ratio whose whole 95 % interval lies within 1 ± this is judged SAME, even when the
#: interval excludes 1: a run compared with itself, or a difference under 1 %, which the
#: noise between runs of one machine exceeds (docs/decisions.md, issue 15)
SAME_TOLERANCE = 0.01
SAME = f"same (within ±{100 * SAME_TOLERANCE:g} %)"


def _judge(metric: str, r: stats.Ratio, ref: ResultCell, other: ResultCell) -> str:
    if ref.invalid or other.invalid:
        return "INVALID: not compared"
    if not (ref.ok and other.ok):
        return "FAILED: not compared"
    if r.ratio is None:
        return "no figure"
    if r.ci_low is None:
        return "no interval"
    hi_better = METRICS[metric].higher_is_better
    if r.ci_high is not None and 1 - SAME_TOLERANCE <= r.ci_low and r.ci_high <= 1 + SAME_TOLERANCE:
        return SAME  # identical runs give [1, 1]; a difference this small is no difference to a buyer
    if r.ci_low > 1:
        return "better" if hi_better else "worse"
    if r.ci_high < 1:
        return "worse" if hi_better else "better"
    return "no clear difference"


def build_compare(cells: list[ResultCell], metrics=COMPARE_METRICS, same_backend: bool = False,
                  against_first: bool = False) -> RunComparison:
    """Configurations (run, backend, device) side by side on the workloads they share.

    By default (like with like: the same suite on two machines, or before / after a change)
    each configuration of a later run is compared with the configuration of the same backend
    name in the first run: onnx with onnx, torch with torch. same_backend asks for the same
    (the old flag, kept as an alias). When no backend name of a later run appears in the first
    run (one run folder holding two backends, or runs with different backend names), the
    comparison falls back to the first configuration as the reference, and says so in `note`.
    against_first: every configuration against the first one (in the order the runs were
    given), whatever its backend. Comparisons are made on every matching cell (same model,
    precision, batch, prompt length, generation length and scenario). Ratios are other /
    reference of the metric as measured, with their bootstrap interval, and a judgement of
    which side is better. Across workloads: the geometric mean
    of the valid rows' ratios, its interval carrying each workload's own (stats.pooled_ratio).
    """
    configs = list(dict.fromkeys(c.config_key for c in cells))
    if len(configs) < 2:
        raise ResultsError("compare needs at least two configurations (run, backend, device); these runs hold "
                           f"{len(configs)}: give another run folder")
    if same_backend and against_first:
        raise ResultsError("--same-backend and --against-first contradict each other: give one")
    pairing, note, refs = "first", "", {}
    if not against_first:
        first_run = configs[0][0]
        firsts: dict[str, tuple] = {}
        for k in configs:
            if k[0] == first_run:
                firsts.setdefault(k[1], k)  # the first of a backend name in the first run (one device per name)
        refs = {k: firsts[k[1]] for k in configs if k[0] != first_run and k[1] in firsts}
        if refs:
            pairing = "backend"
            refs.update(imported_references(cells, configs, refs))
            alone = [k for k in configs if k[0] != first_run and k not in refs]
            if alone:
                note = ("no backend of the same name in the first run, so not compared: "
                        + ", ".join(f"{k[0]}: {k[1]}" for k in alone))
        else:
            note = (f"no backend name of {first_run} appears in another run" if len({k[0] for k in configs}) > 1
                    else "one run") + ": every configuration is compared with the first one"
    if not refs:
        refs = {k: configs[0] for k in configs[1:]}
    first_cell: dict[tuple, ResultCell] = {}
    cells_of: dict[tuple, dict[tuple, ResultCell]] = {}  # configuration -> workload -> cell (the last wins)
    for c in cells:
        first_cell.setdefault(c.config_key, c)
        cells_of.setdefault(c.config_key, {})[c.workload_key] = c
    labels = {k: f"{k[0]}: {k[1]} @ {first_cell[k].device_label}" for k in configs}
    pairs: list[tuple[tuple, ResultCell, ResultCell]] = []  # (workload, reference cell, other cell)
    matched: set[int] = set()
    for other, ref in refs.items():
        theirs = cells_of.get(other, {})
        for wk, rc in cells_of.get(ref, {}).items():  # matched by key, never by scanning every cell
            oc = theirs.get(wk)
            if oc is not None:
                pairs.append((wk, rc, oc))
                matched.update({id(rc), id(oc)})
    rows = _compare_rows(pairs, metrics)
    by_group: dict[tuple, list[CompareRow]] = {}
    for r in rows:
        if r.ref.ok and r.other.ok:
            by_group.setdefault((r.other.config_key, r.metric), []).append(r)
    overall = {}
    for other in refs:
        for m in metrics:
            rs = by_group.get((other, m), [])
            if len(rs) >= 2:
                overall[(other, m)] = stats.pooled_ratio([(r.other_samples, r.ref_samples) for r in rs])
    unmatched = [c for c in cells if id(c) not in matched]
    return RunComparison(configs, refs, labels, rows, overall, unmatched, pairing, note)


def imported_references(cells: list[ResultCell], configs: list[tuple], refs: dict[tuple, tuple]) -> dict[tuple, tuple]:
    """References for configurations imported from another tool (`harness import`: backend
    type ``imported:TOOL``) that pairing by backend name left without one: a tool names its
    cells after itself (guidellm, aiperf), never after the harness backend that ran the same
    load, so each gets the first configuration the harness measured itself (in the order the
    runs were given) that holds a cell of the same workload (model, precision, batch, lengths,
    scenario: concurrency N). Issue 15: a tool's run sits against the harness's own."""
    imported: dict[tuple, bool] = {}
    loads: dict[tuple, set] = {}
    for c in cells:
        k = c.config_key
        imported[k] = imported.get(k, False) or str(c.record.backend_type).startswith("imported:")
        loads.setdefault(k, set()).add(c.workload_key)
    own = [k for k in configs if not imported.get(k)]
    out = {}
    for k in configs:
        if k in refs or k[0] == configs[0][0] or not imported.get(k):
            continue
        ref = next((o for o in own if loads.get(o, set()) & loads.get(k, set())), None)
        if ref is not None:
            out[k] = ref
    return out


def _compare_rows(pairs: list[tuple[tuple, ResultCell, ResultCell]], metrics) -> list[CompareRow]:
    """The rows of every matched pair and metric, their summaries and ratios bootstrapped all
    at once (a reference cell matched by several configurations is summarised once)."""
    values: dict[tuple[int, str], MetricValue] = {}

    def value(c: ResultCell, m: str) -> MetricValue:
        key = (id(c), m)
        if key not in values:
            values[key] = metric_value(c, m)
        return values[key]

    todo = []  # (workload, metric, reference cell, other cell, their values)
    for wk, rc, oc in pairs:
        for m in metrics:
            rv, ov = value(rc, m), value(oc, m)
            if rv.n == 0 and ov.n == 0:
                continue
            todo.append((wk, m, rc, oc, rv, ov))
    keys = list(dict.fromkeys(k for wk, m, rc, oc, rv, ov in todo for k in ((id(rc), m), (id(oc), m))))
    summary = dict(zip(keys, stats.summarize_many([values[k].samples for k in keys])))
    ratios = stats.ratio_many([(ov.samples, rv.samples) for wk, m, rc, oc, rv, ov in todo])
    return [CompareRow(wk, m, rc, oc, summary[(id(rc), m)], summary[(id(oc), m)], r, _judge(m, r, rc, oc),
                       rv.samples, ov.samples, rv.meter, ov.meter)
            for (wk, m, rc, oc, rv, ov), r in zip(todo, ratios)]


def workload_text(wk: tuple) -> str:
    model, prec, batch, p, g, scen = wk
    return f"{model} {prec} b{batch} pp{p}+tg{g}" + ("" if scen == "offline" else f" {scen}")


def compare_value(s: stats.Summary, cell: ResultCell, meter: Optional[MeterEnergy]) -> str:
    if cell.failed:
        return "FAILED"
    text = median_ci(s, 3) + energy_tag(meter)
    return f"INVALID {text}" if cell.invalid else text


def pooled_text(m: str, r: stats.Ratio) -> str:
    """One metric's ratio across workloads, with the caveat when too few are pooled."""
    few = (f"; caveat: fewer than {FEW_WORKLOADS} workloads pooled, how the ratio varies between them is "
           "barely sampled") if r.n_a < FEW_WORKLOADS else ""
    return f"across {r.n_a} workloads, {m}: B / A = {ratio_text(r)} (geometric mean){few}"


def ratio_text(r: stats.Ratio) -> str:
    if r.ratio is None:
        return "-"
    return f"{stats.fmt_num(r.ratio, 3)}x {stats.fmt_ci(r.ci_low, r.ci_high)}"


def compare_markdown(cmp: RunComparison) -> str:
    out = ["# Comparison", "", md_escape(_pairing_text(cmp)), ""]
    refs = set(cmp.refs.values())
    if len(refs) == 1:
        out += [f"Reference (A): **{md_escape(cmp.config_labels[next(iter(refs))])}**", ""]
    rows_of = cmp.rows_by_config()
    for other, ref in cmp.refs.items():
        out += [f"## {md_escape(cmp.config_labels[other])} (B) against A"
                + ("" if len(refs) == 1 else f": {md_escape(cmp.config_labels[ref])}"), ""]
        rows = rows_of.get(other, [])
        if not rows:
            out += ["No matching cells (same model, precision, batch, prompt and generation length, scenario).", ""]
            continue
        out += ["| workload | metric | A median [95% CI] | B median [95% CI] | B / A [95% CI] | B is |",
                "|---|---|---:|---:|---:|---|"]
        for r in rows:
            unit = METRICS[r.metric].unit
            out.append(f"| {md_escape(workload_text(r.workload))} | {r.metric} ({unit}) | "
                       f"{compare_value(r.ref_summary, r.ref, r.ref_meter)} | "
                       f"{compare_value(r.other_summary, r.other, r.other_meter)} | "
                       f"{ratio_text(r.ratio)} | {r.judgement} |")
        ov = [(m, cmp.overall[(other, m)]) for m in COMPARE_METRICS if (other, m) in cmp.overall]
        if ov:
            out += ["", "Across matching workloads (geometric mean of B / A; the interval resamples the workloads "
                    "and each workload's own repetitions, so it is not narrower than the narrowest workload's own):", ""]
            out += [f"- {pooled_text(m, r)}" for m, r in ov]
        out.append("")
    if cmp.unmatched:
        out += ["## Cells without a match", ""] + [f"- {md_escape(c.short)} on {md_escape(c.device_label)}" for c in cmp.unmatched] + [""]
    out += ["_Ratios are B / A of the metric as measured (for TTFT, TPOT and J/token lower is better). "
            "Medians with 95 % bootstrap intervals; \"no clear difference\" means the interval of the ratio "
            "contains 1._", ""]
    return "\n".join(out)


def _pairing_text(cmp: RunComparison) -> str:
    how = ("Pairing: each backend against the same backend name in the first run (same model, precision, batch and "
           "lengths)" if cmp.pairing == "backend" else "Pairing: every configuration against the first one")
    return how + (f"; {cmp.note}" if cmp.note else "") + "."


def print_compare(cmp: RunComparison, markdown: str | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(170, Console().width))
    console.print(escape(_pairing_text(cmp)))
    refs = set(cmp.refs.values())
    if len(refs) == 1:
        console.print(f"[bold]A (reference):[/bold] {escape(cmp.config_labels[next(iter(refs))])}")
    styles = {"better": "green", "worse": "red", "no clear difference": "yellow"}
    rows_of = cmp.rows_by_config()
    for other, ref in cmp.refs.items():
        rows = rows_of.get(other, [])
        versus = "A" if len(refs) == 1 else f"A: {cmp.config_labels[ref]}"
        if not rows:
            console.print(escape(f"B: {cmp.config_labels[other]}: no cells match A's workloads"))
            continue
        if len(rows) > MAX_TERMINAL_ROWS:  # a table of thousands of rows helps no one on a terminal
            console.print(escape(f"B: {cmp.config_labels[other]}  vs  {versus}: {len(rows)} rows"
                                 + (f" (all of them in {markdown})" if markdown else
                                    " (--markdown FILE writes every row)")))
            for m in METRICS:
                judged = [r.judgement for r in rows if r.metric == m]
                if judged:
                    counts = {j: judged.count(j) for j in dict.fromkeys(judged)}
                    console.print(escape(f"  {m}: " + ", ".join(f"{n} {j}" for j, n in counts.items())))
        else:
            t = Table(title=escape(f"B: {cmp.config_labels[other]}  vs  {versus}"), title_justify="left")
            for col, just in (("workload", "left"), ("metric", "left"), ("A median [95% CI]", "right"),
                              ("B median [95% CI]", "right"), ("B / A [95% CI]", "right"), ("B is", "left")):
                t.add_column(col, justify=just)
            for r in rows:
                style = styles.get(r.judgement, "bold red" if r.judgement.startswith(("INVALID", "FAILED")) else None)
                t.add_row(escape(workload_text(r.workload)), f"{r.metric} ({METRICS[r.metric].unit})",
                          escape(compare_value(r.ref_summary, r.ref, r.ref_meter)),
                          escape(compare_value(r.other_summary, r.other, r.other_meter)), escape(ratio_text(r.ratio)),
                          f"[{style}]{r.judgement}[/{style}]" if style else r.judgement)
            console.print(t)
        for m in METRICS:
            if (other, m) in cmp.overall:
                r = cmp.overall[(other, m)]
                console.print(escape(f"  {pooled_text(m, r)}"))
    if cmp.unmatched:
        console.print("[dim]without a match: " + escape(", ".join(c.short for c in cmp.unmatched)) + "[/dim]")
    console.print("[dim]B / A of the metric as measured; lower is better for ttft_s, tpot_s and j_per_token. "
                  "'no clear difference': the 95 % interval of the ratio contains 1.[/dim]")
