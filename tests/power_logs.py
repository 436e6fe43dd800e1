"""Test helpers: power logs written in real time, as a meter host writes them.

A :class:`PowerLog` thread appends one line every ``period_s`` with the mean watts over
the interval since its previous line (what a power analyser reports, the meters'
``sample_covers: preceding``), stamped by a clock ``skew_s`` ahead of this host, and
lets lines reach the file only ``lag_s`` after they were measured (a meter host that
flushes late). The watts come from a constant or a :class:`PowerSchedule`: high while
the test says the host is loaded, low otherwise, so the truth over any host interval
is known exactly.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Union


class PowerSchedule:
    """Host power: `low` watts, `high` while switched on; integrates itself exactly."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high
        self.spans: list[list[float]] = []   # [t_on, t_off or inf]
        self._lock = threading.Lock()

    def on(self) -> None:
        with self._lock:
            self.spans.append([time.time(), float("inf")])

    def off(self) -> None:
        with self._lock:
            self.spans[-1][1] = time.time()

    def load(self, seconds: float) -> None:
        """A clock-signature load that this schedule's meters see."""
        self.on()
        time.sleep(seconds)
        self.off()

    def energy(self, a: float, b: float) -> float:
        with self._lock:
            high_s = sum(max(0.0, min(b, t1) - max(a, t0)) for t0, t1 in self.spans)
        return self.low * (b - a) + (self.high - self.low) * high_s

    def mean(self, a: float, b: float) -> float:
        return self.energy(a, b) / (b - a)


class PowerLog(threading.Thread):
    def __init__(self, path, watts: Union[float, PowerSchedule], period_s: float = 0.05, skew_s: float = 0.0,
                 lag_s: float = 0.0, fmt: str = "csv"):
        super().__init__(daemon=True)
        self.path, self.watts, self.period = path, watts, period_s
        self.skew, self.lag, self.fmt = skew_s, lag_s, fmt
        self.halt = threading.Event()
        with open(path, "w") as f:
            f.write("timestamp,watts\n" if fmt == "csv" else "")

    def _line(self, t_log: float, w: float) -> str:
        if self.fmt == "csv":
            return f"{t_log:.4f},{w:.4f}\n"
        stamp = datetime.fromtimestamp(t_log, timezone.utc).strftime("%m-%d-%Y %H:%M:%S.%f")[:-3]
        return f"Time,{stamp},Watts,{w:.4f},Volts,230.0,Amps,1.0,PF,0.99,Mark,run\n"

    def _mean(self, a: float, b: float) -> float:
        return self.watts.mean(a, b) if isinstance(self.watts, PowerSchedule) else float(self.watts)

    def run(self) -> None:
        pending: list[tuple[float, str]] = []
        prev = time.time()
        while not self.halt.wait(max(0.0, prev + self.period - time.time())):
            now = time.time()
            pending.append((now, self._line(now + self.skew, self._mean(prev, now))))
            prev = now
            ready = [line for t, line in pending if t <= now - self.lag]
            if ready:
                with open(self.path, "a") as f:
                    f.write("".join(ready))
                pending = pending[len(ready):]

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)
