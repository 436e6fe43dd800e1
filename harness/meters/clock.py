"""Clock alignment of external meter logs by a power signature the harness makes.

Why: a wall meter's log is stamped by another machine's clock. A couple of seconds
of skew shifts every window onto the wrong samples (a work window reads idle watts
and the idle window reads load), so J/token comes out 80 % low or idle watts triple,
with nothing looking wrong. NTP is not always there in a lab; the power meter itself
is, so the harness makes a pattern that meter must see and looks for it in the log.

Method:

1. Signature (host clock): idle for ``idle_s``, a CPU burst on every core for
   ``load_s`` (busy-loop processes: the one load every host has), idle for ``idle_s``;
   the host records the instants the burst started and stopped.
2. Each external log is read until it reaches the end of the signature plus
   ``max_offset_s`` (at most its ``settle_s`` of waiting). For every candidate offset
   ``d`` on a grid over [-max_offset_s, +max_offset_s] (step: a tenth of the log's
   sample period), the signature window shifted by ``d`` is cut out of the log and
   each sample is predicted as the fraction of its interval (``sample_covers``) that
   overlaps the shifted burst. The offset is the ``d`` whose prediction best
   correlates with the logged watts (a least-squares fit ``watts = idle + step x
   fraction``; a plateau of equally good offsets gives its middle).
3. Found when the burst raises the log's watts clearly: ``step / residual noise >=
   min_contrast`` (5), the step is positive, and ``d`` is not at the edge of the
   offsets tried (an offset beyond ``max_offset_s`` is not guessed at; an offset whose
   shifted signature the log does not cover whole is not tried). A meter that does
   not see the CPU (an NPU module's own rail) will not find it, and says so.

Resolution: about one sample period of the log (the burst's edges are located
between two samples; samples that average over their interval narrow that, point
samples do not). It is reported with every estimate.

Judgement: the estimate is the meter clock's total lead over this host
(``clock_offset_s`` convention: ``host_time = log_time - offset``). With
``clock_offset_s: auto`` a found offset is applied to every later window; not found,
every figure of that meter is flagged. With a configured number, a residual (estimate
minus configured) beyond half the sample period flags every figure of that meter
"clock-skew", naming the estimate; a signature not found leaves the configured
number in charge (nothing is known against it) and says why.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Optional, Sequence

import numpy as np

from .base import Meter, MeterError, check_positive, log

#: a busy loop until a deadline given as argv[1]: one per core makes the burst
_BUSY = "import sys, time\nt = float(sys.argv[1])\nwhile time.time() < t: pass\n"


@dataclass
class ClockSignature:
    """The signature's shape and how far an offset is searched for.

    idle_s / load_s: the idle stretches around the burst, and the burst. An offset
        is only searched for within ``max_offset_s``, which must leave some idle on
        both sides: ``max_offset_s < idle_s``.
    min_contrast: the burst's step in watts over the log's residual noise needed to
        trust the located edges.
    """

    idle_s: float = field(default=5.0, metadata={"range": (0.1, 600.0)})
    load_s: float = field(default=5.0, metadata={"range": (0.1, 600.0)})
    max_offset_s: float = field(default=4.0, metadata={"range": (0.01, 600.0)})
    min_contrast: float = field(default=5.0, metadata={"range": (0.01, 1e6)})

    def __post_init__(self):
        for f in fields(self):  # the ranges hold for a signature made in Python too
            lo, hi = f.metadata["range"]
            check_positive(f.name, getattr(self, f.name))
            if not lo <= getattr(self, f.name) <= hi:
                raise MeterError(f"clock signature: {f.name} must be from {lo:g} to {hi:g}, got {getattr(self, f.name)!r}")
        if self.max_offset_s >= self.idle_s:
            raise MeterError(f"clock signature: max_offset_s ({self.max_offset_s:g} s) must be below idle_s "
                             f"({self.idle_s:g} s), or a shifted burst could leave the searched stretch")


@dataclass
class SignatureRun:
    """Host instants of one signature."""

    t_start: float
    t_load_on: float
    t_load_off: float
    t_end: float


@dataclass
class ClockAlignment:
    """One external meter's clock against this host, from the signature.

    offset_s: the meter clock's estimated lead over this host (the total, in the
        ``clock_offset_s`` convention); None when not found. configured_offset_s:
        the option's number, None for ``auto``. residual_s: estimate minus the
        configured number (None for auto or not found). resolution_s: the log's
        sample period. applied: the estimate now converts this meter's timestamps.
        problem: why this meter's figures are flagged "clock-skew" (None: they are
        not). reason: why the signature was not found (None when found).
    """

    meter: str
    configured_offset_s: Optional[float]
    found: bool
    offset_s: Optional[float] = None
    residual_s: Optional[float] = None
    resolution_s: Optional[float] = None
    applied: bool = False
    problem: Optional[str] = None
    reason: Optional[str] = None
    step_w: Optional[float] = None
    contrast: Optional[float] = None
    signature: dict = field(default_factory=dict)


@dataclass
class _Estimate:
    offset_s: float
    step_w: float
    contrast: float
    at_edge: bool


# --- the signature --------------------------------------------------------------------

def cpu_burst(seconds: float) -> None:
    """Every core busy for ``seconds`` (one busy-loop process per core)."""
    deadline = time.time() + seconds
    procs = [subprocess.Popen([sys.executable, "-S", "-c", _BUSY, repr(deadline)], stdin=subprocess.DEVNULL)
             for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.wait()


def run_signature(sig: ClockSignature, load: Callable[[float], None] = cpu_burst) -> SignatureRun:
    """idle, load, idle on this host's clock; the instants the load started and ended."""
    t_start = time.time()
    time.sleep(sig.idle_s)
    t_on = time.time()
    load(sig.load_s)
    t_off = time.time()
    time.sleep(sig.idle_s)
    return SignatureRun(t_start, t_on, t_off, time.time())


# --- locating it in a log --------------------------------------------------------------

def _intervals(t: np.ndarray, covers: str, period: float) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's (start, end): the interval its watts average over."""
    if covers == "preceding":
        a = np.concatenate(([t[0] - period], t[:-1]))
        return a, t
    b = np.concatenate((t[1:], [t[-1] + period]))
    return t, b


def _fit(t_a: np.ndarray, t_b: np.ndarray, w: np.ndarray, run: SignatureRun,
         cands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each candidate offset: (r, samples used, var x, cov xy, var y) of the burst
    fraction x against the watts y, over the signature window shifted by it."""
    d = cands[:, None]                                                    # K x 1
    mid = (t_a + t_b) / 2                                                  # N
    inside = (mid >= run.t_start + d) & (mid <= run.t_end + d)             # K x N
    on, off = run.t_load_on + d, run.t_load_off + d
    frac = np.clip(np.minimum(t_b, off) - np.maximum(t_a, on), 0, None) / np.maximum(t_b - t_a, 1e-9)
    n = inside.sum(axis=1)
    x = np.where(inside, frac, 0.0)
    y = np.where(inside, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = x.sum(1) / n, y.sum(1) / n
        sxx = (x * x).sum(1) / n - mx * mx
        sxy = (x * y).sum(1) / n - mx * my
        syy = (y * y).sum(1) / n - my * my
        r = sxy / np.sqrt(sxx * syy)
    r = np.where((n >= 6) & (sxx > 1e-9) & (syy > 0), r, -np.inf)
    return r, n, sxx, sxy, syy


def locate(times: Sequence[float], watts: Sequence[float], run: SignatureRun, covers: str,
           period: float, max_offset_s: float) -> Optional[_Estimate]:
    """The offset at which the signature best fits the log (None: too few samples)."""
    t = np.asarray(times, dtype=float)
    w = np.asarray(watts, dtype=float)
    t_a, t_b = _intervals(t, covers, period)
    near = (t_b >= run.t_start - max_offset_s - period) & (t_a <= run.t_end + max_offset_s + period)
    t_a, t_b, w = t_a[near], t_b[near], w[near]
    if not len(w):
        return None
    step = max(period / 10, max_offset_s / 1000)
    cands = np.arange(-max_offset_s, max_offset_s + step / 2, step)
    # only offsets whose whole shifted signature the log covers: a partial one is judged
    # on a different, smaller stretch and could fit by accident
    cands = cands[(t_a.min() <= run.t_start + cands) & (t_b.max() >= run.t_end + cands)]
    if not len(cands):
        return None
    # in chunks of candidates: a K x N matrix of a fine log must stay small
    chunk = max(1, 2_000_000 // max(1, len(w)))
    parts = [_fit(t_a, t_b, w, run, cands[i:i + chunk]) for i in range(0, len(cands), chunk)]
    r, _, sxx, sxy, syy = (np.concatenate(col) for col in zip(*parts))
    best = float(r.max())
    if not math.isfinite(best):
        return None
    # a plateau of equally good offsets (edges falling between the same samples): its middle
    ties = np.flatnonzero(r >= best - 1e-9 * max(1.0, abs(best)))
    k = int(ties[len(ties) // 2])
    slope = float(sxy[k] / sxx[k])
    resid = max(float(syy[k] - sxy[k] ** 2 / sxx[k]), 0.0)
    contrast = slope / math.sqrt(resid) if resid > 0 else math.inf
    offset = float(cands[k])
    tried = cands[np.isfinite(r)]
    return _Estimate(offset, slope, contrast, at_edge=offset < tried.min() + period or offset > tried.max() - period)


def judge(meter_name: str, configured: Optional[float], base_offset: float, est: Optional[_Estimate],
          why_none: Optional[str], period: float, sig: ClockSignature, run: SignatureRun) -> ClockAlignment:
    """The alignment verdict for one meter (see the module docstring's Judgement)."""
    out = ClockAlignment(meter=meter_name, configured_offset_s=configured, found=False, resolution_s=period,
                         signature={"t_start": run.t_start, "t_load_on": run.t_load_on,
                                    "t_load_off": run.t_load_off, "t_end": run.t_end,
                                    "idle_s": sig.idle_s, "load_s": sig.load_s, "max_offset_s": sig.max_offset_s})
    if est is not None:
        out.step_w, out.contrast = est.step_w, (est.contrast if math.isfinite(est.contrast) else None)
        if est.step_w <= 0:
            why_none = f"the log's watts did not rise with the burst (step {est.step_w:+.1f} W)"
        elif est.contrast < sig.min_contrast:
            why_none = (f"the burst's step ({est.step_w:.1f} W) is only {est.contrast:.1f}x the log's noise "
                        f"(need {sig.min_contrast:g}x)")
        elif est.at_edge:
            why_none = (f"the best fit is at the edge of the offsets the log covers: the offset may exceed "
                        f"{sig.max_offset_s:g} s, or the log may not reach far enough")
        else:
            out.found, out.offset_s = True, base_offset + est.offset_s
    if not out.found:
        out.reason = why_none or "the log has too few samples over the signature"
        if configured is None:
            out.problem = f"clock_offset_s: auto, but the clock signature was not found: {out.reason}"
        return out
    res = f"estimated from the clock signature, resolution about {period:.2g} s"
    if configured is None:
        out.applied = True
        return out
    out.residual_s = out.offset_s - configured
    if abs(out.residual_s) > period / 2:
        lead = f"{abs(out.offset_s):.2f} s {'ahead of' if out.offset_s > 0 else 'behind'}"
        out.problem = (f"log clock is {lead} this host ({res}), but clock_offset_s is "
                       f"{configured:g}: windows read samples {out.residual_s:+.2f} s off; set clock_offset_s: "
                       f"auto or {out.offset_s:.2f}")
    return out


def align_clocks(meters: Sequence[Meter], sig: Optional[ClockSignature] = None,
                 load: Callable[[float], None] = cpu_burst) -> list[ClockAlignment]:
    """Run one signature and align every available external log meter to it.

    Meters on this host's clock (counters, a polled CLI) need nothing, and with no
    external log meter no signature is run. Each meter gets its verdict
    (``set_alignment``): an ``auto`` offset is applied, a wrong one flags its figures.
    """
    sig = sig or ClockSignature()
    targets = [m for m in meters if getattr(m, "aligns_clock", False) and m.available]
    if not targets:
        return []
    run = run_signature(sig, load)
    out = []
    for m in targets:
        configured = None if m.options.auto_offset else m.options.clock_offset_s
        samples, err = m.read_until(run.t_end + sig.max_offset_s)
        valid = [s for s in samples if s.watts is not None]
        period = m.sample_period(samples)
        est = locate([s.t for s in valid], [s.watts for s in valid], run, m.options.sample_covers,
                     period, sig.max_offset_s) if len(valid) >= 6 else None
        a = judge(m.name, configured, m.clock_offset_s, est, err, period, sig, run)
        m.set_alignment(a)
        log.info("meter %s: clock %s", m.name,
                 f"offset {a.offset_s:+.3f} s (resolution {period:.2g} s){' applied' if a.applied else ''}"
                 if a.found else f"signature not found: {a.reason}")
        out.append(a)
    return out
