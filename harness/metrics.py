"""Per-cell metrics of a batch cell from raw repetition samples (definitions: README).

prefill throughput = batch x prompt_len / TTFT
decode throughput  = batch x (gen_len - 1) / (e2e - TTFT)
TPOT               = (e2e - TTFT) / (gen_len - 1)
inter-token latency: gaps between consecutive decode steps' completion times
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RepSample:
    """One timed repetition of a cell: a batch of requests, prefill then decode."""

    ttft_s: float
    e2e_s: float
    step_times_s: list[float] | None = None  # per decode step, from decode start


@dataclass
class Samples:
    batch: int
    prompt_len: int
    gen_len: int
    reps: list[RepSample] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ttft_s": [r.ttft_s for r in self.reps], "e2e_s": [r.e2e_s for r in self.reps],
                "step_times_s": [r.step_times_s for r in self.reps]}


def sample_summary(values) -> dict:
    """Plain descriptive statistics of per-repetition values, kept with the samples
    (harness.stats.summarize adds the confidence intervals at report time)."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(len(v)),
            "samples": v.tolist()}


def cell_metrics(s: Samples) -> dict[str, dict]:
    ttft = np.array([r.ttft_s for r in s.reps])
    e2e = np.array([r.e2e_s for r in s.reps])
    decode = e2e - ttft
    steps = s.gen_len - 1
    out = {
        "prefill_tps": sample_summary(s.batch * s.prompt_len / ttft),
        "decode_tps": sample_summary(s.batch * steps / decode),
        "ttft_s": sample_summary(ttft),
        "tpot_s": sample_summary(decode / steps),
        "e2e_s": sample_summary(e2e),
    }
    gaps = [np.diff([0.0] + r.step_times_s) for r in s.reps if r.step_times_s]
    if gaps:
        g = np.concatenate(gaps)
        out["itl_s"] = {"p50": float(np.percentile(g, 50)), "p90": float(np.percentile(g, 90)),
                        "p99": float(np.percentile(g, 99)), "n": int(len(g))}
    return out
