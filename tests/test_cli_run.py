"""`harness run` end to end, as a user runs it: a real subprocess, real worker processes."""
import json
import re
import subprocess
import sys

import pytest

from harness.results import load_run

SUITE = """\
name: e2e
warmup: 1
repetitions: 3
backends:
  - type: torch
    name: torch-cpu
    options: {device: cpu, threads: 1}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1, 3]
    prompt_lens: [16]
    gen_lens: [8]
energy: {idle_s: 0.2, min_window_s: 0.2}
"""


def harness(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    (tmp / "suite.yaml").write_text(SUITE)
    proc = harness("run", str(tmp / "suite.yaml"), "--output", str(tmp / "out"), "--name", "r1", "--quiet")
    return proc, tmp / "out" / "r1"


def test_run_prints_table_and_writes_parseable_results(smoke_run):
    proc, run_dir = smoke_run
    assert proc.returncode == 0, proc.stderr
    assert "pp16" in proc.stdout and "tg8" in proc.stdout and "±" not in proc.stdout
    # t/s: the median with its 95 % interval, as report.md shows it (noisy rows marked ~, with a footnote)
    assert re.search(r"│\s+[\d.,]+ \[[\d.,]+, [\d.,]+\]( ~)? │", proc.stdout), proc.stdout
    assert "median [95 % bootstrap interval]" in proc.stdout
    meta, records = load_run(run_dir)
    assert meta["status"] == "complete"
    assert meta["inventory"]["cpu"]["logical_cores"] >= 1 and "torch" in meta["inventory"]["packages"]
    assert meta["config"]["repetitions"] == 3
    assert len(records) == 2 and {r.batch for r in records} == {1, 3}


def test_numbers_are_positive_and_consistent_with_the_plan(smoke_run):
    _, run_dir = smoke_run
    _, records = load_run(run_dir)
    for r in records:
        assert r.status == "ok" and r.valid is True, r.error
        b, p, g = r.batch, r.prompt_len, r.gen_len
        assert r.tokens == {"prompt_per_rep": b * p, "generated_per_rep": b * g, "repetitions": 3, "warmup": 1}
        s, m = r.samples, r.metrics
        assert len(s["ttft_s"]) == len(s["e2e_s"]) == 3
        for ttft, e2e in zip(s["ttft_s"], s["e2e_s"]):
            assert 0 < ttft < e2e
        # every metric follows from the raw samples by its definition
        expect_decode = [b * (g - 1) / (e - t) for t, e in zip(s["ttft_s"], s["e2e_s"])]
        assert m["decode_tps"]["samples"] == pytest.approx(expect_decode)
        assert m["prefill_tps"]["samples"] == pytest.approx([b * p / t for t in s["ttft_s"]])
        assert all(len(st) == g - 1 for st in s["step_times_s"])
        assert m["itl_s"]["n"] == 3 * (g - 1) and 0 < m["itl_s"]["p50"] <= m["itl_s"]["p99"]
        assert r.memory["host_peak_rss_bytes"] > 10 * 2**20
        assert r.accuracy["passed"] is True and r.accuracy["rel_err"] < 1e-4


def test_bad_suite_is_one_clear_error_no_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text(SUITE.replace("repetitions: 3", "repetitions: three"))
    proc = harness("run", str(tmp_path / "bad.yaml"), "--output", str(tmp_path))
    assert proc.returncode == 2
    assert "bad.yaml:3: repetitions: expected an integer, got 'three'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.glob("*/run.json"))


def test_run_name_cannot_escape_results_folder(tmp_path):
    (tmp_path / "s.yaml").write_text(SUITE)
    proc = harness("run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "out"), "--name", "../evil")
    assert proc.returncode == 2 and "run name '../evil'" in proc.stderr


def test_list_and_env():
    out = harness("list")
    assert out.returncode == 0 and "llama-3.1-8b" in out.stdout and "torch" in out.stdout
    env = harness("env", "--json")
    inv = json.loads(env.stdout)
    assert inv["cpu"]["logical_cores"] >= 1 and inv["python"]


def test_server_scenario_run_prints_latency_throughput_table(tmp_path):
    suite = SUITE.replace("batch_sizes: [1, 3]", "batch_sizes: [2]") + \
        "scenario: {type: server, rates: [20], requests: 6, warmup_requests: 1, limits: {ttft_s: 5}}\n"
    (tmp_path / "s.yaml").write_text(suite)
    proc = harness("run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "out"), "--name", "srv", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "server@20" in proc.stdout and "TTFT p99 ms" in proc.stdout
    _, records = load_run(tmp_path / "out" / "srv")
    (r,) = records
    assert r.status == "ok" and r.metrics["ok"] == 6 and r.summary[0]["failed"] == 0
    assert r.metrics["ttft_s"]["p50"] < r.metrics["e2e_s"]["p50"]
