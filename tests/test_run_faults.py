"""Run faults through real processes (issue 14): `--dry-run`; `--resume` of a suite that
changed (refused, shown, or run with --force); `--retry-failed`; SIGHUP; a torn last line;
a disk that fills up and a folder that turns read-only mid-run.

`python -m harness run` runs as a subprocess with its worker processes, on the tiny model
(tests/plugins/faulty_backend slows cells down where a test needs time to act). The disk
is really full: a small tmpfs mounted for the test (root or CAP_SYS_ADMIN; CI runs as
root), filled up mid-run.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from harness.results import read_records
from tests.test_plugin import (ROOT, check_results, faulty, faulty_plugin, harness, harness_cmd,  # noqa: F401
                               plugin_env, suite_text, torch_cpu)
from tests.test_resilience import _sigint_default, done_events, processes_of, wait_for


def cell(backend: str, batch: int) -> str:
    return f"{backend}/tiny/fp32/b{batch}/p8/g4/offline"


def start(site: Path, cmd: list[str], err: Path) -> subprocess.Popen:
    with open(err, "wb") as f:
        return subprocess.Popen(harness_cmd(*cmd), env=plugin_env(site), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=f, start_new_session=True, preexec_fn=_sigint_default)


def run(site: Path, *args: str) -> subprocess.CompletedProcess:
    """`harness run ARGS` to its end (minutes are allowed: a loaded 2-core machine)."""
    return harness("run", *args, env=plugin_env(site), timeout=900)


def whole_lines(path: Path) -> list[dict]:
    """Every line of a results file, each a whole JSON object (the file ends with a newline)."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), "results.jsonl ends in a torn line"
    return [json.loads(line) for line in data.splitlines()]


def leftovers(run_dir: Path) -> list[str]:
    """Temp files, job files (which hold header values), probes and the ballast."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*")
                  if p.name.endswith((".tmp", ".job.json"))
                  or p.name.startswith((".harness.probe", ".harness.ballast")))


def one_error(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- --dry-run ------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_writes_nothing_and_never_imports_torch(tmp_path):
    text = suite_text([torch_cpu("a"), {"type": "onnxruntime", "name": "b", "options": {}}], batch_sizes=[1, 2, 4])
    (tmp_path / "s.yaml").write_text(text)
    out = tmp_path / "out"
    # in one process, to see what it imported: the fuzzer calls this thousands of times
    code = ("import sys; from harness.cli import main; rc = main(['run', sys.argv[1], '--output', sys.argv[2], "
            "'--dry-run']); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.yaml"), str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [l.split() for l in proc.stdout.splitlines()]
    assert rows[0] == ["backend", "model", "dtype", "batch", "prompt", "gen", "scenario"]
    assert sorted((r[0], r[3]) for r in rows[1:7]) == sorted((b, str(n)) for b in "ab" for n in (1, 2, 4))
    assert "6 cells planned" in proc.stdout and "nothing written" in proc.stdout
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_dry_run_of_a_bad_suite_or_name_exits_2(tmp_path):
    (tmp_path / "s.yaml").write_text(suite_text([torch_cpu()]).replace("repetitions: 1", "repetitions: lots"))
    proc = harness("run", str(tmp_path / "s.yaml"), "--dry-run", "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "s.yaml:3: repetitions:" in one_error(proc.stderr)
    (tmp_path / "s.yaml").write_text(suite_text([torch_cpu()]))
    proc = harness("run", str(tmp_path / "s.yaml"), "--dry-run", "--name", "../x", "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "run name '../x'" in one_error(proc.stderr)
    assert not (tmp_path / "out").exists()


def test_dry_run_shows_the_cells_of_a_large_sweep_in_short(tmp_path):
    (tmp_path / "s.yaml").write_text(suite_text([torch_cpu()], batch_sizes=list(range(1, 101))))
    proc = harness("run", str(tmp_path / "s.yaml"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "... and 60 more" in proc.stdout and "100 cells planned" in proc.stdout
    assert len(proc.stdout.splitlines()) < 50


# --- a failed cell, kept by --resume, run again by --retry-failed -----------------------------

SLOW_S = 3.0  # each prefill sleeps this long: the window in which a test acts on a running cell
#: per cell; a worker's start and model load count too, and took minutes on a loaded 2-core machine
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def retried(faulty_plugin, tmp_path_factory):
    """A run whose second cell failed (its worker killed mid-cell, as the OOM killer does),
    then `--resume` (keeps the failure) and `--resume --retry-failed` (runs it again)."""
    tmp = tmp_path_factory.mktemp("retry")
    (tmp / "s.yaml").write_text(suite_text([faulty("slow", sleep_s=SLOW_S)], batch_sizes=[1, 2], timeout_s=TIMEOUT_S))
    run_dir = tmp / "out" / "r"
    proc = start(faulty_plugin, ["run", str(tmp / "s.yaml"), "--output", str(tmp / "out"), "--name", "r", "--quiet"],
                 tmp / "err1")
    events = run_dir / "logs" / ".slow_tiny_fp32.events.jsonl"
    # the second cell's id first appears in the events file with its "start"
    wait_for(lambda: events.exists() and cell("slow", 2).encode() in events.read_bytes(), 600,
             "the second cell to start", proc)
    for p in processes_of(run_dir):
        p.kill()
    assert proc.wait(900) == 0, (tmp / "err1").read_text()
    first = {r.cell_id: r for r in read_records(run_dir / "results.jsonl")}
    plain = run(faulty_plugin, "--resume", str(run_dir), "--quiet")
    after_plain = (run_dir / "results.jsonl").read_bytes()
    again = run(faulty_plugin, "--resume", str(run_dir), "--retry-failed", "--quiet")
    return run_dir, first, plain, after_plain, again


def test_resume_keeps_a_failed_cell_and_says_how_to_retry_it(retried):
    run_dir, first, plain, after_plain, _ = retried
    assert first[cell("slow", 2)].status == "failed" and first[cell("slow", 2)].error.kind == "crash"
    assert first[cell("slow", 1)].status == "ok"
    assert plain.returncode == 0, plain.stderr
    assert "1 failed cell kept as failed; --retry-failed runs them again" in plain.stderr
    assert len(whole_lines(run_dir / "results.jsonl")) >= 2 and after_plain.count(b"\n") == 2  # nothing ran


def test_retry_failed_runs_the_failed_cell_again_and_its_record_wins(retried):
    run_dir, first, _, after_plain, again = retried
    assert again.returncode == 0, again.stderr
    lines = whole_lines(run_dir / "results.jsonl")
    # the failure stays in the file, history; the retry's record comes after it
    assert [(l["cell_id"], l["status"]) for l in lines] == [
        (cell("slow", 1), "ok"), (cell("slow", 2), "failed"), (cell("slow", 2), "ok")]
    assert (run_dir / "results.jsonl").read_bytes().startswith(after_plain)  # appended, nothing rewritten
    from harness.results import load_run

    meta, records = load_run(run_dir)
    assert {r.cell_id: r.status for r in records} == {cell("slow", 1): "ok", cell("slow", 2): "ok"}
    assert meta["status"] == "complete" and meta["attempts"][-1]["retried"] == [cell("slow", 2)]
    assert "2 cells (0 failed, 0 invalid)" in again.stdout
    assert not leftovers(run_dir)


# --- --resume of a changed suite --------------------------------------------------------------

@pytest.fixture
def done_run(retried, tmp_path):
    """A copy of the complete run, to change."""
    run_dir = tmp_path / "out" / "r"
    shutil.copytree(retried[0], run_dir)
    return run_dir


def edit_suite(path: Path, **changes) -> dict:
    suite = yaml.safe_load(path.read_text())
    for k, v in changes.items():
        suite[k] = v
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return suite


def snapshot(run_dir: Path) -> dict:
    return {p: p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and p.name != ".harness.lock"}


def test_resume_refuses_an_edited_suite_and_shows_what_changed(faulty_plugin, done_run):
    suite = edit_suite(done_run / "suite.yaml", repetitions=5)
    suite["backends"].append(torch_cpu("extra"))
    suite["backends"][0]["options"]["threads"] = 2
    suite["workloads"][0]["batch_sizes"] = [1]
    (done_run / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    before = snapshot(done_run)
    proc = run(faulty_plugin, "--resume", str(done_run), "--quiet")
    assert proc.returncode == 2
    assert one_error(proc.stderr) == f"error: {done_run}: the suite changed since the run started:"
    changes = [l.strip() for l in proc.stderr.splitlines() if l.startswith("  ")]
    assert changes == ["backends[0] (slow).options.threads added: 2", "backends[1] (extra) added",
                       "workloads[0] (tiny).batch_sizes: [1, 2] -> [1]", "repetitions: 1 -> 5"]
    assert "add --force" in proc.stderr
    assert snapshot(done_run) == before  # nothing ran, nothing was written
    dry = run(faulty_plugin, "--resume", str(done_run), "--dry-run")
    assert dry.returncode == 2 and [l.strip() for l in dry.stderr.splitlines() if l.startswith("  ")] == changes

    # the same suite handed in as SUITE: the same check
    (done_run.parent / "other.yaml").write_text((done_run / "suite.yaml").read_text())
    (done_run / "suite.yaml").write_bytes(before[done_run / "suite.yaml"])
    proc = run(faulty_plugin, str(done_run.parent / "other.yaml"), "--resume", str(done_run))
    assert proc.returncode == 2 and "repetitions: 1 -> 5" in proc.stderr
    assert snapshot(done_run) == before


def test_changes_no_cell_depends_on_need_no_force(faulty_plugin, done_run):
    edit_suite(done_run / "suite.yaml", timeout_s=1000, description="longer timeout")
    before = (done_run / "results.jsonl").read_bytes()
    proc = run(faulty_plugin, "--resume", str(done_run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "timeout_s: 900.0 -> 1000.0" in proc.stderr and "description" in proc.stderr
    assert (done_run / "results.jsonl").read_bytes() == before
    meta = json.loads((done_run / "run.json").read_text())
    assert meta["config"]["timeout_s"] == 1000 and meta["attempts"][-1]["suite_changes"][0].startswith("description")


def test_force_reruns_changed_cells_and_moves_stale_records_aside(faulty_plugin, done_run):
    results = done_run / "results.jsonl"
    old = {l["cell_id"]: l for l in whole_lines(results)}  # the last line per cell: the ok ones
    old_lines = results.read_bytes().splitlines(keepends=True)
    # batch 2 moves into its own workload with another seed: its cell's settings change;
    # batch 1 stays as it was
    suite = yaml.safe_load((done_run / "suite.yaml").read_text())
    w = suite["workloads"][0]
    suite["workloads"] = [dict(w, batch_sizes=[1]), dict(w, batch_sizes=[2], seed=7)]
    new_suite = done_run.parent / "new.yaml"
    new_suite.write_text(yaml.safe_dump(suite, sort_keys=False))

    dry = run(faulty_plugin, str(new_suite), "--resume", str(done_run), "--force", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 of 2 cells would run" in dry.stdout

    proc = run(faulty_plugin, str(new_suite), "--resume", str(done_run), "--force", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "--force: workloads[1] (tiny) added" in proc.stderr
    lines = whole_lines(results)
    # unchanged settings: batch 1's record kept, not measured again
    assert lines[:-1] == [json.loads(l) for l in old_lines if json.loads(l)["cell_id"] == cell("slow", 1)]
    assert lines[-1]["cell_id"] == cell("slow", 2) and lines[-1]["status"] == "ok", lines[-1].get("error")
    assert lines[-1]["started_at"] > old[cell("slow", 2)]["started_at"]  # measured again
    # every record of the changed cell (its failure and its retry) went aside, none lost
    moved = (done_run / "results.superseded.jsonl").read_bytes().splitlines(keepends=True)
    assert moved == [l for l in old_lines if json.loads(l)["cell_id"] == cell("slow", 2)]
    meta = json.loads((done_run / "run.json").read_text())
    assert meta["attempts"][-1]["forced"] is True and meta["attempts"][-1]["superseded"] == [cell("slow", 2)]
    assert [w["seed"] for w in meta["config"]["workloads"]] == [None, 7]
    assert (done_run / "suite.yaml").read_text() == new_suite.read_text()  # later resumes run this suite
    now = results.read_bytes()
    again = run(faulty_plugin, "--resume", str(done_run), "--quiet")
    assert again.returncode == 0 and results.read_bytes() == now


# --- SIGHUP, a torn line --------------------------------------------------------------------

def test_sighup_stops_the_run_like_sigterm(faulty_plugin, tmp_path):
    (tmp_path / "s.yaml").write_text(suite_text([faulty("slow", sleep_s=1.0)], batch_sizes=[1, 2, 3],
                                                timeout_s=TIMEOUT_S))
    run_dir = tmp_path / "out" / "h"
    proc = start(faulty_plugin, ["run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "out"), "--name", "h",
                                 "--quiet"], tmp_path / "err")
    wait_for(lambda: read_records(run_dir / "results.jsonl"), 600, "the first record", proc)
    os.kill(proc.pid, signal.SIGHUP)
    assert proc.wait(60) == 130
    stderr = (tmp_path / "err").read_text()
    assert "interrupted: finished cells are saved" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    records = check_results(run_dir, complete=False)
    assert set(done_events(run_dir)) <= set(records) and 1 <= len(records) < 3
    assert not processes_of(run_dir) and not leftovers(run_dir)


def test_resume_moves_a_torn_last_line_out_and_keeps_every_whole_one(faulty_plugin, done_run):
    results = done_run / "results.jsonl"
    whole = results.read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    # a record written whole but without its newline, then a killed writer's fragment
    torn = b'{"cell_id": "slow/tiny/fp32/b2/p8/g4/offline", "status": "ok", "samples": {"ttft_s": [0.0'
    results.write_bytes(whole + b'{"fragment": [1, 2\n' + last.rstrip(b"\n"))
    proc = run(faulty_plugin, "--resume", str(done_run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert results.read_bytes() == whole + last  # the mid-file fragment out, the whole record kept
    results.write_bytes(whole + torn)
    proc = run(faulty_plugin, "--resume", str(done_run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "moved 1 torn line" in proc.stderr
    assert results.read_bytes() == whole  # only whole lines; nothing measured again
    assert (done_run / "logs" / "torn-lines.txt").read_bytes() == b'{"fragment": [1, 2\n' + torn + b"\n"


# --- the disk fills up, the folder turns read-only -------------------------------------------

def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs at tmp_path/out: a disk the test can fill up."""
    where = tmp_path / "out"
    where.mkdir()
    proc = _mount("-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(where))
    if proc.returncode != 0:
        pytest.skip(f"a full disk needs a small filesystem: `mount -t tmpfs` needs root or CAP_SYS_ADMIN "
                    f"({proc.stderr.strip()})")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        try:
            while True:
                f.write(b"\0" * 512)  # the last pages too
        except OSError:
            pass
    return filler


def test_a_record_the_full_disk_cuts_short_leaves_no_fragment(small_fs):
    from harness.records import CellRecord, PlannedCell
    from harness.results import append_record

    results = small_fs / "results.jsonl"
    c = PlannedCell("b", "torch", "tiny", "fp32", 1, 8, 4, "offline")
    append_record(results, CellRecord.failure(c, "crash", "first"))
    before = results.read_bytes()
    fill(small_fs)
    # 100 kB: the page the file ends in takes its first part, the rest finds no room
    with pytest.raises(OSError) as e:
        append_record(results, CellRecord.failure(c, "crash", "x" * 100_000))
    assert e.value.errno == errno.ENOSPC
    assert results.read_bytes() == before


def _faulted_run(site: Path, tmp_path: Path, out: Path, fault):
    """Run three slow cells; `fault()` once the first is recorded; the finished run."""
    (tmp_path / "s.yaml").write_text(suite_text([faulty("slow", sleep_s=1.5)], batch_sizes=[1, 2, 3],
                                                timeout_s=TIMEOUT_S))
    run_dir = out / "d"
    proc = start(site, ["run", str(tmp_path / "s.yaml"), "--output", str(out), "--name", "d", "--quiet"],
                 tmp_path / "err")
    wait_for(lambda: read_records(run_dir / "results.jsonl"), 600, "the first record", proc)
    fault(run_dir)
    rc = proc.wait(900)
    return rc, (tmp_path / "err").read_text(), run_dir


def _check_resumes(site: Path, run_dir: Path, before: dict) -> None:
    proc = run(site, "--resume", str(run_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr
    after = check_results(run_dir)  # every cell exactly once
    assert sorted(after) == [cell("slow", b) for b in (1, 2, 3)] and all(r.status == "ok" for r in after.values())
    assert all(after[c] == r for c, r in before.items())  # finished before the fault: kept as they were
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert not leftovers(run_dir)


def test_disk_full_mid_run_ends_cleanly_and_resume_runs_the_cell_in_flight(faulty_plugin, tmp_path, small_fs):
    filler = []
    rc, stderr, run_dir = _faulted_run(faulty_plugin, tmp_path, small_fs, lambda d: filler.append(fill(small_fs)))
    assert rc == 1
    err = one_error(stderr)
    assert f"error: {run_dir}: disk full (ENOSPC)" in err and f"harness run --resume {run_dir}" in err
    meta = json.loads((run_dir / "run.json").read_text())  # written: the ballast gave it room
    assert meta["status"].startswith("failed: disk full (ENOSPC)")
    before = check_results(run_dir, complete=False)
    assert 1 <= len(before) < 3 and all(r.status == "ok" for r in before.values())  # no failed record
    assert not leftovers(run_dir) and not processes_of(run_dir)
    assert whole_lines(run_dir / "results.jsonl")
    filler[0].unlink()
    _check_resumes(faulty_plugin, run_dir, before)


def test_read_only_folder_mid_run_ends_cleanly_and_resume_runs_the_rest(faulty_plugin, tmp_path):
    out = tmp_path / "out"
    as_root = os.geteuid() == 0

    def read_only(run_dir: Path) -> None:
        if as_root:  # root writes through file modes: a read-only bind mount of the folder
            for args in (["--bind", str(run_dir), str(run_dir)], ["-o", "remount,bind,ro", str(run_dir)]):
                proc = _mount(*args)
                if proc.returncode != 0:
                    pytest.fail(f"mount {' '.join(args)}: {proc.stderr}")
        else:
            for p in [run_dir, *run_dir.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)

    try:
        rc, stderr, run_dir = _faulted_run(faulty_plugin, tmp_path, out, read_only)
    finally:
        if as_root:
            subprocess.run(["umount", "-l", str(out / "d")], capture_output=True, timeout=30)
        else:
            for p in [out / "d", *(out / "d").rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
    assert rc == 1
    err = one_error(stderr)
    kind = "read-only file system (EROFS)" if as_root else "permission denied (EACCES)"
    assert f"error: {run_dir}: {kind}" in err
    assert "run.json could not be updated" in err  # it cannot be: the folder is read-only
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    before = check_results(run_dir, complete=False)
    assert 1 <= len(before) < 3 and all(r.status == "ok" for r in before.values())
    assert not processes_of(run_dir)
    _check_resumes(faulty_plugin, run_dir, before)
