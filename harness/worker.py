"""Worker process: loads one (backend, model, dtype) group and measures its cells in turn.

Started by the runner as `python -m harness.worker JOB_JSON EVENTS_JSONL`, where JOB_JSON
is a harness.records.CellJob. It reports through an append-only events file (stdout
belongs to libraries that print):
  {"event": "loading"} / {"event": "loaded", ...} / {"event": "load_failed", ...}
  {"event": "start", "cell_id": ...} / {"event": "done", "record": CellRecord as JSON}
A crash, hang or kill of this process costs only the cell in flight: the runner sees
which cell started without finishing and records it as failed.

One cell, start to end (measure_cell): the scenario runs it on the loaded backend and
returns a ScenarioOutcome; this module turns that into the CellRecord, adding what no
scenario knows of: the accuracy gate, the precision the weights really have, roofline
%, memory, the power-timeline file, and why energy is missing where it is.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
import json
import os
from pathlib import Path
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

from backends.base import Backend, LoadInfo, ModelBackend
from harness.records import CellJob, CellRecord, EnergyRecord, PlannedCell
from harness.accuracy import TimedCheck
from harness.scenarios.base import CellContext, RequestOutputs, Scenario, ScenarioOutcome, TimedOutput


class Events:
    def __init__(self, path: str):
        self.path = path

    def emit(self, **event) -> None:
        event["t"] = time.time()
        line = (json.dumps(event, default=_default) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _die_with_parent() -> None:
    """End this worker when the runner dies (kill -9, the OOM killer): an orphan would go
    on measuring cells nobody records, and hold the device while `--resume` starts
    another worker on it."""
    runner = os.environ.get("HARNESS_RUNNER_PID", "")
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    else:
        import threading

        def watch(ppid=os.getppid()):
            while os.getppid() == ppid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if runner.isdigit() and os.getppid() != int(runner):
        os._exit(1)  # the runner died before the above took effect


# --- the loaded group --------------------------------------------------------------------

@dataclass
class LoadedGroup:
    """What every cell of a job shares: the backend with its model loaded, the scenario."""

    backend: Backend
    spec: Any  # workloads.zoo.ModelSpec
    info: LoadInfo
    description: dict
    scenario: Scenario
    precision: str  # what the weights really are: a quantizing backend says so in load details

    @property
    def params(self) -> int:
        return self.spec.args.param_count()


def model_spec(job: CellJob):
    from workloads.models.weights import args_from_hf_config
    from workloads.zoo import ModelSpec, get_model

    if job.checkpoint:
        args = args_from_hf_config(Path(job.checkpoint), name=job.model)
        return ModelSpec(args, seed=job.seed, checkpoint=job.checkpoint)
    return ModelSpec(get_model(job.model), seed=job.seed)


def build_scenario(mapping: dict) -> Scenario:
    """The suite's scenario (already validated by load_plan) from its mapping."""
    from harness.registry import load_scenario_class
    from harness.schema import build

    cls = load_scenario_class(mapping["type"])
    return cls(build(cls.Config, mapping, "scenario"))


def load_group(job: CellJob) -> LoadedGroup:
    from harness.config import AccuracyConfig
    from harness.registry import load_backend_class
    from harness.schema import build

    cls = load_backend_class(job.backend_type)
    options = build(cls.Options, job.backend_options, f"backend {job.backend_name} options")
    spec = model_spec(job)
    scenario = build_scenario(job.scenario)
    acc = AccuracyConfig(**job.accuracy)
    max_batch = max(c.batch for c in job.cells)
    max_seq = max([scenario.max_seq(c.prompt_len, c.gen_len) for c in job.cells]
                  + [acc.seq_len if acc.enabled and issubclass(cls, ModelBackend) else 0])
    backend = cls(options)
    info = backend.load(spec, job.dtype, max_batch, max_seq)
    return LoadedGroup(backend, spec, info, backend.describe(), scenario,
                       precision=info.details.get("precision") or job.dtype)


def start_meters(job: CellJob, backend: Backend) -> tuple[list, str | None]:
    """(started meters, why none could start). A meter that cannot start costs energy
    figures, never the timings."""
    if not job.energy.get("enabled", True):
        return [], None
    try:
        from harness.meters import build_meters

        meters = build_meters(job.meters if job.meters is not None else backend.meters())
        for m in meters:
            m.start()
        return meters, None
    except Exception as e:  # noqa: BLE001 - see the docstring
        return [], _message(e)


# --- one cell ------------------------------------------------------------------------------

#: what a cell whose scenario kept no timed output says (not a pass: nobody looked)
_UNCHECKED_TIMED = TimedCheck.unchecked("the scenario kept no timed output to re-score")


class AccuracyGate:
    """The cell's outputs against the fp32 torch reference on the same weights; a cell
    that fails either check is invalid (harness.accuracy says what each check compares).

    The logits check runs on fixed sequences, its reference computed once per group; the
    timed-output check re-scores what this cell's timed runs produced. Both run after the
    scenario, outside every timed and energy window."""

    def __init__(self, config: dict, group: LoadedGroup):
        from harness.config import AccuracyConfig

        self.cfg = AccuracyConfig(**config)
        self.group = group
        self._reference = None

    def check(self, timed: TimedOutput | RequestOutputs | None) -> dict:
        if not self.cfg.enabled:
            return {"status": "not checked", "passed": None,
                    "timed_output": TimedCheck.unchecked("accuracy.enabled is false", "not checked").to_json()}
        if not isinstance(self.group.backend, ModelBackend):
            return self._endpoint(timed)
        result = self._logits()
        timed_check = self._timed_check(timed)
        result["timed_output"] = timed_check.to_json()
        result["logits_passed"] = result["passed"]
        if timed_check.passed is False:
            reasons = [r for r in (result.get("reason"), timed_check.reason) if r]
            result.update(status="fail", passed=False, reason="; ".join(reasons))
        return result

    def _timed_check(self, timed: TimedOutput | RequestOutputs | None) -> TimedCheck:
        if timed is None:
            return _UNCHECKED_TIMED
        if isinstance(timed, RequestOutputs) and not timed.kept:
            return TimedCheck.unchecked(timed.reason or "no request returned token ids")
        return self._timed(timed)

    def _endpoint(self, timed: TimedOutput | RequestOutputs | None) -> dict:
        """An endpoint: its logits are not ours to read, so the token ids it returned (where
        it is declared to serve the reference weights) are the whole check. A pass
        establishes the tokens, not the logits, so `passed` stays None; a fail is INVALID."""
        check = self._timed_check(timed)
        result = {"status": "not checkable (endpoint backend)", "passed": None, "logits_passed": None,
                  "logits": "not checkable: an endpoint returns tokens, not logits", "timed_output": check.to_json()}
        if check.passed is True:
            result["status"] = f"timed tokens {check.agreement:.0%}, logits not checkable (endpoint)"
        elif check.passed is False:
            result.update(status="fail", passed=False, reason=check.reason)
        return result

    @property
    def _ref_device(self) -> str:
        if self.cfg.reference_device:
            return self.cfg.reference_device
        backend = self.group.backend
        # an endpoint's weights are as declared (serves_reference_weights): drawn on the cpu,
        # like `harness serve` on the cpu; one seeded on another device sets reference_device
        return backend.weights_device() if isinstance(backend, ModelBackend) else "cpu"

    def _logits(self) -> dict:
        from harness.accuracy import compare, gate_tokens

        cfg, spec, backend = self.cfg, self.group.spec, self.group.backend
        tokens = gate_tokens(spec.args.vocab_size, cfg.batch, cfg.seq_len, cfg.seed)
        if self._reference is None:
            from workloads.models import reference_logits

            self._reference = reference_logits(spec, tokens, self._ref_device)
        result = compare(backend.logits(tokens, cfg.prefill_len), self._reference, self.group.precision)
        result["reference"] = f"torch fp32 full forward on {self._ref_device}"
        return result

    def _timed(self, timed: TimedOutput | RequestOutputs) -> TimedCheck:
        """Teacher-forced reference over prompt + produced tokens: one full forward per
        sequence gives the reference's logits at every position that produced a token.
        Batch rows and requests alike (harness.scenarios.base.ProducedSequence)."""
        import torch

        from harness.accuracy import TIMED_SEQUENCES, Disagreement, agreeing, judge, tolerance
        from workloads.models import build_model, full_forward

        device, tol = self._ref_device, tolerance(self.group.precision)
        seqs = timed.sequences(TIMED_SEQUENCES)
        flags: list[np.ndarray] = []
        first = None
        model = build_model(self.group.spec, "fp32", device)
        with torch.inference_mode():
            for s in seqs:
                produced = np.asarray(s.produced, np.int64)
                seq = np.asarray(s.prompt + s.produced[:-1], np.int64)  # the last token feeds nothing
                logits = full_forward(model, torch.from_numpy(seq)[None].to(device))
                ref = logits[0, len(s.prompt) - 1:].cpu().numpy()  # [n produced, vocab]: position p predicts p + 1
                ok = agreeing(ref, produced, tol)
                flags.append(ok)
                if first is None and not ok.all():
                    j = int(np.argmin(ok))
                    first = Disagreement(sequence=s.sequence, position=j, token=int(produced[j]),
                                         reference_token=int(ref[j].argmax()), output=s.output)
        where = f" of the {timed.source}'s requests" if isinstance(timed, RequestOutputs) else ""
        return judge(flags, first, sequences=len({s.sequence for s in seqs}), outputs=len({s.output for s in seqs}),
                     repetitions=timed.repetitions, precision=self.group.precision,
                     reference=f"torch fp32 full forward on {device}, teacher-forced over prompt + produced "
                               f"tokens{where}")


def align_meter_clocks(meters: list) -> list[dict]:
    """Run the power signature and align each external log meter's clock to this host's
    (harness.meters.clock; nothing runs when no meter logs on its own clock). A meter
    whose clock is off and not corrected flags its own figures; this is the record of why."""
    from dataclasses import asdict

    try:
        from harness.meters import align_clocks

        return [asdict(a) for a in align_clocks(meters)]
    except Exception as e:  # noqa: BLE001 - alignment trouble costs the alignment, never the cells
        return [{"found": False, "problem": "alignment failed", "reason": _message(e)}]


def measure_cell(job: CellJob, cell: PlannedCell, group: LoadedGroup, meters: list, meter_error: str | None,
                 gate: AccuracyGate, clock_alignment: list[dict] | None = None) -> CellRecord:
    from harness.energy import EnergySettings

    e = job.energy
    settings = EnergySettings(idle_s=e["idle_s"], min_window_s=e["min_window_s"], min_updates=e["min_updates"],
                              lengthen=e["lengthen"])
    ctx = CellContext(backend=group.backend, cell=cell, vocab_size=group.spec.args.vocab_size, seed=job.seed,
                      warmup=job.warmup, repetitions=job.repetitions, meters=meters, energy_settings=settings,
                      run_dir=job.run_dir)
    outcome = group.scenario.run(ctx)
    record = _record(job, cell, group, outcome)
    record.energy = outcome.energy or _no_energy(job, meter_error)
    if record.energy.meters and clock_alignment:
        record.energy.clock_alignment = clock_alignment
    if outcome.timeline:
        record.energy_timeline = _write_timeline(Path(job.run_dir), cell, outcome.timeline)
    record.accuracy = gate.check(outcome.timed_output)
    if record.accuracy.get("passed") is False:
        record.status, record.valid = "invalid", False
    else:
        record.valid = record.status == "ok"
    if "decode_tps" in record.metrics:
        from harness.roofline import roofline

        record.roofline = roofline(record, job.calibration)
    return record


def _record(job: CellJob, cell: PlannedCell, group: LoadedGroup, out: ScenarioOutcome) -> CellRecord:
    load = {"load_s": group.info.load_s, "compile_s": group.info.compile_s}
    if out.prepare_s is not None:
        load["prepare_s"] = out.prepare_s
    load["details"] = group.info.details
    memory = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    memory.update(group.backend.memory())
    return CellRecord(
        cell_id=cell.id, backend=cell.backend, backend_type=cell.backend_type, model=cell.model, dtype=cell.dtype,
        batch=cell.batch, prompt_len=cell.prompt_len, gen_len=cell.gen_len, scenario=cell.scenario,
        status=out.status, valid=False, device=job.device, params=group.params, precision=group.precision,
        load=load, describe=group.description, tokens=out.tokens, samples=out.samples, metrics=out.metrics,
        memory=memory, warnings=out.warnings, scenario_config=out.scenario_config, summary=out.summary,
        requests=out.requests, steady_window=out.steady_window, runs=out.runs, sut=out.sut)


def _no_energy(job: CellJob, meter_error: str | None) -> EnergyRecord:
    if not job.energy.get("enabled", True):
        return EnergyRecord(status="disabled")
    if meter_error:
        return EnergyRecord(status="unavailable", reason=f"meters did not start: {meter_error}")
    return EnergyRecord(status="no meters")


def _write_timeline(run_dir: Path, cell: PlannedCell, rows: list[dict]) -> str:
    folder = run_dir / "timelines"
    folder.mkdir(parents=True, exist_ok=True)
    name = cell.id.replace("/", "_") + ".csv"
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("t", "phase", "meter", "watts"), k))
    # a temp name of this process only, created exclusively and never through a link planted
    # in the run folder; the rename replaces a link rather than writing through it
    from harness.results import open_nofollow

    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    with os.fdopen(open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, folder / name)
    return f"timelines/{name}"


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if not str(e).startswith(type(e).__name__) else str(e)


# --- the process ----------------------------------------------------------------------------

def _log_failure(what: str) -> None:
    """The traceback of a failure into the worker's log (logs/<group>.log, its stderr): the
    record holds the message, the log where it came from (issue 20: the log was empty)."""
    print(f"FAILED {what}:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()


def main(job_path: str, events_path: str) -> int:
    _die_with_parent()
    ev = Events(events_path)
    job = CellJob.from_json(json.loads(Path(job_path).read_text()))
    ev.emit(event="loading")
    try:
        group = load_group(job)
    except Exception as e:  # noqa: BLE001 - any load failure fails this group's cells, with its message
        ev.emit(event="load_failed", message=_message(e), trace=traceback.format_exc())
        _log_failure(f"loading {job.backend_name} {job.model} {job.dtype}")
        return 0
    ev.emit(event="loaded", load_s=group.info.load_s, compile_s=group.info.compile_s)
    meters, meter_error = start_meters(job, group.backend)
    clock_alignment = align_meter_clocks(meters)
    gate = AccuracyGate(job.accuracy, group)
    for cell in job.cells:
        ev.emit(event="start", cell_id=cell.id)
        t0 = time.time()
        try:
            record = measure_cell(job, cell, group, meters, meter_error, gate, clock_alignment)
        except Exception as e:  # noqa: BLE001 - a failed cell is a result, the next cell still runs
            record = CellRecord.failure(cell, "exception", _message(e), device=job.device, params=group.params,
                                        trace=traceback.format_exc())
            record.precision = group.precision
            _log_failure(f"cell {cell.id}")
        record.started_at, record.wall_s = t0, time.time() - t0
        ev.emit(event="done", cell_id=cell.id, record=record.to_json())
    for m in meters:
        try:
            m.stop()
        except Exception:  # noqa: BLE001 - the results are already out
            pass
    group.backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
