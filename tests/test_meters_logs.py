"""External meter logs on disk: generic CSV and SPEC PTDaemon, attributed to
windows by wall-clock time (clock offset, time zones, edge-straddling
samples), plus malformed input fed by hypothesis."""

import threading
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.meters import CsvLogMeter, MeterError, PtdaemonLogMeter, build_meters
from harness.meters.external_log import (LogSample, LogTail, PtdaemonLogParser, apportion,
                                         parse_csv_log, parse_ptdaemon_log)

P = 0.1  # sample period of the fake meter logs


def step_power(t_step, low=100.0, high=300.0):
    """Power that is `low` up to t_step and `high` after (sample grid aligned on t_step)."""
    return lambda t: low if t <= t_step + 1e-9 else high


def expected_step_energy(t0, t1, t_step, low=100.0, high=300.0):
    a = max(0.0, min(t1, t_step) - t0)
    b = max(0.0, t1 - max(t0, t_step))
    return low * a + high * b


def grid(t_step, before=3.0, after=3.0):
    n0, n1 = int(before / P), int(after / P)
    return [t_step + k * P for k in range(-n0, n1 + 1)]


def ptd_line(t, watts, tz=None, mark="run"):
    dt = datetime.fromtimestamp(t, ZoneInfo(tz)) if tz else datetime.fromtimestamp(t)
    ts = dt.strftime("%m-%d-%Y %H:%M:%S.%f")[:-3]
    return f"Time,{ts},Watts,{watts:.3f},Volts,230.100000,Amps,{watts / 230.1:.6f},PF,0.990000,Mark,{mark}\n"


def open_window(meter):
    meter.start()
    meter.begin_window("w")
    return meter._open["w"]


# --- CSV ------------------------------------------------------------------------


def test_csv_straddling_samples_apportioned(tmp_path):
    path = tmp_path / "wall.csv"
    m = CsvLogMeter({"path": str(path), "settle_s": 0})
    t0 = open_window(m)
    t_step = t0 + 0.2
    power = step_power(t_step)
    path.write_text("timestamp,watts\n" + "".join(f"{t:.6f},{power(t)}\n" for t in grid(t_step)))
    time.sleep(0.35)
    (r,) = m.end_window("w")
    assert r.quality == "ok", r.reason
    assert r.method == "external" and r.scope == "wall" and r.meter == "csv-log:wall.csv"
    assert r.joules == pytest.approx(expected_step_energy(r.t_start, r.t_end, t_step), rel=1e-5)
    assert r.update_period_s == pytest.approx(P, rel=1e-3)
    # every sample interval overlapping the window counts, including both straddling ones
    assert r.n_updates == pytest.approx(r.duration_s / P + 1, abs=1)


def test_csv_clock_offset(tmp_path):
    """The meter host's clock runs an hour and half a second ahead of ours."""
    offset = 3600.5
    path = tmp_path / "wall.csv"
    m = CsvLogMeter({"path": str(path), "settle_s": 0, "clock_offset_s": offset,
                     "columns": {"timestamp": "time", "watts": "P_W"}})
    m2 = CsvLogMeter({"path": str(path), "settle_s": 0, "name": "no-offset",
                      "columns": {"timestamp": "time", "watts": "P_W"}})
    t0 = open_window(m)
    open_window(m2)
    t_step = t0 + 0.1
    power = step_power(t_step)
    path.write_text("P_W,time,volts\n" + "".join(f"{power(t)},{t + offset:.6f},230\n" for t in grid(t_step)))
    time.sleep(0.25)
    (r,) = m.end_window("w")
    (r2,) = m2.end_window("w")
    assert r.joules == pytest.approx(expected_step_energy(r.t_start, r.t_end, t_step), rel=1e-5)
    assert r2.joules is None and "does not cover" in r2.reason and "clock_offset_s" in r2.reason


def test_csv_iso_timestamps_with_time_zone(tmp_path):
    """Naive ISO times read in the configured zone; explicit offsets are honoured."""
    path = tmp_path / "w.csv"
    tz = "Asia/Kolkata"  # +05:30, a non-whole-hour offset catches hour-only arithmetic
    m = CsvLogMeter({"path": str(path), "settle_s": 0, "tz": tz})
    t0 = open_window(m)
    t_step = t0 + 0.1
    power = step_power(t_step, 50.0, 70.0)
    lines = []
    for i, t in enumerate(grid(t_step)):
        if i % 2:
            ts = datetime.fromtimestamp(t, ZoneInfo(tz)).replace(tzinfo=None).isoformat()
        else:
            ts = datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
        lines.append(f"{ts},{power(t)}\n")
    path.write_text("timestamp,watts\n" + "".join(lines))
    time.sleep(0.2)
    (r,) = m.end_window("w")
    assert r.joules == pytest.approx(expected_step_energy(r.t_start, r.t_end, t_step, 50.0, 70.0), rel=1e-5)


def test_csv_columns_by_number_epoch_ms_and_milliwatts(tmp_path):
    text = "1700000000000;1000\n1700000000500;3000\n1700000001000;3000\n"
    got = parse_csv_log(text, "mw.csv", columns={"timestamp": 0, "watts": 1}, delimiter=";",
                        timestamp_format="epoch_ms", watts_scale=0.001)
    assert [(s.t, s.watts) for s in got] == [(1700000000.0, 1.0), (1700000000.5, 3.0), (1700000001.0, 3.0)]
    assert [s.line for s in got] == [1, 2, 3]


def test_csv_strptime_format_and_marks(tmp_path):
    text = "# exported by lab meter\nwhen,W,tag\n2026/11/27 18:40:01,10,idle\n2026/11/27 18:40:02,20,load\n"
    got = parse_csv_log(text, "f.csv", columns={"timestamp": "when", "watts": "W", "mark": "tag"},
                        timestamp_format="%Y/%m/%d %H:%M:%S", tz="UTC")
    assert got[0].t == datetime(2026, 11, 27, 18, 40, 1, tzinfo=timezone.utc).timestamp()
    assert [s.mark for s in got] == ["idle", "load"] and got[0].line == 3


# --- PTDaemon ---------------------------------------------------------------


def test_ptdaemon_log_local_time_of_meter_host(tmp_path):
    path = tmp_path / "spl.txt"
    tz = "America/New_York"
    m = PtdaemonLogMeter({"path": str(path), "tz": tz, "settle_s": 0})
    t0 = open_window(m)
    t_step = round(t0, 3) + 0.2   # PTDaemon has millisecond timestamps
    power = step_power(t_step, 345.2, 512.0)
    path.write_text("".join(ptd_line(t, power(t), tz, "ranging" if t < t0 else "cell-3") for t in grid(t_step)))
    time.sleep(0.35)
    (r,) = m.end_window("w")
    assert r.quality == "ok", r.reason
    assert r.meter == "ptdaemon-log:spl.txt" and r.method == "external"
    exp = expected_step_energy(r.t_start, r.t_end, t_step, 345.2, 512.0)
    assert r.joules == pytest.approx(exp, rel=2e-3)
    assert "cell-3" in r.telemetry["marks"]


def test_ptdaemon_parse_example_line():
    (s,) = parse_ptdaemon_log("Time,11-27-2026 18:40:01.123,Watts,345.2,Volts,230.1,Amps,1.5,PF,0.99,Mark,x\n",
                              "spl.txt", tz="UTC")
    assert s.watts == 345.2 and s.mark == "x"
    assert s.t == pytest.approx(datetime(2026, 11, 27, 18, 40, 1, 123000, tzinfo=timezone.utc).timestamp())


def test_invalid_sample_and_gap_make_window_unavailable(tmp_path):
    for kind in ("invalid", "gap"):
        path = tmp_path / f"{kind}.txt"
        m = PtdaemonLogMeter({"path": str(path), "tz": "UTC", "settle_s": 0})
        t0 = open_window(m)
        lines = []
        for t in grid(t0, 2, 2):
            if kind == "gap" and t0 - 0.5 < t < t0 + 0.5:
                continue
            w = -1.0 if kind == "invalid" and abs(t - t0 - 0.1) < 0.05 else 100.0
            lines.append(ptd_line(t, w, "UTC"))
        path.write_text("".join(lines))
        time.sleep(0.2)
        (r,) = m.end_window("w")
        assert r.joules is None and r.quality == "unavailable"
        assert ("invalid meter sample" if kind == "invalid" else "gap of") in r.reason
        assert str(path) in r.reason


def test_log_written_during_the_run_is_waited_for(tmp_path):
    """Another machine appends to the log with a delay: end_window waits (settle_s) for coverage."""
    path = tmp_path / "live.txt"
    path.write_text("")
    stop = threading.Event()

    def writer():
        t = time.time() - 1.0
        with open(path, "a") as f:
            while not stop.is_set():
                while t < time.time() - 0.15:          # the meter host lags 150 ms behind
                    f.write(ptd_line(t, 200.0, "UTC"))
                    t += 0.05
                f.flush()
                time.sleep(0.02)

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    try:
        m = PtdaemonLogMeter({"path": str(path), "tz": "UTC", "settle_s": 2.0})
        open_window(m)
        time.sleep(0.3)
        (r,) = m.end_window("w")
    finally:
        stop.set()
        th.join()
    assert r.quality == "ok", r.reason
    assert r.joules == pytest.approx(200.0 * r.duration_s, rel=0.01)
    assert m.timeline(since=r.t_start)


def test_log_missing_or_not_reaching_window_end(tmp_path):
    m = CsvLogMeter({"path": str(tmp_path / "absent.csv"), "settle_s": 0})
    open_window(m)
    (r,) = m.end_window("w")
    assert r.joules is None and "not found" in r.reason and "absent.csv" in r.reason

    path = tmp_path / "short.csv"
    m = CsvLogMeter({"path": str(path), "settle_s": 0.2})
    t0 = open_window(m)
    path.write_text("timestamp,watts\n" + "".join(f"{t},{5}\n" for t in grid(t0, 2, 0.05)))
    time.sleep(0.3)
    (r,) = m.end_window("w")
    assert r.joules is None and "does not cover the window" in r.reason


def test_malformed_line_in_file_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    m = CsvLogMeter({"path": str(path), "settle_s": 0})
    t0 = open_window(m)
    rows = [f"{t},{10}\n" for t in grid(t0, 1, 1)]
    rows[4] = f"{t0},ten watts\n"
    path.write_text("timestamp,watts\n" + "".join(rows))
    (r,) = m.end_window("w")
    assert r.joules is None
    assert r.reason.startswith(f"{path} line 6: expected a number of watts in column 'watts'")

    m2 = CsvLogMeter({"path": str(path), "settle_s": 0, "skip_malformed": True, "name": "lenient"})
    m2.start()
    m2.begin_window("w")
    time.sleep(0.05)
    (r2,) = m2.end_window("w")
    assert r2.joules is not None and r2.telemetry["skipped_lines"] == 1


def test_time_going_backwards_is_an_error():
    text = "timestamp,watts\n100,1\n99,1\n"
    with pytest.raises(MeterError, match=r"x.csv line 3: timestamp '99' is earlier than line 2's"):
        parse_csv_log(text, "x.csv")


def test_tail_holds_back_a_half_written_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(ptd_line(1.7e9, 100.0, "UTC") + "Time,11-14-2023 22:13:21.000,Watts,34")
    tail = LogTail(str(path), lambda: PtdaemonLogParser(str(path), "UTC", 0.0))
    assert len(tail.read()) == 1
    with open(path, "a") as f:
        f.write("5.2,Volts,230,Amps,1,PF,1,Mark,x\n")
    got = tail.read()
    assert len(got) == 2 and got[1].watts == 345.2 and got[1].line == 2
    path.write_text(ptd_line(1.8e9, 1.0, "UTC"))   # file replaced by a shorter one: start over
    assert [s.watts for s in tail.read()] == [1.0]


def test_apportion_exact_numbers():
    s = [LogSample(10.0, 100.0, 1), LogSample(11.0, 200.0, 2), LogSample(12.0, 400.0, 3)]
    # preceding: (9,10]=100, (10,11]=200, (11,12]=400; window [10.5, 11.25]
    j, used = apportion(s, 10.5, 11.25, "preceding", 1.0, 3.0)
    assert j == pytest.approx(0.5 * 200 + 0.25 * 400) and used == 2
    # following: [10,11)=100, [11,12)=200, [12,13)=400
    j, used = apportion(s, 10.5, 11.25, "following", 1.0, 3.0)
    assert j == pytest.approx(0.5 * 100 + 0.25 * 200) and used == 2


def test_options_validated(tmp_path):
    with pytest.raises(MeterError, match="unknown time zone"):
        build_meters([{"type": "ptdaemon-log", "path": "x", "tz": "Mars/Olympus"}])
    with pytest.raises(MeterError, match=r"meters\[0\] \(csv-log\): path: required key missing"):
        build_meters([{"type": "csv-log"}])
    with pytest.raises(MeterError, match="columns"):
        build_meters([{"type": "csv-log", "path": "x", "columns": {"time": "t"}}])
    with pytest.raises(MeterError, match="scope"):
        build_meters([{"type": "csv-log", "path": "x", "scope": "moon"}])


# --- malformed input: only ever a clear MeterError ---------------------------------

TOKENS = ["Time", "Watts", "Volts", "Amps", "PF", "Mark", "11-27-2026 18:40:01.123", "02-30-2026 25:00:00",
          "345.2", "-1", "nan", "inf", "1e309", "", " ", "x", "12-31-9999 23:59:59.999", "01-01-0001 00:00:00",
          "timestamp", "watts", "1700000000", "2026-11-27T18:40:01Z", "9" * 30, '"', "\x00", "\ufeff"]
line = st.lists(st.sampled_from(TOKENS) | st.text(max_size=8), max_size=12).map(",".join)
log_text = st.lists(line | st.text(max_size=40), max_size=8).map("\n".join)


def _check_error(e: MeterError, path: str):
    msg = str(e)
    assert msg.startswith(path) and " line " in msg and "expected" in msg, msg


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_text)
def test_ptdaemon_malformed_input_gives_meter_error(text):
    try:
        samples = parse_ptdaemon_log(text, "spl.txt", tz="UTC")
    except MeterError as e:
        _check_error(e, "spl.txt")
    else:
        assert all(isinstance(s.t, float) for s in samples)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_text, st.sampled_from([None, "epoch_ms", "%Y-%m-%d %H:%M:%S"]), st.sampled_from([None, "Europe/Berlin"]))
def test_csv_malformed_input_gives_meter_error(text, fmt, tz):
    try:
        samples = parse_csv_log(text, "wall.csv", timestamp_format=fmt, tz=tz)
    except MeterError as e:
        _check_error(e, "wall.csv")
    else:
        assert all(isinstance(s.t, float) for s in samples)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_tail_on_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("b") / "raw.txt"
    path.write_bytes(data)
    tail = LogTail(str(path), lambda: PtdaemonLogParser(str(path), None, 0.0))
    try:
        tail.read()
    except MeterError as e:
        _check_error(e, str(path))
