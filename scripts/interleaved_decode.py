"""Decode throughput of a suite's in-process backends measured in turns, for a fair ratio.

    .venv/bin/python scripts/interleaved_decode.py precisions-cpu \\
        --backends ort-int8 llamacpp-q8_0 --baseline llamacpp-q8_0 [--batch 1 8] [--rounds 8]

`harness run` times a suite's backends one after another: on a machine whose speed drifts
(a shared VM, turbo, thermals) two rows measured minutes apart can differ by the drift.
This loads every named backend once, with the suite's own options, then times one decode
of `--gen` tokens per backend in each round, round after round, so that each round is a
paired comparison taken within a few seconds. It prints, per batch size, each backend's
median tok/s with its range over rounds, and against the baseline the median of the
per-round ratios with its range. A benchmark, not a test: nothing here asserts a speed.
Weights and shapes are the suite's first workload's (model, dtype); no accuracy gate (the
suite run judges that).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="a suite name or YAML path")
    ap.add_argument("--backends", nargs="+", help="backend names from the suite (default: all in-process ones)")
    ap.add_argument("--baseline", help="backend the ratios are against (default: the last named)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()

    from backends.base import BackendError, ModelBackend
    from harness.config import ConfigError, load_plan, resolve_suite_path
    from harness.registry import load_backend_class
    from harness.schema import build
    from workloads.zoo import ModelSpec, get_model

    try:
        plan = load_plan(resolve_suite_path(a.suite))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configs = {b.name: b for b in plan.suite.backends}
    names = a.backends or [n for n, b in configs.items() if issubclass(load_backend_class(b.type), ModelBackend)]
    unknown = [n for n in names if n not in configs]
    if unknown:
        print(f"error: --backends: {', '.join(unknown)} not in {plan.source} (it has {', '.join(configs)})",
              file=sys.stderr)
        return 2
    baseline = a.baseline or names[-1]
    if baseline not in names:
        print(f"error: --baseline {baseline} is not among --backends", file=sys.stderr)
        return 2
    w = plan.suite.workloads[0]
    spec = ModelSpec(get_model(w.model), seed=plan.suite.seed)
    dtype = w.dtypes[0]
    max_batch, max_seq = max(a.batch), a.prompt + a.gen + 1

    loaded = {}
    for n in names:
        cls = load_backend_class(configs[n].type)
        if not issubclass(cls, ModelBackend):
            print(f"error: {n} is a {configs[n].type} backend: only in-process (model) backends decode here",
                  file=sys.stderr)
            return 2
        be = cls(build(cls.Options, configs[n].options, f"backend {n} options"))
        print(f"loading {n} ...", file=sys.stderr, flush=True)
        try:
            be.load(spec, dtype, max_batch, max_seq)
        except BackendError as e:
            print(f"error: {n}: {e}", file=sys.stderr)
            return 2
        loaded[n] = be

    width = max(len(n) for n in names)
    print(f"\n{spec.args.name} {dtype}, prompt {a.prompt}, decode {a.gen} tokens, {a.rounds} rounds in turns")
    print(f"| {'backend':<{width}} | batch | tok/s median | min - max | vs {baseline} (per-round ratio) |")
    print(f"|{'-' * (width + 2)}|------:|-------------:|----------:|------:|")
    for batch in a.batch:
        prompt = np.random.default_rng(0).integers(0, spec.args.vocab_size, (batch, a.prompt))
        for be in loaded.values():
            be.prepare(batch, a.prompt + a.gen)
            be.decode(be.prefill(prompt), 4)  # one untimed pass: arenas, kernels
        rates: dict[str, list[float]] = {n: [] for n in names}
        for r in range(a.rounds):
            for n, be in loaded.items():
                st = be.prefill(prompt)
                be.synchronize()
                t0 = time.perf_counter()
                be.decode(st, a.gen)
                be.synchronize()
                rates[n].append(batch * a.gen / (time.perf_counter() - t0))
            print(f"  batch {batch} round {r + 1}/{a.rounds}", file=sys.stderr, flush=True)
        for n in names:
            ratios = [x / y for x, y in zip(rates[n], rates[baseline])]
            rel = "" if n == baseline else (f"{statistics.median(ratios):.2f}x "
                                             f"[{min(ratios):.2f}, {max(ratios):.2f}]")
            print(f"| {n:<{width}} | {batch:5d} | {statistics.median(rates[n]):12.1f} | "
                  f"{min(rates[n]):5.0f} - {max(rates[n]):.0f} | {rel} |")
    for be in loaded.values():
        be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
