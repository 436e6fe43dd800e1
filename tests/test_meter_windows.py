"""Every meter sees the same window, and a meter that cannot read does not size them.

Real files written in real time by background threads (tests/power_logs.py), a real
vendor-CLI subprocess, the real window engine. The work sleeps, so the truth is the
host time it ran: a meter whose window grew by another meter's wait for its log
reports J/token high by that wait.
"""

import logging
import sys
import time

import pytest

from harness.energy import EnergySettings, measure_cell_energy
from harness.meters import CommandMeter, CsvLogMeter, PtdaemonLogMeter

from .power_logs import PowerLog

PROMPT_TOKENS, GEN_TOKENS, SEQS = 64, 256, 4


class SleepWork:
    """Work that takes known host time; remembers when each window's work ran."""

    def __init__(self, seconds: float = 0.1):
        self.seconds = seconds
        self.spans: dict[str, list[float]] = {}

    def __call__(self, phase: str):
        def work():
            t = time.time()
            time.sleep(self.seconds)
            span = self.spans.setdefault(phase, [t, t])
            span[1] = time.time()
        return work


def measure(meters, settings):
    work = SleepWork()
    try:
        for m in meters:
            m.start()
        res = measure_cell_energy(meters, work("prefill"), work("generation"), PROMPT_TOKENS, GEN_TOKENS,
                                  settings, sequences=SEQS)
    finally:
        for m in meters:
            m.stop()
    return res, work


def check_same_window_and_watts(res, work, watts: dict[str, float]):
    """Every meter's windows are the cell's windows, and its figures are watts x the time
    the work ran: (meter, expected J/token, reported J/token) per meter."""
    windows = res.record.windows
    rows = []
    for e in res.record.meters:
        assert e.quality == "ok", (e.meter, e.reason)
        for phase, w in e.windows.items():
            assert (w["t_start"], w["t_end"]) == (windows[phase]["t_start"], windows[phase]["t_end"]), e.meter
            assert w["gross_j"] == pytest.approx(watts[e.meter] * w["duration_s"], rel=0.02), (e.meter, phase)
        gen = work.spans["generation"]
        repeats = e.windows["generation"]["repeats"]
        expected = watts[e.meter] * (gen[1] - gen[0]) / repeats / GEN_TOKENS
        assert e.j_per_generated_token_e2e_gross == pytest.approx(expected, rel=0.02), e.meter
        rows.append((e.meter, expected, e.j_per_generated_token_e2e_gross))
    return rows


SETTINGS = EnergySettings(idle_s=0.5, min_window_s=1.0, min_updates=5)


def test_two_log_meters_one_flushing_late_see_the_same_window(tmp_path):
    prompt, late = tmp_path / "a.csv", tmp_path / "b.csv"
    writers = [PowerLog(prompt, 50.0), PowerLog(late, 120.0, lag_s=1.0)]
    for w in writers:
        w.start()
    time.sleep(1.3)   # both logs reach back before the first window
    # the late log first: closed one after the other, its wait would pad the prompt log's window
    meters = [CsvLogMeter({"path": str(late), "name": "late"}), CsvLogMeter({"path": str(prompt), "name": "prompt"})]
    try:
        res, work = measure(meters, SETTINGS)
    finally:
        for w in writers:
            w.stop()
    rows = check_same_window_and_watts(res, work, {"prompt": 50.0, "late": 120.0})
    print(rows)


def test_three_late_meters_log_ptdaemon_and_cli(tmp_path):
    csv_log, ptd_log = tmp_path / "wall.csv", tmp_path / "spl.txt"
    writers = [PowerLog(csv_log, 50.0, lag_s=0.6), PowerLog(ptd_log, 120.0, lag_s=1.0, fmt="ptdaemon")]
    for w in writers:
        w.start()
    time.sleep(1.3)
    meters = [PtdaemonLogMeter({"path": str(ptd_log), "tz": "UTC", "name": "ptd"}),
              CsvLogMeter({"path": str(csv_log), "name": "wall"}),
              CommandMeter({"argv": [sys.executable, "-S", "-c", "print('Power: 300.0 W')"],
                            "regex": r"Power: (\d+\.?\d*) W", "period_s": 0.1, "name": "cli"})]
    try:
        t0 = time.time()
        res, work = measure(meters, SETTINGS)
        elapsed = time.time() - t0
    finally:
        for w in writers:
            w.stop()
    rows = check_same_window_and_watts(res, work, {"wall": 50.0, "ptd": 120.0, "cli": 300.0})
    print(rows)
    # the late meters wait side by side: the cell does not pay the sum of their waits
    # (4 windows x (0.6 + 1.0) s) on top of the windows themselves
    windows_s = sum(w["duration_s"] for w in res.record.windows.values())
    assert elapsed - windows_s < 4 * 1.6


def test_unreadable_strict_log_is_unavailable_once_and_sizes_no_window(tmp_path, caplog):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    bad.write_text("timestamp,watts\n1764500000.0,100\n1764500000.5,lots\n")
    writer = PowerLog(good, 80.0)
    writer.start()
    time.sleep(0.5)
    meters = [CsvLogMeter({"path": str(bad), "name": "bad"}), CsvLogMeter({"path": str(good), "name": "good"})]
    s = EnergySettings(idle_s=0.3, min_window_s=0.3, min_updates=5)
    try:
        with caplog.at_level(logging.WARNING, logger="harness.meters"):
            res, _ = measure(meters, s)
    finally:
        writer.stop()
    # sized by the good log (5 x 0.05 s < 0.3 s), not by 5 x the unreadable log's 1 s fallback
    for phase, w in res.record.windows.items():
        assert w["target_s"] == pytest.approx(0.3), phase
        assert w["duration_s"] < 1.5, phase
    by_name = {e.meter: e for e in res.record.meters}
    assert by_name["good"].quality == "ok"
    bad_e = by_name["bad"]
    assert bad_e.quality == "unavailable" and bad_e.j_per_generated_token_gross is None
    assert f"{bad} line 3" in bad_e.reason and "'lots'" in bad_e.reason
    said = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert len(said) == 1 and "unavailable" in said[0].getMessage()
