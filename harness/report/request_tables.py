"""The report's tables for cells run under a request scenario (single-stream, concurrency,
server@rate, mlperf-*) and for runs imported from another tool (`harness import` of
aiperf or guidellm): one table per system under test, one row per cell, so that an
imported run sits beside the harness's own run of the same load.

Batch cells go in the llama-bench table (harness.report.device_tables); a request cell
has no prefill/decode repetitions, its samples are its requests. A figure with samples
(TTFT, TPOT: one per request) is shown as the median with its 95 % bootstrap interval
(harness.stats, as every other figure of the report); a p99 with its distribution-free
interval from order statistics (below); a figure of the whole run (req/s, tokens/s, ITL
p99, whose gaps are not kept per request) as its value.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional

import numpy as np

from harness import stats
from harness.cells import ResultCell
from harness.report.document import Document, Table
from harness.report.table import energy_text

COLUMNS = ["run", "backend", "model", "dtype", "batch", "test", "scenario", "measured by", "req/s", "out tok/s",
           "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "ITL p99 ms", "goodput", "J/out-token", "failed", "note"]
NUMERIC = ("batch", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "ITL p99 ms", "goodput",
           "J/out-token", "failed")
#: the fewest requests whose p99 has an upper end: P(Binomial(n, 0.99) <= n - 1) = 1 - 0.99**n
#: must reach (1 + confidence) / 2
P99_BOUNDED_FROM = math.ceil(math.log((1 - stats.CONFIDENCE) / 2) / math.log(0.99))
CAPTION = ("One row per cell; cells of the same load (model, dtype, batch, lengths, scenario) sit together. "
           "TTFT p50 and TPOT p50: median over requests [95 % bootstrap interval]; TTFT p99 [95 % order-statistic "
           "interval; '-' at an end the requests are too few to bound: the upper end of a p99 needs >= "
           f"{P99_BOUNDED_FROM} requests]; "
           "req/s, out tok/s and ITL p99: over the whole run, one value. goodput: share of requests within the "
           "scenario's TTFT/TPOT limits (every successful one where it set none). measured by: the harness's own "
           "load generator, or the tool a run was imported from (`harness import`).")


@dataclass(frozen=True)
class QuantileCI:
    """A quantile of per-request values with a distribution-free confidence interval."""

    value: Optional[float]
    low: Optional[float]  # None: the samples are too few to bound this end
    high: Optional[float]
    n: int


def quantile_ci(samples, q: float, confidence: float = stats.CONFIDENCE) -> QuantileCI:
    """The q-quantile and the interval [x_(l), x_(u)] between two order statistics.

    Why not the bootstrap, as for medians: a bootstrap of a tail quantile resamples the few
    largest values over and over and its interval under-covers. The order-statistic interval
    is exact for any continuous distribution: x_(k) <= Q_q exactly when at least k samples
    lie at or below Q_q, a Binomial(n, q) event, so with l = F^-1(a/2) and u = F^-1(1-a/2)+1
    the coverage F(u-1) - F(l-1) is at least 1-a. A rank outside 1..n leaves that end open.
    """
    x = sorted(float(v) for v in samples if v is not None and math.isfinite(float(v)))
    n = len(x)
    if n == 0:
        return QuantileCI(None, None, None, 0)
    from scipy.stats import binom  # the [report] extra, as harness.stats' bootstrap

    a = 1.0 - confidence
    lo_rank = int(binom.ppf(a / 2, n, q))  # 1-based rank of the lower end (0: open)
    hi_rank = int(binom.ppf(1 - a / 2, n, q)) + 1  # n + 1: open
    value = float(np.percentile(x, 100 * q))  # numpy's linear rule, as the records' p50/p90/p99
    return QuantileCI(value, x[lo_rank - 1] if lo_rank >= 1 else None,
                      x[hi_rank - 1] if hi_rank <= n else None, n)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else stats.fmt_num(v * 1e3, 4)


def _with_ci(value: Optional[float], low: Optional[float], high: Optional[float]) -> str:
    if value is None:
        return "-"
    if low is None and high is None:
        return _ms(value)
    return f"{_ms(value)} [{_ms(low)}, {_ms(high)}]"


def measured_by(c: ResultCell) -> str:
    """Who issued and timed the requests: the tool an imported cell came from (with its
    version), else the harness (with the version that wrote the run)."""
    r = c.record
    if str(r.backend_type).startswith("imported:"):
        tool = (r.sut or {}).get("measured_by") or str(r.backend_type).split(":", 1)[1]
        version = (r.sut or {}).get("tool_version") or ((c.meta.get("imported") or {}).get("tool_version"))
        return f"{tool} {version}" if version else str(tool)
    version = c.meta.get("harness_version")
    return f"harness {version}" if version else "harness"


def system_key(c: ResultCell) -> str:
    """Which table a request cell goes in. An endpoint (`endpoint:HOST:PORT`, the
    openai-http backend's device, or an imported run's --device) is the system under test
    whatever machine the client ran on, so the harness's run and a tool's run of the same
    server share its table; any other device is labelled with its host, as everywhere in
    the report."""
    dev = str(c.record.device or "?")
    return dev if dev.startswith("endpoint") else c.device_label


def _samples(c: ResultCell, key: str) -> list[float]:
    m = c.record.metric(key) or {}
    s = m.get("samples")
    if s:
        return [float(v) for v in s if v is not None]
    return []


def _row(c: ResultCell, p50: dict[str, stats.Summary]) -> tuple[list[str], Optional[str]]:
    r = c.record
    base = [c.run_id, r.backend, r.model, c.precision, r.batch, f"pp{r.prompt_len}+tg{r.gen_len}", r.scenario,
            measured_by(c)]
    summary = (r.summary or [None])[0]
    if r.failed or not summary:
        msg = (r.error.message if r.error else "").splitlines()[:1]
        return base + ["FAILED"] + ["-"] * 7 + [str((r.metrics or {}).get("failed", "-")),
                                                 msg[0][:80] if msg else ""], "invalid"
    m = r.metrics or {}

    def figure(key: str, digits: int = 4) -> str:
        v = summary.get(key)
        return "-" if v is None else stats.fmt_num(v, digits)

    ttft = p50["ttft_s"]
    tpot = p50["tpot_s"]
    ttft_text = _with_ci(ttft.median, ttft.ci_low, ttft.ci_high) if ttft.n else _ms(summary.get("ttft_p50_s"))
    tpot_text = _with_ci(tpot.median, tpot.ci_low, tpot.ci_high) if tpot.n else _ms(summary.get("tpot_p50_s"))
    t99 = quantile_ci(_samples(c, "ttft_s"), 0.99)
    t99_text = _with_ci(t99.value, t99.low, t99.high) if t99.n else _ms(summary.get("ttft_p99_s"))
    good = summary.get("goodput_fraction")
    limits = ((m.get("goodput") or {}).get("limits") or {})
    good_text = "-" if good is None else f"{100 * good:.0f} %"
    if good is not None and not any(v is not None for v in limits.values()):
        good_text += " (no limits)"
    notes = []
    if r.invalid:
        notes.append("INVALID")
    if m.get("tpot_not_observed"):
        notes.append(f"{m['tpot_not_observed']} burst (TPOT not observed)")
    if m.get("count_mismatch"):
        notes.append(f"{m['count_mismatch']} count mismatch")
    row = base + [figure("achieved_rps", 4), figure("output_tps", 4), ttft_text, t99_text, tpot_text,
                  _ms(summary.get("itl_p99_s")), good_text, energy_text(c, "j_per_token"),
                  str(summary.get("failed", m.get("failed", 0))), "; ".join(notes)]
    return row, ("invalid" if r.invalid else None)


def request_table(cells: list[ResultCell]) -> Optional[Table]:
    """The request-scenario table of these cells (None when none ran under a request scenario)."""
    cells = [c for c in cells if c.record.is_request_scenario]
    if not cells:
        return None
    order = {id(c): i for i, c in enumerate(cells)}
    # the same load together (in the order its first cell came), then the runs in the order given
    first: dict[tuple, int] = {}
    for c in cells:
        first.setdefault(c.workload_key, order[id(c)])
    cells = sorted(cells, key=lambda c: (first[c.workload_key], order[id(c)]))
    # every cell's p50 intervals bootstrapped at once (stats.summarize_many)
    keys = ("ttft_s", "tpot_s")
    sums = stats.summarize_many([_samples(c, k) for c in cells for k in keys])
    t = Table(list(COLUMNS), right=NUMERIC, caption=CAPTION)
    for i, c in enumerate(cells):
        row, cls = _row(c, {k: sums[i * len(keys) + j] for j, k in enumerate(keys)})
        t.add(row, cls)
    return t


def add_request_section(doc: Document, cells: list[ResultCell]) -> None:
    """A "Request scenarios" section: one table per system under test (system_key), or
    nothing when no cell ran under a request scenario."""
    groups: dict[str, list[ResultCell]] = {}
    for c in cells:
        if c.record.is_request_scenario:
            groups.setdefault(system_key(c), []).append(c)
    if not groups:
        return
    doc.h(2, "Request scenarios")
    doc.p("Cells run by a request scenario (single-stream, concurrency, server@rate, mlperf-*) and runs imported "
          "from other tools, one table per system under test. An imported run's figures are recomputed with the "
          "harness's definitions from the tool's per-request timings (README, Interop).")
    for key, group in groups.items():
        doc.h(3, key)
        doc.table(request_table(group))
