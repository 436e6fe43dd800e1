"""Expand a plan into cells, run them in worker processes, write results as they finish.

Each (backend, model, dtype) group runs in its own worker process (harness.worker), so
a segfault in a vendor library, an out-of-memory kill or a hang costs one cell: the
runner records it as failed, with the reason, and starts a fresh worker for the rest.
"""
from __future__ import annotations

from dataclasses import asdict
import datetime as dt
import json
import os
import re
from pathlib import Path
import signal
import subprocess
import sys
import time

from harness.config import Plan, scenario_dict
from harness.inventory import inventory
from harness.records import CellJob, CellRecord, PlannedCell, record_from_json
from harness.results import (ResultsError, append_record, open_nofollow, read_records, read_run_json,
                             repair_torn_lines, safe_run_dir, supersede_records, write_bytes_nofollow,
                             write_json_atomic)
from harness.resume import ResumeDecision, decide, planned_config
from harness.storage import StorageFault, describe, is_storage_error, release, reserve, storage_errors, storage_problem

LOCK_NAME = ".harness.lock"

SOURCE_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.05


def new_run_id(suite_name: str) -> str:
    return f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{suite_name}"


class Progress:
    """Shown while cells run (rich, on stderr); silent when not a terminal and quiet=True."""

    def __init__(self, total: int, quiet: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
            TimeElapsedColumn

        self.console = Console(stderr=True, quiet=quiet)
        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=self.console, transient=False)
        self.task = self.bar.add_task("starting", total=total)

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        try:
            self.bar.stop()
        except OSError:
            pass  # SIGHUP: the terminal is gone (EIO); what matters is the run.json write after this

    def describe(self, text: str) -> None:
        self.bar.update(self.task, description=text)

    def advance(self, record: CellRecord) -> None:
        self.bar.advance(self.task)
        if record.failed and record.error is not None:
            first = (record.error.message.splitlines() or [""])[0]
            # an error message may hold [brackets] that rich would read as markup
            self.console.print(f"[red]failed[/red] {_escape(record.cell_id)}: {_escape(first)}")


SUPERSEDED_NAME = "results.superseded.jsonl"
TORN_NAME = "logs/torn-lines.txt"
#: what run.json may grow by between its first and last write of an attempt
RUN_JSON_GROWTH = 64 << 10


def run_plan(plan: Plan, run_dir: Path | None = None, run_id: str | None = None, quiet: bool = False,
             resume: bool = False, force: bool = False, retry_failed: bool = False,
             cluster: str | None = None) -> Path:
    """Run the plan's cells into run_dir (on a Ray cluster when `cluster` or the suite's
    `cluster:` names one: harness.fleet). Raises KeyboardInterrupt (after recording the
    run as interrupted), StorageFault (the folder stopped taking writes: the run ended
    cleanly, the cell in flight unrecorded), ResultsError or SuiteChanged (nothing ran)."""
    suite = plan.suite
    if run_dir is None:
        run_dir = safe_run_dir(suite.output, run_id or new_run_id(suite.name))
    with storage_errors(f"{run_dir} (making the run folder)"):
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = lock_run_dir(run_dir)  # before anything is read or written: no check-then-write race
    try:
        return _run_locked(plan, run_dir, quiet, resume, force, retry_failed, cluster or suite.cluster)
    finally:
        unlock_run_dir(lock_fd)


def unlock_run_dir(fd: int) -> None:
    """Clear the owner's pid (still under the lock, so no new owner's pid is lost) and
    release: a finished folder's lock file is empty and stays byte-for-byte the same
    across runs that write nothing else."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass  # a read-only or full disk: the flock still goes with the fd
    os.close(fd)


def lock_run_dir(run_dir: Path) -> int:
    """An exclusive, non-blocking flock on RUN_DIR/.harness.lock, held (by the returned fd)
    for the whole run: a second harness run of the same folder fails at once. The lock
    file holds the owner's pid, for the message; the lock itself is the flock, which the
    kernel drops when the owner dies (kill -9 included), so a stale file never blocks."""
    import fcntl

    path = run_dir / LOCK_NAME
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ResultsError(f"{run_dir} is being written by another harness run (pid {owner})") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the pid is for a message only; the flock is what locks
    return fd


def _check_subdir(path: Path) -> Path:
    """A run folder's subfolder, never a symlink to somewhere else."""
    if path.is_symlink():
        raise ResultsError(f"{path}: is a symbolic link; refusing to write through it")
    path.mkdir(exist_ok=True)
    return path


def _run_locked(plan: Plan, run_dir: Path, quiet: bool, resume: bool, force: bool, retry_failed: bool,
                cluster: str | None = None) -> Path:
    suite = plan.suite
    with storage_errors("the run folder's logs/ and timelines/"):
        _check_subdir(run_dir / "logs")
        _check_subdir(run_dir / "timelines")
    results_path = run_dir / "results.jsonl"
    if results_path.is_symlink():  # refused before any cell runs, not at its first append
        raise ResultsError(f"{results_path}: is a symbolic link; refusing to write through it")
    attempt: dict = {"started_at": time.time(), "resume": resume}
    if resume:
        if not (run_dir / "run.json").exists():
            raise ResultsError(f"{run_dir}: not a resumable run folder (no run.json)")
        meta = read_run_json(run_dir)
        todo = _prepare_resume(plan, run_dir, meta, results_path, force, retry_failed, attempt)
    else:
        # checked again under the lock: two runs of one --name that both passed the CLI's
        # check meet here, and the second finds the first one's run.json
        if (run_dir / "run.json").exists():
            raise ResultsError(f"{run_dir} already holds a run; pick another --name or use --resume {run_dir}")
        # the suite as given, for --resume: it may hold header values, so only its owner reads it
        with storage_errors("suite.yaml"):
            write_bytes_nofollow(run_dir / "suite.yaml", Path(plan.source).read_bytes())
            os.chmod(run_dir / "suite.yaml", 0o600)
        meta = {"run_id": run_dir.name, "suite": suite.name, "suite_file": plan.source,
                "harness_version": _version(), "started_at": time.time(), "status": "running",
                "config": planned_config(suite), "cells": [c.id for c in plan.cells],
                "inventory": inventory()}
        todo = list(plan.cells)
    from harness.calibrate import load_for

    devices = {b.name: _device(b) for b in suite.backends}
    cals = {device: load_for(suite.output, device) for device in devices.values()}
    meta["calibration"] = cals
    meta["status"] = "running"
    meta.setdefault("attempts", []).append(attempt)
    with storage_errors("run.json"):
        write_json_atomic(run_dir / "run.json", meta)

    status, fault = "complete", None
    try:
        # room for the last run.json write, given back first when the disk fills up
        reserve(run_dir, (run_dir / "run.json").stat().st_size + RUN_JSON_GROWTH)
        with Progress(len(plan.cells), quiet=quiet) as progress:
            progress.bar.update(progress.task, completed=len(plan.cells) - len(todo))
            if cluster:  # ray is imported only here: a local run never needs it
                from harness.fleet import run_on_cluster

                run_on_cluster(cluster, plan, _groups(todo), run_dir, results_path, progress, devices, meta)
            else:
                for group, cells in _groups(todo).items():
                    device = devices[cells[0].backend]
                    _run_group(plan, group, cells, run_dir, results_path, progress, device, cals.get(device))
    except KeyboardInterrupt:
        status = "interrupted"
    except StorageFault as e:
        status, fault = f"failed: {e.reason}", e
    except Exception as e:  # a refused record, a bug: run.json must not say complete
        status = f"failed: {e}"[:500]
        raise
    finally:
        release(run_dir)
        meta["status"] = status
        meta["finished_at"] = time.time()
        try:
            write_json_atomic(run_dir / "run.json", meta)
        except OSError as e:
            if not is_storage_error(e):
                raise
            if fault is None:
                fault = StorageFault(f"{describe(e)} writing run.json, which still says running")
            else:
                fault.reason += f"; run.json could not be updated ({describe(e)}) and still says running"
    if status == "interrupted":
        raise KeyboardInterrupt
    if fault is not None:
        raise fault
    return run_dir


def _prepare_resume(plan: Plan, run_dir: Path, meta: dict, results_path: Path, force: bool, retry_failed: bool,
                    attempt: dict) -> list[PlannedCell]:
    """Check the suite against the run's, tidy the folder, update `meta`; the cells to run."""
    # everything is read and checked before anything is written: a refused resume
    # (a bad record, a changed suite) leaves the folder as it was
    records = read_records(results_path)
    new_config = planned_config(plan.suite)
    d: ResumeDecision = decide(plan.cells, new_config, meta, records, force, retry_failed, str(run_dir))
    _remove_leftovers(run_dir)
    with storage_errors("results.jsonl (moving a torn line out)"):
        torn = repair_torn_lines(results_path, run_dir / TORN_NAME)
    if torn:
        _note(f"results.jsonl: moved {torn} torn line{'s' if torn > 1 else ''} (a killed writer's) to {TORN_NAME}")
    if d.superseded:
        with storage_errors(f"{SUPERSEDED_NAME}"):
            moved = supersede_records(results_path, d.superseded, run_dir / SUPERSEDED_NAME)
        forced = d.superseded - set(d.lost)
        if forced:
            _note(f"--force: {moved} record{'s' if moved != 1 else ''} of {len(forced)} cell"
                  f"{'s' if len(forced) != 1 else ''} whose settings changed or that are no longer planned "
                  f"moved to {SUPERSEDED_NAME}")
        if d.lost:  # harness.fleet: their node died under them
            _note(f"{len(d.lost)} cell{'s' if len(d.lost) != 1 else ''} lost with a cluster node run again; "
                  f"their failure records moved to {SUPERSEDED_NAME}")
        attempt["superseded"] = sorted(d.superseded)
    for line in d.changes:
        _note(f"--force: {line}")
    for line in d.cosmetic:
        _note(f"suite changed (no cell's measurement depends on it): {line}")
    if d.changes or d.cosmetic:
        attempt["suite_changes"] = d.changes + d.cosmetic
    if d.retried:
        attempt["retried"] = d.retried
    if d.failed_kept:
        _note(f"{len(d.failed_kept)} failed cell{'s' if len(d.failed_kept) != 1 else ''} kept as failed; "
              "--retry-failed runs them again")
    if force:
        attempt["forced"] = True
    source = Path(plan.source)
    if source.resolve() != (run_dir / "suite.yaml").resolve():  # `harness run SUITE --resume RUN_DIR`
        with storage_errors("suite.yaml"):
            write_bytes_nofollow(run_dir / "suite.yaml", source.read_bytes())
            os.chmod(run_dir / "suite.yaml", 0o600)
        meta["suite_file"] = plan.source
    meta["config"] = new_config  # what the cells run from now on were planned with
    meta["cells"] = [c.id for c in plan.cells]
    meta["suite"] = plan.suite.name
    return d.todo


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _remove_leftovers(run_dir: Path) -> None:
    """Temp files, job files and the ballast of an attempt that was killed or ended on a
    full or read-only disk. Under the folder's lock nobody else writes them."""
    for folder in (run_dir, run_dir / "logs", run_dir / "timelines"):
        for pattern in (".*.tmp", ".*.job.json", ".harness.probe.*"):
            for p in folder.glob(pattern):
                _unlink_quietly(p)
    release(run_dir)


def _remove_temp_files(run_dir: Path, pid: int) -> None:
    """The temp files a worker (pid) was writing when it died (a timeline half-written to a full disk)."""
    for folder in (run_dir, run_dir / "logs", run_dir / "timelines"):
        for p in folder.glob(f".*.{pid}.tmp"):
            _unlink_quietly(p)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # gone, or a read-only folder: the next resume removes it


def _device(b) -> str:
    """The device label of a suite backend, known before anything loads."""
    from harness.registry import load_backend_class
    from harness.schema import build

    cls = load_backend_class(b.type)
    return cls.device_of(build(cls.Options, b.options, f"backend {b.name} options"))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _groups(cells: list[PlannedCell]) -> dict:
    out: dict = {}
    for c in cells:
        out.setdefault(c.group, []).append(c)
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("accel-harness")
    except Exception:  # noqa: BLE001 - running from a source tree
        from harness import __version__

        return __version__


def _job(plan: Plan, cells: list[PlannedCell], run_dir: Path, device: str, calibration: dict | None) -> CellJob:
    s = plan.suite
    b = plan.backend(cells[0].backend)
    w = plan.workload(cells[0])
    return CellJob(backend_name=b.name, backend_type=b.type, backend_options=b.options, device=device,
                   model=cells[0].model, dtype=cells[0].dtype, checkpoint=w.checkpoint,
                   seed=w.seed if w.seed is not None else s.seed, warmup=s.warmup, repetitions=s.repetitions,
                   scenario=scenario_dict(s), energy=asdict(s.energy), accuracy=asdict(s.accuracy), meters=s.meters,
                   run_dir=str(run_dir), calibration=calibration, cells=list(cells))


def _run_group(plan: Plan, group, cells: list[PlannedCell], run_dir: Path, results_path: Path, progress: Progress,
               device: str, calibration: dict | None) -> None:
    remaining = list(cells)
    timeout = plan.suite.timeout_s
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(group))  # a checkpoint model name may hold '/'
    while remaining:
        job_path = run_dir / "logs" / f".{slug}.job.json"
        events_path = run_dir / "logs" / f".{slug}.events.jsonl"
        job = _job(plan, remaining, run_dir, device, calibration)
        try:
            with storage_errors(f"logs/{job_path.name} (the worker's job)"):
                write_json_atomic(job_path, job.to_json())
                os.chmod(job_path, 0o600)  # the worker needs the real backend options (header values)
                events_path.unlink(missing_ok=True)
            with storage_errors(f"logs/{slug}.log"):
                log = os.fdopen(open_nofollow(run_dir / "logs" / f"{slug}.log",
                                              os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
        except BaseException:
            _unlink_quietly(job_path)  # it holds header values: never left behind
            raise
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
                   HARNESS_RUNNER_PID=str(os.getpid()))  # the worker ends itself if this process dies
        proc = subprocess.Popen([sys.executable, "-m", "harness.worker", str(job_path), str(events_path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # own process group: a kill takes its children too
        try:
            remaining = _watch(proc, events_path, remaining, timeout, results_path, progress,
                               run_dir / "logs" / f"{slug}.log", device)
        except KeyboardInterrupt:
            _kill(proc)
            _save_finished(events_path, remaining, results_path, progress)
            raise
        except BaseException:  # a full disk (StorageFault), or a bug: no worker outlives the run
            _kill(proc)
            raise
        finally:
            log.close()
            _unlink_quietly(job_path)  # read by the worker at start; nothing of it stays on disk
            _remove_temp_files(run_dir, proc.pid)


def _watch(proc, events_path: Path, remaining: list[PlannedCell], timeout: float, results_path: Path,
           progress: Progress, log_path: Path, device: str = "-") -> list[PlannedCell]:
    """Follow one worker; return the cells still to run (after a crash or timeout)."""

    def _failed(cell, kind, message, trace=None):
        return _failed_record(cell, kind, message, device, trace)
    by_id = {c.id: c for c in remaining}
    pending = list(remaining)
    offset = 0
    current, since = None, time.monotonic()
    phase = "loading"
    progress.describe(f"loading {remaining[0].backend} {remaining[0].model} {remaining[0].dtype}")
    buf = b""
    while True:
        exited = proc.poll() is not None
        if events_path.exists():
            with open(events_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                ev = json.loads(raw)
                kind = ev["event"]
                if kind == "loaded":
                    phase = "loaded"
                elif kind == "load_failed":
                    for c in pending:
                        _record(results_path, progress, _failed(c, "load", ev["message"], ev.get("trace")))
                    _kill(proc)
                    return []
                elif kind == "start":
                    current, since = by_id[ev["cell_id"]], time.monotonic()
                    progress.describe(current.label)
                elif kind == "done":
                    _record(results_path, progress, record_from_json(ev["record"], f"{events_path} (worker event)"))
                    pending = [c for c in pending if c.id != ev["cell_id"]]
                    current = None
        if not pending:
            proc.wait()
            return []
        if exited:
            reason = _exit_reason(proc.returncode, log_path)
            victim = current or pending[0]
            where = "while loading the model" if phase == "loading" else "during the cell"
            _record(results_path, progress, _failed(victim, "crash", f"worker {reason} {where}"))
            return [c for c in pending if c.id != victim.id]
        if time.monotonic() - since > timeout:
            _kill(proc)
            if current is None:  # the load itself hangs: a retry would hang again, for every cell
                for c in pending:
                    _record(results_path, progress, _failed(c, "timeout", f"model load ran past timeout_s={timeout:g}"))
                return []
            _record(results_path, progress, _failed(current, "timeout", f"cell ran past timeout_s={timeout:g}"))
            return [c for c in pending if c.id != current.id]
        time.sleep(POLL_S)


def _save_finished(events_path: Path, cells: list[PlannedCell], results_path: Path, progress: Progress) -> None:
    """After Ctrl-C: record the cells the worker reported finished that were not read yet."""
    ids = {c.id for c in cells}
    saved = {r.cell_id for r in read_records(results_path)}
    try:
        lines = events_path.read_bytes().splitlines()
    except OSError:
        return
    for raw in lines:
        try:
            ev = json.loads(raw)
        except ValueError:
            continue  # the line the killed worker was writing
        if ev.get("event") == "done" and ev.get("cell_id") in ids and ev["cell_id"] not in saved:
            _record(results_path, progress, record_from_json(ev["record"], f"{events_path} (worker event)"))
            saved.add(ev["cell_id"])


def _record(results_path: Path, progress: Progress, record: CellRecord) -> None:
    """Append one record. A failure is first checked against the folder itself: a worker
    that died, or raised, because the disk filled up or went read-only did not fail its
    cell, and a failed record would keep --resume from running it again."""
    if record.failed:
        problem = storage_problem(results_path.parent)
        if problem:
            raise StorageFault(problem)
    with storage_errors("results.jsonl"):
        append_record(results_path, record)
    progress.advance(record)


def _failed_record(cell: PlannedCell, kind: str, message: str, device: str, trace: str | None = None) -> CellRecord:
    from workloads.zoo import ZOO

    args = ZOO.get(cell.model)
    return CellRecord.failure(cell, kind, message, device=device, params=args.param_count() if args else None,
                              trace=trace)


def _exit_reason(rc: int, log_path: Path) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = " (killed: out of memory?)" if -rc == signal.SIGKILL else ""
        reason = f"died of {name}{hint}"
    else:
        reason = f"exited with status {rc}"
    tail = _log_tail(log_path)
    return f"{reason}; last log lines: {tail}" if tail else reason


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-600:]


def _kill(proc) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
