"""NVML meter logic through a fake device object (the real path is checked by
scripts/nvml_check.py on a GPU machine)."""

import threading
import time

import pytest

from harness.meters import MeterError, NvmlMeter, build_meters, counter_vs_sampled
from harness.meters.nvml import NvmlDeviceError, NvmlUnsupported, throttle_names


class FakeGpu:
    """A board whose power the test sets; its energy counter integrates that
    power exactly and publishes it every `counter_period` seconds, like NVML."""

    def __init__(self, watts=70.0, counter_period=0.01, counter=True, instant=True, usage=True):
        self._lock = threading.Lock()
        self.history = [(time.time(), watts)]   # (since, watts)
        self.counter_period = counter_period
        self.counter, self.instant, self.usage = counter, instant, usage
        self.frozen_mj = None       # counter stuck at this value
        self.offset_mj = 0          # added to the counter (simulate a reset with a negative value)
        self.broken = False

    def set_watts(self, w):
        with self._lock:
            self.history.append((time.time(), w))

    def energy_j(self, t):
        e = 0.0
        for (ta, w), nxt in zip(self.history, self.history[1:] + [(float("inf"), None)]):
            if t <= ta:
                break
            e += w * (min(t, nxt[0]) - ta)
        return e

    def watts_now(self):
        return self.history[-1][1]

    # the device interface
    def name(self):
        return "Fake H100"

    def total_energy_mj(self):
        if not self.counter:
            raise NvmlUnsupported("Not Supported")
        if self.broken:
            raise NvmlDeviceError("GPU is lost")
        if self.frozen_mj is not None:
            return self.frozen_mj
        with self._lock:
            tick = (time.time() // self.counter_period) * self.counter_period
            return int(self.energy_j(tick) * 1000) + self.offset_mj

    def power_instant_w(self):
        if not self.instant:
            raise NvmlUnsupported("field not supported")
        return self.watts_now(), time.time()

    def power_usage_w(self):
        if not self.usage:
            raise NvmlUnsupported("Not Supported")
        return self.watts_now()

    def clocks_mhz(self):
        return (1320 if self.watts_now() > 500 else 1980), 2619

    def temperature_c(self):
        return 40 + self.watts_now() / 20

    def throttle_reasons(self):
        return 0x4 if self.watts_now() > 500 else 0x1


def run_window(meter, seconds, during=None):
    meter.begin_window("w")
    if during:
        during()
    time.sleep(seconds)
    (r,) = meter.end_window("w")
    return r


@pytest.fixture
def started():
    meters = []

    def _make(dev, **opts):
        m = NvmlMeter({"period_s": 0.005, **opts}, device=dev)
        m.start()
        meters.append(m)
        return m

    yield _make
    for m in meters:
        m.stop()


def test_counter_is_primary_and_exact(started):
    gpu = FakeGpu(watts=100.0)
    m = started(gpu)
    assert m.method == "counter" and m.power_source == "instant-field"
    t_step = [None]

    def step():
        time.sleep(0.15)
        gpu.set_watts(400.0)
        t_step[0] = time.time()

    r = run_window(m, 0.15, step)
    assert r.quality == "ok" and r.meter == "nvml:0" and r.scope == "gpu-board" and r.method == "counter"
    exact = gpu.energy_j(r.t_end) - gpu.energy_j(r.t_start)
    assert r.joules == pytest.approx(exact, abs=2 * 400 * gpu.counter_period)
    assert r.n_updates >= 5                          # ~30 when the poll thread is not starved
    assert 0.005 <= r.update_period_s < 0.2
    # the counter-vs-sampled check rides along (sampled smears the step over one poll)
    chk = counter_vs_sampled(r)
    assert chk["sampled_source"] == "instant-field" and chk["counter_j"] == r.joules
    assert abs(chk["rel_diff"]) < 0.5


def test_telemetry_over_window(started):
    gpu = FakeGpu(watts=100.0)
    m = started(gpu)
    r = run_window(m, 0.1, lambda: gpu.set_watts(680.0))
    t = r.telemetry
    assert t["sm_clock_mhz_min"] == 1320 and t["sm_clock_mhz_max"] in (1320, 1980)
    assert t["mem_clock_mhz_max"] == 2619 and t["temp_c_max"] == pytest.approx(74.0)
    assert "sw_power_cap" in t["throttle_reasons"] and t["device"] == "Fake H100"
    rows = m.timeline(since=r.t_start)
    assert {"t", "meter", "watts", "energy_j", "sm_clock_mhz", "mem_clock_mhz", "temp_c",
            "throttle_reasons"} <= set(rows[0])
    assert throttle_names(0x44) == ["sw_power_cap", "hw_thermal_slowdown"]


def test_fallback_to_instant_power_then_power_usage(started):
    for instant, source in ((True, "instant-field"), (False, "power-usage")):
        gpu = FakeGpu(watts=250.0, counter=False, instant=instant)
        m = started(gpu)
        assert m.method == "sampled" and m.power_source == source
        gpu.set_watts(250.5)   # values change so updates are distinct
        r = run_window(m, 0.2)
        assert r.method == "sampled" and r.quality == "ok"
        assert r.joules == pytest.approx(250.5 * r.duration_s, rel=0.01)
        assert r.telemetry["sampled_source"] == source


def test_method_and_power_source_can_be_forced(started):
    m = started(FakeGpu(), method="sampled")
    assert m.method == "sampled" and m.power_source == "instant-field"
    m = started(FakeGpu(), method="sampled", power_source="power-usage")
    assert m.power_source == "power-usage"
    m = started(FakeGpu(instant=False), power_source="instant-field")
    assert m.method == "counter" and m.power_source is None   # counter still fine, no sampled twin
    r = run_window(m, 0.05)
    assert r.joules is not None and counter_vs_sampled(r) is None


def test_counter_that_stops_mid_window(started):
    gpu = FakeGpu(watts=300.0)
    m = started(gpu, stall_s=0.1)

    def freeze():
        time.sleep(0.05)
        gpu.frozen_mj = gpu.total_energy_mj()

    r = run_window(m, 0.3, freeze)
    assert r.joules is None and r.quality == "unavailable" and "counter stopped" in r.reason


def test_counter_going_backwards_or_lost_gpu(started):
    gpu = FakeGpu(watts=300.0)
    m = started(gpu)
    r = run_window(m, 0.05, lambda: setattr(gpu, "offset_mj", -10**9))
    assert r.joules is None and "went backwards" in r.reason
    gpu.offset_mj = 0
    r = run_window(m, 0.05, lambda: setattr(gpu, "broken", True))
    assert r.joules is None and "GPU is lost" in r.reason


def test_no_counter_no_power_is_unavailable(started):
    m = started(FakeGpu(counter=False, instant=False, usage=False))
    assert not m.available and "neither" in m.reason
    m2 = started(FakeGpu(counter=False), method="counter")
    assert not m2.available and "Volta" in m2.reason
    r = run_window(m2, 0.01)
    assert r.joules is None and r.quality == "unavailable"


def test_real_pynvml_without_gpu_is_unavailable_not_an_exception():
    """On a machine without an NVIDIA driver, start() says why and carries on."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVML")
    except pynvml.NVMLError:
        pass
    (m,) = build_meters([{"type": "nvml", "index": 0}])
    m.start()
    assert not m.available and "NVML" in m.reason
    r = run_window(m, 0.01)
    assert r.joules is None and r.reason == m.reason
    m.stop()


def test_history_is_bounded_but_open_windows_are_kept(started):
    gpu = FakeGpu(watts=100.0)
    m = started(gpu)
    m.retain_s, m.trim_every = 0.05, 8
    m.begin_window("long")
    time.sleep(0.3)
    m.begin_window("w")
    (r,) = m.end_window("w")
    time.sleep(0.2)
    (long,) = m.end_window("long")
    assert long.quality == "ok" and long.joules == pytest.approx(100 * long.duration_s, rel=0.05)
    t_mark = time.time()
    deadline = t_mark + 5
    while min(row["t"] for row in m.timeline()) < t_mark - 0.1 and time.time() < deadline:
        time.sleep(0.02)                             # trimmed by the poll thread, every 8 samples
    assert min(row["t"] for row in m.timeline()) >= t_mark - 0.1


def test_options_validated():
    with pytest.raises(MeterError, match="10 Hz"):
        build_meters([{"type": "nvml", "period_s": 0.5}])
    with pytest.raises(MeterError, match="method"):
        build_meters([{"type": "nvml", "method": "magic"}])
    with pytest.raises(MeterError, match=r"meters\[0\] \(nvml\): index: expected an integer, got '0'"):
        build_meters([{"type": "nvml", "index": "0"}])


def test_pynvml_wrapper_decodes_values_and_maps_errors(monkeypatch):
    """PynvmlDevice over pynvml with its C entry points replaced (real ctypes structs)."""
    nv = pytest.importorskip("pynvml")
    from harness.meters.nvml import PynvmlDevice

    def field_values(handle, ids):
        vals = (nv.c_nvmlFieldValue_t * len(ids))()
        vals[0].fieldId, vals[0].valueType = ids[0], nv.NVML_VALUE_TYPE_UNSIGNED_INT
        vals[0].nvmlReturn, vals[0].timestamp = nv.NVML_SUCCESS, 1_795_000_000_123_456
        vals[0].value.uiVal = 345_678
        return vals

    def not_supported(*a):
        raise nv.NVMLError(nv.NVML_ERROR_NOT_SUPPORTED)

    def missing_symbol(*a):
        raise nv.NVMLError(nv.NVML_ERROR_FUNCTION_NOT_FOUND)

    calls = []
    for name, fn in {
        "nvmlInit": lambda: calls.append("init"), "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetHandleByIndex": lambda i: f"handle{i}",
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetTotalEnergyConsumption": lambda h: 123_456_789,
        "nvmlDeviceGetFieldValues": field_values,
        "nvmlDeviceGetPowerUsage": lambda h: 70_600,
        "nvmlDeviceGetClockInfo": lambda h, c: {nv.NVML_CLOCK_SM: 1980, nv.NVML_CLOCK_MEM: 2619}[c],
        "nvmlDeviceGetTemperature": not_supported,
        "nvmlDeviceGetCurrentClocksEventReasons": missing_symbol,
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda h: 0x4,
    }.items():
        monkeypatch.setattr(nv, name, fn)
    dev = PynvmlDevice(1)
    assert dev.name() == "NVIDIA H100 80GB HBM3"
    assert dev.total_energy_mj() == 123_456_789
    w, ts = dev.power_instant_w()
    assert w == pytest.approx(345.678) and ts == pytest.approx(1_795_000_000.123456)
    assert dev.power_usage_w() == pytest.approx(70.6)
    assert dev.clocks_mhz() == (1980, 2619)
    with pytest.raises(NvmlUnsupported):
        dev.temperature_c()
    assert dev.throttle_reasons() == 0x4          # fell back to the older symbol
    monkeypatch.setattr(nv, "nvmlDeviceGetPowerUsage", lambda h: (_ for _ in ()).throw(nv.NVMLError(nv.NVML_ERROR_GPU_IS_LOST)))
    with pytest.raises(NvmlDeviceError):
        dev.power_usage_w()
    dev.close()
    assert calls == ["init", "shutdown"]
