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
    benchmark.extra_info["records"] = RECORDS  # the history's unit: seconds per 1,000 records
    doc = benchmark.pedantic(build_report, args=([a],), kwargs={"with_plots": True}, rounds=1, iterations=1)
    md = to_markdown(doc)
    assert f"{RECORDS} cell(s)" in md and "Procurement figures" in md


def test_compare_per_1000_records(benchmark, big_runs):
    a, b = big_runs
    cells = load_cells([a, b])
    benchmark.extra_info["records"] = RECORDS
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


# --- the fast loader (orjson with json deciding when unsure; depth read off the text) -------

def _seed_line() -> dict:
    import json

    return json.loads((SEED_RUN / "results.jsonl").read_text().splitlines()[0])


def _one_record_run(tmp_path: Path, line: bytes) -> Path:
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(SEED_RUN / "run.json", run / "run.json")
    (run / "results.jsonl").write_bytes(line + b"\n")
    return run


@pytest.mark.parametrize("digits", [19, 20, 45])
def test_a_long_integer_reads_as_the_integer_it_is(tmp_path, digits):
    """orjson keeps 64 bits (a 20-digit integer becomes a float, which the type check would
    refuse for `params`); such a line must read as json reads it: every digit, an int."""
    import json

    from harness.results import load_run

    big = int("9" * digits)
    rec = dict(_seed_line(), params=big)
    rec.setdefault("load", {})["note"] = 0.1234567890123456789012  # a long fraction, not an integer
    _, records = load_run(_one_record_run(tmp_path, json.dumps(rec).encode()))
    assert type(records[0].params) is int and records[0].params == big


def _nest(depth: int):
    v: object = 1
    for _ in range(depth - 2):  # the record itself and the describe mapping are two levels
        v = [v]
    return v


@pytest.mark.parametrize("depth,quote,ok", [(64, False, True), (65, False, False), (64, True, True),
                                            (65, True, False)])
def test_nesting_limit_counts_brackets_outside_strings_only(tmp_path, depth, quote, ok):
    import json

    from harness.results import ResultsError, load_run

    rec = dict(_seed_line())
    # brackets inside strings are text, not nesting; an escaped quote takes the walk instead
    rec["describe"] = {"deep": _nest(depth), "text": "[[[[{{{{" * 20 + ('\\"' if quote else "")}
    line = json.dumps(rec).encode()
    assert (b'\\"' in line) is quote
    run = _one_record_run(tmp_path, line)
    if ok:
        assert load_run(run)[1][0].describe["text"].startswith("[[[[")
    else:
        with pytest.raises(ResultsError, match=r"results.jsonl:1: JSON nested more than 64 levels deep"):
            load_run(run)


@pytest.mark.parametrize("value,message", [(float("nan"), None), ('"\\ud800"', "lone UTF-16 surrogate")])
def test_values_orjson_refuses_are_read_as_json_reads_them(tmp_path, value, message):
    import json

    from harness.results import ResultsError, load_run

    rec = _seed_line()
    text = json.dumps(rec)
    text = text.replace('"model": ', f'"extra": {value if isinstance(value, str) else "NaN"}, "model": ', 1)
    run = _one_record_run(tmp_path, text.encode())
    if message is None:
        assert load_run(run)[1][0].model == rec["model"]  # json reads NaN: the record loads
    else:
        with pytest.raises(ResultsError, match=message):
            load_run(run)


def test_median_is_numpys_median_of_the_finite_samples():
    rng = np.random.default_rng(5)
    for _ in range(3000):
        n = int(rng.integers(0, 10))
        x = list(rng.lognormal(0.0, 1.0, n))
        if n > 2 and rng.random() < 0.3:
            x[1], x[2] = None, float("inf")
        if n > 3 and rng.random() < 0.3:
            x[3] = x[0]  # ties
        finite = [v for v in x if v is not None and math.isfinite(v)]
        want = float(np.median(np.array(finite))) if finite else None
        assert stats.median(x) == want


def test_many_configurations_draw_every_point_in_their_colours(monkeypatch):
    """Above MAX_SERIES_ARTISTS lines the batch figure draws collections; every valid point is
    still a marker of its configuration's colour and every INVALID point a red cross."""
    from matplotlib.colors import to_hex

    from harness.report import plots

    drawn = {}
    monkeypatch.setattr(plots, "to_png", lambda fig: drawn.setdefault("fig", fig) and b"")
    series = []
    for i in range(plots.MAX_SERIES_ARTISTS + 7):
        pts = [plots.CellPoint(f"cfg{i}", "dev", b, 100.0 * i + b, 0.5 + i + b, 1.0 / (1 + i + b), 1.0,
                               valid=bool(i % 10 or b != 4), estimate=False) for b in (1, 2, 4)]
        series.append(plots.Series(f"cfg{i}", "dev", pts))
    plots.batch_figure(series)
    ax = drawn["fig"].axes[0]
    got = {}
    for line in ax.get_lines():
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            got.setdefault((float(x), float(y)), set()).add(to_hex(line.get_color()))
    for i, s in enumerate(series):
        for p in s.points:
            want = plots.PALETTE[i % len(plots.PALETTE)] if p.valid else plots.INVALID_COLOR
            assert want in got[(float(p.batch), p.decode_tps)]
    segments = [seg for c in ax.collections for seg in c.get_segments()]
    assert len(segments) == len(series)  # one polyline per configuration


def test_reading_without_orjson_gives_the_same_records(monkeypatch):
    """orjson is optional (the report extra): json alone reads every run to the same records."""
    from harness import results

    for run in sorted((ROOT / "tests" / "data" / "v1_runs").iterdir()):
        fast = [r.to_json() for r in results.load_run(run)[1]]
        with monkeypatch.context() as m:
            m.setattr(results, "_orjson", None)
            slow = [r.to_json() for r in results.load_run(run)[1]]
        assert fast == slow and len(fast) > 0


def test_pooled_interval_equals_sorting_every_replicate(monkeypatch):
    """The pooled interval of compare reads each workload's replicates in order; counting the
    few values they take must give the floats the sort of all n_resamples replicates gives."""
    rng = np.random.default_rng(21)
    pairs = []
    for na, nb in [(5, 5), (4, 4), (3, 5), (5, 4), (2, 2), (1, 3), (7, 7), (6, 6)]:  # (6, 6): the sort path
        for _ in range(40):
            a, b = rng.lognormal(0.0, 0.3, na), rng.lognormal(0.1, 0.3, nb)
            if rng.random() < 0.3:
                a = np.round(a, 1)  # ties
            pairs.append((list(a), list(b)))
    fast = stats.pooled_ratio(pairs)
    monkeypatch.setattr(stats, "_ranked_log_ratios", lambda *a: None)
    slow = stats.pooled_ratio(pairs)
    assert (fast.ratio, fast.ci_low, fast.ci_high) == (slow.ratio, slow.ci_low, slow.ci_high)
    assert fast.ci_low < fast.ratio < fast.ci_high


def test_ratio_intervals_from_value_counts_equal_the_partition(monkeypatch):
    """ratio_many reads a row's interval off the few values its ratio replicates take
    (stats._pair_codes) instead of partitioning n_resamples replicates: the same floats, a
    row whose replicates hold a NaN (0 / 0) without an interval and one that reaches inf (x / 0)
    as the partition path treats it."""
    rng = np.random.default_rng(33)
    pairs = []
    for na, nb in [(5, 5), (4, 4), (3, 5), (5, 4), (2, 2), (2, 7), (7, 7), (6, 6), (13, 5)]:  # (6, 6), (13, 5): partition
        for _ in range(30):
            a, b = rng.lognormal(0.0, 0.3, na), rng.lognormal(0.1, 0.3, nb)
            if rng.random() < 0.3:
                a = np.round(a, 1)  # ties
            pairs.append((list(a), list(b)))
    pairs.append(([0.0, 0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0, 1.0]))  # some resamples 0 / 0
    pairs.append(([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 1.0, 2.0]))  # some resamples x / 0
    # 0 / 0 is a value these replicates could take (both medians at their smallest, 5 of 9 draws
    # each) but no resample of the 2000 takes it: the row keeps its interval
    pairs.append(([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [0.0, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]))
    fast = stats.ratio_many(pairs)
    monkeypatch.setattr(stats, "_pair_codes", lambda *a: None)
    slow = stats.ratio_many(pairs)
    assert [(r.ratio, r.ci_low, r.ci_high) for r in fast] == [(r.ratio, r.ci_low, r.ci_high) for r in slow]
    assert fast[-3].ci_low is None and fast[-3].ci_high is None  # 0 / 0 in some resample
    assert fast[-1].ci_low is not None and fast[-1].ci_low < fast[-1].ratio < fast[-1].ci_high
    assert sum(r.ci_low is not None for r in fast) >= len(pairs) - 3
