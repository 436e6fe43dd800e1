"""`harness report` and `harness compare` over request-scenario cells: the harness's own
concurrency run against a real `harness serve` subprocess of the tiny model, beside a
guidellm run of the same load imported with `harness import` (the export written here in
guidellm 0.8's format: one line, as guidellm writes it, naming the server it ran against).

Expected figures are computed here from the raw data (the synthetic requests, the
record's per-request rows), not with the table code under test.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
import shutil
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from harness import stats
from harness.cells import load_cells
from harness.importers import import_file
from harness.importers.common import Labels
from harness.report.compare import SAME, _judge, build_compare
from harness.report.document import to_markdown
from harness.report.request_tables import quantile_ci
from harness.report.run_report import build_report

ROOT = Path(__file__).resolve().parent.parent
STREAMS, PER_STREAM, PROMPT, GEN = 4, 3, 16, 8
T0 = 1_796_000_000.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A `harness serve` subprocess of the tiny model and the harness's own concurrency run against it."""
    tmp = tmp_path_factory.mktemp("served")
    ready = tmp / "url"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "harness.serve", "--model", "tiny", "--port", "0",
                             "--max-batch", "4", "--max-seq", "64", "--ready-file", str(ready)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert ready.exists(), proc.stderr.read().decode() if proc.poll() is not None else "server did not start"
        url = ready.read_text().strip()
        suite = tmp / "own.yaml"
        suite.write_text(f"""
name: own
seed: 0
scenario: {{type: concurrency, requests: {STREAMS * PER_STREAM}, warmup_requests: 1}}
workloads:
  - {{model: tiny, dtypes: [fp32], batch_sizes: [{STREAMS}], prompt_lens: [{PROMPT}], gen_lens: [{GEN}]}}
backends:
  - {{type: openai-http, name: harness-http, options: {{url: "{url}", api: chat}}}}
energy: {{enabled: false}}
accuracy: {{enabled: false}}
""")
        run = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--name", "own", "--output",
                              str(tmp / "results"), "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        yield url, tmp / "results" / "own"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _synthetic():
    """(start, ttft, latency) of a closed loop of STREAMS streams, PER_STREAM requests each."""
    out = []
    for s in range(STREAMS):
        t = s * 0.002
        for k in range(PER_STREAM):
            i = s * PER_STREAM + k
            ttft = 0.030 + 0.003 * ((i * 5) % 7)
            lat = ttft + (GEN - 1) * (0.008 + 0.0005 * (i % 3))
            out.append((t, ttft, lat))
            t += lat + 0.001
    return out


def _guidellm_export(url: str) -> str:
    """guidellm 0.8.1's benchmarks JSON (GenerativeBenchmarksReport; harness/importers/guidellm.py)."""
    successful = []
    for n, (start, ttft, lat) in enumerate(_synthetic()):
        successful.append({
            "type_": "generative_request_stats", "request_id": f"req-{n}",
            "info": {"request_id": f"req-{n}", "status": "completed", "error": None},
            "request_start_time": T0 + start, "request_end_time": T0 + start + lat, "request_latency": lat,
            "prompt_tokens": PROMPT, "output_tokens": GEN, "total_tokens": PROMPT + GEN,
            "time_to_first_token_ms": ttft * 1e3, "time_per_output_token_ms": lat * 1e3 / GEN,
            "inter_token_latency_ms": (lat - ttft) * 1e3 / (GEN - 1)})
    doc = {"metadata": {"version": 2, "guidellm_version": "0.8.1", "python_version": "3.11.2", "platform": "Linux"},
           "config": {"metadata": {"labels": {}},
                      "spec": {"backend": {"kind": "openai_http", "target": url, "model": "tiny",
                                           "request_format": "/v1/chat/completions"}}},
           "benchmarks": [{"type_": "generative_benchmark",
                           "config": {"strategy": {"type_": "concurrent", "worker_count": STREAMS,
                                                   "max_concurrency": STREAMS, "streams": STREAMS}},
                           "metrics": {}, "requests": {"successful": successful, "incomplete": [], "errored": []}}]}
    return json.dumps(doc)  # one line, as guidellm writes it


@pytest.fixture(scope="module")
def imported(served, tmp_path_factory):
    url, _ = served
    f = tmp_path_factory.mktemp("gl") / "guidellm.json"
    f.write_text(_guidellm_export(url))
    # only the precision is given: device and model come from the server the export names
    return import_file(f, f.parent / "results", name="gl", labels=Labels(dtype="fp32"))


def _table_rows(md: str, heading: str) -> list[dict]:
    """The rows of the first Markdown table under `heading`, as dicts."""
    lines = md.splitlines()
    i = lines.index(heading)
    while not lines[i].startswith("|"):
        i += 1
    split = lambda line: [c.strip() for c in line.strip("|").split(" | ")]  # noqa: E731
    cols = split(lines[i])
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(cols, split(line))))
    return rows


def _ms(v: float) -> str:
    return stats.fmt_num(v * 1e3, 4)


def test_report_has_both_runs_in_one_request_table(served, imported):
    url, own = served
    md = to_markdown(build_report([own, imported], with_plots=False))
    endpoint = f"endpoint:127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert "## Request scenarios" in md
    rows = _table_rows(md, f"### {endpoint}")  # one system: both runs in its table
    assert [r["run"] for r in rows] == ["own", "gl"]
    mine, theirs = rows
    assert all(len(r) == 18 and "-" not in (r["req/s"], r["TTFT p50 ms"], r["TPOT p50 ms"]) for r in rows)
    assert mine["measured by"].startswith("harness ") and theirs["measured by"] == "guidellm 0.8.1"
    for r in rows:
        assert (r["model"], r["dtype"], r["batch"], r["test"], r["scenario"]) == \
            ("tiny", "fp32", str(STREAMS), f"pp{PROMPT}+tg{GEN}", "concurrency")

    # the imported figures, from the synthetic requests with the harness's definitions
    syn = _synthetic()
    span = max(s + lat for s, _, lat in syn) - min(s for s, _, _ in syn)
    assert theirs["req/s"] == stats.fmt_num(len(syn) / span, 4)
    assert theirs["out tok/s"] == stats.fmt_num(len(syn) * GEN / span, 4)
    ttft = sorted(t for _, t, _ in syn)
    assert theirs["TTFT p50 ms"].startswith(_ms(statistics.median(ttft)) + " [")
    tpot = [(lat - t) / (GEN - 1) for _, t, lat in syn]
    assert theirs["TPOT p50 ms"].startswith(_ms(statistics.median(tpot)) + " [")
    assert theirs["failed"] == "0" and theirs["goodput"] == "100 % (no limits)"

    # the harness's own row, from the record's per-request rows
    rec = json.loads((own / "results.jsonl").read_text().splitlines()[0])
    reqs = [q for q in rec["requests"] if not q.get("error")]
    assert len(reqs) == STREAMS * PER_STREAM and all(q["n_generated"] == GEN for q in reqs)
    lo, hi = _ms(min(q["ttft_s"] for q in reqs)), _ms(max(q["ttft_s"] for q in reqs))
    p50 = mine["TTFT p50 ms"]
    assert p50.startswith(_ms(statistics.median(q["ttft_s"] for q in reqs)) + " [")
    low, high = (float(x) for x in p50.split("[")[1].rstrip("]").split(", "))
    assert float(lo) <= low <= high <= float(hi)
    # 12 requests cannot bound a p99 from above
    assert mine["TTFT p99 ms"].endswith(", -]")


def test_batch_table_shows_no_request_rows(served, imported):
    _, own = served
    md = to_markdown(build_report([own, imported], with_plots=False))
    lines = md.splitlines()
    heads = [i for i, x in enumerate(lines) if x == "### Throughput (llama-bench style)"]
    assert heads
    for i in heads:
        block = "\n".join(lines[i:i + 6])
        assert "no batch (offline) cells on this device" in block and f"pp{PROMPT} |" not in block


def test_compare_pairs_the_imported_run_with_the_harness_run(served, imported):
    _, own = served
    cmp = build_compare(load_cells([own, imported]))
    assert not cmp.unmatched
    pairs = {(r.ref.run_id, r.other.run_id, r.metric) for r in cmp.rows}
    assert {("own", "gl", "ttft_s"), ("own", "gl", "tpot_s")} <= pairs
    row = next(r for r in cmp.rows if r.metric == "ttft_s")
    syn_ttft = statistics.median(t for _, t, _ in _synthetic())
    assert row.other_summary.median == pytest.approx(syn_ttft)


def test_a_run_compared_with_itself_is_never_better(served, tmp_path):
    _, own = served
    copy = tmp_path / "again"
    shutil.copytree(own, copy)
    meta = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps(dict(meta, run_id="again")))
    cmp = build_compare(load_cells([own, copy]))
    # the same requests resampled independently on each side: a wide interval around 1, never a winner
    assert cmp.rows and all(r.judgement in (SAME, "no clear difference") for r in cmp.rows), \
        [(r.metric, r.judgement) for r in cmp.rows]
    # figures equal but for float rounding (2.2 computed two ways) give an interval of [1 + 2e-16, ...]:
    # the old rule called that "better"
    (c,) = load_cells([own])
    r = stats.ratio([0.1 + 0.2] * 5, [0.3] * 5)
    assert r.ci_low > 1 and _judge("decode_tps", r, c, c) == SAME


def test_judge_tolerance(served):
    _, own = served
    (c,) = load_cells([own])

    def judge(lo, hi, metric="ttft_s"):
        return _judge(metric, stats.Ratio((lo + hi) / 2, lo, hi, 10, 10, 0.95, "independent", "median"), c, c)

    assert judge(1.0, 1.0) == SAME
    assert judge(0.991, 1.009) == SAME
    assert judge(1.002, 1.008) == SAME  # excludes 1, but by less than the tolerance
    assert judge(1.005, 1.02) == "worse"  # ttft: lower is better
    assert judge(1.005, 1.02, "decode_tps") == "better"
    assert judge(0.97, 0.995) == "better"
    assert judge(0.98, 1.02) == "no clear difference"


def test_quantile_interval_bounds_and_coverage():
    # n = 64: P(Binomial(64, 0.99) <= 63) = 1 - 0.99**64 < 0.975, so no upper bound exists
    x = list(range(1, 65))
    q = quantile_ci(x, 0.99)
    assert q.high is None and q.value == pytest.approx(np.percentile(x, 99))
    # the fewest requests with an upper end: 0.99**n <= 0.025 first holds at n = 368 (0.99**367 = 0.02509)
    assert 0.99 ** 367 > 0.025 >= 0.99 ** 368
    assert quantile_ci(range(1, 368), 0.99).high is None and quantile_ci(range(1, 369), 0.99).high == 368
    # the lower rank l: the largest with P(B <= l - 1) < 0.025, from the binomial sum itself
    cdf = lambda k, n, p: sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k + 1))  # noqa: E731
    n = 400
    lo_rank = max(k for k in range(1, n + 1) if cdf(k - 1, n, 0.99) < 0.025)
    hi_rank = min(k for k in range(1, n + 1) if cdf(k - 1, n, 0.99) >= 0.975)
    q = quantile_ci(list(range(1, n + 1)), 0.99)
    assert (q.low, q.high) == (lo_rank, hi_rank)
    # coverage of the true p99 of an exponential over many draws: at least 95 % (within noise)
    rng = np.random.default_rng(0)
    true = -math.log(0.01)
    hits = 0
    trials = 400
    for _ in range(trials):
        q = quantile_ci(rng.exponential(size=n).tolist(), 0.99)
        hits += q.low <= true <= q.high
    assert hits / trials >= 0.92


def test_an_imported_run_pairs_with_the_harness_run_among_several(served, imported, tmp_path):
    """Pairing by backend name (a later run's backend against the same name in the first run)
    would leave the guidellm run alone: it is paired with the harness's own run of its load."""
    _, own = served
    copy = tmp_path / "later"
    shutil.copytree(own, copy)
    meta = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps(dict(meta, run_id="later")))
    cmp = build_compare(load_cells([own, copy, imported]))
    assert not cmp.unmatched
    by_other = {o[0]: r[0] for o, r in cmp.refs.items()}
    assert by_other == {"later": "own", "gl": "own"}
    assert "not compared" not in cmp.note
    assert {(r.ref.run_id, r.other.run_id) for r in cmp.rows} == {("own", "later"), ("own", "gl")}


def test_a_failed_request_cell_is_a_failed_row_with_its_reason(tmp_path):
    from harness.cells import ResultCell
    from harness.records import CellRecord, PlannedCell
    from harness.report.request_tables import request_table

    cell = PlannedCell("http", "openai-http", "tiny", "fp32", 4, 16, 8, "server@2")
    rec = CellRecord.failure(cell, "exception", "connection refused: http://127.0.0.1:9\nmore", device="endpoint:x")
    t = request_table([ResultCell("r", tmp_path, {"harness_version": "9.9"}, rec)])
    (row,) = t.rows
    assert len(row) == len(t.columns)
    got = dict(zip(t.columns, row))
    assert got["req/s"] == "FAILED" and got["note"] == "connection refused: http://127.0.0.1:9"
    assert got["measured by"] == "harness 9.9" and got["scenario"] == "server@2" and t.row_classes == ["invalid"]
