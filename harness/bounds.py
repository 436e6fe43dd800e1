"""Physical bounds: the most a device can do on a workload, from its catalog figures alone.

Work per token (the minimum any implementation must do; harness.roofline uses the same
model against a calibrated bandwidth):
  decode:  one step reads every weight once (the embedding table only when it is also the
           output head) for the whole batch, plus each sequence's KV cache up to its
           position (mean context prompt + gen/2). Per token: weights / batch + context x
           KV bytes per position. MACs: every weight matrix, the output head, and q.k and
           p.v over the context (ModelArgs.matmul_flops_per_token / 2).
  prefill: the weights once per batch of prompts, the KV cache written once per token;
           MACs at the mean causal context prompt/2, the output head once per sequence.
Bound on tokens/s: min(bandwidth / bytes per token, peak FLOP/s / (2 x MACs per token));
a side whose figure is not published is left out (the bound is then looser, never wrong).
Floor on J/token: bytes x 8 x energy per bit + MACs x energy per MAC + idle power x the
bound time per token. Each term is kept with its formula; a term whose constant is not
published is dropped and named, which keeps the floor a floor (every term is >= 0).

batch=None is the limit of a large batch (weights shared by so many sequences that their
share per token is nil): what "the device at its best batch" can reach when its memory
capacity is not published. With capacity, "best" is the largest batch whose weights and KV
cache fit (best_batch).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional

from harness.catalog import DeviceSpec
from workloads.zoo import PRECISION_BYTES, ModelArgs

#: bytes per weight: the zoo's precisions and the formats spec sheets quote
WEIGHT_BYTES = {**PRECISION_BYTES, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


@dataclass(frozen=True)
class BoundWorkload:
    model: ModelArgs
    precision: str  # a key of WEIGHT_BYTES
    batch: Optional[int]  # None: the large-batch limit
    prompt_len: int
    gen_len: int

    def describe(self) -> str:
        b = "inf" if self.batch is None else self.batch
        return f"{self.model.name} {self.precision} b{b} p{self.prompt_len} g{self.gen_len}"


@dataclass(frozen=True)
class PhaseWork:
    """Bytes moved and MACs done per token in one phase."""

    weight_bytes: float  # the token's share of the weights read
    kv_bytes: float  # KV cache read (decode) or written (prefill)
    macs: float

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes


@dataclass(frozen=True)
class Term:
    """One term of a J/token floor: its joules and how they were computed, or why it is absent."""

    name: str  # memory | mac | idle
    joules: Optional[float]
    formula: str


@dataclass(frozen=True)
class PhaseBound:
    work: PhaseWork
    tps: Optional[float]  # bound on tokens/s over the whole batch; None when nothing bounds it
    limit: str  # "memory" | "compute" | "unknown"
    terms: tuple[Term, ...]

    @property
    def floor_j(self) -> float:
        """J/token: the sum of the terms whose constants are known (a floor; see missing)."""
        return sum(t.joules for t in self.terms if t.joules is not None)

    def floor_without_idle(self) -> float:
        return sum(t.joules for t in self.terms if t.joules is not None and t.name != "idle")

    @property
    def missing(self) -> list[str]:
        return [t.name for t in self.terms if t.joules is None]


@dataclass(frozen=True)
class Bound:
    device: DeviceSpec
    workload: BoundWorkload
    decode: PhaseBound
    prefill: PhaseBound
    fits: Optional[bool]  # weights + KV cache within the device's capacity; None when unknown
    footprint_bytes: float
    # weights + KV cache within the device's published on-chip memory: no off-chip bytes, so
    # no memory bound and no memory term (None: no on-chip size published, off-chip assumed)
    on_chip: Optional[bool] = None


def weight_bytes(args: ModelArgs, precision: str) -> float:
    if precision not in WEIGHT_BYTES:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(WEIGHT_BYTES)}")
    return args.param_count() * WEIGHT_BYTES[precision]


def decode_read_bytes(args: ModelArgs, precision: str) -> float:
    """Weight bytes one decode step reads: all but an untied embedding table (one row per token)."""
    skipped = 0 if args.tie_embeddings else args.vocab_size * args.dim
    return (args.param_count() - skipped) * WEIGHT_BYTES[precision]


def decode_work(w: BoundWorkload) -> PhaseWork:
    a = w.model
    context = w.prompt_len + w.gen_len / 2
    weights = 0.0 if w.batch is None else decode_read_bytes(a, w.precision) / w.batch
    return PhaseWork(weights, context * a.kv_bytes_per_token(w.precision), a.matmul_flops_per_token(context) / 2)


def prefill_work(w: BoundWorkload) -> PhaseWork:
    a = w.model
    tokens = None if w.batch is None else w.batch * w.prompt_len
    weights = 0.0 if tokens is None else decode_read_bytes(a, w.precision) / tokens
    head = a.vocab_size * a.dim  # logits are needed for the last prompt position only
    macs = a.matmul_flops_per_token(w.prompt_len / 2) / 2 - head + head / w.prompt_len
    return PhaseWork(weights, a.kv_bytes_per_token(w.precision), macs)


def _phase(dev: DeviceSpec, precision: str, work: PhaseWork) -> PhaseBound:
    bw, peak = dev.bandwidth_Bps, dev.peak_flops(precision)
    mem_tps = bw / work.bytes if bw and work.bytes > 0 else None
    cmp_tps = peak / (2 * work.macs) if peak and work.macs > 0 else None
    cands = [(t, n) for t, n in ((mem_tps, "memory"), (cmp_tps, "compute")) if t is not None]
    tps, limit = min(cands) if cands else (None, "unknown")
    terms = [
        Term("memory", work.bytes * 8 * dev.j_per_bit if dev.j_per_bit is not None else None,
             f"{_b(work.bytes)} x 8 x {dev.memory.pj_per_bit.value:g} pJ/bit" if dev.memory.pj_per_bit
             else "energy per bit not published"),
        Term("mac", work.macs * dev.j_per_mac if dev.j_per_mac is not None else None,
             f"{work.macs / 1e9:.3g} G MAC x {dev.mac_pj.value:g} pJ" if dev.mac_pj else "MAC energy not published"),
    ]
    if dev.idle_watts is None:
        terms.append(Term("idle", None, "idle power not published"))
    elif tps is None:
        terms.append(Term("idle", None, "no bound time (neither bandwidth nor peak published)"))
    else:
        terms.append(Term("idle", dev.idle_watts / tps, f"{dev.idle_watts:g} W x {1e3 / tps:.3g} ms"))
    return PhaseBound(work, tps, limit, tuple(terms))


def bound(dev: DeviceSpec, w: BoundWorkload) -> Bound:
    a = w.model
    footprint = weight_bytes(a, w.precision) + (w.batch or 1) * (w.prompt_len + w.gen_len) * a.kv_bytes_per_token(
        w.precision)
    cap, sram = dev.capacity_bytes, dev.on_chip_bytes
    on_chip = None if sram is None else footprint <= sram
    dec, pre = decode_work(w), prefill_work(w)
    if on_chip:
        dec, pre = PhaseWork(0.0, 0.0, dec.macs), PhaseWork(0.0, 0.0, pre.macs)
    return Bound(dev, w, _phase(dev, w.precision, dec), _phase(dev, w.precision, pre),
                 None if cap is None else footprint <= cap, footprint, on_chip)


def best_batch(dev: DeviceSpec, args: ModelArgs, precision: str, prompt_len: int, gen_len: int) -> Optional[int]:
    """The batch at which the device does best on J/token and tokens/s: the largest whose
    weights and KV cache fit its memory (1 when even the weights do not fit); None (the
    large-batch limit) when its capacity is not published."""
    cap = dev.capacity_bytes
    if cap is None:
        return None
    per_seq = (prompt_len + gen_len) * args.kv_bytes_per_token(precision)
    room = cap - weight_bytes(args, precision)
    return max(1, int(room // per_seq)) if room > 0 else 1


def bound_at(dev: DeviceSpec, args: ModelArgs, precision: str, batch: int | str, prompt_len: int,
             gen_len: int) -> Bound:
    """The bound at a batch size, or at the device's best batch ("best")."""
    b = best_batch(dev, args, precision, prompt_len, gen_len) if batch == "best" else int(batch)
    return bound(dev, BoundWorkload(args, precision, b, prompt_len, gen_len))


# --- as text ---------------------------------------------------------------------------------

def _b(n: float) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.3g} {unit}"
    return f"{n:.3g} B"


def fmt_j(j: Optional[float]) -> str:
    """Joules at a readable scale: 2.93 J, 68.6 mJ, 412 uJ."""
    if j is None or not math.isfinite(j):
        return "-"
    for unit, k in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9)):
        if abs(j) >= k:
            return f"{j / k:.3g} {unit}"
    return f"{j:.3g} J"


def fmt_tps(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return f"{t:,.0f}" if t >= 100 else f"{t:.3g}"


def terms_text(p: PhaseBound) -> str:
    """'memory 66 mJ (15 GB x 8 x 0.55 pJ/bit) + mac 2.4 mJ (...) + idle -, not published'."""
    return " + ".join(f"{t.name} {fmt_j(t.joules)} ({t.formula})" if t.joules is not None
                      else f"{t.name} left out ({t.formula})" for t in p.terms)
