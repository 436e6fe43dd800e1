"""offline: the batch path. Each cell is one batch of `batch` synthetic prompts of
prompt_len tokens, prefilled together and decoded gen_len - 1 steps, as fast as
possible: warm-up repetitions, then timed ones, then the energy windows.

Times are taken around the backend's calls after the device has finished
(synchronize), so a backend that returns early cannot look fast.
"""
from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Callable, ClassVar, Literal

import numpy as np

from backends.base import ModelBackend
from harness.energy import TimedRates, measure_cell_energy
from harness.metrics import RepSample, Samples, cell_metrics
from harness.scenarios.base import CellContext, Scenario, ScenarioOutcome, TimedOutput


@dataclass
class OfflineConfig:
    """`scenario: offline`: no key but `type`. What a cell runs comes from the suite's
    workloads (batch_sizes, prompt_lens, gen_lens) and its warmup / repetitions."""

    type: Literal["offline"] = "offline"

    #: why a request scenario's key (requests, lengths, rates...) is refused here
    unknown_key_hint: ClassVar[str] = (
        "the offline scenario takes no key but `type`: it runs each workload's batch_sizes x prompt_lens x "
        "gen_lens with the suite's warmup and repetitions; requests, lengths, limits... belong to the request "
        "scenarios (single-stream, concurrency, server)")


def prompt_tokens(vocab: int, batch: int, prompt_len: int, seed: int) -> np.ndarray:
    """Synthetic prompts: performance depends on shapes, not on which tokens."""
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, prompt_len), dtype=np.int64)


def run_one(backend: ModelBackend, prompts: np.ndarray, gen_len: int) -> tuple[RepSample, np.ndarray]:
    """One batch of requests: prefill, then gen_len - 1 decode steps. Returns the times
    and the tokens produced, [batch, gen_len] (the token prefill produced, then the
    decode tokens), for the accuracy gate."""
    backend.synchronize()
    t0 = time.perf_counter()
    state = backend.prefill(prompts)
    backend.synchronize()
    t1 = time.perf_counter()
    result = backend.decode(state, gen_len - 1)
    backend.synchronize()
    t2 = time.perf_counter()
    # read after the clock stopped: outside the timed window (inside an energy window it
    # is one [batch] copy against a window of seconds)
    generated = _generated(backend.first_tokens(state), result.tokens, prompts.shape[0], gen_len)
    return RepSample(ttft_s=t1 - t0, e2e_s=t2 - t0, step_times_s=result.step_times), generated


def _generated(first: np.ndarray, decoded: np.ndarray, batch: int, gen_len: int) -> np.ndarray:
    first, decoded = np.asarray(first), np.asarray(decoded)
    if first.shape != (batch,):
        raise RuntimeError(f"backend returned first tokens of shape {first.shape}, expected ({batch},)")
    if decoded.shape != (batch, gen_len - 1):
        shape = "x".join(str(d) for d in decoded.shape)
        raise RuntimeError(f"backend returned {shape} decode tokens, expected {batch}x{gen_len - 1}")
    return np.concatenate([first.astype(np.int64)[:, None], decoded.astype(np.int64)], axis=1)


def run_offline(backend: ModelBackend, prompts: np.ndarray, gen_len: int, warmup: int, repetitions: int,
                on_rep: Callable[[int], None] | None = None) -> tuple[Samples, TimedOutput]:
    """Warm-up, then the timed repetitions; returns their times and what they produced."""
    batch, prompt_len = prompts.shape
    for _ in range(warmup):
        run_one(backend, prompts, gen_len)
    samples = Samples(batch, prompt_len, gen_len)
    timed = TimedOutput(prompts)
    for i in range(repetitions):
        rep, generated = run_one(backend, prompts, gen_len)
        samples.reps.append(rep)
        timed.add(generated)
        if on_rep:
            on_rep(i)
    return samples, timed


def timed_rates(samples: Samples) -> TimedRates:
    """The timed repetitions' throughput of the work each energy window repeats: the
    prefill window runs prefills (prompt tokens / TTFT), the generation window whole
    requests (generated tokens / request time)."""
    b, p, g = samples.batch, samples.prompt_len, samples.gen_len
    reps = [r for r in samples.reps if r.ttft_s > 0 and r.e2e_s > r.ttft_s]
    return TimedRates(prefill=[b * p / r.ttft_s for r in reps], generation=[b * g / r.e2e_s for r in reps],
                      decode=[b * (g - 1) / (r.e2e_s - r.ttft_s) for r in reps] if g > 1 else [])


class OfflineScenario(Scenario):
    name = "offline"
    Config = OfflineConfig
    backend_kinds = ("model",)

    def run(self, ctx: CellContext) -> ScenarioOutcome:
        backend, cell = ctx.backend, ctx.cell
        batch, plen, glen = cell.batch, cell.prompt_len, cell.gen_len
        prepare_s = backend.prepare(batch, plen + glen)
        # the seed formula is part of every recorded figure: changing it changes the prompts
        prompts = prompt_tokens(ctx.vocab_size, batch, plen, ctx.seed + 7919 * plen + batch)
        samples, timed = run_offline(backend, prompts, glen, ctx.warmup, ctx.repetitions)
        out = ScenarioOutcome(
            status="ok", metrics=cell_metrics(samples), samples=samples.to_dict(), prepare_s=prepare_s,
            tokens={"prompt_per_rep": batch * plen, "generated_per_rep": batch * glen,
                    "repetitions": len(samples.reps), "warmup": ctx.warmup},
            timed_output=timed)
        if ctx.meters:
            measured = measure_cell_energy(
                ctx.meters,
                run_prefill=lambda: (backend.prefill(prompts), backend.synchronize()),
                # the energy windows' runs are timed too: their outputs are checked as well
                run_generation=lambda: timed.add(run_one(backend, prompts, glen)[1]),
                prompt_tokens=batch * plen, generated_tokens=batch * glen, settings=ctx.energy_settings,
                sequences=batch, timed=timed_rates(samples))
            out.energy, out.timeline = measured.record, measured.timeline
        return out
