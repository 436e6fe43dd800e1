"""Write a results folder of N cell records, made from the records of a small real run
(issue 21: reports, comparisons and verdicts at lab scale).

    python scripts/make_big_run.py SEED_RUN OUT_DIR --records 5000 [--seed 0] [--run-id NAME]

Every record of SEED_RUN (a folder `harness run` wrote) is the template of many: each
copy gets a distinct workload (backend label, model name, precision, batch, prompt and
generation length) and its timings scaled by a per-cell factor with a per-repetition
jitter, so the statistics of every cell differ while keeping the shape, the meters,
the energy windows and the accuracy record of a real one. Throughputs, TPOT, TTFT and
the energy figures are rescaled consistently with the timings (tokens/s and tokens/J
divided by the factor, times and J/token multiplied). Each cell gets its own copy of its
template's power timeline CSV, as a real run has one per cell.

The grid is the same for every --seed: two folders written with different seeds hold the
same workloads (so `harness compare` matches every cell) with different measurements.
The output is deterministic for a given seed run, N and --seed.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
from pathlib import Path
import shutil
import sys

import numpy as np

BACKENDS = ("torch-cpu", "onnx-cpu", "llamacpp-cpu", "hf-cpu", "vllm-http")
MODELS = ("tiny", "smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "llama3.2-1b", "llama3.2-3b", "llama3.1-8b",
          "mistral-7b", "phi3-mini", "gemma2-2b")
DTYPES = ("fp32", "bf16", "fp16")
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
PROMPT_LENS = (32, 128, 512, 1024, 2048)
GEN_LENS = (16, 64, 128, 256)

TIME_METRICS = ("ttft_s", "tpot_s", "e2e_s")  # scale with the factor
RATE_METRICS = ("prefill_tps", "decode_tps")  # scale with its inverse
ENERGY_PER_TOKEN = ("j_per_prompt_token_gross", "j_per_prompt_token_net", "j_per_generated_token_gross",
                    "j_per_generated_token_net", "j_per_generated_token_e2e_gross",
                    "j_per_generated_token_e2e_net", "energy_per_request_gross_j", "energy_per_request_net_j")
TOKENS_PER_J = ("tokens_per_joule_gross", "tokens_per_joule_net")


def workloads():
    """The grid, batch innermost (so every configuration has a line against batch), then
    backend (so cells of one workload on every backend sit together)."""
    for model, dtype, p, g in itertools.product(MODELS, DTYPES, PROMPT_LENS, GEN_LENS):
        for backend in BACKENDS:
            for batch in BATCHES:
                yield backend, model, dtype, batch, p, g


def _summary(samples: list[float]) -> dict:
    a = np.asarray(samples, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "n": len(a)}


def _scale_metric(m: dict, per_rep: np.ndarray, inverse: bool) -> None:
    s = m.get("samples")
    if not s:
        return
    f = per_rep[:len(s)] if len(per_rep) >= len(s) else np.resize(per_rep, len(s))
    new = [float(v / x) if inverse else float(v * x) for v, x in zip(s, f)]
    m.update(_summary(new), samples=new)


def derive(template: dict, workload: tuple, factor: float, per_rep: np.ndarray) -> dict:
    backend, model, dtype, batch, p, g = workload
    r = copy.deepcopy(template)
    scen = r.get("scenario") or "offline"
    r.update(backend=backend, model=model, dtype=dtype, precision=dtype, batch=batch, prompt_len=p, gen_len=g,
             cell_id=f"{backend}/{model}/{dtype}/b{batch}/p{p}/g{g}/{scen}")
    times = factor * per_rep
    for key, vals in (r.get("samples") or {}).items():
        if isinstance(vals, list) and vals and isinstance(vals[0], list):  # step times, per repetition
            r["samples"][key] = [[float(v * t) for v in row] for row, t in zip(vals, np.resize(times, len(vals)))]
        elif isinstance(vals, list):
            r["samples"][key] = [float(v * t) for v, t in zip(vals, np.resize(times, len(vals)))]
    for key, m in (r.get("metrics") or {}).items():
        if not isinstance(m, dict):
            continue
        if key in TIME_METRICS:
            _scale_metric(m, times, inverse=False)
        elif key in RATE_METRICS:
            _scale_metric(m, times, inverse=True)
        else:  # percentiles of a latency (ITL)
            for k in ("p50", "p90", "p99", "mean", "median"):
                if isinstance(m.get(k), (int, float)):
                    m[k] = float(m[k] * factor)
    for meter in ((r.get("energy") or {}).get("meters") or []):
        for k in ENERGY_PER_TOKEN:
            if isinstance(meter.get(k), (int, float)):
                meter[k] = float(meter[k] * factor)
        for k in TOKENS_PER_J:
            if isinstance(meter.get(k), (int, float)):
                meter[k] = float(meter[k] / factor)
    if r.get("energy_timeline"):
        r["energy_timeline"] = "timelines/" + r["cell_id"].replace("/", "_") + ".csv"
    return r


def make_big_run(seed_run: Path, out: Path, n: int, seed: int = 0, run_id: str | None = None) -> Path:
    meta = json.loads((seed_run / "run.json").read_text())
    templates = [json.loads(line) for line in (seed_run / "results.jsonl").read_text().splitlines() if line.strip()]
    if not templates:
        raise SystemExit(f"error: {seed_run}/results.jsonl holds no records")
    out.mkdir(parents=True, exist_ok=False)
    (out / "timelines").mkdir()
    run_id = run_id or out.name
    meta["run_id"] = run_id
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    rng = np.random.default_rng(seed)
    with open(out / "results.jsonl", "w") as f:
        for i, wk in zip(range(n), workloads()):
            t = templates[i % len(templates)]
            reps = max(len((t.get("samples") or {}).get("e2e_s") or []), 1)
            # per-cell factor: the model size and the batch shift a real cell's speed; lognormal noise on top
            factor = float(np.exp(rng.normal(0.0, 0.35)))
            per_rep = np.exp(rng.normal(0.0, 0.05, reps))
            rec = derive(t, wk, factor, per_rep)
            f.write(json.dumps(rec) + "\n")
            if t.get("energy_timeline"):
                src = seed_run / t["energy_timeline"]
                if src.is_file():
                    shutil.copyfile(src, out / rec["energy_timeline"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seed_run", type=Path, help="a run folder written by `harness run`")
    ap.add_argument("out", type=Path, help="the folder to write (must not exist)")
    ap.add_argument("--records", type=int, required=True, help="how many records to write")
    ap.add_argument("--seed", type=int, default=0, help="measurement noise seed (same grid for every seed)")
    ap.add_argument("--run-id", help="run_id in run.json (default: the folder's name)")
    a = ap.parse_args(argv)
    n_grid = len(BACKENDS) * len(MODELS) * len(DTYPES) * len(BATCHES) * len(PROMPT_LENS) * len(GEN_LENS)
    if a.records > n_grid:
        print(f"error: --records {a.records}: the grid has {n_grid} distinct workloads", file=sys.stderr)
        return 2
    make_big_run(a.seed_run, a.out, a.records, a.seed, a.run_id)
    print(f"wrote {a.records} records to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
