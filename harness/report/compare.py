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

    def rows_by_config(self) -> dict[tuple, list[CompareRow]]:
        out: dict[tuple, list[CompareRow]] = {}
        for r in self.rows:
            out.setdefault(r.other.config_key, []).append(r)
        return out


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
    if r.ci_low > 1:
        return "better" if hi_better else "worse"
    if r.ci_high < 1:
        return "worse" if hi_better else "better"
    return "no clear difference"


def build_compare(cells: list[ResultCell], metrics=COMPARE_METRICS, same_backend: bool = False) -> RunComparison:
    """Configurations (run, backend, device) side by side on the workloads they share.

    By default the first configuration (in the order the runs were given) is the reference;
    each other one is compared with it. same_backend: each configuration of a later run is
    compared with the configuration of the same backend label in the first run (a before /
    after comparison of the same software on the same hardware). Comparisons are made on
    every matching cell (same model, precision, batch, prompt length, generation length and
    scenario). Ratios are other / reference of the metric as measured, with their bootstrap
    interval, and a judgement of which side is better. Across workloads: the geometric mean
    of the valid rows' ratios, its interval carrying each workload's own (stats.pooled_ratio).
    """
    configs = list(dict.fromkeys(c.config_key for c in cells))
    if len(configs) < 2:
        raise ResultsError("compare needs at least two configurations (run, backend, device); these runs hold "
                           f"{len(configs)}: give another run folder")
    if same_backend:
        first_run = configs[0][0]
        firsts = {k[1]: k for k in configs if k[0] == first_run}
        refs = {k: firsts[k[1]] for k in configs if k[0] != first_run and k[1] in firsts}
        if not refs:
            raise ResultsError(f"--same-backend: no backend label of {first_run} appears in the other runs")
    else:
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
    return RunComparison(configs, refs, labels, rows, overall, unmatched)


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
    out = ["# Comparison", ""]
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


def print_compare(cmp: RunComparison, markdown: str | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(170, Console().width))
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
