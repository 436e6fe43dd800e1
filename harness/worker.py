"""Worker process: loads one (backend, model, dtype) and measures its cells in turn.

Started by the runner as `python -m harness.worker JOB_JSON EVENTS_JSONL`. It reports
through an append-only events file (stdout belongs to libraries that print):
  {"event": "loading"} / {"event": "loaded", ...} / {"event": "load_failed", ...}
  {"event": "start", "cell_id": ...} / {"event": "done", "record": {...}}
A crash, hang or kill of this process costs only the cell in flight: the runner sees
which cell started without finishing and records it as failed.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
import resource
import sys
import time
import traceback

import numpy as np


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


def prompt_tokens(vocab: int, batch: int, prompt_len: int, seed: int) -> np.ndarray:
    """Synthetic prompts: performance depends on shapes, not on which tokens."""
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, prompt_len), dtype=np.int64)


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


def main(job_path: str, events_path: str) -> int:
    _die_with_parent()
    ev = Events(events_path)
    job = json.loads(Path(job_path).read_text())
    from harness.config import AccuracyConfig, EnergyConfig, options_from_dict
    from harness.registry import load_backend_class

    ev.emit(event="loading")
    try:
        cls = load_backend_class(job["backend"]["type"])
        options = options_from_dict(cls.Options, job["backend"]["options"], f"backend {job['backend']['name']} options")
        spec = _model_spec(job)
        cells = job["cells"]
        max_batch = max(c["batch"] for c in cells)
        acc = AccuracyConfig(**job["accuracy"])
        max_seq = max(max(c["prompt_len"] + c["gen_len"] for c in cells), acc.seq_len if acc.enabled else 0)
        scenario = job.get("scenario") or {"type": "offline"}
        if scenario["type"] != "offline":
            from harness.scenarios.loadgen import scenario_from_dict, scenario_max_seq

            cfg = scenario_from_dict(scenario)
            max_seq = max([max_seq] + [scenario_max_seq(cfg, c["prompt_len"], c["gen_len"]) for c in cells])
        backend = cls(options)
        info = backend.load(spec, job["dtype"], max_batch, max_seq)
        backend.load_details = info.details
        description = backend.describe()
    except Exception as e:  # noqa: BLE001 - any load failure fails this group's cells, with its message
        ev.emit(event="load_failed", message=_message(e), trace=traceback.format_exc())
        return 0
    ev.emit(event="loaded", load_s=info.load_s, compile_s=info.compile_s)

    try:
        meters = _start_meters(job, backend)
    except Exception as e:  # noqa: BLE001 - a meter that cannot start costs energy figures, not the timings
        meters, job["meter_error"] = [], _message(e)
    energy = EnergyConfig(**job["energy"])
    reference_cache: dict = {}
    for cell in cells:
        ev.emit(event="start", cell_id=cell["id"])
        t0 = time.time()
        try:
            record = measure_cell(job, cell, spec, backend, info, description, meters, energy, acc, reference_cache)
        except Exception as e:  # noqa: BLE001 - a failed cell is a result, the next cell still runs
            record = {"status": "failed", "valid": False,
                      "error": {"kind": "exception", "message": _message(e), "trace": traceback.format_exc()}}
        record.update(_cell_fields(cell, spec, job))
        record["precision"] = precision_of(cell, backend)
        if "decode_tps" in (record.get("metrics") or {}):
            from harness.roofline import roofline

            record["roofline"] = roofline(record, job.get("calibration"))
        record["started_at"], record["wall_s"] = t0, time.time() - t0
        ev.emit(event="done", cell_id=cell["id"], record=record)
    for m in meters:
        try:
            m.stop()
        except Exception:  # noqa: BLE001
            pass
    backend.close()
    return 0


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if not str(e).startswith(type(e).__name__) else str(e)


def _model_spec(job: dict):
    from workloads.models.weights import args_from_hf_config
    from workloads.zoo import ModelSpec, get_model
    from pathlib import Path as _P

    if job.get("checkpoint"):
        args = args_from_hf_config(_P(job["checkpoint"]), name=job["model"])
        return ModelSpec(args, seed=job["seed"], checkpoint=job["checkpoint"])
    return ModelSpec(get_model(job["model"]), seed=job["seed"])


def precision_of(cell: dict, backend) -> str:
    """What the weights really are: a backend that quantizes (llama.cpp q8_0) says so
    in load details, so such a cell is never compared with fp32 as the same workload."""
    details = getattr(backend, "load_details", None) or {}
    return details.get("precision") or cell["dtype"]


def _cell_fields(cell: dict, spec, job: dict) -> dict:
    return {"cell_id": cell["id"], "backend": job["backend"]["name"], "backend_type": job["backend"]["type"],
            "device": job["device"], "model": cell["model"], "params": spec.args.param_count(),
            "dtype": cell["dtype"], "precision": cell["dtype"], "batch": cell["batch"],
            "prompt_len": cell["prompt_len"], "gen_len": cell["gen_len"], "scenario": cell["scenario"]}


def _start_meters(job: dict, backend) -> list:
    if not job["energy"].get("enabled", True):
        return []
    try:
        from harness.meters import build_meters
    except ImportError:
        return []
    configs = job.get("meters")
    if configs is None:
        configs = backend.meters()
    meters = build_meters(configs)
    for m in meters:
        m.start()
    return meters


def measure_cell(job, cell, spec, backend, info, description, meters, energy_cfg, acc, reference_cache) -> dict:
    from harness.metrics import cell_metrics
    from harness.scenarios.offline import run_offline, run_one

    batch, plen, glen = cell["batch"], cell["prompt_len"], cell["gen_len"]
    scenario = job.get("scenario") or {"type": "offline"}
    if scenario["type"] != "offline":
        return measure_scenario(job, cell, spec, backend, info, description, meters, energy_cfg, acc,
                                reference_cache)
    prepare_s = backend.prepare(batch, plen + glen)
    prompts = prompt_tokens(spec.args.vocab_size, batch, plen, job["seed"] + 7919 * plen + batch)
    samples, tokens = run_offline(backend, prompts, glen, job["warmup"], job["repetitions"])
    if tokens.shape != (batch, glen - 1):
        raise RuntimeError(f"backend returned {tokens.shape[0]}x{tokens.shape[1]} decode tokens, "
                           f"expected {batch}x{glen - 1}")
    record = {"status": "ok",
              "load": {"load_s": info.load_s, "compile_s": info.compile_s, "prepare_s": prepare_s,
                       "details": info.details},
              "describe": description,
              "tokens": {"prompt_per_rep": batch * plen, "generated_per_rep": batch * glen,
                         "repetitions": len(samples.reps), "warmup": job["warmup"]},
              "samples": samples.to_dict(),
              "metrics": cell_metrics(samples)}
    memory = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if hasattr(backend, "memory"):
        memory.update(backend.memory())
    record["memory"] = memory

    if meters:
        from harness.energy import measure_cell_energy

        settings = _energy_settings(energy_cfg)
        result = measure_cell_energy(
            meters,
            run_prefill=lambda: (backend.prefill(prompts), backend.synchronize()),
            run_generation=lambda: run_one(backend, prompts, glen),
            prompt_tokens=batch * plen, generated_tokens=batch * glen, settings=settings, sequences=batch)
        timeline = result.pop("timeline", None)
        if timeline:
            record["energy_timeline"] = _write_timeline(job, cell, timeline)
        record["energy"] = result
    else:
        if not job["energy"].get("enabled", True):
            record["energy"] = {"status": "disabled"}
        elif job.get("meter_error"):
            record["energy"] = {"status": "unavailable", "reason": f"meters did not start: {job['meter_error']}"}
        else:
            record["energy"] = {"status": "no meters"}

    _gate(record, job, cell, spec, backend, acc, reference_cache)
    return record


def _energy_settings(cfg):
    from harness.energy import EnergySettings

    return EnergySettings(idle_s=cfg.idle_s, min_window_s=cfg.min_window_s, min_updates=cfg.min_updates,
                          lengthen=cfg.lengthen)


def measure_scenario(job, cell, spec, backend, info, description, meters, energy_cfg, acc, reference_cache) -> dict:
    """A cell under a LoadGen-style scenario (single-stream, concurrency, server@rate):
    requests issued by harness.scenarios.loadgen, energy over the steady-state window."""
    from harness.serve import measure_scenario_cell

    out = measure_scenario_cell(backend, job["scenario"], vocab_size=spec.args.vocab_size, batch=cell["batch"],
                                prompt_len=cell["prompt_len"], gen_len=cell["gen_len"], seed=job["seed"],
                                rate=cell.get("rate"), meters=meters or None,
                                energy_settings=_energy_settings(energy_cfg) if meters else None)
    record = dict(out)
    record["load"] = {"load_s": info.load_s, "compile_s": info.compile_s, "details": info.details}
    record["describe"] = description
    if hasattr(backend, "sut"):  # an endpoint: its logits are not ours to read
        record["accuracy"] = {"status": "not checkable (endpoint backend)", "passed": None}
        record["valid"] = record.get("status") == "ok"
    else:
        _gate(record, job, cell, spec, backend, acc, reference_cache)
    return record


def _gate(record, job, cell, spec, backend, acc, reference_cache) -> None:
    """Accuracy gate: the cell is invalid when its logits leave the dtype's tolerance."""
    from harness.accuracy import compare, gate_tokens

    if acc.enabled:
        key = (acc.batch, acc.seq_len)
        ref_device = acc.reference_device or backend.weights_device()
        gate = gate_tokens(spec.args.vocab_size, acc.batch, acc.seq_len, acc.seed)
        if key not in reference_cache:
            from workloads.models import reference_logits

            reference_cache[key] = reference_logits(spec, gate, ref_device)
        got = backend.logits(gate, acc.prefill_len)
        record["accuracy"] = compare(got, reference_cache[key], precision_of(cell, backend))
        record["accuracy"]["reference"] = f"torch fp32 full forward on {ref_device}"
        if not record["accuracy"]["passed"]:
            record["status"], record["valid"] = "invalid", False
        else:
            record["valid"] = record.get("status") == "ok"
    else:
        record["accuracy"] = {"status": "not checked", "passed": None}
        record["valid"] = record.get("status") == "ok"


def _write_timeline(job: dict, cell: dict, rows: list[dict]) -> str:
    folder = Path(job["run_dir"]) / "timelines"
    folder.mkdir(parents=True, exist_ok=True)
    name = cell["id"].replace("/", "_") + ".csv"
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("t", "phase", "meter", "watts"), k))
    tmp = folder / f".{name}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, folder / name)
    return f"timelines/{name}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
