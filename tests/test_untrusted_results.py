"""Result folders from other labs are untrusted input (issue 14, items 2, 4 and 7).

Real processes throughout (`python -m harness ...`): a corpus of corrupted run folders
must give exit 2 and one located `error:` line from report, compare, verify and
run --resume, never a traceback, each in a few seconds; symlinks planted in a run
folder never redirect a write; two runs of one --name never share a folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD = ROOT / "tests" / "data" / "v1_runs" / "before-smoke-est"
CLAIMS = ROOT / "workloads" / "claims.example.yaml"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def harness(*args, timeout=60):
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=timeout)
    return p, time.monotonic() - t0


def first_record() -> dict:
    return json.loads((GOOD / "results.jsonl").read_text().splitlines()[0])


def _nested_record(where: str, value) -> bytes:
    rec = first_record()
    if where == "metrics":
        rec["metrics"] = value
    elif where == "metric-mean":
        name = next(k for k, v in rec["metrics"].items() if isinstance(v, dict) and "mean" in v)
        rec["metrics"][name]["mean"] = value
    elif where == "meter-avg_w":
        rec["energy"]["meters"][0]["avg_w"] = value
    elif where == "energy-meters":
        rec["energy"]["meters"] = value
    elif where == "accuracy-rel_err":
        rec["accuracy"]["rel_err"] = value
    elif where == "batch":
        rec["batch"] = value
    return json.dumps(rec).encode()


# (case, file, bytes, what the message must name)
CASES = {
    "run.json is []": ("run.json", b"[]", "run.json"),
    "run.json not UTF-8": ("run.json", b'{"run_id": "\xff\xfe"}', "run.json"),
    "run.json deeply nested": ("run.json", b"[" * 100_000 + b"]" * 100_000, "run.json"),
    "run.json inventory a list": ("run.json", b'{"run_id": "x", "inventory": []}', "inventory"),
    "results line a list": ("results.jsonl", b"[1, 2]\n", "results.jsonl:1"),
    "results line not UTF-8": ("results.jsonl", b'{"cell_id": "\xff"}\n', "results.jsonl:1"),
    "results line deeply nested": ("results.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "results.jsonl:1"),
    "results line 200 levels deep": ("results.jsonl", b"[" * 200 + b"]" * 200 + b"\n", "results.jsonl:1"),
    "metrics a list": ("results.jsonl", _nested_record("metrics", [1, 2]), "metrics"),
    "metric mean a list": ("results.jsonl", _nested_record("metric-mean", [1]), "mean"),
    "meter avg_w a string": ("results.jsonl", _nested_record("meter-avg_w", "hot"), "avg_w"),
    "energy meters a number": ("results.jsonl", _nested_record("energy-meters", 5), "results.jsonl:1"),
    "accuracy rel_err a dict": ("results.jsonl", _nested_record("accuracy-rel_err", {}), "rel_err"),
    "batch a string": ("results.jsonl", _nested_record("batch", "4"), "batch"),
}


def corrupt(tmp_path: Path, name: str) -> Path:
    fname, data, _ = CASES[name]
    d = tmp_path / "run"
    shutil.copytree(GOOD, d)
    if fname == "results.jsonl":  # a good record first: the bad one is record 2
        good = (GOOD / "results.jsonl").read_bytes().splitlines()[0] + b"\n"
        (d / fname).write_bytes(good + data)
    else:
        (d / fname).write_bytes(data)
    return d


COMMANDS = {
    "report": lambda d, out: ["report", str(d), "--out", str(out)],
    "compare": lambda d, out: ["compare", str(d), str(GOOD)],
    "verify": lambda d, out: ["verify", str(CLAIMS), str(d), "--markdown", str(out / "v.md")],
    "resume": lambda d, out: ["run", "--resume", str(d), "--quiet"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(CASES))
def test_corrupted_folder_is_refused_with_a_located_message(tmp_path, case, command):
    d = corrupt(tmp_path, case)
    before = (d / "results.jsonl").read_bytes()
    p, took = harness(*COMMANDS[command](d, tmp_path / "out"))
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    where = CASES[case][2].replace("results.jsonl:1", "results.jsonl:2")
    assert where in lines[0] and str(d) in lines[0], lines[0]
    assert took < 15, took
    assert (d / "results.jsonl").read_bytes() == before  # a refused resume measures and writes nothing


def test_a_line_over_the_size_limit_is_refused_without_reading_it_whole(tmp_path):
    from harness.results import MAX_LINE_BYTES

    d = tmp_path / "run"
    shutil.copytree(GOOD, d)
    with open(d / "results.jsonl", "ab") as f:
        f.write(b'{"x": "' + b"a" * (MAX_LINE_BYTES + 10) + b'"}\n')
    p, took = harness("compare", str(d), str(GOOD))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"results.jsonl:7: line longer than" in p.stderr, p.stderr
    assert took < 15


def test_run_json_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    from harness import results

    d = tmp_path / "run"
    shutil.copytree(GOOD, d)
    monkeypatch.setattr(results, "MAX_RUN_JSON_BYTES", 1000)  # the real limit is 64 MiB: same code path
    with pytest.raises(results.ResultsError, match=r"run\.json: \d+ bytes, over the"):
        results.load_run(d)


def test_the_shipped_v1_runs_still_load_and_report(tmp_path):
    p, _ = harness("report", str(GOOD), str(GOOD.parent / "before-server"), "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "r" / "report.md").stat().st_size > 0


# --- symlinks -----------------------------------------------------------------------------

@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim.txt"
    v.write_text("precious\n")
    return v


def _run_copy(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(GOOD, d)
    return d


def test_report_md_symlink_is_refused_and_the_victim_untouched(tmp_path, victim):
    d = _run_copy(tmp_path)
    (d / "report").mkdir()
    (d / "report" / "report.md").symlink_to(victim)
    p, _ = harness("report", str(d))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "report.md: is a symbolic link" in p.stderr
    assert victim.read_text() == "precious\n"


def test_report_folder_and_plots_symlinks_are_refused(tmp_path, victim):
    outside = tmp_path / "outside"
    outside.mkdir()
    d = _run_copy(tmp_path)
    (d / "report").symlink_to(outside)
    p, _ = harness("report", str(d))
    assert p.returncode == 2 and "is a symbolic link" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert list(outside.iterdir()) == []
    (d / "report").unlink()
    (d / "report").mkdir()
    (d / "report" / "plots").symlink_to(outside)
    p, _ = harness("report", str(d))
    assert p.returncode == 2 and "plots: is a symbolic link" in p.stderr, p.stderr
    assert list(outside.iterdir()) == []


def test_verify_and_compare_markdown_symlinks_are_refused(tmp_path, victim):
    d = _run_copy(tmp_path)
    (d / f"verdicts-{CLAIMS.stem}.md").symlink_to(victim)
    p, _ = harness("verify", str(CLAIMS), str(d))
    assert p.returncode == 2 and "is a symbolic link" in p.stderr and "Traceback" not in p.stderr, p.stderr
    link = tmp_path / "cmp.md"
    link.symlink_to(victim)
    p, _ = harness("compare", str(d), "--markdown", str(link))
    assert p.returncode == 2 and "cmp.md: is a symbolic link" in p.stderr, p.stderr
    assert victim.read_text() == "precious\n"


def test_resume_with_results_jsonl_symlink_is_refused(tmp_path, victim):
    d = _run_copy(tmp_path)
    (d / "results.jsonl").unlink()
    (d / "results.jsonl").symlink_to(victim)
    p, _ = harness("run", "--resume", str(d), "--quiet")
    assert p.returncode == 2 and "results.jsonl: is a symbolic link" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert victim.read_text() == "precious\n"


def test_append_and_atomic_write_never_follow_a_symlink(tmp_path, victim):
    from harness.results import ResultsError, append_record, parse_record, write_json_atomic

    rec = parse_record(first_record(), "t")
    (tmp_path / "results.jsonl").symlink_to(victim)
    with pytest.raises(ResultsError, match="symbolic link"):
        append_record(tmp_path / "results.jsonl", rec)
    (tmp_path / "run.json").symlink_to(victim)
    write_json_atomic(tmp_path / "run.json", {"a": 1})  # replaces the link itself
    assert not (tmp_path / "run.json").is_symlink() and json.loads((tmp_path / "run.json").read_text()) == {"a": 1}
    assert victim.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- one run per folder ---------------------------------------------------------------------

SUITE = """\
name: lock
warmup: 0
repetitions: 25
timeout_s: 120
backends:
  - {type: torch, name: torch-cpu, options: {device: cpu, threads: 1}}
workloads:
  - {model: tiny, dtypes: [fp32], batch_sizes: [1, 2], prompt_lens: [8], gen_lens: [64]}
energy: {enabled: false}
accuracy: {enabled: false}
"""


def test_two_runs_of_one_name_second_fails_fast_first_completes(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    args = [sys.executable, "-m", "harness", "run", str(tmp_path / "suite.yaml"), "--output", str(tmp_path / "out"),
            "--name", "same", "--quiet"]
    first = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "out" / "same"
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "run.json").exists():  # the first holds the lock by then
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # both at once, while the first one runs (its cells take seconds)
        t0 = time.monotonic()
        others = [subprocess.Popen(a, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for a in (args, args[:3] + ["run", "--resume", str(run_dir), "--quiet"])]
        second, resumed = [subprocess.CompletedProcess(o.args, o.wait(timeout=60), *o.communicate()) for o in others]
        took = time.monotonic() - t0
        assert first.poll() is None, "the first run ended before the others were refused: make its cells longer"
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    for p in (second, resumed):
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert f"is being written by another harness run (pid {first.pid})" in p.stderr, p.stderr
    assert took < 15
    ids = [json.loads(l)["cell_id"] for l in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 2
    # after the first ends, the lock is free again: a third run of the name is refused
    # for the folder's run.json, not for the lock
    third, _ = harness(*args[3:])
    assert third.returncode == 2 and "already holds a run" in third.stderr
