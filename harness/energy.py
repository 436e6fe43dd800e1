"""The one energy window engine: idle baseline, work windows over every meter, the
short-window judgement, per-token figures with provenance, one record shape.

Two callers, one engine:

* a batch cell (the offline scenario): :func:`measure_cell_energy` runs the windows
  idle-before, prefill, generation, idle-after around the work it is handed;
* a request scenario: :class:`SteadyEnergy` takes one idle-before window before the
  run, then hands out a "steady" :class:`Window` that the load generator opens and
  closes from whichever request thread sees the load come up and start to drain.

Both return a :class:`harness.records.EnergyRecord` of :class:`MeterEnergy` entries,
and the power samples behind it for the cell's timeline CSV.

Why this shape:

* Idle windows with the model loaded and the device quiet, because an accelerator
  board draws tens to hundreds of watts doing nothing (an idle H100 draws about
  70 W); net energy = gross - idle_w x duration separates what the workload cost from
  what merely being switched on costs. Both are reported: a procurement team pays for
  gross, an engineer optimizes net.
* Separate prefill and generation windows, because prefill is compute-bound and
  decode memory-bound; one figure for both hides which one a claim is about. A meter
  cannot see inside a request, so decode energy is derived: generation (prefill +
  decode) minus prefill, per repetition.
* Windows long enough for every meter: a counter that updates every 100 ms cannot
  measure a 30 ms prefill. Work is repeated until the window lasts at least
  ``min_window_s`` and holds ``min_updates`` updates of each meter (at its observed
  period), or, with ``lengthen=False``, the reading is flagged "short-window". A
  steady window's length is set by the load, so it is judged, never lengthened. A
  short window is never reported silently.
* One window, every meter: each window's edges are fixed once, as host instants, and
  every meter is closed at them; a meter that waits for its log or its next poll waits
  after the end instant (in parallel with the others), so no meter's window grows
  because of another's wait.
* Meter trouble never raises out of here: a meter that fails is reported unavailable
  with its reason, and the other meters' figures stand. Errors of the workload itself
  (``run_prefill``/``run_generation``) do propagate, after the meters' windows are
  closed. A meter that cannot read at all (a strict log past a malformed line) plans
  no window: windows are sized by the meters that can read.
* Energy describes the work whose speed is reported, or says it does not: a batch
  cell's windows repeat the work after the timed repetitions, so each window's own
  throughput is recorded and compared with the timed repetitions' interval
  (:func:`compare_speed`); outside it, every meter's figures are flagged
  "speed-mismatch" with both speeds. A steady window is the measured requests
  themselves (same work, recorded, not flagged).
* Clocks: external logs are stamped by another machine's clock. The worker runs
  :func:`harness.meters.clock.align_clocks` before the cells; a log whose clock is
  off and not corrected has every figure flagged "clock-skew" by its meter.

The backend is reached only through the callables, so this module knows no backend,
model or device by name.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .meters.base import EnergyReading, Meter
from .meters.nvml import counter_vs_sampled
from . import stats
from .records import EnergyRecord, EnergySpeed, MeterEnergy, PhaseSpeed

IDLE_BEFORE, PREFILL, GENERATION, IDLE_AFTER, STEADY = "idle-before", "prefill", "generation", "idle-after", "steady"
PHASES = (IDLE_BEFORE, PREFILL, GENERATION, IDLE_AFTER)
_IDLE = (IDLE_BEFORE, IDLE_AFTER)
#: worst wins: a figure read on a skewed log clock is worse than one from a short window
_QUALITY_RANK = {"ok": 0, "estimate": 1, "short-window": 2, "clock-skew": 3, "unavailable": 4}
#: an energy window's throughput may lie this far (relative) outside the timed repetitions'
#: 95 % interval before its figures are flagged (docs/decisions.md, "Energy measured on the work whose
#: speed is reported")
SPEED_MARGIN = 0.25
SPEED_MISMATCH = "speed-mismatch"


@dataclass
class EnergySettings:
    """How the windows of one cell are sized.

    idle_s: length of each idle window (0 disables the idle baseline: no net
        figures then).
    min_window_s / min_updates: a window shorter than this, or holding fewer
        distinct meter updates, is too short for its meter.
    lengthen: repeat the work until the window is long enough (default), or
        run it once and flag the reading "short-window".
    max_repeats / max_window_s: bounds on lengthening (a stalled meter must
        not keep a cell running for ever).
    cross_check_tolerance: counter-vs-sampled relative disagreement above which
        the check is recorded as failed.
    speed_margin: how far (relative) a batch cell's energy window may run outside
        the timed repetitions' 95 % interval before its energy figures are flagged
        "speed-mismatch" (see :func:`compare_speed`).
    """

    idle_s: float = 1.0
    min_window_s: float = 1.0
    min_updates: int = 10
    lengthen: bool = True
    max_repeats: int = 1000
    max_window_s: float = 300.0
    cross_check_tolerance: float = 0.15
    speed_margin: float = SPEED_MARGIN


@dataclass
class EnergyMeasurement:
    """A cell's energy record and every meter's samples over its windows (the timeline
    CSV: one row per sample, labelled with the window it fell in)."""

    record: EnergyRecord
    timeline: list[dict] = field(default_factory=list)


def _safe(fn: Callable, *args):
    """(value, None) or (None, "ExcType: message") - meters must not kill a cell."""
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - deliberately broad: meter trouble is data
        return None, f"{type(e).__name__}: {e}"


# --- windows -----------------------------------------------------------------------------

class Window:
    """One named window over all meters, and the readings it collected.

    Opened and closed either around work (:meth:`run`, which lengthens it) or by
    :meth:`begin` / :meth:`end` from any thread: both are thread-safe and idempotent,
    and only a window that was begun is ended (a load that never came up leaves its
    steady window unopened).
    """

    def __init__(self, phase: str, meters: list[Meter], settings: EnergySettings):
        self.phase = phase
        self.meters = meters
        self.settings = settings
        self.repeats = 0
        self.target_s = 0.0
        self.t_start = self.t_end = 0.0
        self.readings: dict[str, list[EnergyReading]] = {}   # meter name -> readings
        self.errors: dict[str, str] = {}                     # meter name -> why it failed
        self._lock = threading.Lock()
        self._state = "new"  # new -> open -> closed

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    def begin(self) -> None:
        with self._lock:
            if self._state != "new":
                return
            self._state = "open"
            self.t_start = time.time()
            for m in self._counters_first():
                _, err = _safe(m.begin_window, self.phase, self.t_start)
                if err:
                    self.errors[m.name] = f"begin_window failed: {err}"

    def _counters_first(self) -> list[Meter]:
        """Meters that read a counter when called go first, right at the instant."""
        return sorted(self.meters, key=lambda m: bool(getattr(m, "ends_late", False)))

    def end(self) -> None:
        """Fix the end instant once, then close every meter at it: counter meters
        read now; meters that wait for their log or next poll wait in parallel,
        each for samples up to the same instant (so no wait pads any window, and the
        cell waits for the slowest meter only, not for the sum)."""
        with self._lock:
            if self._state != "open":
                return
            self._state = "closed"
            self.t_end = time.time()
            late = [m for m in self.meters if getattr(m, "ends_late", False)]
            for m in self.meters:
                if m not in late:
                    self._close(m)
            threads = [threading.Thread(target=self._close, args=(m,), name=f"end-{m.name}", daemon=True)
                       for m in late]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    def _close(self, m: Meter) -> None:
        res, err = _safe(m.end_window, self.phase, self.t_end)
        if m.name in self.errors:
            return  # begin failed: end only tidied its bookkeeping
        if err:
            self.errors[m.name] = f"end_window failed: {err}"
        else:
            self.readings[m.name] = list(res or [])

    def _plan(self, min_s: float) -> float:
        """Seconds this window should last so every meter sees enough updates."""
        s = self.settings
        if not s.lengthen:
            return min_s
        need = min_s
        for m in self.meters:
            if not m.available:
                continue
            p, _ = _safe(m.expected_period_s)
            if p:
                need = max(need, s.min_updates * p)
        return min(need, s.max_window_s)

    def _enough_updates(self) -> bool:
        for m in self.meters:
            if not m.available or m.name in self.errors:
                continue
            n, _ = _safe(m.live_updates, self.phase)
            if n is not None and n < self.settings.min_updates:
                return False
        return True

    def run(self, work: Optional[Callable[[], None]], min_s: float) -> None:
        """Open the window, repeat `work` (None: stay idle) until it is long enough, close it."""
        s = self.settings
        self.target_s = self._plan(min_s)
        self.begin()
        try:
            while True:
                elapsed = time.time() - self.t_start
                if work is None:
                    time.sleep(min(0.02, max(0.001, self.target_s - elapsed)))
                else:
                    work()
                    self.repeats += 1
                elapsed = time.time() - self.t_start
                if work is not None and not s.lengthen:
                    break
                if elapsed >= s.max_window_s or (work is not None and self.repeats >= s.max_repeats):
                    break
                if elapsed >= self.target_s and (not s.lengthen or self._enough_updates()
                                                 or elapsed >= 2 * self.target_s + 1.0):
                    break
        finally:
            self.end()

    def info(self) -> dict:
        return {"t_start": self.t_start, "t_end": self.t_end, "duration_s": self.t_end - self.t_start,
                "repeats": self.repeats, "target_s": self.target_s}


def _start(meters: list[Meter]) -> bool:
    """Start the meters not yet started (the caller stops them at the end of the run);
    whether any can measure."""
    for m in meters:
        if not m.started:
            _, err = _safe(m.start)
            if err:
                m.available, m.reason = False, f"start failed: {err}"
    return any(m.available for m in meters)


# --- judging and summarizing readings -------------------------------------------------------

def _judge(r: EnergyReading, s: EnergySettings, phase: str) -> EnergyReading:
    """Flag a reading whose window is too short for its meter.

    Idle windows last ``idle_s`` as configured; only the update count applies
    to them (an idle rate from 3 updates is noise, from 0.5 s of 50 is not).
    """
    if r.quality != "ok" or r.joules is None:
        return r
    short = []
    if r.duration_s < s.min_window_s and phase not in _IDLE:
        short.append(f"{r.duration_s:.3f} s < min_window_s {s.min_window_s:g} s")
    if r.n_updates < s.min_updates:
        short.append(f"{r.n_updates} meter updates < min_updates {s.min_updates}")
    if short:
        r = dataclasses.replace(r, quality="short-window", reason="; ".join(short))
    return r


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fin(x: Optional[float]) -> Optional[float]:
    return x if x is None or math.isfinite(x) else None


#: a work window's (gross J, net J) by phase -> (per-token figures as MeterEnergy fields, warnings)
Figures = Callable[[dict[str, tuple[Optional[float], Optional[float]]]], tuple[dict, list[str]]]


# The per-token arithmetic, as pure functions of the window energies (kept out of the measuring
# code so that mutation testing, `make mutation`, can judge it with fast unit tests).

def batch_figures(energy: dict[str, tuple[Optional[float], Optional[float]]], repeats: dict[str, int],
                  tokens: dict) -> tuple[dict, list[str]]:
    """Per repetition: prefill, generation, and decode = generation - prefill."""
    per_rep = {p: tuple(_div(j, repeats[p]) for j in energy[p]) for p in (PREFILL, GENERATION)}
    out, decode_gross = {}, None
    for i, kind in enumerate(("gross", "net")):
        p, g = per_rep[PREFILL][i], per_rep[GENERATION][i]
        d = g - p if p is not None and g is not None else None
        decode_gross = d if kind == "gross" else decode_gross
        out[f"j_per_prompt_token_{kind}"] = _div(p, tokens["prompt_tokens"])
        out[f"j_per_generated_token_{kind}"] = _div(d, tokens["decode_tokens"])
        out[f"j_per_generated_token_e2e_{kind}"] = _div(g, tokens["generated_tokens"])
        out[f"tokens_per_joule_{kind}"] = _div(tokens["generated_tokens"], g) if g and g > 0 else None
        out[f"energy_per_request_{kind}_j"] = _div(g, tokens["sequences"])
    warnings = []
    if decode_gross is not None and decode_gross < 0:
        warnings.append("decode energy came out negative: the generation window used less energy per "
                        "repetition than the prefill window (meter noise exceeds decode energy; lengthen "
                        "windows or raise min_updates)")
    return out, warnings


def steady_figures(energy: dict[str, tuple[Optional[float], Optional[float]]], output_tokens: float,
                   requests_completed: int) -> tuple[dict, list[str]]:
    """A steady window's energy over the output tokens and requests inside it."""
    out = {}
    for kind, j in zip(("gross", "net"), energy[STEADY]):
        out[f"j_per_generated_token_{kind}"] = _div(j, output_tokens)
        out[f"tokens_per_joule_{kind}"] = _div(output_tokens, j) if j and j > 0 else None
        out[f"energy_per_request_{kind}_j"] = _div(j, requests_completed)
    return out, []


def _meter_energy(key: str, by_phase: dict[str, EnergyReading], windows: dict[str, Window],
                  s: EnergySettings, work: tuple[str, ...], figures: Figures) -> MeterEnergy:
    """One meter key's figures over the windows; `work` lists the work windows, the last
    being the one power and the cross-check are reported for (generation, steady)."""
    main = work[-1]
    idle = [p for p in _IDLE if p in windows]
    ordered = [by_phase[p] for p in (*reversed(work), *idle)]
    ref = next((r for r in ordered if r.joules is not None), ordered[0])
    warnings: list[str] = []

    idle_rates = {p: by_phase[p].watts for p in idle
                  if by_phase[p].joules is not None and by_phase[p].watts is not None}
    idle_w = sum(idle_rates.values()) / len(idle_rates) if idle_rates else None
    if len(idle) == 2 and len(idle_rates) == 1:  # both were taken, one gave nothing
        have = next(iter(idle_rates)).split("-")[1]
        missing = "after" if have == "before" else "before"
        warnings.append(f"idle {missing} unavailable: idle_w from idle {have} only")
    for p in idle:
        r = by_phase[p]
        if r.quality not in ("ok", "estimate") and ref.method != "estimate":
            warnings.append(f"{p} {r.quality}: {r.reason}")

    def net(r: EnergyReading) -> Optional[float]:
        if r.joules is None or idle_w is None:
            return None
        return r.joules - idle_w * r.duration_s

    values, more = figures({p: (by_phase[p].joules, net(by_phase[p])) for p in work})
    warnings.extend(more)

    # quality: the worst of the work windows; idle trouble is a warning (net figures go None)
    quality = max((by_phase[p].quality for p in work), key=lambda q: _QUALITY_RANK.get(q, 2))
    # reason: about the work windows (idle trouble is in warnings, and shows as net = None)
    flagged = [(p, by_phase[p].reason) for p in work if by_phase[p].reason and by_phase[p].quality != "ok"]
    if ref.method == "estimate":
        reason = ref.reason
    elif len(flagged) == len(work) and len({why for _, why in flagged}) == 1:
        reason = flagged[0][1]          # the same trouble in every work window: say it once
    else:
        reason = "; ".join(f"{p}: {why}" for p, why in flagged) or None
    if quality == "unavailable" and all(r.joules is None for r in by_phase.values()):
        warnings[:] = [w for w in warnings if not w.startswith("idle-")]   # one reason is enough

    # a figure that overflowed (finite joules, an inf ratio) is dropped by _fin below; the
    # meter's figures are then not "ok", whatever its readings said
    overflowed = sorted(k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v))
    if overflowed:
        why = f"non-finite figures dropped: {', '.join(overflowed)}"
        warnings.append(why)
        if quality in ("ok", "estimate"):
            quality, reason = "unavailable", why

    check = counter_vs_sampled(by_phase[main])
    if check is not None and check["rel_diff"] is not None:
        check["tolerance"] = s.cross_check_tolerance
        check["agree"] = abs(check["rel_diff"]) <= s.cross_check_tolerance
        if not check["agree"]:
            warnings.append(f"counter and sampled power disagree by {100 * check['rel_diff']:+.1f} % "
                            f"over the {main} window")
    return MeterEnergy(
        meter=key, method=ref.method, scope=ref.scope, quality=quality, reason=reason, warnings=warnings,
        update_period_s=_fin(ref.update_period_s), idle_w=_fin(idle_w),
        idle_w_before=_fin(idle_rates.get(IDLE_BEFORE)), idle_w_after=_fin(idle_rates.get(IDLE_AFTER)),
        avg_w=_fin(by_phase[main].watts), cross_check=check,
        windows={p: dict(by_phase[p].to_dict(), gross_j=by_phase[p].joules, net_j=net(by_phase[p]),
                         repeats=w.repeats) for p, w in windows.items()},
        **{k: _fin(v) for k, v in values.items()})


def _unavailable(meter: Meter, reason: str, w: Window) -> EnergyReading:
    return EnergyReading(meter=meter.name, method=meter.method, scope=meter.scope, joules=None,
                         duration_s=w.t_end - w.t_start, n_updates=0, update_period_s=None,
                         quality="unavailable", reason=reason, t_start=w.t_start, t_end=w.t_end)


def _meter_entries(meters: list[Meter], windows: dict[str, Window], s: EnergySettings,
                   work: tuple[str, ...], figures: Figures) -> list[MeterEnergy]:
    """One entry per reading key (RAPL gives one per zone), in meter order; a window a
    meter gave no reading for counts as unavailable, with the reason."""
    out = []
    for m in meters:
        by_key: dict[str, dict[str, EnergyReading]] = {}
        for phase, w in windows.items():
            for r in w.readings.get(m.name, []):
                by_key.setdefault(r.meter, {})[phase] = _judge(r, s, phase)
        if not by_key:
            by_key[m.name] = {}
        for key, phases in by_key.items():
            for phase, w in windows.items():
                if phase not in phases:
                    why = w.errors.get(m.name) or m.reason or "meter gave no reading for this window"
                    phases[phase] = dataclasses.replace(_unavailable(m, why, w), meter=key)
            out.append(_meter_energy(key, phases, windows, s, work, figures))
    return out


def _timeline(meters: list[Meter], windows: dict[str, Window]) -> list[dict]:
    """Every meter's samples over the cell, each labelled with its window."""
    if not windows:
        return []
    spans = [(w.t_start, w.t_end, p) for p, w in windows.items()]
    t_lo, t_hi = min(a for a, _, _ in spans), max(b for _, b, _ in spans)
    rows = []
    for m in meters:
        got, _ = _safe(m.timeline, t_lo)
        for row in got or []:
            t = row.get("t")
            if t is None or t < t_lo or t > t_hi:
                continue
            phase = next((p for a, b, p in spans if a <= t <= b), "between")
            rows.append(dict(row, phase=phase))
    rows.sort(key=lambda r: r["t"])
    return rows


def _idle_note(s: EnergySettings, windows: str) -> str:
    if s.idle_s <= 0:
        return "idle windows disabled (idle_s = 0): no idle baseline, net figures are None"
    return (f"net = gross - idle_w x window duration; idle_w = mean power of the {windows} "
            "(model loaded, device quiet)")


# --- the energy windows' speed against the timed repetitions' ---------------------------

@dataclass
class TimedRates:
    """The timed repetitions' per-repetition throughput of the work each energy window
    repeats (tok/s): prefill = prompt tokens / TTFT; generation = generated tokens /
    request time (prefill + decode, end to end); decode = the timed decode_tps, shown
    beside the window's derived decode speed."""

    prefill: list[float] = field(default_factory=list)
    generation: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)


def speed_rule(margin: float) -> str:
    return (f"an energy window's throughput (tokens / window seconds, counting repeats) must lie within the timed "
            f"repetitions' 95 % interval of the same work widened by {100 * margin:g} % (lower bound x "
            f"{1 - margin:g}, upper bound x {1 + margin:g}); outside it, every energy figure of the cell is "
            f"flagged {SPEED_MISMATCH}")


def compare_speed(phase: str, tokens: float, window_s: float, repeats: int, timed: list[float],
                  margin: float) -> PhaseSpeed:
    """One window's own throughput against the timed repetitions' interval.

    With one timed repetition there is no interval: the single figure stands for both
    bounds (then only the margin absorbs noise)."""
    ps = PhaseSpeed(phase=phase, tokens=tokens, window_s=window_s, repeats=repeats,
                    tok_s=_div(tokens, window_s) if window_s > 0 and tokens > 0 else None)
    clean = [float(v) for v in timed if v is not None and math.isfinite(v) and v > 0]
    if not clean:
        return ps
    summ = stats.summarize(clean)
    lo = summ.ci_low if summ.ci_low is not None else summ.median
    hi = summ.ci_high if summ.ci_high is not None else summ.median
    ps.timed_median, ps.timed_ci_low, ps.timed_ci_high, ps.timed_n = summ.median, lo, hi, summ.n
    if ps.tok_s is not None:
        ps.agree = lo * (1 - margin) <= ps.tok_s <= hi * (1 + margin)
    return ps


def _mismatch_text(ps: PhaseSpeed) -> str:
    return (f"{SPEED_MISMATCH}: {ps.phase} energy window ran at {stats.fmt_num(ps.tok_s)} tok/s vs timed "
            f"{stats.fmt_num(ps.timed_median)} tok/s {stats.fmt_ci(ps.timed_ci_low, ps.timed_ci_high)}")


def flag_speed(meters: list[MeterEnergy], speed: EnergySpeed) -> None:
    """Flag every meter's figures of a cell whose energy work ran at another speed.

    The work is shared by every meter, so all are flagged together. A figure already
    worse (clock-skew, unavailable) keeps its quality and gets the mismatch as a warning;
    an estimate stays an estimate (its method says so) and is flagged as well."""
    if not speed.mismatch:
        return
    for m in meters:
        if _QUALITY_RANK.get(m.quality, 2) >= _QUALITY_RANK["clock-skew"]:
            m.warnings.append(speed.mismatch)
            continue
        m.reason = speed.mismatch + (f"; {m.reason}" if m.reason else "")
        m.quality = SPEED_MISMATCH


def _batch_speed(windows: dict[str, "Window"], tokens: dict, timed: TimedRates, margin: float) -> EnergySpeed:
    speed = EnergySpeed(rule=speed_rule(margin), margin=margin)
    for phase, n in ((PREFILL, tokens["prompt_tokens"]), (GENERATION, tokens["generated_tokens"])):
        w = windows.get(phase)
        if w is None or not w.repeats:
            continue
        dur = w.t_end - w.t_start
        speed.phases.append(compare_speed(phase, float(n * w.repeats), dur, w.repeats,
                                          getattr(timed, phase), margin))
    pre, gen = windows.get(PREFILL), windows.get(GENERATION)
    if pre and gen and pre.repeats and gen.repeats and tokens.get("decode_tokens"):
        # decode inside the generation window = its time per repetition less one prefill's
        decode_s = (gen.t_end - gen.t_start) / gen.repeats - (pre.t_end - pre.t_start) / pre.repeats
        speed.decode_tok_s = _div(tokens["decode_tokens"], decode_s) if decode_s > 0 else None
    if timed.decode:
        speed.timed_decode_tok_s = stats.median(timed.decode)
    bad = [p for p in speed.phases if p.agree is False]
    if bad:
        speed.mismatch = "; ".join(_mismatch_text(p) for p in bad)
    return speed


# --- a batch cell: idle, prefill, generation, idle ----------------------------------------

def measure_cell_energy(meters: list[Meter], run_prefill: Callable[[], None],
                        run_generation: Callable[[], None], prompt_tokens: int, generated_tokens: int,
                        settings: Optional[EnergySettings] = None, *, sequences: int = 1,
                        timed: Optional[TimedRates] = None) -> EnergyMeasurement:
    """Energy of one batch cell, per meter, with provenance and a phase-labelled timeline.

    run_prefill: one synchronized prefill of the whole batch (``prompt_tokens``
        tokens in total). run_generation: one synchronized full request batch,
        prefill + decode (``generated_tokens`` tokens in total). sequences: the
        batch size, for energy per request and for the decode token count
        (prefill emits each sequence's first token, so decode produces
        ``generated_tokens - sequences``, the same count TPOT divides by).

    timed: the timed repetitions' throughput of the same work; each work window's
    own throughput is compared with it (record.speed) and, where they disagree, every
    meter's figures are flagged "speed-mismatch" (the windows repeat the work back to
    back after the timed repetitions: a device that throttles, or load that arrives
    meanwhile, makes the energy describe other work than the speed figures).

    Meters not yet started are started (the caller stops them at the end of
    the run). With no available meter the work is not run at all.
    """
    s = settings or EnergySettings()
    decode_tokens = generated_tokens - sequences
    tokens = {"prompt_tokens": prompt_tokens, "generated_tokens": generated_tokens,
              "decode_tokens": decode_tokens if decode_tokens > 0 else None, "sequences": sequences}
    notes = [
        "decode energy = generation-window energy - prefill-window energy, per repetition "
        "(each generation repetition includes one prefill)",
        f"J per generated token (decode) uses decode tokens = generated_tokens - sequences = {decode_tokens} "
        "(prefill emits each sequence's first token); *_e2e and tokens_per_joule use the whole request "
        "(generation window) and all generated tokens",
        _idle_note(s, "idle-before and idle-after windows"),
        (f"windows lengthened by repeating the work to >= {s.min_window_s:g} s and >= {s.min_updates} "
         f"updates of each meter" if s.lengthen else
         f"windows not lengthened: readings with < {s.min_updates} updates or < {s.min_window_s:g} s "
         f"are flagged short-window"),
        "counter meters with a sampled alternative (nvml) are cross-checked against sampled power over "
        "the generation window of every cell (it costs nothing: power is sampled anyway)",
    ]
    record = EnergyRecord(window="phases", notes=notes, settings=dataclasses.asdict(s), tokens=tokens)
    if not meters:
        record.status, record.reason = "no meters", "no meters configured: nothing measured"
        notes.append(record.reason)
        return EnergyMeasurement(record)
    if not _start(meters):
        notes.append("no meter is available: work not run for energy")
        record.meters = [MeterEnergy(meter=m.name, method=m.method, scope=m.scope, reason=m.reason)
                         for m in meters]
        return EnergyMeasurement(record)

    windows: dict[str, Window] = {}
    plan = [(IDLE_BEFORE, None, s.idle_s), (PREFILL, run_prefill, s.min_window_s),
            (GENERATION, run_generation, s.min_window_s), (IDLE_AFTER, None, s.idle_s)]
    for phase, work, min_s in plan:
        if work is None and s.idle_s <= 0:
            continue
        w = Window(phase, meters, s)
        windows[phase] = w
        w.run(work, min_s)

    def figures(energy):
        return batch_figures(energy, {p: windows[p].repeats for p in (PREFILL, GENERATION)}, tokens)

    record.meters = _meter_entries(meters, windows, s, (PREFILL, GENERATION), figures)
    record.windows = {p: w.info() for p, w in windows.items()}
    if timed is not None:
        record.speed = _batch_speed(windows, tokens, timed, s.speed_margin)
        notes.append(record.speed.rule)
        flag_speed(record.meters, record.speed)
    return EnergyMeasurement(record, _timeline(meters, windows))


# --- a request scenario: idle once, then a steady window per measured pass ---------------

class SteadyEnergy:
    """The energy of a request scenario's run.

    :meth:`measure_idle` takes the idle baseline once, before the measured passes (an
    idle-before window only: after the run there is no quiet moment that belongs to it).
    :meth:`window` gives a fresh steady window for one pass; the load generator begins
    and ends it. :meth:`measure` turns its readings into the record: the window's
    gross and net joules over the output tokens streamed inside it, over the requests
    completed inside it, and per joule.
    """

    def __init__(self, meters: list[Meter], settings: Optional[EnergySettings] = None):
        self.meters = list(meters)
        self.settings = settings or EnergySettings()
        self.available = _start(self.meters)
        self.idle: Optional[Window] = None

    def measure_idle(self) -> None:
        s = self.settings
        if self.available and s.idle_s > 0:
            w = Window(IDLE_BEFORE, self.meters, s)
            w.run(None, s.idle_s)
            self.idle = w

    def window(self) -> Window:
        return Window(STEADY, self.meters, self.settings)

    def measure(self, window: Window, output_tokens: float, requests_completed: int,
                no_window: Optional[str] = None) -> EnergyMeasurement:
        """The record of one pass. no_window: why the load had no steady state (then
        there is nothing to divide by, and no figures)."""
        s = self.settings
        notes = [
            "steady window: from when the offered load is fully up to when it starts draining; "
            "J per generated token = window energy / output tokens streamed inside the window; "
            "energy per request = window energy / requests completed inside it",
            _idle_note(s, "idle-before window taken once before the run"),
            f"the steady window is set by the load, not lengthened: readings with < {s.min_updates} updates "
            f"or < {s.min_window_s:g} s are flagged short-window",
        ]
        record = EnergyRecord(window="steady", notes=notes, settings=dataclasses.asdict(s),
                              tokens={"output_tokens": output_tokens, "requests_completed": requests_completed})
        if no_window is not None or not window.closed:
            record.status = "no steady window"
            record.reason = no_window or "the steady window was never opened"
            return EnergyMeasurement(record)
        windows = {IDLE_BEFORE: self.idle, STEADY: window} if self.idle is not None else {STEADY: window}

        def figures(energy):
            return steady_figures(energy, output_tokens, requests_completed)

        record.meters = _meter_entries(self.meters, windows, s, (STEADY,), figures)
        record.windows = {p: w.info() for p, w in windows.items()}
        # the same work: the window is opened and closed by the load generator around the
        # measured requests, so its speed is the reported steady throughput (recorded, to
        # be checked, never flagged)
        dur = window.t_end - window.t_start
        record.speed = EnergySpeed(
            rule="same work: the steady energy window covers the measured requests themselves (the load "
                 "generator opens and closes it), so its throughput is the reported steady throughput",
            same_work=True,
            phases=[PhaseSpeed(phase=STEADY, tokens=float(output_tokens), window_s=dur, repeats=1,
                               tok_s=_div(float(output_tokens), dur) if dur > 0 and output_tokens else None)])
        return EnergyMeasurement(record, _timeline(self.meters, windows))
