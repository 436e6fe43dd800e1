"""Power from a vendor command-line tool, polled at a fixed period.

Why: many accelerators (NPUs, PIM cards) expose power only through their own
``*-smi`` tool, and those tools report instantaneous power only, with no energy
counter. We run the tool as a real subprocess every ``period_s`` (an argv list, never
through a shell, so a suite file cannot inject commands), take the watts out of its
output (a regex, a JSON path, or one number per line: harness.meters.presets), and
integrate the samples trapezoidally over their *measured* timestamps, so a tool that
answers slower than ``period_s`` is integrated at the period it really had. The figure
is labelled ``sampled``: a wall meter beside it is the better measurement.

``preset: furiosa-smi | rbln-smi | nvidia-smi | amd-smi`` fills argv, format, path, unit
and scope from harness.meters.presets.PRESETS; any of them given explicitly wins.

Devices: a JSON path with ``[*]``, every output line (format ``lines``) and every regex
match is one device, in the order the tool prints them. ``devices: [0, 2]`` keeps those
positions; ``combine: sum`` (default) integrates their summed power as one reading,
``combine: each`` gives one reading per device (meter name ``NAME[i]``). A poll whose
device count differs from the first poll's is a failed poll (a device vanished).

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
from typing import ClassVar, Literal, Optional

from .base import (SCOPES, EnergyReading, Meter, max_gap, median_interval, trapezoid_energy)
from .presets import (FORMATS, MAX_OUTPUT_CHARS, PRESETS, UNITS, ParseError, parse_path, read_json, read_lines,
                      read_regex)


@dataclass
class CommandOptions:
    """Options of a ``{type: command, ...}`` meter.

    preset: a known tool (furiosa-smi, rbln-smi, nvidia-smi, amd-smi): fills the rest.
    argv: the program and its arguments (no shell).
    format: regex | json | lines (default: the preset's; json when ``path`` is given,
        else regex).
    regex: Python regex; group "watts" (or group 1) is the power figure; each match is a device.
    path: JSON path to the watts (``devices[*].card_power``; alternatives with ``|``).
    unit: W | mW | uW | kW: of a number printed without a unit (default: the preset's, W).
    devices: positions in the tool's device list to keep (default: all).
    combine: sum (one reading of the devices' total) | each (one reading per device).
    scale: multiply the figure (0.001 when the tool prints milliwatts).
    max_gap_s: longest stretch without a sample inside a window
        (default max(1 s, 5 x period_s)).
    """

    argv: Optional[list] = None
    regex: Optional[str] = None
    preset: Optional[str] = None
    format: Optional[str] = None
    path: Optional[str] = None
    unit: Optional[str] = None
    devices: Optional[list[int]] = None
    combine: Literal["sum", "each"] = "sum"
    period_s: float = 0.1
    scope: Optional[str] = None
    scale: float = 1.0
    timeout_s: float = 5.0
    max_gap_s: Optional[float] = None
    name: Optional[str] = None

    def __post_init__(self):
        # fill what the preset knows and the user did not give; problems() judges the result
        p = PRESETS.get(self.preset) if isinstance(self.preset, str) else None
        if p is not None:
            if self.argv is None:
                self.argv = list(p.argv)
            if self.format is None:
                self.format = p.format
            if self.path is None and self.regex is None:
                self.path, self.regex = p.path, p.regex
            if self.unit is None:
                self.unit = p.unit
            if self.scope is None:
                self.scope = p.scope
        if self.format is None:
            self.format = "json" if self.path is not None else "regex"
        self.unit = self.unit or "W"
        self.scope = self.scope or "npu-module"

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.preset is not None and self.preset not in PRESETS:
            import difflib

            close = difflib.get_close_matches(str(self.preset), list(PRESETS), n=1)
            out.append(("preset", f"unknown preset {self.preset!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else "")
                                  + f"; expected one of {', '.join(PRESETS)}"))
            return out
        if not self.argv or not all(isinstance(a, str) and a for a in self.argv):
            out.append(("argv", "expected a non-empty list of strings (or a `preset:`), got "
                                f"{self.argv!r}"))
        if self.format not in FORMATS:
            out.append(("format", f"expected one of {', '.join(FORMATS)}, got {self.format!r}"))
        elif self.format == "regex":
            if self.regex is None:
                out.append(("regex", "required with format regex (or give `path:` for JSON output)"))
            else:
                try:
                    rx = re.compile(self.regex)
                except re.error as e:
                    out.append(("regex", f"option 'regex' is not a valid regular expression: {e}"))
                else:
                    if "watts" not in rx.groupindex and rx.groups < 1:
                        out.append(("regex", "option 'regex' needs a group for the watts figure: "
                                              "(?P<watts>...) or (...)"))
        elif self.format == "json":
            if not self.path:
                out.append(("path", "required with format json: the JSON path to the watts, e.g. "
                                    "devices[*].card_power"))
            else:
                try:
                    parse_path(self.path)
                except ValueError as e:
                    out.append(("path", str(e)))
        if self.unit not in UNITS:
            out.append(("unit", f"expected one of {', '.join(UNITS)}, got {self.unit!r}"))
        if self.scope not in SCOPES:
            out.append(("scope", f"expected one of {', '.join(SCOPES)}, got {self.scope!r}"))
        if self.devices is not None:
            if not self.devices:
                out.append(("devices", "expected a non-empty list of device positions (0 is the first)"))
            elif any(d < 0 for d in self.devices) or len(set(self.devices)) != len(self.devices):
                out.append(("devices", f"expected distinct positions >= 0, got {self.devices!r}"))
        for key in ("period_s", "timeout_s", "max_gap_s", "scale"):
            v = getattr(self, key)
            if v is not None and not (v > 0 and v != float("inf")):
                out.append((key, f"option {key!r} must be a finite number > 0, got {v!r}"))
        return out


class CommandMeter(Meter):
    """Polls a power-reporting command and integrates its figures."""

    type: ClassVar[str] = "command"
    Options: ClassVar[type] = CommandOptions
    ends_late: ClassVar[bool] = True  # end_window waits for the first poll after the window

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        self.name = o.name or f"command:{o.preset or os.path.basename(o.argv[0])}"
        self.method = "sampled"
        self.scope = o.scope
        self._rx = re.compile(o.regex) if o.format == "regex" else None
        # (t, watts per reading): one column for combine=sum, one per kept device for each
        self._samples: list[tuple[float, tuple[float, ...]]] = []
        self._errors: list[tuple[float, str]] = []
        self._n_devices: Optional[int] = None  # devices in the first good poll
        self._lock = threading.Lock()
        self._new_sample = threading.Condition(self._lock)

    @property
    def max_gap_s(self) -> float:
        return self.options.max_gap_s or max(1.0, 5 * self.options.period_s)

    def _describe(self) -> str:
        return " ".join(self.options.argv)[:80]

    def reading_names(self) -> list[str]:
        """The meter name of each reading (one per kept device with combine: each)."""
        o = self.options
        if o.combine == "sum":
            return [self.name]
        kept = o.devices if o.devices is not None else list(range(self._n_devices or 0))
        return [f"{self.name}[{d}]" for d in kept]

    def parse(self, stdout: str) -> tuple[float, ...]:
        """Watts per reading from one run's output; ParseError says what was wrong."""
        o = self.options
        if len(stdout) > MAX_OUTPUT_CHARS:
            raise ParseError(f"output longer than {MAX_OUTPUT_CHARS} characters")
        if o.format == "json":
            per_device = read_json(stdout, o.path, o.unit)
        elif o.format == "lines":
            per_device = read_lines(stdout, o.unit)
        else:
            per_device = read_regex(stdout, self._rx, o.unit)
        if self._n_devices is not None and len(per_device) != self._n_devices:
            raise ParseError(f"{len(per_device)} device(s) in the output, {self._n_devices} at the first poll")
        if o.devices is not None:
            missing = [d for d in o.devices if d >= len(per_device)]
            if missing:
                raise ParseError(f"device position(s) {missing} not in the output ({len(per_device)} device(s))")
            per_device = [per_device[d] for d in o.devices]
        watts = [w * o.scale for w in per_device]
        if self._n_devices is None:
            self._n_devices = len(per_device) if o.devices is None else None
        return (sum(watts),) if o.combine == "sum" else tuple(watts)

    def _run_once(self) -> tuple[float, Optional[tuple[float, ...]], Optional[str]]:
        """Run the command once: (time, watts per reading or None, error or None)."""
        o = self.options
        ta = time.time()
        try:
            p = subprocess.run(o.argv, capture_output=True, text=True, timeout=o.timeout_s,
                               stdin=subprocess.DEVNULL, errors="replace")
        except FileNotFoundError:
            return ta, None, f"command not found: {o.argv[0]}" + (
                f" (preset {o.preset}: is the vendor tool installed and on PATH?)" if o.preset else "")
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
        try:
            return t, self.parse(p.stdout), None
        except ParseError as e:
            return t, None, f"output of `{self._describe()}`: {e}: {p.stdout.strip()[:160]!r}"

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
        names = self.reading_names() if self.available else [self.name]

        def unavailable(why: str) -> list[EnergyReading]:
            return [self.unavailable_reading(t0, t1, why, meter=n) for n in names]

        if not self.available:
            return unavailable(self.reason or "unavailable")
        if self._sampler is None:
            return unavailable("meter was not started")
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
            return unavailable(why + (f": {last_err}" if last_err else ""))
        pts = [before[-1]] + inside + [after[0]]
        times = [p[0] for p in pts]
        gap = max_gap(times, pts[0][0], pts[-1][0])
        if gap > self.max_gap_s:
            return unavailable(f"no power sample for {gap:.1f} s inside the window (max_gap_s={self.max_gap_s:.1f})"
                               + (f": {last_err}" if last_err else ""))
        # the measured sample period: what the integration really stood on
        period = median_interval([p[0] for p in inside]) or median_interval(times)
        out = []
        for j, meter in enumerate(names):
            col = [(t, w[j]) for t, w in pts]
            watts = [w for _, w in col]
            tele = {"n_samples": len(inside), "failed_polls": len(errors), "watts_min": min(watts),
                    "watts_max": max(watts), "command": self._describe(), "max_sample_gap_s": gap,
                    "integration": "trapezoid over measured sample times"}
            if self.options.preset:
                tele["preset"] = self.options.preset
            if self.options.combine == "sum":
                tele["devices"] = self.options.devices if self.options.devices is not None else self._n_devices
            if last_err:
                tele["last_error"] = last_err
            out.append(EnergyReading(meter=meter, method="sampled", scope=self.scope,
                                     joules=trapezoid_energy(col, t0, t1), duration_s=t1 - t0,
                                     n_updates=len(inside), update_period_s=period, quality="ok", telemetry=tele,
                                     t_start=t0, t_end=t1))
        return out

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
        names = self.reading_names()
        return [{"t": t, "meter": n, "watts": w[j]} for t, w in samples if since is None or t >= since
                for j, n in enumerate(names)]
