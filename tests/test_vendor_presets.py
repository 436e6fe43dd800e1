"""Vendor power presets of the `command` meter, each against a fake vendor CLI on PATH.

Each fake tool is a real executable (a Python script written here, found through PATH
like the vendor's binary) that checks it was called with the vendor's documented
arguments and prints the vendor's documented output shape (harness/meters/presets.py
cites the sources) with the watts the test wrote into a state file. The test changes
the watts mid-window and checks the integrated joules against the known power over the
measured window, within a sampling error it computes from the samples' own times.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from harness.meters import CommandMeter, MeterError, build_meters
from harness.meters.presets import ParseError, to_watts

FAKE_SMI = r'''#!{python} -S
import json, os, sys
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
expected = {{
    "furiosa-smi": ["info", "--format", "json"],
    "rbln-smi": ["--json"],
    "nvidia-smi": ["--query-gpu=power.draw", "--format=csv,noheader,nounits"],
    "amd-smi": ["metric", "--power", "--json"],
}}[tool]
if args != expected:
    sys.stderr.write(f"{{tool}}: unrecognized arguments: {{args}}\n")
    sys.exit(64)
with open(os.environ["FAKE_SMI_STATE"]) as f:
    state = json.load(f)
mode = state.get("mode", "ok")
if mode == "fail":
    sys.stderr.write(f"{{tool}}: failed to communicate with the device driver\n")
    sys.exit(3)
if mode == "garbage":
    print("Segmentation fault <html><body>driver error</body>")
    sys.exit(0)
watts = state["watts"]
if tool == "furiosa-smi":
    # furiosa-smi info --format json: a list, one object per NPU; power is a string in W
    print(json.dumps([{{"arch": "rngd", "dev_name": f"npu{{i}}", "device_uuid": f"C0413086-0708-460{{i}}",
                       "device_sn": f"RNG2604010018{{i}}Q", "firmware": "1.7.0, 4dfed1852e7b",
                       "temperature": "40.98°C", "power": f"{{w:g}} W", "core_clock": "1000 MHz",
                       "governor": "OnDemand", "pci_bdf": f"0000:0{{3 + i}}:00.0", "pci_dev": "510:0"}}
                      for i, w in enumerate(watts)], ensure_ascii=False))
elif tool == "rbln-smi":
    # rbln-smi --json: {{"KMD_version", "devices": [...]}}; card_power in microwatts (SDK 3.2.2)
    unit = state.get("rbln_unit", "uW")
    print(json.dumps({{"KMD_version": "3.2.2", "devices": [
        {{"npu": i, "name": "RBLN-CA22", "sid": f"000000002250901{{i}}", "uuid": f"adf1ae64-{{i}}",
         "device": f"rbln{{i}}", "status": "normal", "fw_ver": "3.2.2",
         "pci": {{"dev": "0x1220", "bus_id": f"0000:a{{i}}:00.0", "numa_node": "1", "link_speed": "32.0GT/s",
                 "link_width": "8"}},
         "temperature": "38C",
         "card_power": f"{{round(w * 1e6)}}uW" if unit == "uW" else f"{{w:g}}W",
         "pstate": "P14", "memory": {{"used": "0", "total": "16877879296"}}, "util": "0.0",
         "board_info": "0005000c", "location": 5}} for i, w in enumerate(watts)], "contexts": []}}))
elif tool == "nvidia-smi":
    # --format=csv,noheader,nounits: one line per GPU, watts
    for w in watts:
        print(w if isinstance(w, str) else f"{{w:.2f}}")
elif tool == "amd-smi":
    gpus = [{{"gpu": i, "power": {{"socket_power": w if w == "N/A" else {{"value": w, "unit": "W"}},
                                  "gfx_voltage": {{"value": 812, "unit": "mV"}}, "soc_voltage": "N/A",
                                  "mem_voltage": "N/A", "throttle_status": "UNTHROTTLED",
                                  "power_management": "ENABLED"}}}} for i, w in enumerate(watts)]
    # ROCm 6 prints the list; ROCm 7 wraps it in gpu_data
    print(json.dumps({{"gpu_data": gpus}} if state.get("amd_shape") == "rocm7" else gpus, indent=2))
'''

TOOLS = ("furiosa-smi", "rbln-smi", "nvidia-smi", "amd-smi")


class FakeSmi:
    """The fake tools on PATH and the state file they read."""

    def __init__(self, root: Path, monkeypatch):
        self.bin = root / "bin"
        self.bin.mkdir()
        for tool in TOOLS:
            p = self.bin / tool
            p.write_text(FAKE_SMI.format(python=sys.executable))
            p.chmod(0o755)
        self.state_path = root / "state.json"
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_SMI_STATE", str(self.state_path))

    def set(self, **state) -> float:
        """Write the state atomically (a tool never reads half a file); the instant it took effect."""
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)
        return time.time()


@pytest.fixture
def smi(tmp_path, monkeypatch):
    return FakeSmi(tmp_path, monkeypatch)


def _window(meter: CommandMeter, seconds: float, step=None):
    """A real meter window [t0, t1]; `step()` runs halfway and returns its instant."""
    meter.start()
    try:
        assert meter.available, meter.reason
        t0 = time.time()
        meter.begin_window("w", at=t0)
        t_step = None
        time.sleep(seconds / 2)
        if step is not None:
            t_step = step()
        time.sleep(seconds / 2)
        t1 = time.time()
        readings = meter.end_window("w", at=t1)
        samples = meter.timeline()
    finally:
        meter.stop()
    return t0, t1, t_step, readings, samples


CASES = [  # preset, extra state, scope
    ("furiosa-smi", {}, "npu-module"),
    ("rbln-smi", {"rbln_unit": "uW"}, "npu-module"),
    ("rbln-smi", {"rbln_unit": "W"}, "npu-module"),
    ("nvidia-smi", {}, "gpu-board"),
    ("amd-smi", {"amd_shape": "rocm6"}, "gpu-board"),
    ("amd-smi", {"amd_shape": "rocm7"}, "gpu-board"),
]


@pytest.mark.parametrize("preset,extra,scope", CASES, ids=[f"{c[0]}-{next(iter(c[1].values()), 'x')}" for c in CASES])
def test_preset_integrates_known_watts_over_the_measured_window(smi, preset, extra, scope):
    before, after = [12.25, 30.5], [40.75, 55.0]  # two devices, summed: 42.75 W then 95.75 W
    smi.set(watts=before, **extra)
    meter = CommandMeter({"preset": preset, "period_s": 0.05})
    t0, t1, t_step, (r,), samples = _window(meter, 0.8, step=lambda: smi.set(watts=after, **extra))

    w_a, w_b = sum(before), sum(after)
    exact = w_a * (t_step - t0) + w_b * (t1 - t_step)
    # The meter draws a line between the last sample that read the old watts (t_a) and the
    # first that read the new ones (t_b); it is exact outside [min(t_a, t_step), max(t_b,
    # t_step)], so its error is at most |w_b - w_a| x that span.
    t_a = max(s["t"] for s in samples if s["watts"] == pytest.approx(w_a))
    t_b = min(s["t"] for s in samples if s["watts"] == pytest.approx(w_b))
    bound = abs(w_b - w_a) * (max(t_b, t_step) - min(t_a, t_step)) + 1e-6 * exact
    assert r.joules == pytest.approx(exact, abs=bound), (r.joules, exact, bound)
    assert w_a * (t1 - t0) < r.joules < w_b * (t1 - t0)
    assert r.method == "sampled" and r.scope == scope and r.quality == "ok"
    assert r.meter == f"command:{preset}" and r.duration_s == pytest.approx(t1 - t0)
    inside = sorted(s["t"] for s in samples if t0 < s["t"] < t1)
    assert r.n_updates == len(inside) >= 2  # ~0.13 s per poll of a Python fake on this loaded 2-core box
    gaps = sorted(b - a for a, b in zip(inside, inside[1:]))
    assert r.update_period_s == pytest.approx(gaps[len(gaps) // 2] if len(gaps) % 2 else
                                              (gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2]) / 2)
    assert r.telemetry["devices"] == 2 and r.telemetry["preset"] == preset
    assert r.telemetry["watts_min"] == pytest.approx(w_a) and r.telemetry["watts_max"] == pytest.approx(w_b)


def test_devices_pick_positions_and_each_gives_one_reading_per_device(smi):
    smi.set(watts=[10.5, 20.25, 33.0])
    t0, t1, _, (only,), _ = _window(CommandMeter({"preset": "rbln-smi", "devices": [1], "period_s": 0.05}), 0.3)
    assert only.joules == pytest.approx(20.25 * (t1 - t0), rel=1e-6)

    t0, t1, _, readings, samples = _window(CommandMeter({"preset": "rbln-smi", "combine": "each",
                                                         "devices": [0, 2], "period_s": 0.05}), 0.3)
    assert [r.meter for r in readings] == ["command:rbln-smi[0]", "command:rbln-smi[2]"]
    assert readings[0].joules == pytest.approx(10.5 * (t1 - t0), rel=1e-6)
    assert readings[1].joules == pytest.approx(33.0 * (t1 - t0), rel=1e-6)
    assert {s["meter"] for s in samples} == {"command:rbln-smi[0]", "command:rbln-smi[2]"}

    t0, t1, _, readings, _ = _window(CommandMeter({"preset": "nvidia-smi", "combine": "each", "period_s": 0.05}), 0.3)
    assert [r.meter for r in readings] == [f"command:nvidia-smi[{i}]" for i in range(3)]
    assert [r.joules / (t1 - t0) for r in readings] == pytest.approx([10.5, 20.25, 33.0], rel=1e-6)


@pytest.mark.parametrize("preset,state,words", [
    ("rbln-smi", {"mode": "garbage", "watts": [1.0]}, ["output of `rbln-smi --json`", "output is not JSON",
                                                       "Segmentation fault"]),
    ("furiosa-smi", {"mode": "fail", "watts": [1.0]}, ["`furiosa-smi info --format json` exited with 3",
                                                       "failed to communicate with the device driver"]),
    ("amd-smi", {"watts": ["N/A"]}, ["device 0 at '[*].power.socket_power': expected a power figure, got 'N/A'"]),
    ("nvidia-smi", {"watts": ["[N/A]"]}, ["line 1", "expected a power figure, got '[N/A]'"]),
    ("rbln-smi", {"watts": [5.0], "rbln_unit": "uW"}, None),  # a good one, with a missing device position
])
def test_bad_output_gives_a_clear_reason(smi, preset, state, words):
    smi.set(**state)
    opts = {"preset": preset} if words else {"preset": preset, "devices": [0, 3]}
    m = CommandMeter(opts)
    m.start()
    m.stop()
    assert not m.available
    for w in words or ["device position(s) [3] not in the output (1 device(s))"]:
        assert w in m.reason, m.reason
    m.begin_window("w")
    (r,) = m.end_window("w")
    assert r.joules is None and r.quality == "unavailable" and r.reason == m.reason


def test_tool_failing_after_start_is_a_failed_poll_with_the_reason(smi):
    smi.set(watts=[50.0])
    m = CommandMeter({"preset": "furiosa-smi", "period_s": 0.05, "max_gap_s": 0.2})
    m.start()
    try:
        m.begin_window("w")
        time.sleep(0.1)
        smi.set(watts=[50.0, 60.0])  # a second device appears: the count no longer matches
        time.sleep(0.4)
        smi.set(watts=[50.0])
        (r,) = m.end_window("w")
    finally:
        m.stop()
    assert r.joules is None and "no power sample for" in r.reason
    assert "2 device(s) in the output, 1 at the first poll" in r.reason


def test_missing_tool_names_the_preset(smi, monkeypatch):
    monkeypatch.setenv("PATH", str(smi.bin.parent / "empty"))
    m = CommandMeter({"preset": "nvidia-smi"})
    m.start()
    assert not m.available
    assert "command not found: nvidia-smi (preset nvidia-smi: is the vendor tool installed and on PATH?)" in m.reason


def test_preset_options_validated():
    with pytest.raises(MeterError, match=r"preset: unknown preset 'rbln_smi' \(did you mean 'rbln-smi'\?\)"):
        build_meters([{"type": "command", "preset": "rbln_smi"}])
    with pytest.raises(MeterError, match=r"unit: expected one of W, mW"):
        build_meters([{"type": "command", "preset": "rbln-smi", "unit": "watts"}])
    with pytest.raises(MeterError, match=r"path: JSON path 'devices\[x\]\.p'"):
        build_meters([{"type": "command", "argv": ["x"], "path": "devices[x].p"}])
    with pytest.raises(MeterError, match=r"devices: expected distinct positions"):
        build_meters([{"type": "command", "preset": "amd-smi", "devices": [0, 0]}])
    with pytest.raises(MeterError, match=r"combine: expected one of sum, each"):
        build_meters([{"type": "command", "preset": "amd-smi", "combine": "mean"}])
    with pytest.raises(MeterError, match=r"argv: expected a non-empty list of strings \(or a `preset:`\)"):
        build_meters([{"type": "command", "regex": r"(\d+)"}])
    # a preset's fields can be overridden: the user's argv (a wrapper script) and scope win
    (m,) = build_meters([{"type": "command", "preset": "rbln-smi", "argv": ["ssh", "npu-host", "rbln-smi", "--json"],
                          "scope": "wall", "name": "remote"}])
    assert m.options.argv[0] == "ssh" and m.options.path == "devices[*].card_power" and m.scope == "wall"
    assert m.name == "remote"


@pytest.mark.parametrize("value,unit,watts", [
    ("35.2", "W", 35.2), ("35.2 W", "W", 35.2), ("38 W", "W", 38.0), ("18810987uW", "W", 18.810987),
    ("17521800 µW", "W", 17.5218), ("1500mW", "W", 1.5), ("1.5kW", "W", 1500.0), ("150W/250W", "W", 150.0),
    (12.5, "W", 12.5), (12500, "mW", 12.5), ({"value": 410, "unit": "W"}, "W", 410.0),
    ({"value": 75000, "unit": "mW"}, "W", 75.0), ("0", "W", 0.0),
])
def test_to_watts_reads_the_units_tools_print(value, unit, watts):
    assert to_watts(value, unit) == pytest.approx(watts, rel=1e-12)


@pytest.mark.parametrize("value", ["N/A", "[Not Supported]", "-3 W", "nan", "inf W", "12 V", "", True, None, [1]])
def test_to_watts_refuses_what_is_not_a_power(value):
    with pytest.raises(ParseError):
        to_watts(value)


# --- the recipe suites (README "Recipes: NPU and GPU servers") ---------------------------

RECIPES = {"rngd": "furiosa-smi", "rebellions": "rbln-smi", "gpu-vllm": "nvidia-smi"}


def test_recipe_suites_load_and_run_the_same_load():
    from harness.config import SUITES_DIR, load_plan

    plans = {name: load_plan(SUITES_DIR / f"{name}.yaml") for name in RECIPES}
    shapes = set()
    for name, plan in plans.items():
        (b,) = plan.suite.backends
        assert b.type == "openai-http" and plan.scenario.name == "concurrency"
        assert b.options["api"] == "completions"
        (meter,) = build_meters(plan.suite.meters)
        assert isinstance(meter, CommandMeter) and meter.options.preset == RECIPES[name]
        assert meter.method == "sampled"
        # what `harness compare` matches cells on must be the same in the three suites
        shapes.add((tuple((c.model, c.dtype, c.batch, c.prompt_len, c.gen_len, c.scenario) for c in plan.cells),
                    repr(plan.scenario.config)))
        assert len(plan.cells) == 3
    assert len(shapes) == 1, shapes


def test_suite_with_a_bad_preset_is_refused_with_its_line(tmp_path):
    from harness.config import SUITES_DIR, load_plan
    from harness.schema import ConfigError

    text = (SUITES_DIR / "rebellions.yaml").read_text().replace("preset: rbln-smi}", "preset: rbln-smi, devices: [-1]}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "devices: [-1]" in ln)
    with pytest.raises(ConfigError, match=rf"bad.yaml:{line}: meters\[0\].devices\[0\]: expected a value from 0 to 65535, got -1"):
        load_plan(bad)
