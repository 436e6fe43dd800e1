"""pytest-benchmark timings of `harness report` and `harness compare` per 1,000 records
(issue 21), kept per commit by CI so that a regression shows in their history; no speed
assertions here. The records are real ones (tests/data/v1_runs) replicated with distinct
workloads by scripts/make_big_run.py, as the scale measurements in docs/decisions.md were.

Also here: the batched bootstrap gives the same intervals as scipy.stats.bootstrap called
directly, one sample at a time (the figures of a report must not move when it gets faster).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from harness import stats
from harness.cells import load_cells
from harness.report.compare import build_compare, compare_markdown
from harness.report.run_report import build_report
from harness.report.document import to_markdown

ROOT = Path(__file__).resolve().parents[1]
SEED_RUN = ROOT / "tests" / "data" / "v1_runs" / "before-smoke-est"
RECORDS = 1000


def _make_big_run():
    spec = importlib.util.spec_from_file_location("make_big_run", ROOT / "scripts" / "make_big_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_big_run


@pytest.fixture(scope="module")
def big_runs(tmp_path_factory):
    make = _make_big_run()
    base = tmp_path_factory.mktemp("big")
    return make(SEED_RUN, base / "a", RECORDS, seed=1, run_id="a"), make(SEED_RUN, base / "b", RECORDS, seed=2,
                                                                           run_id="b")


def test_generator_writes_distinct_real_records(big_runs):
    a, b = big_runs
    cells_a, cells_b = load_cells([a]), load_cells([b])
    assert len(cells_a) == len(cells_b) == RECORDS  # every workload distinct: none superseded on load
    assert {c.workload_key for c in cells_a} == {c.workload_key for c in cells_b}
    med_a = {c.record.cell_id: c.record.metrics["decode_tps"]["median"] for c in cells_a}
    med_b = {c.record.cell_id: c.record.metrics["decode_tps"]["median"] for c in cells_b}
    assert sum(med_a[k] != med_b[k] for k in med_a) > RECORDS * 0.9  # the seeds measure differently


def test_report_per_1000_records(benchmark, big_runs):
    a, _ = big_runs
    doc = benchmark.pedantic(build_report, args=([a],), kwargs={"with_plots": True}, rounds=1, iterations=1)
    md = to_markdown(doc)
    assert f"{RECORDS} cell(s)" in md and "Procurement figures" in md


def test_compare_per_1000_records(benchmark, big_runs):
    a, b = big_runs
    cells = load_cells([a, b])
    cmp = benchmark.pedantic(build_compare, args=(cells,), rounds=1, iterations=1)
    assert cmp.rows and len(cmp.overall) > 0
    assert "across" in compare_markdown(cmp)


def _scipy_interval(x: np.ndarray) -> tuple:
    res = sps.bootstrap((x,), lambda v, axis=-1: np.median(v, axis=axis), vectorized=True, confidence_level=0.95,
                        n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    lo, hi = (float(v) for v in res.confidence_interval)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (None, None)


def _scipy_ratio(a: np.ndarray, b: np.ndarray) -> tuple:
    def f(u, v, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.median(u, axis=axis) / np.median(v, axis=axis)

    res = sps.bootstrap((a, b), f, vectorized=True, confidence_level=0.95, n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(0))
    return tuple(float(v) for v in res.confidence_interval)


def test_batched_intervals_equal_scipy_one_at_a_time():
    rng = np.random.default_rng(11)
    samples = []
    for n in (2, 3, 5, 8, 10, 15):  # odd and even lengths; 15 takes the direct path (no subset table)
        for _ in range(6):
            x = rng.lognormal(0.0, 0.2, n)
            if rng.random() < 0.3:
                x[: n // 2] = x[0]  # ties
            samples.append(x)
    for x, s in zip(samples, stats.summarize_many(samples)):
        assert (s.ci_low, s.ci_high) == _scipy_interval(x)  # the same floats, not approximately
        assert s.median == float(np.median(x)) and s.sd == float(np.std(x, ddof=1))
    pairs = [(samples[i], samples[(5 * i + 2) % len(samples)]) for i in range(len(samples))]
    for (a, b), r in zip(pairs, stats.ratio_many(pairs)):
        assert (r.ci_low, r.ci_high) == _scipy_ratio(a, b)


class _Tty:
    """A stream that says it is a terminal and keeps what was written."""

    def __init__(self, tty: bool):
        self.tty, self.parts = tty, []

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty,quiet,shown", [(True, False, True), (True, True, False), (False, False, False)])
def test_progress_only_on_a_terminal_and_without_quiet(tty, quiet, shown):
    from harness.report.progress import Stages

    stream = _Tty(tty)
    with Stages(2, quiet=quiet, stream=stream) as progress:
        progress.stage("reading records")
        progress.stage("comparing 42 cells")
    text = "".join(stream.parts)
    assert ("comparing 42 cells" in text) is shown
    assert (text != "") is shown
