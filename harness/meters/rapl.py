"""CPU package and DRAM energy from Linux powercap (RAPL).

Why powercap and not MSRs: ``/sys/class/powercap/intel-rapl:*`` is the
kernel's stable interface, works for Intel and for AMD (the amd RAPL driver
registers under the same name), and needs no msr module.

Three traps this module handles:

* Wrap-around. ``energy_uj`` is a counter that wraps at
  ``max_energy_range_uj`` (minutes at full load on big servers). A background
  poll (``period_s``, default 50 ms) accumulates deltas, so a window never
  sees more than one wrap between two reads; a negative delta is a wrap.
* Double counting. Each package zone ``intel-rapl:N`` has sub-zones
  ``intel-rapl:N:M`` named core, uncore (inside the package figure) and dram
  (outside it). We report package zones and dram zones only, and never a
  package's core/uncore, so the readings can be summed. ``psys`` (whole
  platform, overlaps everything) and the ``intel-rapl-mmio`` duplicate of the
  package are ignored. Zones appear both flat and nested in sysfs; we dedupe
  by real path.
* Permissions. Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable by
  root only. Then the meter is unavailable with a plain reason, warned once,
  and the run carries on.
"""

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from .base import (EnergyReading, Meter, MeterError, check_positive,
                   median_interval, warn_once)

_ZONE_RE = re.compile(r"^intel-rapl:(\d+(?::\d+)*)$")


@dataclass
class RaplOptions:
    """Options of a ``{type: rapl}`` meter.

    root: powercap directory (tests point it at a fake tree).
    domains: which zone kinds to report: "package" (cpu-package scope) and/or
        "dram" (dram scope).
    period_s: background poll period; it tracks wrap-arounds and counts
        updates. 0 reads only at window edges (then at most one wrap per
        window is handled).
    """

    root: str = "/sys/class/powercap"
    domains: list = field(default_factory=lambda: ["package", "dram"])
    period_s: float = 0.05
    name: Optional[str] = None

    def __post_init__(self):
        check_positive("period_s", self.period_s, allow_zero=True)
        bad = [d for d in self.domains if d not in ("package", "dram")]
        if bad:
            raise MeterError(f"option 'domains' entries must be 'package' or 'dram', got {bad[0]!r}")


def _read_text(path: Path) -> str:
    with open(path, "r") as f:
        return f.read().strip()


def _explain_os_error(path: Path, e: OSError) -> str:
    if isinstance(e, PermissionError):
        return (f"cannot read {path}: permission denied (energy_uj is root-only since Linux 5.10); "
                f"run as root or grant read access (e.g. chmod a+r via a udev rule)")
    return f"cannot read {path}: {e.strerror or e}"


class _Domain:
    """One RAPL zone: its counter, wrap range and accumulated energy."""

    def __init__(self, zone_dir: Path, zone_name: str, scope: str, max_range_uj: Optional[int]):
        self.dir = zone_dir
        self.energy_file = zone_dir / "energy_uj"
        self.zone_name = zone_name          # e.g. package-0, dram
        self.scope = scope
        self.max_range_uj = max_range_uj
        self.last_raw: Optional[int] = None
        self.acc_uj = 0                     # wrap-corrected energy since start
        self.wraps = 0
        self.error: Optional[str] = None    # last read error, None when healthy
        self.error_times: list[float] = []
        self.dead: Optional[str] = None     # unreadable since start(): why
        self.change_times: list[float] = []  # when a new counter value was first seen
        self.samples: list[tuple[float, int]] = []  # (t, acc_uj)

    def forget_before(self, cutoff: float) -> None:
        self.samples = [x for x in self.samples if x[0] >= cutoff]
        self.change_times = [x for x in self.change_times if x >= cutoff]
        self.error_times = [x for x in self.error_times if x >= cutoff]

    def read(self, t: float) -> None:
        try:
            raw = int(_read_text(self.energy_file))
        except OSError as e:
            self.error = _explain_os_error(self.energy_file, e)
            self.error_times.append(t)
            return
        except ValueError:
            self.error = f"{self.energy_file}: expected an integer number of microjoules"
            self.error_times.append(t)
            return
        self.error = None
        if self.last_raw is not None and raw != self.last_raw:
            delta = raw - self.last_raw
            if delta < 0:
                if self.max_range_uj is None:
                    self.error = (f"{self.energy_file}: counter went backwards and "
                                  f"max_energy_range_uj is unreadable, cannot unwrap")
                    self.error_times.append(t)
                    self.last_raw = raw
                    return
                delta += self.max_range_uj
                self.wraps += 1
            self.acc_uj += delta
            self.change_times.append(t)
        self.last_raw = raw
        self.samples.append((t, self.acc_uj))


class RaplMeter(Meter):
    """CPU package (and DRAM) energy counters via powercap; one reading per zone."""

    type: ClassVar[str] = "rapl"
    Options: ClassVar[type] = RaplOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.name = self.options.name or "rapl"
        self.method = "counter"
        self.scope = "cpu-package"
        self.domains: list[_Domain] = []
        self.skipped: list[str] = []
        self._lock = threading.Lock()
        self._win: dict[str, dict] = {}

    # discovery --------------------------------------------------------------
    def _discover(self) -> list[tuple[Path, tuple[int, ...]]]:
        root = Path(self.options.root)
        found: dict[str, tuple[Path, tuple[int, ...]]] = {}
        candidates = list(root.glob("intel-rapl:*")) + list(root.glob("intel-rapl:*/intel-rapl:*"))
        for p in candidates:
            m = _ZONE_RE.match(p.name)
            if not m or not p.is_dir():
                continue
            ids = tuple(int(x) for x in m.group(1).split(":"))
            found.setdefault(os.path.realpath(p), (p, ids))
        return sorted(found.values(), key=lambda x: x[1])

    def start(self) -> None:
        super().start()
        root = Path(self.options.root)
        if not root.is_dir():
            self.mark_unavailable(f"no {root}: this kernel/container exposes no powercap (RAPL) interface")
            return
        zones = self._discover()
        if not zones:
            self.mark_unavailable(f"no intel-rapl:* zones under {root} (CPU without RAPL, or not exposed in this VM)")
            return
        problems = []
        for zdir, ids in zones:
            try:
                zname = _read_text(zdir / "name")
            except OSError as e:
                problems.append(_explain_os_error(zdir / "name", e))
                continue
            if zname == "dram":
                kind, scope = "dram", "dram"
            elif zname.startswith("package") and len(ids) == 1:
                kind, scope = "package", "cpu-package"
            else:  # core/uncore are inside the package figure; psys overlaps all
                self.skipped.append(f"{zdir.name}={zname}")
                continue
            if kind not in self.options.domains:
                self.skipped.append(f"{zdir.name}={zname}")
                continue
            try:
                max_range = int(_read_text(zdir / "max_energy_range_uj"))
            except (OSError, ValueError):
                max_range = None
            dom = _Domain(zdir, zname, scope, max_range)
            dom.read(time.time())
            if dom.error is not None:
                dom.dead = dom.error   # reported unavailable for its scope, not polled
                problems.append(dom.error)
            self.domains.append(dom)
        if not any(d.dead is None for d in self.domains):
            self.domains = []
            self.mark_unavailable(problems[0] if problems else
                                  f"no package or dram zone under {root} (found: {', '.join(self.skipped)})")
            return
        if problems:
            # some zones readable, some not: measure the readable ones, say once
            self.reason = "; ".join(problems)
            warn_once(("rapl-partial", self.reason), f"energy meter rapl: {self.reason}")
        if self.options.period_s > 0:
            self.start_sampling(self._poll, self.options.period_s)

    def _poll(self) -> None:
        with self._lock:
            t = time.time()
            for d in self.live:
                d.read(t)
                if len(d.samples) % self.trim_every == 0:
                    d.forget_before(self.history_cutoff())

    @property
    def live(self) -> list[_Domain]:
        return [d for d in self.domains if d.dead is None]

    def _reading_name(self, d: _Domain) -> str:
        return f"{self.name}:{d.zone_name}"

    # windows --------------------------------------------------------------
    def begin_window(self, name: str, at: Optional[float] = None) -> None:
        # a counter is read when called, not at ``at``: the caller calls counter
        # meters first, right at the window's instant
        if not self.available:
            super().begin_window(name, at)
            return
        with self._lock:
            t = time.time()
            for d in self.live:
                d.read(t)
            self._open[name] = t
            self._win[name] = {
                d.zone_name: (d.acc_uj, len(d.error_times), d.error) for d in self.live
            }

    def end_window(self, name: str, at: Optional[float] = None) -> list[EnergyReading]:
        if not self.available:
            t0, t1 = self._close_window(name, at)
            return [self.unavailable_reading(t0, t1, self.reason or "unavailable")]
        with self._lock:
            t1 = time.time()
            for d in self.live:
                d.read(t1)
            t0 = self._open.pop(name, None)
            if t0 is None:
                raise MeterError(f"meter {self.name}: end_window({name!r}) without begin_window")
            start = self._win.pop(name)
            out = []
            for d in self.domains:
                if d.dead is not None or d.zone_name not in start:
                    out.append(self.unavailable_reading(t0, t1, d.dead or "zone not read at window start",
                                                        meter=self._reading_name(d), scope=d.scope))
                else:
                    out.append(self._domain_reading(d, start[d.zone_name], t0, t1))
        return out

    def _domain_reading(self, d: _Domain, start: tuple, t0: float, t1: float) -> EnergyReading:
        acc0, n_err0, err0 = start
        rname = self._reading_name(d)
        if err0 is not None:
            return self.unavailable_reading(t0, t1, err0, meter=rname, scope=d.scope)
        if len(d.error_times) > n_err0 or d.error is not None:
            why = d.error or "read error inside the window"
            return self.unavailable_reading(t0, t1, f"counter read failed inside the window: {why}",
                                            meter=rname, scope=d.scope)
        changes = [t for t in d.change_times if t0 < t <= t1]
        period = median_interval(changes) if len(changes) >= 3 else median_interval(d.change_times[-200:])
        return EnergyReading(
            meter=rname, method="counter", scope=d.scope,
            joules=(d.acc_uj - acc0) / 1e6, duration_s=t1 - t0,
            n_updates=len(changes), update_period_s=period, quality="ok", reason=None,
            telemetry={"zone": str(d.dir.name), "wraps_total": d.wraps,
                       "max_energy_range_uj": d.max_range_uj,
                       "poll_period_s": self.options.period_s or None},
            t_start=t0, t_end=t1,
        )

    # hints ---------------------------------------------------------------
    def expected_period_s(self) -> Optional[float]:
        if not self.available:
            return None
        with self._lock:
            times = self.live[0].change_times[-200:]
        p = median_interval(times)
        return p if p is not None else (self.options.period_s or 0.001)

    def live_updates(self, name: str) -> Optional[int]:
        if not self.available or self.options.period_s == 0 or name not in self._open:
            return None
        t0 = self._open[name]
        with self._lock:
            if any(d.error for d in self.live):
                return None  # failing: end_window will say why
            return min(sum(1 for t in d.change_times if t > t0) for d in self.live)

    def timeline(self, since: Optional[float] = None) -> list[dict]:
        rows = []
        with self._lock:
            for d in self.live:
                prev = None
                for t, acc in d.samples:
                    if prev is not None and (since is None or t >= since):
                        dt = t - prev[0]
                        rows.append({"t": t, "meter": self._reading_name(d),
                                     "watts": (acc - prev[1]) / 1e6 / dt if dt > 0 else None,
                                     "energy_j": acc / 1e6})
                    prev = (t, acc)
        return rows
