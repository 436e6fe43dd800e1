"""Accuracy gate: a backend that is fast because it is wrong must not win a comparison.

Two checks against the torch fp32 reference (full forward, no cache) on the same seeded
weights; a cell must pass both:

* logits: the backend computes logits on fixed token sequences (prefill, then decode
  steps through its cache). The error is max|logits - reference| / max|reference|:
  scale-free, so one tolerance per precision serves every model.
* timed output: the tokens the timed prefill/decode actually produced are re-scored by
  the reference, teacher-forced over prompt + produced tokens, and each must be the
  reference's greedy choice within the same tolerance (:func:`agreeing`). Without it a
  backend whose logits() is honest and whose decode() returns anything fast would pass.
  Request scenarios keep the token ids of their first measured requests (the in-process
  engine always knows them; an endpoint returns them only when declared to serve the
  reference weights) and are re-scored by the same rule; an endpoint has no logits, so
  its tokens are its whole check, and "unchecked" with the reason where it returns none.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

# Relative tolerance per precision; set from the spread seen on the zoo's models with
# random weights (fp32 sits near 1e-6, bf16 near 1e-2). int8 covers both weight-only int8
# paths: onnxruntime's blocks of 32 (0.036-0.047) and torch's per-channel scales (0.029-0.040
# with fp32 activations, up to 0.053 with bf16, tiny and smollm2-135m). fp8: torch's e4m3
# weights, one scale per output channel, measured 0.12-0.17 on the same models (e4m3 keeps 3
# mantissa bits: each weight is within 1/16 of itself, against int8's 1/254 of its row's
# largest); 0.25 is about 1.5 x the worst seen, while other weights fail it (docs/decisions.md).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2, "q8_0": 6e-2, "q4_0": 2e-1, "int8": 6e-2, "fp8": 2.5e-1}

#: Sequences of a cell's batch whose timed tokens are re-scored (the first ones): the
#: reference is an fp32 full forward per sequence, so the cost grows with the batch
#: otherwise. A batch backend runs every sequence through the same kernels, so a wrong
#: path shows in the first four as well as in all of them.
TIMED_SEQUENCES = 4

#: Least fraction of produced tokens that must agree with the reference. With greedy
#: decoding on the same weights fp32 agrees on every token (1.0, observed on the torch,
#: onnx and llama.cpp backends); at lower precisions a near-tie may flip, and the
#: tolerance rule already counts a flip within tol as agreement. A backend whose logits
#: pass their own check may still sit up to tol from the reference on each of two
#: competing tokens (2 x tol apart), so a rare flip just past the rule is honest: 0.98
#: leaves one such token in fifty, while wrong tokens agree at about 1 / vocab.
AGREEMENT_THRESHOLD = 0.98


def tolerance(precision: str) -> float:
    return TOLERANCE.get(precision, TOLERANCE["fp32"])


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
    tol = tolerance(precision)
    ok = bool(np.isfinite(rel) and rel <= tol)
    return {"status": "pass" if ok else "fail", "passed": ok, "rel_err": rel, "max_abs_err": float(diff.max()),
            "mean_abs_err": float(diff.mean()), "top1_agree": top1, "tolerance": tol, "precision": precision}


def agreeing(reference: np.ndarray, tokens: np.ndarray, tol: float) -> np.ndarray:
    """Which produced tokens are the reference's greedy choice within tol.

    reference: [n, vocab] reference logits at the positions that produced tokens [n].
    A token agrees when reference[token] >= max(reference) - tol * max|reference| at its
    position. The margin is relative to the largest |logit|, the scale rel_err divides
    by, so "within tolerance" means the same thing in both checks and for every model;
    it is taken per position so that each token is judged against its own distribution.
    """
    ref = reference.astype(np.float64)
    tokens = np.asarray(tokens, dtype=np.int64)
    in_vocab = (tokens >= 0) & (tokens < ref.shape[-1])
    picked = np.take_along_axis(ref, np.clip(tokens, 0, ref.shape[-1] - 1)[:, None], axis=-1)[:, 0]
    floor = ref.max(-1) - tol * np.abs(ref).max(-1)
    return in_vocab & np.isfinite(picked) & (picked >= floor)


@dataclass
class Disagreement:
    """Where the timed output first left the reference's greedy choice."""

    sequence: int  # index in the batch; a request scenario: the request's id
    position: int  # index among the produced tokens (0: the token prefill produced)
    token: int  # what the backend produced
    reference_token: int  # the reference's greedy choice
    output: int = 0  # which distinct timed output (repetitions that produced the same tokens share one)


@dataclass
class TimedCheck:
    """The timed-output check of one cell, as written under accuracy.timed_output."""

    status: str  # pass | fail | unchecked | not checked
    passed: Optional[bool]  # None: not established either way
    reason: Optional[str] = None
    agreement: Optional[float] = None  # fraction of checked tokens that agree
    checked_tokens: int = 0
    sequences: int = 0  # sequences of the batch (requests) checked: the first TIMED_SEQUENCES
    outputs: int = 0  # distinct outputs among the timed repetitions, each checked
    repetitions: int = 0  # timed runs whose output was kept
    first_disagreement: Optional[Disagreement] = None
    threshold: float = AGREEMENT_THRESHOLD
    tolerance: Optional[float] = None
    reference: Optional[str] = None

    def to_json(self) -> dict:
        # passed stays even when None: like the logits check's, it is the tri-state the gate reads
        return {k: v for k, v in asdict(self).items() if v is not None or k == "passed"}

    @classmethod
    def unchecked(cls, reason: str, status: str = "unchecked") -> "TimedCheck":
        return cls(status=status, passed=None, reason=reason)


def judge(flags: list[np.ndarray], first: Optional[Disagreement], *, sequences: int, outputs: int,
          repetitions: int, precision: str, reference: str) -> TimedCheck:
    """The cell's verdict from the per-(output, sequence) agreement flags."""
    n = int(sum(f.size for f in flags))
    if n == 0:
        return TimedCheck.unchecked("the timed path produced no tokens")
    tol = tolerance(precision)
    check = TimedCheck(status="pass", passed=True, agreement=float(sum(int(f.sum()) for f in flags) / n),
                       checked_tokens=n, sequences=sequences, outputs=outputs, repetitions=repetitions,
                       first_disagreement=first, tolerance=tol, reference=reference)
    if check.agreement < AGREEMENT_THRESHOLD:
        check.status, check.passed = "fail", False
        where = (f"; first at sequence {first.sequence}, produced token {first.position}: {first.token}, "
                 f"reference {first.reference_token}") if first else ""
        check.reason = (f"timed path: {check.agreement:.1%} of {n} tokens produced by the timed prefill/decode "
                        f"agree with the reference's greedy choice (need {AGREEMENT_THRESHOLD:.0%} within "
                        f"tolerance {tol:g}){where}")
    return check
