"""NVIDIA board energy through NVML, plus clocks, temperature and throttle reasons.

Why the counter first: ``nvmlDeviceGetTotalEnergyConsumption`` (Volta and
newer) is the driver's own integral of board power, updated about 10 times a
second on an H100. Sampled power is worse: ``nvmlDeviceGetPowerUsage`` is a
1 s average on recent boards and lags a load step, so integrating it
under-counts short bursts (4104 J by counter vs 3804 J from the 1 s-averaged
power over a 6 s bf16 matmul burn on an H100 80GB HBM3). Where the counter is missing
we integrate ``NVML_FI_DEV_POWER_INSTANT`` (instantaneous) and only then
``nvmlDeviceGetPowerUsage``, sampled at 10 Hz or faster in a background
thread.

In counter mode the background thread still samples power, so each reading
also carries the sampled energy of the same window (``telemetry["sampled_j"]``):
that is the counter-vs-sampled sanity check, at no extra cost.

Every device call goes through a small device object (:class:`PynvmlDevice`
for the real thing). Tests hand the meter a fake with the same methods; the
real path is exercised by ``scripts/nvml_check.py`` on a GPU machine.
"""

import threading
import time
from dataclasses import dataclass
from typing import ClassVar, Optional

from .base import (EnergyReading, Meter, MeterError, check_positive,
                   max_gap, median_interval, summarize_telemetry, trapezoid_energy)


class NvmlUnsupported(Exception):
    """The device or driver does not offer this query (NVML_ERROR_NOT_SUPPORTED)."""


class NvmlDeviceError(Exception):
    """An NVML query failed for another reason (GPU lost, driver reset ...)."""


# bits of nvmlClocksEventReasons (formerly "throttle reasons")
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int) -> list[str]:
    return [n for bit, n in THROTTLE_REASONS.items() if mask & bit] + (
        [f"0x{mask & ~sum(THROTTLE_REASONS):x}"] if mask & ~sum(THROTTLE_REASONS) else [])


class PynvmlDevice:
    """The few NVML queries the meter needs, on one GPU, with typed errors.

    Methods (a fake device for tests implements the same ones):
    ``name()``, ``total_energy_mj()``, ``power_instant_w()`` -> (watts,
    timestamp_s or None), ``power_usage_w()``, ``clocks_mhz()`` -> (sm, mem),
    ``temperature_c()``, ``throttle_reasons()``, ``close()``.
    """

    def __init__(self, index: int = 0):
        import pynvml  # imported here: the harness must import on machines without it

        self._nv = pynvml
        try:
            pynvml.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded ...
            raise NvmlDeviceError(f"nvmlInit failed: {e}") from None
        try:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as e:
            pynvml.nvmlShutdown()
            raise NvmlDeviceError(f"no GPU with NVML index {index}: {e}") from None
        self.index = index

    def _call(self, fn, *args):
        nv = self._nv
        try:
            return fn(self.handle, *args)
        except nv.NVMLError as e:
            if e.value in (nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_FUNCTION_NOT_FOUND):
                raise NvmlUnsupported(str(e)) from None
            raise NvmlDeviceError(str(e)) from None

    def name(self) -> str:
        n = self._call(self._nv.nvmlDeviceGetName)
        return n.decode() if isinstance(n, bytes) else str(n)

    def total_energy_mj(self) -> int:
        return int(self._call(self._nv.nvmlDeviceGetTotalEnergyConsumption))

    def power_instant_w(self) -> tuple[float, Optional[float]]:
        nv = self._nv
        vals = self._call(nv.nvmlDeviceGetFieldValues, [nv.NVML_FI_DEV_POWER_INSTANT])
        v = vals[0]
        if v.nvmlReturn != nv.NVML_SUCCESS:
            if v.nvmlReturn == nv.NVML_ERROR_NOT_SUPPORTED:
                raise NvmlUnsupported("NVML_FI_DEV_POWER_INSTANT not supported")
            raise NvmlDeviceError(f"NVML_FI_DEV_POWER_INSTANT returned error {v.nvmlReturn}")
        field_by_type = {
            nv.NVML_VALUE_TYPE_DOUBLE: "dVal", nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal", nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal", nv.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        }
        mw = getattr(v.value, field_by_type.get(v.valueType, "uiVal"))
        ts = v.timestamp / 1e6 if v.timestamp else None  # microseconds since epoch
        return float(mw) / 1000.0, ts

    def power_usage_w(self) -> float:
        return self._call(self._nv.nvmlDeviceGetPowerUsage) / 1000.0

    def clocks_mhz(self) -> tuple[Optional[int], Optional[int]]:
        nv = self._nv
        return (self._call(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
                self._call(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM))

    def temperature_c(self) -> float:
        return self._call(self._nv.nvmlDeviceGetTemperature, self._nv.NVML_TEMPERATURE_GPU)

    def throttle_reasons(self) -> int:
        # "clocks event reasons" is the newer name (driver >= 535); older drivers
        # only have the "throttle reasons" symbol. Same bit mask.
        newer = getattr(self._nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if newer is not None and not getattr(self, "_old_throttle_api", False):
            try:
                return int(self._call(newer))
            except NvmlUnsupported:
                self._old_throttle_api = True
        return int(self._call(self._nv.nvmlDeviceGetCurrentClocksThrottleReasons))

    def close(self) -> None:
        try:
            self._nv.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down; nothing useful to do
            pass


@dataclass
class NvmlOptions:
    """Options of a ``{type: nvml}`` meter.

    index: NVML device index (not CUDA_VISIBLE_DEVICES order).
    method: "auto" (counter if the board has one, else sampled), "counter" or
        "sampled" (force the fallback, e.g. to compare).
    period_s: background poll period; power is sampled at this rate and must be
        10 Hz or faster.
    power_source: which power reading is sampled: "auto" (the instantaneous
        NVML_FI_DEV_POWER_INSTANT field, else nvmlDeviceGetPowerUsage), or one
        of "instant-field" / "power-usage" (to compare them).
    stall_s: a counter (or power sample) that does not move for this long
        inside a window means the meter stopped; the window is unavailable.
    """

    index: int = 0
    method: str = "auto"
    power_source: str = "auto"
    period_s: float = 0.05
    stall_s: float = 2.0
    name: Optional[str] = None

    def __post_init__(self):
        if self.method not in ("auto", "counter", "sampled"):
            raise MeterError(f"option 'method' must be auto, counter or sampled, got {self.method!r}")
        if self.power_source not in ("auto", "instant-field", "power-usage"):
            raise MeterError(f"option 'power_source' must be auto, instant-field or power-usage, "
                             f"got {self.power_source!r}")
        check_positive("period_s", self.period_s)
        if self.period_s > 0.1:
            raise MeterError(f"option 'period_s' must be <= 0.1 (sample power at 10 Hz or faster), "
                             f"got {self.period_s}")
        check_positive("stall_s", self.stall_s)
        if self.index < 0:
            raise MeterError(f"option 'index' must be >= 0, got {self.index}")


class NvmlMeter(Meter):
    """GPU board energy: NVML energy counter, else integrated sampled power."""

    type: ClassVar[str] = "nvml"
    Options: ClassVar[type] = NvmlOptions

    def __init__(self, options=None, device=None):
        super().__init__(options)
        self.name = self.options.name or f"nvml:{self.options.index}"
        self.scope = "gpu-board"
        self.method = "sampled" if self.options.method == "sampled" else "counter"
        self.device = device
        self._own_device = device is None
        self.power_source: Optional[str] = None   # "instant-field" | "power-usage"
        self.has_counter = False
        self.device_name: Optional[str] = None
        self._samples: list[dict] = []
        self._lock = threading.Lock()

    # lifetime -------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self.device is None:
            try:
                self.device = PynvmlDevice(self.options.index)
            except ImportError:
                self.mark_unavailable("nvidia-ml-py (pynvml) is not installed")
                return
            except Exception as e:  # noqa: BLE001 - no driver/GPU: say so, carry on
                self.mark_unavailable(f"NVML unavailable: {e}")
                return
        dev = self.device
        try:
            self.device_name = dev.name()
        except Exception:  # noqa: BLE001 - name is cosmetic
            self.device_name = None
        counter_err = None
        try:
            dev.total_energy_mj()
            self.has_counter = True
        except NvmlUnsupported:
            self.has_counter = False
        except Exception as e:  # noqa: BLE001 - e.g. GPU lost: fall back, keep the reason
            self.has_counter = False
            counter_err = str(e)
        for source, fn in (("instant-field", dev.power_instant_w), ("power-usage", dev.power_usage_w)):
            if self.options.power_source not in ("auto", source):
                continue
            try:
                fn()
            except Exception:  # noqa: BLE001 - try the next source
                continue
            self.power_source = source
            break
        want = self.options.method
        if want in ("auto", "counter") and self.has_counter:
            self.method = "counter"
        elif want in ("auto", "sampled") and self.power_source:
            self.method = "sampled"
        else:
            if want == "counter":
                why = "the board has no total-energy counter (needs Volta or newer)"
            elif want == "sampled":
                why = "the board reports no power reading"
            else:
                why = "the board reports neither a total-energy counter nor power"
            if counter_err:
                why += f" (counter query failed: {counter_err})"
            self.mark_unavailable(f"{self.name}: {why}")
            return
        self._poll()
        self.start_sampling(self._poll, self.options.period_s)

    def stop(self) -> None:
        super().stop()
        if self._own_device and self.device is not None and hasattr(self.device, "close"):
            self.device.close()
            self.device = None

    # sampling -------------------------------------------------------------
    def _poll(self) -> dict:
        """One sample of everything; never raises (errors are recorded)."""
        dev = self.device
        s: dict = {"t": None, "energy_mj": None, "watts": None, "power_ts": None,
                   "sm_clock_mhz": None, "mem_clock_mhz": None, "temp_c": None,
                   "throttle_reasons": None, "error": None}
        with self._lock:
            s["t"] = time.time()
            if self.has_counter:
                try:
                    s["energy_mj"] = int(dev.total_energy_mj())
                except Exception as e:  # noqa: BLE001
                    s["error"] = f"energy counter: {e}"
            if self.power_source == "instant-field":
                try:
                    s["watts"], s["power_ts"] = dev.power_instant_w()
                except Exception as e:  # noqa: BLE001
                    s["error"] = s["error"] or f"power: {e}"
            elif self.power_source == "power-usage":
                try:
                    s["watts"] = float(dev.power_usage_w())
                except Exception as e:  # noqa: BLE001
                    s["error"] = s["error"] or f"power: {e}"
            for key, fn in (("clocks", dev.clocks_mhz), ("temp_c", dev.temperature_c),
                            ("throttle_reasons", dev.throttle_reasons)):
                try:
                    v = fn()
                except Exception:  # noqa: BLE001 - telemetry is best effort
                    continue
                if key == "clocks":
                    s["sm_clock_mhz"], s["mem_clock_mhz"] = v
                else:
                    s[key] = v
            self._samples.append(s)
            if len(self._samples) % self.trim_every == 0:
                cutoff = self.history_cutoff()
                self._samples = [x for x in self._samples if x["t"] >= cutoff]
        return s

    # windows --------------------------------------------------------------
    def begin_window(self, name: str, at: Optional[float] = None) -> None:
        # a counter is read when called, not at ``at``: the caller calls counter
        # meters first, right at the window's instant
        if not self.available:
            super().begin_window(name, at)
            return
        s = self._poll()
        self._open[name] = s["t"]

    def end_window(self, name: str, at: Optional[float] = None) -> list[EnergyReading]:
        if not self.available:
            t0, t1 = self._close_window(name, at)
            return [self.unavailable_reading(t0, t1, self.reason or "unavailable")]
        if name not in self._open:
            raise MeterError(f"meter {self.name}: end_window({name!r}) without begin_window")
        last = self._poll()
        t0, t1 = self._open.pop(name), last["t"]
        with self._lock:
            win = [s for s in self._samples if t0 <= s["t"] <= t1]
        tele = self._telemetry(win)
        try:
            if self.method == "counter":
                return [self._counter_reading(win, t0, t1, tele)]
            return [self._sampled_reading(win, t0, t1, tele)]
        except _WindowFailed as e:
            return [self.unavailable_reading(t0, t1, str(e), telemetry=tele)]

    def _telemetry(self, win: list[dict]) -> dict:
        tele = summarize_telemetry(win, ["sm_clock_mhz", "mem_clock_mhz", "watts"], ["temp_c"])
        mask = 0
        for s in win:
            if s.get("throttle_reasons"):
                mask |= int(s["throttle_reasons"])
        tele["throttle_reasons_mask"] = mask
        tele["throttle_reasons"] = throttle_names(mask)
        tele["n_samples"] = len(win)
        tele["power_source"] = self.power_source
        if self.device_name:
            tele["device"] = self.device_name
        errors = sorted({s["error"] for s in win if s.get("error")})
        if errors:
            tele["errors"] = errors[:5]
        return tele

    def _sampled_energy(self, win: list[dict], t0: float, t1: float) -> Optional[float]:
        pts = [(s["t"], s["watts"]) for s in win if s["watts"] is not None]
        return trapezoid_energy(pts, t0, t1)

    def _counter_reading(self, win: list[dict], t0: float, t1: float, tele: dict) -> EnergyReading:
        first, last = win[0], win[-1]
        if first["energy_mj"] is None or last["energy_mj"] is None:
            bad = first if first["energy_mj"] is None else last
            raise _WindowFailed(f"energy counter unreadable at the window edge: {bad['error']}")
        vals = [(s["t"], s["energy_mj"]) for s in win if s["energy_mj"] is not None]
        for (ta, a), (tb, b) in zip(vals, vals[1:]):
            if b < a:
                raise _WindowFailed(f"energy counter went backwards ({a} -> {b} mJ): "
                                    f"driver reload or GPU reset inside the window")
        change_times = [tb for (ta, a), (tb, b) in zip(vals, vals[1:]) if b != a]
        edges = [t0] + change_times + [t1]
        longest = max(b - a for a, b in zip(edges, edges[1:]))
        if longest > self.options.stall_s:
            raise _WindowFailed(f"energy counter did not change for {longest:.1f} s inside the window "
                                f"(stall_s={self.options.stall_s}): counter stopped")
        joules = (last["energy_mj"] - first["energy_mj"]) / 1000.0
        sampled = self._sampled_energy(win, t0, t1)
        if sampled is not None:
            tele["sampled_j"] = sampled
            tele["sampled_source"] = self.power_source
        period = median_interval(change_times) if len(change_times) >= 3 else self._global_counter_period()
        return EnergyReading(meter=self.name, method="counter", scope=self.scope, joules=joules,
                             duration_s=t1 - t0, n_updates=len(change_times), update_period_s=period,
                             quality="ok", telemetry=tele, t_start=t0, t_end=t1)

    def _update_times(self, win: list[dict]) -> list[float]:
        """Times of distinct power updates: a new device timestamp, else a new value."""
        out, prev = [], None
        for s in win:
            if s["watts"] is None:
                continue
            key = s["power_ts"] if s["power_ts"] is not None else s["watts"]
            if prev is not None and key != prev:
                out.append(s["t"])
            prev = key
        return out

    def _sampled_reading(self, win: list[dict], t0: float, t1: float, tele: dict) -> EnergyReading:
        ok_times = [s["t"] for s in win if s["watts"] is not None]
        if not ok_times:
            raise _WindowFailed(f"no power sample inside the window ({tele.get('errors')})")
        gap = max_gap(ok_times, t0, t1)
        if gap > self.options.stall_s:
            raise _WindowFailed(f"no power sample for {gap:.1f} s inside the window "
                                f"(stall_s={self.options.stall_s})")
        pts = [(s["t"], s["watts"]) for s in win if s["watts"] is not None]
        # hold the nearest value out to an edge whose own read failed
        if pts[0][0] > t0:
            pts.insert(0, (t0, pts[0][1]))
        if pts[-1][0] < t1:
            pts.append((t1, pts[-1][1]))
        joules = trapezoid_energy(pts, t0, t1)
        upd = self._update_times(win)
        period = median_interval(upd) if len(upd) >= 3 else median_interval(ok_times)
        tele["sampled_source"] = self.power_source
        return EnergyReading(meter=self.name, method="sampled", scope=self.scope, joules=joules,
                             duration_s=t1 - t0, n_updates=len(upd), update_period_s=period,
                             quality="ok", telemetry=tele, t_start=t0, t_end=t1)

    # hints ---------------------------------------------------------------
    def _global_counter_period(self) -> Optional[float]:
        with self._lock:
            vals = [(s["t"], s["energy_mj"]) for s in self._samples[-400:] if s["energy_mj"] is not None]
        changes = [tb for (ta, a), (tb, b) in zip(vals, vals[1:]) if b != a]
        return median_interval(changes)

    def expected_period_s(self) -> Optional[float]:
        if not self.available:
            return None
        if self.method == "counter":
            p = self._global_counter_period()
        else:
            with self._lock:
                p = median_interval(self._update_times(self._samples[-400:]))
        return p if p is not None else 0.1  # NVML's documented ~10 Hz until we have seen it

    def live_updates(self, name: str) -> Optional[int]:
        if not self.available or name not in self._open:
            return None
        t0 = self._open[name]
        with self._lock:
            win = [s for s in self._samples if s["t"] >= t0]
            if win and win[-1]["error"]:
                return None  # failing: waiting for updates would be pointless; end_window says why
            if self.method == "counter":
                vals = [s["energy_mj"] for s in win if s["energy_mj"] is not None]
                return sum(1 for a, b in zip(vals, vals[1:]) if b != a)
        return len(self._update_times(win))

    def timeline(self, since: Optional[float] = None) -> list[dict]:
        with self._lock:
            samples = list(self._samples)
        e0 = next((s["energy_mj"] for s in samples if s["energy_mj"] is not None), None)
        rows = []
        for s in samples:
            if since is not None and s["t"] < since:
                continue
            rows.append({
                "t": s["t"], "meter": self.name, "watts": s["watts"],
                "energy_j": (s["energy_mj"] - e0) / 1000.0 if s["energy_mj"] is not None and e0 is not None else None,
                "sm_clock_mhz": s["sm_clock_mhz"], "mem_clock_mhz": s["mem_clock_mhz"],
                "temp_c": s["temp_c"], "throttle_reasons": s["throttle_reasons"],
            })
        return rows


class _WindowFailed(Exception):
    """Internal: this window cannot be measured; the message is the reason."""


def counter_vs_sampled(reading: EnergyReading) -> Optional[dict]:
    """The sanity check of a counter reading against power sampled over the same window.

    Returns None when the reading has no sampled alternative. ``rel_diff`` is
    (sampled - counter) / counter; on an H100 the 1 s-averaged power reads
    ~7 % low over a load step, the instantaneous field much closer.
    """
    if reading.method != "counter" or reading.joules is None:
        return None
    sampled = reading.telemetry.get("sampled_j")
    if sampled is None:
        return None
    rel = (sampled - reading.joules) / reading.joules if reading.joules else None
    return {"meter": reading.meter, "counter_j": reading.joules, "sampled_j": sampled,
            "sampled_source": reading.telemetry.get("sampled_source"), "rel_diff": rel,
            "duration_s": reading.duration_s}

