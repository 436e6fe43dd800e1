"""Accuracy gate: a backend that is fast because it is wrong must not win a comparison.

Each cell's backend computes logits on fixed token sequences (prefill, then decode steps
through its cache); they are compared with the torch fp32 reference (full forward, no
cache) on the same seeded weights.

The error is max|logits - reference| / max|reference|: scale-free, so one tolerance
per precision serves every model.
"""
from __future__ import annotations

import numpy as np

# Relative tolerance per precision; set from the spread seen on the zoo's models with
# random weights (fp32 sits near 1e-6, bf16 near 1e-2).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2, "q8_0": 6e-2, "q4_0": 2e-1}


def gate_tokens(vocab: int, batch: int, seq_len: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq_len), dtype=np.int64)


def compare(logits: np.ndarray, reference: np.ndarray, precision: str) -> dict:
    if logits.shape != reference.shape:
        return {"status": "fail", "passed": False,
                "reason": f"logits shape {logits.shape} != reference {reference.shape}"}
    diff = np.abs(logits.astype(np.float64) - reference)
    scale = float(np.abs(reference).max()) or 1.0
    rel = float(diff.max() / scale)
    top1 = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    tol = TOLERANCE.get(precision, TOLERANCE["fp32"])
    ok = bool(np.isfinite(rel) and rel <= tol)
    return {"status": "pass" if ok else "fail", "passed": ok, "rel_err": rel, "max_abs_err": float(diff.max()),
            "mean_abs_err": float(diff.mean()), "top1_agree": top1, "tolerance": tol, "precision": precision}
