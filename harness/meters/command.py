"""Power from a vendor command-line tool, polled at a fixed period.

Why: many accelerators (NPUs, PIM cards) expose power only through their own
``*-smi`` tool. We run it as a real subprocess every ``period_s`` (an argv
list, never through a shell, so a suite file cannot inject commands), take
the watts out of its output with the configured regex (named group ``watts``
or the first group), and integrate the samples trapezoidally.

A sample's time is the midpoint of the command's run, since the tool read the
sensor somewhere in between. The samples are on this machine's clock, so the
meter needs no clock alignment. ``end_window`` waits for the first sample taken
after the window's end instant so both edges are interpolated, not extrapolated. A
stretch without a successful sample longer than ``max_gap_s`` makes the window
unavailable, with the tool's error as the reason.

``n_updates`` counts successful polls inside the window: a CLI does not tell
us when its sensor really updated, so that is the best honest count.
"""

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import ClassVar, Optional

from .base import (EnergyReading, Meter, MeterError, check_positive, check_scope,
                   max_gap, median_interval, trapezoid_energy)


@dataclass
class CommandOptions:
    """Options of a ``{type: command, argv: [...], regex: ...}`` meter.

    argv: the program and its arguments (no shell).
    regex: Python regex; group "watts" (or group 1) is the power figure.
    scale: multiply the figure (0.001 when the tool prints milliwatts).
    max_gap_s: longest stretch without a sample inside a window
        (default max(1 s, 5 x period_s)).
    """

    argv: list
    regex: str
    period_s: float = 0.1
    scope: str = "npu-module"
    scale: float = 1.0
    timeout_s: float = 5.0
    max_gap_s: Optional[float] = None
    name: Optional[str] = None

    def __post_init__(self):
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise MeterError(f"option 'argv' must be a non-empty list of strings, got {self.argv!r}")
        try:
            rx = re.compile(self.regex)
        except re.error as e:
            raise MeterError(f"option 'regex' is not a valid regular expression: {e}") from None
        if "watts" not in rx.groupindex and rx.groups < 1:
            raise MeterError("option 'regex' needs a group for the watts figure: (?P<watts>...) or (...)")
        check_positive("period_s", self.period_s)
        check_positive("timeout_s", self.timeout_s)
        check_positive("max_gap_s", self.max_gap_s)
        check_scope(self.scope)


class CommandMeter(Meter):
    """Polls a power-reporting command and integrates its figures."""

    type: ClassVar[str] = "command"
    Options: ClassVar[type] = CommandOptions
    ends_late: ClassVar[bool] = True  # end_window waits for the first poll after the window

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        self.name = o.name or f"command:{os.path.basename(o.argv[0])}"
        self.method = "sampled"
        self.scope = o.scope
        self._rx = re.compile(o.regex)
        self._group = "watts" if "watts" in self._rx.groupindex else 1
        self._samples: list[tuple[float, float]] = []
        self._errors: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._new_sample = threading.Condition(self._lock)

    @property
    def max_gap_s(self) -> float:
        return self.options.max_gap_s or max(1.0, 5 * self.options.period_s)

    def _describe(self) -> str:
        return " ".join(self.options.argv)[:80]

    def _run_once(self) -> tuple[float, Optional[float], Optional[str]]:
        """Run the command once: (time, watts or None, error or None)."""
        o = self.options
        ta = time.time()
        try:
            p = subprocess.run(o.argv, capture_output=True, text=True, timeout=o.timeout_s,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            return ta, None, f"command not found: {o.argv[0]}"
        except PermissionError:
            return ta, None, f"command not executable: {o.argv[0]}"
        except subprocess.TimeoutExpired:
            return ta + o.timeout_s / 2, None, f"`{self._describe()}` took longer than {o.timeout_s} s"
        except OSError as e:
            return ta, None, f"cannot run `{self._describe()}`: {e}"
        t = (ta + time.time()) / 2
        if p.returncode != 0:
            return t, None, (f"`{self._describe()}` exited with {p.returncode}: "
                             f"{(p.stderr or p.stdout).strip()[:160]}")
        m = self._rx.search(p.stdout)
        if not m:
            return t, None, (f"output of `{self._describe()}` does not match regex {o.regex!r}: "
                             f"{p.stdout.strip()[:160]!r}")
        try:
            watts = float(m.group(self._group)) * o.scale
        except (TypeError, ValueError):
            return t, None, f"regex group matched {m.group(self._group)!r}, expected a number"
        return t, watts, None

    def _poll(self) -> None:
        t, w, err = self._run_once()
        with self._lock:
            if w is None:
                self._errors.append((t, err))
            else:
                self._samples.append((t, w))
            if len(self._samples) % self.trim_every == 0:
                cutoff = self.history_cutoff()
                self._samples = [x for x in self._samples if x[0] >= cutoff]
                self._errors = [x for x in self._errors if x[0] >= cutoff]
            self._new_sample.notify_all()

    def start(self) -> None:
        super().start()
        t, w, err = self._run_once()
        if w is None:
            self.mark_unavailable(err)
            return
        self._samples.append((t, w))
        self.start_sampling(self._poll, self.options.period_s)

    def end_window(self, name: str, at: Optional[float] = None) -> list[EnergyReading]:
        t0, t1 = self._close_window(name, at)
        if not self.available:
            return [self.unavailable_reading(t0, t1, self.reason or "unavailable")]
        if self._sampler is None:
            return [self.unavailable_reading(t0, t1, "meter was not started")]
        wait_until = time.time() + self.options.period_s + self.options.timeout_s + 1.0
        with self._lock:
            while not (self._samples and self._samples[-1][0] >= t1) and time.time() < wait_until:
                self._new_sample.wait(timeout=max(0.0, wait_until - time.time()))
            samples = list(self._samples)
            errors = [e for e in self._errors if t0 <= e[0] <= t1]
        before = [s for s in samples if s[0] <= t0]
        inside = [s for s in samples if t0 < s[0] < t1]
        after = [s for s in samples if s[0] >= t1]
        last_err = errors[-1][1] if errors else None
        if not before or not after:
            why = "no sample after the window closed" if before else "no sample before the window opened"
            return [self.unavailable_reading(t0, t1, why + (f": {last_err}" if last_err else ""))]
        pts = [before[-1]] + inside + [after[0]]
        gap = max_gap([p[0] for p in pts], pts[0][0], pts[-1][0])
        if gap > self.max_gap_s:
            return [self.unavailable_reading(
                t0, t1, f"no power sample for {gap:.1f} s inside the window (max_gap_s={self.max_gap_s:.1f})"
                        + (f": {last_err}" if last_err else ""))]
        joules = trapezoid_energy(pts, t0, t1)
        watts = [p[1] for p in pts]
        tele = {"n_samples": len(inside), "failed_polls": len(errors),
                "watts_min": min(watts), "watts_max": max(watts), "command": self._describe()}
        if last_err:
            tele["last_error"] = last_err
        period = median_interval([p[0] for p in inside]) or median_interval([p[0] for p in pts])
        return [EnergyReading(meter=self.name, method="sampled", scope=self.scope, joules=joules,
                              duration_s=t1 - t0, n_updates=len(inside), update_period_s=period,
                              quality="ok", telemetry=tele, t_start=t0, t_end=t1)]

    def expected_period_s(self) -> Optional[float]:
        if not self.available:
            return None
        with self._lock:
            p = median_interval([s[0] for s in self._samples[-200:]])
        return p or self.options.period_s

    def live_updates(self, name: str) -> Optional[int]:
        if not self.available or name not in self._open:
            return None
        t0 = self._open[name]
        with self._lock:
            if self._errors and (not self._samples or self._errors[-1][0] > self._samples[-1][0]):
                return None  # the tool is failing: end_window will say why
            return sum(1 for s in self._samples if s[0] > t0)

    def timeline(self, since: Optional[float] = None) -> list[dict]:
        with self._lock:
            samples = list(self._samples)
        return [{"t": t, "meter": self.name, "watts": w} for t, w in samples if since is None or t >= since]
