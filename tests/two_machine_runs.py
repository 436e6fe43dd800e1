"""Two real runs of the same small suite ("machine-a" and "machine-b": torch and onnxruntime
on the tiny model, 3 repetitions, two fake power meters of different scopes), made once per
pytest session and shared by tests/test_compare_pairing.py and tests/test_report_front.py."""
import json
import os
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parent.parent

SUITE = """\
name: two-machines
seed: 0
warmup: 1
repetitions: 3
timeout_s: 240
backends:
  - type: torch
    name: torch-cpu
    options: {device: cpu, threads: 1}
  - type: onnxruntime
    name: onnx-cpu
    options: {providers: [CPUExecutionProvider], allow_spinning: false, intra_op_threads: 1}
meters:
  - {type: command, argv: ["echo", "power 42.5 W"], regex: "power (?P<watts>[0-9.]+) W", period_s: 0.05,
     scope: cpu-package, name: fake-smi}
  - {type: command, argv: ["echo", "power 90 W"], regex: "power (?P<watts>[0-9.]+) W", period_s: 0.05,
     scope: wall, name: fake-wall}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1]
    prompt_lens: [16]
    gen_lens: [8]
energy: {idle_s: 0.1, min_window_s: 0.15, min_updates: 2}
accuracy: {seq_len: 8, prefill_len: 4, batch: 1}
"""

NAMES = ("machine-a", "machine-b")


def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """(machine-a, machine-b) run folders, made concurrently the first time a session asks."""
    root = tmp_path_factory.getbasetemp() / "two-machine-runs"
    out = root / "results"
    runs = tuple(out / n for n in NAMES)
    if all((r / "results.jsonl").exists() and json.loads((r / "run.json").read_text()).get("status") == "complete"
           for r in runs):
        return runs
    root.mkdir(parents=True, exist_ok=True)
    suite = root / "suite.yaml"
    suite.write_text(SUITE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--output", str(out), "--name", n,
                               "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for n in NAMES]
    for p in procs:
        text, _ = p.communicate(timeout=600)
        assert p.returncode == 0, text
    return runs


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines() if x.strip()]
