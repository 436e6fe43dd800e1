"""Offline scenario: every request of the batch issued at once, as fast as possible.

Knows nothing of models: it drives anything with prefill / decode / synchronize and
times around those calls after the device has finished (synchronize), so a backend
that returns early cannot look fast.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from harness.metrics import RepSample, Samples


def run_one(sut, prompts: np.ndarray, gen_len: int) -> tuple[RepSample, np.ndarray]:
    """One batch of requests: prefill, then gen_len - 1 decode steps."""
    sut.synchronize()
    t0 = time.perf_counter()
    state = sut.prefill(prompts)
    sut.synchronize()
    t1 = time.perf_counter()
    result = sut.decode(state, gen_len - 1)
    sut.synchronize()
    t2 = time.perf_counter()
    return RepSample(ttft_s=t1 - t0, e2e_s=t2 - t0, step_times_s=result.step_times), result.tokens


def run_offline(sut, prompts: np.ndarray, gen_len: int, warmup: int, repetitions: int,
                on_rep: Callable[[int], None] | None = None) -> tuple[Samples, np.ndarray]:
    batch, prompt_len = prompts.shape
    for _ in range(warmup):
        run_one(sut, prompts, gen_len)
    samples = Samples(batch, prompt_len, gen_len)
    tokens = None
    for i in range(repetitions):
        rep, tokens = run_one(sut, prompts, gen_len)
        samples.reps.append(rep)
        if on_rep:
            on_rep(i)
    return samples, tokens
