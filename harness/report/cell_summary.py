"""One cell's report metrics summarised (median, interval, energy source), the text
forms shared by the report and compare, and how cells are grouped and labelled."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from harness import stats
from harness.cells import ResultCell
from harness.figures import MetricValue, metric_value
from harness.records import MeterEnergy

# every metric a report table or figure shows
SUMMARY_METRICS = ("decode_tps", "prefill_tps", "ttft_s", "tpot_s", "tokens_per_joule", "j_per_token",
                   "j_per_prompt_token", "j_per_1k_tokens", "tokens_per_s_per_watt", "e2e_s")


def fmt(x: Optional[float], digits: int = 4) -> str:
    return stats.fmt_num(x, digits)


#: a failure reason or energy note is shown in full and wrapped by the table (issue 20); this
#: bound only keeps a hostile results file from filling the report with one message
MAX_REASON = 4000


def shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1].rstrip() + "…"


def money(x: Optional[float], cur: str = "") -> str:
    if x is None:
        return "-"
    text = f"{x:.3g}" if x < 100 else f"{x:,.0f}"
    return f"{cur} {text}" if cur else text


def median_ci(s: stats.Summary, digits: int = 4) -> str:
    if s.median is None:
        return "-"
    return f"{fmt(s.median, digits)} {stats.fmt_ci(s.ci_low, s.ci_high, 3)}"


def energy_tag(m: Optional[MeterEnergy]) -> str:
    """How far to trust an energy figure, said beside it."""
    if not m:
        return ""
    if m.is_estimate:
        return " (estimate)"
    return {"short-window": " (short window)", "speed-mismatch": " (FLAGGED: energy window ran at another speed)",
            "clock-skew": " (FLAGGED: meter clock off)"}.get(m.quality, "")


class SummaryTable:
    """The report metrics of many cells, summarised a metric at a time for all of them at once
    (stats.summarize_many: one array operation per sample length, not one bootstrap per cell)
    the first time any cell's figure of that metric is read; a metric no table shows is never
    bootstrapped."""

    def __init__(self, cells: list[ResultCell]):
        self.cells = cells
        self._values: dict[str, list[MetricValue]] = {}
        self._summaries: dict[str, list[stats.Summary]] = {}

    def values(self, metric: str) -> list[MetricValue]:
        if metric not in self._values:
            self._values[metric] = [metric_value(c, metric) for c in self.cells]
        return self._values[metric]

    def summaries(self, metric: str) -> list[stats.Summary]:
        if metric not in self._summaries:
            self._summaries[metric] = stats.summarize_many([v.samples for v in self.values(metric)])
        return self._summaries[metric]

    def by_cell(self) -> dict[int, "CellSummary"]:
        return {id(c): CellSummary(c, self, i) for i, c in enumerate(self.cells)}


def _median(samples: list[float]) -> Optional[float]:
    return stats.median(samples)


class _Column(Mapping):
    """One cell's entry of each metric in a SummaryTable (summaries, meters or reasons)."""

    def __init__(self, table: SummaryTable, index: int, what: str):
        self._t, self._i, self._what = table, index, what

    def __getitem__(self, metric: str):
        if self._what == "summary":
            return self._t.summaries(metric)[self._i]
        v = self._t.values(metric)[self._i]
        return v.meter if self._what == "meter" else v.reason

    def __iter__(self):
        return iter(SUMMARY_METRICS)

    def __len__(self) -> int:
        return len(SUMMARY_METRICS)


class CellSummary:
    """One cell's metrics: median and interval, energy source, why a figure is missing."""

    def __init__(self, cell: ResultCell, table: SummaryTable, index: int):
        self.cell = cell
        self._t, self._i = table, index
        self.summaries: Mapping[str, stats.Summary] = _Column(table, index, "summary")
        self.meters: Mapping[str, Optional[MeterEnergy]] = _Column(table, index, "meter")  # the meter it came from
        self.reasons: Mapping[str, Optional[str]] = _Column(table, index, "reason")  # why there is no figure

    def med(self, metric: str) -> Optional[float]:
        """The median alone (no bootstrap): rankings and figures read only this."""
        if metric in self._t._summaries:
            return self._t._summaries[metric][self._i].median
        return _median(self._t.values(metric)[self._i].samples)

    def value(self, metric: str) -> str:
        """median [CI] with its energy tag, or why there is none; INVALID cells say so."""
        s = self.summaries[metric]
        text = median_ci(s) + energy_tag(self.meters.get(metric)) if s.median is not None else "-"
        if self.cell.invalid:
            return f"INVALID {text}"
        if self.cell.failed:
            return "FAILED"
        return text


def cell_summary(c: ResultCell, metrics=SUMMARY_METRICS) -> CellSummary:
    return SummaryTable([c]).by_cell()[id(c)]


def cell_summaries(cells: list[ResultCell]) -> dict[int, CellSummary]:
    """Every cell's CellSummary by id(cell), backed by one SummaryTable."""
    return SummaryTable(cells).by_cell()


def by_device(cells: list[ResultCell]) -> dict[str, list[ResultCell]]:
    out: dict[str, list[ResultCell]] = {}
    for c in cells:
        out.setdefault(c.device_label, []).append(c)
    return out


def labeler(cells: list[ResultCell]):
    """label(cell): backend and precision, plus the run and the lengths where the cells differ in them."""
    shapes = {(c.record.prompt_len, c.record.gen_len) for c in cells}
    runs_of: dict[str, set] = {}
    for c in cells:
        runs_of.setdefault(str(c.record.backend), set()).add(c.run_id)

    def label(c: ResultCell) -> str:
        r = c.record
        s = f"{r.backend} {c.precision}"
        if len(runs_of[str(r.backend)]) > 1:
            s += f" [{c.run_id}]"
        if len(shapes) > 1:
            s += f" p{r.prompt_len}/g{r.gen_len}"
        return f"{s} {c.mark}" if c.mark else s  # unsealed / failing run (harness.seal): in every table
    return label
