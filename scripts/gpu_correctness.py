"""Quick CUDA correctness check of the torch backend (part of scripts/gpu_check.sh).

The captured decode (one CUDA graph replay per token) must produce the same tokens as
the eager loop, and its logits must match the fp32 reference within the dtype's
tolerance. Exits non-zero on any mismatch.
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
        runs = {}
        for graphs in (True, False):
            b = TorchBackend(TorchOptions(device="cuda", cuda_graphs=graphs))
            b.load(spec, dtype, 4, 64)
            cap = b.prepare(4)
            state = b.prefill(prompts)
            t0 = time.perf_counter()
            res = b.decode(state, 24)
            b.synchronize()
            runs[graphs] = (res, time.perf_counter() - t0, cap)
            if graphs:
                gate = gate_tokens(spec.args.vocab_size, 2, 24, 1234)
                acc = compare(b.logits(gate, 16), reference_logits(spec, gate, "cuda"), dtype)
            b.close()
        same = np.array_equal(runs[True][0].tokens, runs[False][0].tokens)
        times = runs[True][0].step_times
        monotonic = times is not None and all(b > a for a, b in zip(times, times[1:]))
        print(f"{dtype}: graph tokens == eager tokens: {same}; step times monotonic: {monotonic}; "
              f"graph decode {runs[True][1] * 1e3:.1f} ms vs eager {runs[False][1] * 1e3:.1f} ms for 24 steps; "
              f"capture {runs[True][2] * 1e3:.0f} ms; accuracy {acc['status']} rel_err {acc['rel_err']:.1e}")
        # bf16 argmax can flip on near-ties between two different kernels' roundings
        ok &= (same or dtype != "fp32") and monotonic and acc["passed"]
    print("CUDA correctness:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
