"""Command meter polling a real small script (a stand-in for a vendor *-smi tool)."""

import sys
import time

import pytest

from harness.meters import CommandMeter, MeterError, build_meters

SMI_SH = """\
#!/bin/sh
# stand-in for a vendor tool: prints a status block with the board power
if [ -e "$(dirname "$1")/fail" ]; then echo "smi: device lost" >&2; exit 3; fi
echo "NPU 0  Temp: 41 C"
echo "Power: $(cat "$1") W"
"""

SMI_PY = """\
import pathlib, sys
print(f"Power: {pathlib.Path(sys.argv[1]).read_text().strip()} W")
"""


@pytest.fixture
def smi(tmp_path):
    script = tmp_path / "fake_smi.sh"
    script.write_text(SMI_SH)
    state = tmp_path / "watts"
    state.write_text("12.5")
    return {"argv": ["/bin/sh", str(script), str(state)], "state": state, "dir": tmp_path}


def make(smi, **kw):
    return CommandMeter({"argv": smi["argv"], "regex": r"Power:\s*(?P<watts>[\d.]+)\s*W",
                         "period_s": 0.03, **kw})


def test_constant_power_integrated(smi):
    m = make(smi)
    m.start()
    try:
        assert m.available, m.reason
        m.begin_window("w")
        time.sleep(0.4)
        assert m.live_updates("w") >= 1
        (r,) = m.end_window("w")
    finally:
        m.stop()
    assert r.quality == "ok" and r.method == "sampled" and r.scope == "npu-module"
    assert r.meter == "command:sh"
    assert r.joules == pytest.approx(12.5 * r.duration_s, rel=1e-9)
    assert r.n_updates >= 1 and 0.02 < r.update_period_s < 1.0
    assert m.timeline(since=r.t_start)[0]["watts"] == 12.5


def test_power_step_trapezoid(smi):
    m = make(smi, scope="wall", name="smi")
    m.start()
    try:
        m.begin_window("w")
        time.sleep(0.3)
        t_step = time.time()
        smi["state"].write_text("30")
        time.sleep(0.3)
        (r,) = m.end_window("w")
    finally:
        m.stop()
    exact = 12.5 * (t_step - r.t_start) + 30 * (r.t_end - t_step)
    # trapezoid smears the step over one poll interval (~ +-0.05 s x 17.5 W; more on a loaded box)
    assert 12.5 * r.duration_s < r.joules < 30 * r.duration_s
    assert r.joules == pytest.approx(exact, abs=17.5 * 0.3)
    assert r.telemetry["watts_min"] == 12.5 and r.telemetry["watts_max"] == 30.0


def test_python_tool_in_milliwatts(smi):
    script = smi["dir"] / "smi.py"
    script.write_text(SMI_PY)
    smi["state"].write_text("12500")
    m = CommandMeter({"argv": [sys.executable, "-S", str(script), str(smi["state"])],
                      "regex": r"Power: ([\d.]+) W", "scale": 0.001, "period_s": 0.05})
    m.start()
    try:
        m.begin_window("w")
        time.sleep(0.15)
        (r,) = m.end_window("w")
    finally:
        m.stop()
    assert r.joules == pytest.approx(12.5 * r.duration_s)


def test_tool_failing_mid_window_makes_it_unavailable(smi):
    m = make(smi, max_gap_s=0.2)
    m.start()
    try:
        m.begin_window("w")
        time.sleep(0.1)
        (smi["dir"] / "fail").write_text("")
        time.sleep(0.35)
        (smi["dir"] / "fail").unlink()
        (r,) = m.end_window("w")
    finally:
        m.stop()
    assert r.joules is None and r.quality == "unavailable"
    assert "no power sample for" in r.reason and "exited with 3" in r.reason and "device lost" in r.reason


def test_missing_command_or_unmatched_output_is_unavailable(smi):
    m = CommandMeter({"argv": ["/nonexistent/npu-smi", "-q"], "regex": r"(\d+) W"})
    m.start()
    assert not m.available and "command not found: /nonexistent/npu-smi" in m.reason
    m.begin_window("w")
    (r,) = m.end_window("w")
    assert r.joules is None and r.reason == m.reason

    m = CommandMeter({"argv": smi["argv"], "regex": r"Watts=(\d+)"})
    m.start()
    assert not m.available and "does not match regex" in m.reason and "Power: 12.5 W" in m.reason


def test_options_validated():
    with pytest.raises(MeterError, match="regex.*group"):
        build_meters([{"type": "command", "argv": ["x"], "regex": r"\d+ W"}])
    with pytest.raises(MeterError, match="not a valid regular expression"):
        build_meters([{"type": "command", "argv": ["x"], "regex": r"(\d+"}])
    with pytest.raises(MeterError, match=r"meters\[0\] \(command\): argv: expected a list, got str 'npu-smi info'"):
        build_meters([{"type": "command", "argv": "npu-smi info", "regex": r"(\d+)"}])
    with pytest.raises(MeterError, match="period_s"):
        build_meters([{"type": "command", "argv": ["x"], "regex": r"(\d+)", "period_s": 0}])


def _window(m, seconds=0.2):
    m.start()
    try:
        assert m.available, m.reason
        m.begin_window("w")
        time.sleep(seconds)
        readings = m.end_window("w")
    finally:
        m.stop()
    return readings


def test_json_path_with_unit_index_and_devices():
    out = '{"boards": [{"p": {"mw": 12500}}, {"p": {"mw": 7500}}]}'
    argv = [sys.executable, "-S", "-c", f"print({out!r})"]
    (r,) = _window(CommandMeter({"argv": argv, "path": "boards[*].p.mw", "unit": "mW", "period_s": 0.05}))
    assert r.joules == pytest.approx(20.0 * r.duration_s) and r.telemetry["devices"] == 2
    (r,) = _window(CommandMeter({"argv": argv, "path": "boards[1].p.mw", "unit": "mW", "period_s": 0.05}))
    assert r.joules == pytest.approx(7.5 * r.duration_s)
    (r,) = _window(CommandMeter({"argv": argv, "path": "missing[*].p | boards[*].p.mw", "unit": "mW",
                                 "devices": [0], "period_s": 0.05}))
    assert r.joules == pytest.approx(12.5 * r.duration_s)
    m = CommandMeter({"argv": argv, "path": "boards[*].p.watts"})
    m.start()
    assert not m.available and "no key 'watts' after boards[*].p (found: mw)" in m.reason


def test_every_regex_match_is_a_device():
    argv = [sys.executable, "-S", "-c", "print('NPU0 Power: 10 W\\nNPU1 Power: 5.5 W')"]
    (r,) = _window(CommandMeter({"argv": argv, "regex": r"Power: ([\d.]+) W", "period_s": 0.05}))
    assert r.joules == pytest.approx(15.5 * r.duration_s)
    (r,) = _window(CommandMeter({"argv": argv, "regex": r"Power: ([\d.]+) W", "devices": [0], "period_s": 0.05}))
    assert r.joules == pytest.approx(10.0 * r.duration_s)
