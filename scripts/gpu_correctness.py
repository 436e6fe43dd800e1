"""Quick CUDA correctness check of the torch backend (part of scripts/gpu_check.sh).

The captured decode (one CUDA graph replay per token) must produce the same tokens as
the eager loop, decode must advance its state on both paths (10 then 14 steps from one
prefill generate what 24 steps do), and the logits must match the fp32 reference within
the dtype's tolerance. Exits non-zero on any mismatch.
"""
import sys
import time

import numpy as np
import torch

from backends.torch_backend import TorchBackend, TorchOptions
from harness.accuracy import compare, gate_tokens
from workloads.models import reference_logits
from workloads.zoo import ZOO, ModelSpec


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch", torch.__version__)
        return 1
    ok = True
    for dtype in ("fp32", "bf16"):
        spec = ModelSpec(ZOO["tiny"], seed=0)
        prompts = np.random.default_rng(0).integers(0, spec.args.vocab_size, (4, 32))
        runs, advances = {}, {}
        for graphs in (True, False):
            b = TorchBackend(TorchOptions(device="cuda", cuda_graphs=graphs))
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
                acc = compare(b.logits(gate, 16), reference_logits(spec, gate, "cuda"), dtype)
            b.close()
        same = np.array_equal(runs[True][0].tokens, runs[False][0].tokens) and \
            np.array_equal(runs[True][3], runs[False][3])
        times = runs[True][0].step_times
        monotonic = times is not None and all(b > a for a, b in zip(times, times[1:]))
        print(f"{dtype}: graph tokens == eager tokens: {same}; step times monotonic: {monotonic}; "
              f"graph decode {runs[True][1] * 1e3:.1f} ms vs eager {runs[False][1] * 1e3:.1f} ms for 24 steps; "
              f"capture {runs[True][2] * 1e3:.0f} ms; accuracy {acc['status']} rel_err {acc['rel_err']:.1e}; "
              f"decode 10 + 14 == decode 24: graph {advances[True]}, eager {advances[False]}")
        # bf16 argmax can flip on near-ties between two different kernels' roundings
        ok &= (same or dtype != "fp32") and monotonic and acc["passed"] and all(advances.values())
    print("CUDA correctness:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
