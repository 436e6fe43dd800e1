"""Quick CUDA correctness check of the torch backend, and the bare decode loop that prices
the harness's overhead (both part of scripts/gpu_check.sh).

Default mode: the captured decode (one CUDA graph replay per token) must produce the same
tokens as the eager loop, decode must advance its state on both paths (10 then 14 steps
from one prefill generate what 24 steps do), and the logits must match the fp32
reference within the precision's tolerance: fp32, bf16, and the weight-only int8 and FP8
(e4m3, capability >= 8.9) paths with bf16 activations. Exits non-zero on any mismatch.

`--bare RUN_DIR`: for every ok decode cell of a torch run, the same backend and options
run the same decode step (prefill, then gen_len - 1 graph replays) in a bare loop, timed
the way the offline scenario times it; prints the harness's decode tok/s, the bare
loop's and their ratio (harness / bare: 1.00 means the harness adds nothing).
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backends import quant
from backends.torch_backend import TorchBackend, TorchOptions
from harness.accuracy import compare, gate_tokens
from workloads.models import reference_logits
from workloads.zoo import ZOO, ModelSpec


def paths() -> list[tuple[str, str | None]]:
    """(activation dtype, weight_quant) pairs this GPU can run."""
    out = [("fp32", None), ("bf16", None), ("bf16", "int8")]
    if quant.capability_problem("fp8", "cuda", quant.device_capability(torch.device("cuda"))) is None:
        out.append(("bf16", "fp8"))
    else:
        print("fp8: skipped,", quant.capability_problem("fp8", "cuda", quant.device_capability(torch.device("cuda"))))
    return out


def check() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch", torch.__version__)
        return 1
    ok = True
    for dtype, wq in paths():
        precision = wq or dtype
        spec = ModelSpec(ZOO["tiny"], seed=0)
        prompts = np.random.default_rng(0).integers(0, spec.args.vocab_size, (4, 32))
        runs, advances = {}, {}
        for graphs in (True, False):
            b = TorchBackend(TorchOptions(device="cuda", cuda_graphs=graphs, weight_quant=wq))
            b.load(spec, dtype, 4, 64)
            cap = b.prepare(4, 64)
            state = b.prefill(prompts)
            t0 = time.perf_counter()
            res = b.decode(state, 24)
            b.synchronize()
            runs[graphs] = (res, time.perf_counter() - t0, cap, b.first_tokens(state))
            split = b.prefill(prompts)
            parts = np.concatenate([b.decode(split, 10).tokens, b.decode(split, 14).tokens], axis=1)
            advances[graphs] = np.array_equal(parts, res.tokens)
            if graphs:
                gate = gate_tokens(spec.args.vocab_size, 2, 24, 1234)
                acc = compare(b.logits(gate, 16), reference_logits(spec, gate, "cuda"), precision)
            b.close()
        same = np.array_equal(runs[True][0].tokens, runs[False][0].tokens) and \
            np.array_equal(runs[True][3], runs[False][3])
        times = runs[True][0].step_times
        monotonic = times is not None and all(b > a for a, b in zip(times, times[1:]))
        print(f"{precision} ({dtype} activations): graph tokens == eager tokens: {same}; step times monotonic: "
              f"{monotonic}; graph decode {runs[True][1] * 1e3:.1f} ms vs eager {runs[False][1] * 1e3:.1f} ms "
              f"for 24 steps; capture {runs[True][2] * 1e3:.0f} ms; accuracy {acc['status']} rel_err "
              f"{acc['rel_err']:.1e} (tolerance {acc['tolerance']:.0e}); decode 10 + 14 == decode 24: "
              f"graph {advances[True]}, eager {advances[False]}")
        # below fp32, argmax can flip on near-ties between two different kernels' roundings
        ok &= (same or precision != "fp32") and monotonic and acc["passed"] and all(advances.values())
    print("CUDA correctness:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def bare(run_dir: Path, reps: int = 5) -> int:
    """Bare decode loops beside the harness's figures for one run folder."""
    from harness.config import load_plan
    from harness.results import load_run

    plan = load_plan(run_dir / "suite.yaml")
    options = {b.name or f"{b.type}-{b.options.get('device', 'cpu')}": b for b in plan.suite.backends}
    _, records = load_run(run_dir)
    print(f"{'backend':16} {'model':14} {'dtype':5} {'batch':>5} {'harness tok/s':>14} {'bare tok/s':>11} "
          f"{'harness/bare':>12}")
    groups: dict[tuple, list] = {}
    for r in records:
        cfg = options.get(r.backend)
        tps = (r.metrics or {}).get("decode_tps") or {}
        if r.status == "ok" and cfg is not None and cfg.type == "torch" and r.gen_len > 8 and "median" in tps:
            groups.setdefault((r.backend, r.model, r.dtype), []).append(r)
    for (name, model, dtype), cells in groups.items():
        b = TorchBackend(TorchOptions(**options[name].options))
        spec = ModelSpec(ZOO[model], seed=plan.suite.seed)
        b.load(spec, dtype, max(c.batch for c in cells), max(c.prompt_len + c.gen_len for c in cells))
        for c in cells:
            b.prepare(c.batch, c.prompt_len + c.gen_len)
            prompts = np.random.default_rng(0).integers(0, spec.args.vocab_size, (c.batch, c.prompt_len))
            rates = []
            for _ in range(reps + 1):  # the first is warm-up
                state = b.prefill(prompts)
                b.synchronize()
                t0 = time.perf_counter()
                b.decode(state, c.gen_len - 1)
                b.synchronize()
                rates.append(c.batch * (c.gen_len - 1) / (time.perf_counter() - t0))
            got, ref = c.metrics["decode_tps"]["median"], float(np.median(rates[1:]))
            line = f"{name:16} {model:14} {dtype:5} {c.batch:5d} {got:14.1f} {ref:11.1f} {got / ref:12.3f}"
            graph = b._graphs.get((c.batch, c.prompt_len + c.gen_len))
            if graph is not None:  # barer still: the captured step replayed, no per-step events
                b.prefill(prompts)
                b.synchronize()
                t0 = time.perf_counter()
                for _ in range(c.gen_len - 1):
                    graph.graph.replay()
                b.synchronize()
                replay = c.batch * (c.gen_len - 1) / (time.perf_counter() - t0)
                line += f"   graph replays only: {replay:.1f} tok/s (harness/replays {got / replay:.3f})"
            print(line)
        b.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare":
        sys.exit(bare(Path(sys.argv[2])))
    sys.exit(check())
