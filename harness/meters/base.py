"""The meter window API, the reading every energy figure is built from, and the
small helpers the meters share (option checks, a background sampler, power
integration).

Why windows: a cell's energy is split into named windows (idle-before,
prefill, generation, idle-after). Every meter type, whether it reads a counter
(NVML, RAPL), samples power (NVML fallback, a vendor CLI) or imports another
machine's log after the fact, answers the same question: how many joules went
through its scope between ``begin_window(name)`` and ``end_window(name)``, and
how trustworthy is that number. The answer is an :class:`EnergyReading` that
carries its provenance, so that no figure ever reaches a table without its
meter, method, scope, observed update period and update count.

One window, every meter: the caller fixes each window's edges once, as host
instants, and hands them to every meter (``begin_window(name, at=t)``,
``end_window(name, at=t)``). A meter that reads a counter reads it when called
(the caller calls those first, right at the instant); a meter that reads
timestamped samples (a log, a polled CLI) uses ``at`` as the edge and may wait
afterwards for samples to reach it, so its wait never lengthens another
meter's window, nor its own.

Meters never raise for "this machine cannot measure this" (no GPU, RAPL
root-only, log missing): they say why in ``reason`` and return readings with
``joules=None``. They raise :class:`MeterError` only for configuration mistakes
(an unknown option, a bad regex) and, inside the log parsers, for malformed
input (the meter then turns that error into an unavailable reading).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Optional, Sequence

from harness.schema import build

log = logging.getLogger("harness.meters")

METHODS = ("counter", "sampled", "external", "estimate")
SCOPES = ("gpu-board", "cpu-package", "dram", "npu-module", "wall")


class MeterError(Exception):
    """A meter configuration or meter input is wrong.

    The message always names the file (or meter) and key or line, and says what
    was expected, because the person reading it is a lab engineer fixing a
    suite file or a meter log, not a developer reading a traceback.
    """


@dataclass
class EnergyReading:
    """Energy through one meter scope over one closed window, with provenance.

    ``joules`` is None when the meter could not measure the window; ``quality``
    and ``reason`` then say why. ``n_updates`` counts distinct meter updates
    actually seen inside the window and ``update_period_s`` is the period
    observed, not the datasheet's, because a window with too few updates is
    dominated by edge effects.
    """

    meter: str
    method: str
    scope: str
    joules: Optional[float]
    duration_s: float
    n_updates: int
    update_period_s: Optional[float]
    quality: str
    reason: Optional[str] = None
    telemetry: dict = field(default_factory=dict)
    t_start: Optional[float] = None
    t_end: Optional[float] = None

    def __post_init__(self):
        # an inf or NaN figure (a scale that overflowed, a meter that misread) is never a
        # measurement: it is unavailable with the reason, whatever the meter labelled it
        if self.joules is not None and not _finite_number(self.joules):
            self.reason = (f"the meter gave a non-finite figure ({self.joules!r} J)"
                           + (f"; {self.reason}" if self.reason else ""))
            self.joules, self.quality = None, "unavailable"

    @property
    def available(self) -> bool:
        return self.joules is not None

    @property
    def watts(self) -> Optional[float]:
        """Average power over the window (None when unavailable or empty)."""
        if self.joules is None or self.duration_s <= 0:
            return None
        return self.joules / self.duration_s

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["avg_w"] = self.watts
        return d


def _finite_number(x: Any) -> bool:
    try:
        return math.isfinite(x)
    except (TypeError, OverflowError):
        return False


# --- warnings said once -----------------------------------------------------

_warned: set = set()
_warned_lock = threading.Lock()


def warn_once(key: Any, message: str) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen in this process.

    A suite with 200 cells must not print "RAPL is root-only" 200 times; the
    reason still travels with every reading.
    """
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)


# --- option checks the schema's types cannot express (run in Options.__post_init__) ---


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise MeterError(f"option 'scope' must be one of {', '.join(SCOPES)}, got {scope!r}")


def check_positive(name: str, value: Optional[float], allow_zero: bool = False) -> None:
    if value is None:
        return
    bad = value < 0 if allow_zero else value <= 0
    if bad or not math.isfinite(value):
        want = ">= 0" if allow_zero else "> 0"
        raise MeterError(f"option {name!r} must be a finite number {want}, got {value!r}")


# --- the meter interface -------------------------------------------------------


class Meter(ABC):
    """One source of energy readings for one or more scopes.

    Lifetime: ``start()`` once per run (opens the device, starts a background
    sampler), then any number of ``begin_window(name)`` / ``end_window(name)``
    pairs, then ``stop()``. ``timeline()`` gives the raw samples for plots.

    Subclasses set ``type`` and ``Options`` (a dataclass validated by
    harness.schema, in a suite file and here alike), and ``name``, ``method``,
    ``scope`` in ``__init__`` or ``start``.
    """

    type: ClassVar[str]
    Options: ClassVar[type]
    #: samples older than this are forgotten (never those of an open window), so a
    #: ten-hour run polling at 20 Hz does not grow without bound
    retain_s: ClassVar[float] = 3600.0
    trim_every: ClassVar[int] = 4096   # samples between two trims
    #: end_window may wait (for a log to catch up, for the next poll); such meters
    #: take the window's edges from ``at`` and are closed after the counter meters
    ends_late: ClassVar[bool] = False
    #: timestamps come from another machine's clock: harness.meters.clock aligns them
    aligns_clock: ClassVar[bool] = False

    def __init__(self, options: Any = None):
        self.options = build(type(self).Options, options, f"meter {self.type}", error=MeterError)
        self.name: str = self.type
        self.method: str = "counter"
        self.scope: str = "gpu-board"
        self.available: bool = True
        self.reason: Optional[str] = None
        self.started: bool = False
        self._open: dict[str, float] = {}
        self._sampler: Optional["PeriodicSampler"] = None

    # lifetime -------------------------------------------------------------
    def start(self) -> None:
        self.started = True

    def start_sampling(self, poll: Callable[[], None], period_s: float) -> None:
        """Call poll every period_s in a background thread until stop()."""
        self._sampler = PeriodicSampler(poll, period_s, self.name)
        self._sampler.start()

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        self.started = False

    def mark_unavailable(self, reason: str) -> None:
        """Record why this meter cannot measure; warn once per process."""
        self.available = False
        self.reason = reason
        warn_once((self.type, reason), f"energy meter {self.name}: unavailable: {reason}")

    # windows --------------------------------------------------------------
    def begin_window(self, name: str, at: Optional[float] = None) -> None:
        """Open window ``name`` at host instant ``at`` (None: now)."""
        self._open[name] = time.time() if at is None else at

    def history_cutoff(self) -> float:
        """Time before which samples may be dropped: retain_s back, never inside an open window."""
        cutoff = time.time() - self.retain_s
        opened = list(self._open.values())
        return min([cutoff] + opened)

    def _close_window(self, name: str, at: Optional[float] = None) -> tuple[float, float]:
        """Pop an open window; (t_start, t_end) in unix seconds, t_end = ``at`` or now."""
        try:
            t0 = self._open.pop(name)
        except KeyError:
            raise MeterError(f"meter {self.name}: end_window({name!r}) without begin_window") from None
        return t0, time.time() if at is None else at

    @abstractmethod
    def end_window(self, name: str, at: Optional[float] = None) -> list[EnergyReading]:
        """Close window ``name`` at host instant ``at`` (None: now) and read it."""

    def timeline(self, since: Optional[float] = None) -> list[dict]:
        """Samples since start(): {"t", "meter", "watts", ...telemetry}."""
        return []

    # hints for the energy procedure -----------------------------------------
    def expected_period_s(self) -> Optional[float]:
        """Update period to plan window lengths with (observed if known).

        None means the meter has no update granularity (an estimate), so the
        "enough updates" rule does not apply to it.
        """
        return None

    def live_updates(self, name: str) -> Optional[int]:
        """Updates seen so far in the open window ``name``; None if only known at end."""
        return None

    # helpers for subclasses -------------------------------------------------
    def unavailable_reading(self, t0: float, t1: float, reason: str,
                            meter: Optional[str] = None, scope: Optional[str] = None,
                            telemetry: Optional[dict] = None) -> EnergyReading:
        return EnergyReading(
            meter=meter or self.name, method=self.method, scope=scope or self.scope,
            joules=None, duration_s=t1 - t0, n_updates=0, update_period_s=None,
            quality="unavailable", reason=reason, telemetry=telemetry or {},
            t_start=t0, t_end=t1,
        )

    def __repr__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"<{type(self).__name__} {self.name} {self.method} {self.scope} ({state})>"


# --- background sampling ----------------------------------------------------------


class PeriodicSampler:
    """Calls ``fn()`` every ``period_s`` seconds in a daemon thread.

    Used by the meters that must poll (power sampling, counter update counting,
    RAPL wrap-around tracking, a vendor CLI). ``fn`` must not raise; any
    exception is logged once and the sampler keeps going, because a transient
    driver hiccup must not end a multi-hour run's telemetry.
    """

    def __init__(self, fn: Callable[[], None], period_s: float, name: str):
        self._fn = fn
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"meter-{name}", daemon=True)
        self._name = name

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self._fn()
            except Exception as e:  # noqa: BLE001 - keep sampling; say it once
                warn_once(("sampler", self._name, type(e).__name__),
                          f"meter {self._name}: sampling error: {e!r}")
            next_t += self._period
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (slow command): do not try to catch up
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


# --- arithmetic ---------------------------------------------------------------------


def median_interval(times: Sequence[float]) -> Optional[float]:
    """Median spacing of increasing timestamps (None with fewer than two)."""
    if len(times) < 2:
        return None
    diffs = [b - a for a, b in zip(times, times[1:]) if b > a]
    return statistics.median(diffs) if diffs else None


def _interp(p0: tuple[float, float], p1: tuple[float, float], t: float) -> float:
    (ta, wa), (tb, wb) = p0, p1
    if tb == ta:
        return wb
    return wa + (wb - wa) * (t - ta) / (tb - ta)


def trapezoid_energy(samples: Sequence[tuple[float, float]], t0: float, t1: float) -> Optional[float]:
    """Joules from instantaneous power samples ``(t, watts)`` over [t0, t1].

    Linear interpolation between samples, including at the window edges, so a
    window that starts between two samples gets exactly its share. Returns None
    when the samples do not reach both edges (the caller says so).
    """
    pts = sorted(samples)
    if not pts or pts[0][0] > t0 or pts[-1][0] < t1:
        return None
    if t1 <= t0:
        return 0.0
    # bracket t0 and t1
    inner = [p for p in pts if t0 < p[0] < t1]
    before = max((p for p in pts if p[0] <= t0), key=lambda p: p[0])
    after_t0 = [p for p in pts if p[0] > t0]
    w0 = _interp(before, after_t0[0], t0) if after_t0 else before[1]
    after = min((p for p in pts if p[0] >= t1), key=lambda p: p[0])
    before_t1 = [p for p in pts if p[0] < t1]
    w1 = _interp(before_t1[-1], after, t1) if before_t1 else after[1]
    path = [(t0, w0)] + inner + [(t1, w1)]
    return sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(path, path[1:]))


def max_gap(times: Iterable[float], t0: float, t1: float) -> float:
    """Longest stretch of [t0, t1] with no timestamp from ``times``."""
    pts = sorted(t for t in times if t0 <= t <= t1)
    edges = [t0] + pts + [t1]
    return max(b - a for a, b in zip(edges, edges[1:]))


def summarize_telemetry(samples: Sequence[dict], keys_minmax: Sequence[str],
                        keys_max: Sequence[str] = ()) -> dict:
    """min/max of numeric telemetry fields over a window's samples."""
    out: dict = {}
    for k in keys_minmax:
        vals = [s[k] for s in samples if s.get(k) is not None]
        if vals:
            out[f"{k}_min"] = min(vals)
            out[f"{k}_max"] = max(vals)
    for k in keys_max:
        vals = [s[k] for s in samples if s.get(k) is not None]
        if vals:
            out[f"{k}_max"] = max(vals)
    return out
