"""One cell's report metrics summarised (median, interval, energy source), the text
forms shared by the report and compare, and how cells are grouped and labelled."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness import stats
from harness.cells import ResultCell
from harness.figures import metric_value
from harness.records import MeterEnergy

# every metric a report table or figure shows
SUMMARY_METRICS = ("decode_tps", "prefill_tps", "ttft_s", "tpot_s", "tokens_per_joule", "j_per_token",
                   "j_per_prompt_token", "j_per_1k_tokens", "tokens_per_s_per_watt", "e2e_s")


def fmt(x: Optional[float], digits: int = 4) -> str:
    return stats.fmt_num(x, digits)


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
    return " (short window)" if m.quality == "short-window" else ""


@dataclass
class CellSummary:
    cell: ResultCell
    summaries: dict[str, stats.Summary]  # metric -> median and interval
    meters: dict[str, Optional[MeterEnergy]]  # energy metric -> the meter it came from
    reasons: dict[str, Optional[str]]  # metric -> why there is no figure

    def med(self, metric: str) -> Optional[float]:
        return self.summaries[metric].median

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
    sums, meters, reasons = {}, {}, {}
    for m in metrics:
        v = metric_value(c, m)
        sums[m], meters[m], reasons[m] = v.summary(), v.meter, v.reason
    return CellSummary(c, sums, meters, reasons)


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
        return s
    return label
