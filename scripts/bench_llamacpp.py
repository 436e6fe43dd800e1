"""Time llama.cpp decode on a zoo model (default smollm2-135m) through the harness's backend.

    .venv/bin/python scripts/bench_llamacpp.py [--model smollm2-135m] [--threads 2]
        [--batch 1 8] [--precision f32 f16 q8_0] [--prompt 64] [--gen 64] [--reps 3]

Decode throughput = batch x gen / decode time (the prefill's token excluded, as the
harness counts it: the n decode steps after prefill). Median over repetitions, after one
warm-up. "best step" = batch / the fastest single decode step seen: on a shared machine
it is the closer estimate of what the stack does uncontended. Also prints the accuracy
gate's verdict for each precision.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--precision", nargs="+", default=["f32", "f16", "q8_0"])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-gate", action="store_true", help="skip the accuracy check")
    a = ap.parse_args()

    from backends.llamacpp_backend import LlamaCppBackend, LlamaCppOptions
    from harness.accuracy import compare, gate_tokens
    from workloads.models import reference_logits
    from workloads.zoo import ModelSpec, get_model

    spec = ModelSpec(get_model(a.model), seed=0)
    gate = gate_tokens(spec.args.vocab_size, 1, 32, seed=0)
    ref = None if a.no_gate else reference_logits(spec, gate)
    print(f"{'precision':>9} {'batch':>5} {'decode tok/s':>13} {'best step':>10} {'prefill tok/s':>14} "
          f"{'gate':>16}  gguf MB")
    for p in a.precision:
        be = LlamaCppBackend(LlamaCppOptions(threads=a.threads, precision=p))
        info = be.load(spec, "fp32", max(a.batch), a.prompt + a.gen + 1)
        verdict = "-"
        if ref is not None:
            r = compare(be.logits(gate, 16), ref, info.details["precision"])
            verdict = f"{r['status']} {r['rel_err']:.1e}"
        for b in a.batch:
            prompts = np.random.default_rng(b).integers(0, spec.args.vocab_size, (b, a.prompt))
            dec, pre, best = [], [], 0.0
            for rep in range(a.reps + 1):
                t0 = time.perf_counter()
                st = be.prefill(prompts)
                t1 = time.perf_counter()
                res = be.decode(st, a.gen)
                t2 = time.perf_counter()
                if rep:  # the first is warm-up
                    pre.append(b * a.prompt / (t1 - t0))
                    dec.append(b * a.gen / (t2 - t1))
                    best = max(best, b / float(np.diff([0.0] + res.step_times).min()))
            print(f"{p:>9} {b:>5} {statistics.median(dec):>13.1f} {best:>10.1f} {statistics.median(pre):>14.1f} "
                  f"{verdict:>16}  {info.details['gguf_bytes'] / 1e6:.0f}", flush=True)
        be.close()


if __name__ == "__main__":
    main()
