"""Meter logs as hostile input (issue 14, item 12): a header without the named columns,
a FIFO, over-long and torn lines, a million-line log at the first read, figures that
overflow. Real files on disk, read by the real LogTail and meters.

Property tests (hypothesis): whatever bytes, rows, columns or torn writes a log holds,
the reader returns samples or raises the meters' typed error (MeterError), never
anything else, and reading it in pieces gives what reading it whole gives.
"""
from __future__ import annotations

import os
from pathlib import Path
import signal
import time

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from harness.meters.base import EnergyReading, MeterError
from harness.meters.external_log import (MAX_LOG_LINE_BYTES, READ_CHUNK, SEEK_MIN_BYTES, BadHeader, CsvLogMeter,
                                         CsvLogParser, LogTail, MalformedLog, PtdaemonLogParser, apportion,
                                         parse_lines)

T0 = 1_700_000_000.0
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def csv_parser(path, columns=None, **kw):
    return lambda: CsvLogParser(str(path), columns or {"timestamp": "timestamp", "watts": "watts"}, **kw)


class alarm:
    """Fail (not hang) if a read blocks: a FIFO opened without O_NONBLOCK waits for a writer."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def boom(*_):
            raise TimeoutError("blocked")
        self.old = signal.signal(signal.SIGALRM, boom)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


# --- the header ---------------------------------------------------------------------------------

def test_header_without_the_column_names_file_line_and_column(tmp_path):
    log = tmp_path / "power.csv"
    log.write_text("# exported by meter\n\ntime,power\n1700000000,10\n1700000001,11\n")
    tail = LogTail(str(log), csv_parser(log, {"timestamp": "time", "watts": "watts"}))
    for _ in range(2):  # the second read fails the same way (it used to say "max() arg is an empty sequence")
        with pytest.raises(BadHeader, match=rf"{log} line 3: expected a header with a column 'watts'.*'time, power'"):
            tail.read()


def test_header_error_is_not_skipped_by_skip_malformed(tmp_path):
    log = tmp_path / "power.csv"
    log.write_text("t,w\n1700000000,10\n")
    tail = LogTail(str(log), csv_parser(log), skip_malformed=True)
    with pytest.raises(BadHeader, match="line 1: expected a header with a column 'timestamp'"):
        tail.read()
    with pytest.raises(BadHeader):
        parse_lines(csv_parser(log)(), log.read_text(), skip_malformed=True)


def test_meter_with_a_bad_header_is_unavailable_with_the_reason(tmp_path):
    log = tmp_path / "power.csv"
    log.write_text("time,watts_total\n" + "".join(f"{T0 + i},{100 + i}\n" for i in range(5)))
    m = CsvLogMeter({"path": str(log), "settle_s": 0, "columns": {"timestamp": "time", "watts": "watts"}})
    m.start()
    assert not m.available and f"{log} line 1" in m.reason and "'watts'" in m.reason
    m.begin_window("w", at=T0 + 1)
    (r,) = m.end_window("w", at=T0 + 3)
    assert r.joules is None and r.quality == "unavailable" and "'watts'" in r.reason


# --- files that are not regular ------------------------------------------------------------------

def test_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "power.csv"
    os.mkfifo(fifo)
    with alarm(10):
        with pytest.raises(MeterError, match="a pipe, device or socket, not a regular file"):
            LogTail(str(fifo), csv_parser(fifo)).read()
        m = CsvLogMeter({"path": str(fifo), "settle_s": 0})
        m.start()
        m.begin_window("w", at=time.time() - 1)
        (r,) = m.end_window("w", at=time.time())
    assert r.joules is None and "not a regular file" in r.reason


def test_directory_is_refused(tmp_path):
    with pytest.raises(MeterError, match="a directory, not a regular file"):
        LogTail(str(tmp_path), csv_parser(tmp_path)).read()


# --- lines: torn, over-long, appended ---------------------------------------------------------------

def test_incremental_reads_parse_only_new_lines_and_hold_a_torn_line(tmp_path):
    log = tmp_path / "power.csv"
    log.write_text("timestamp,watts\n1700000000,10\n17000000")
    tail = LogTail(str(log), csv_parser(log))
    assert [s.watts for s in tail.read()] == [10.0]
    offset = tail.offset
    assert offset == len(b"timestamp,watts\n1700000000,10\n")  # the torn line is not consumed
    with open(log, "a") as f:
        f.write("01,345.5\n1700000002,12\n")
    got = tail.read()
    assert [(s.t, s.watts, s.line) for s in got] == [(T0, 10.0, 2), (T0 + 1, 345.5, 3), (T0 + 2, 12.0, 4)]


def test_overlong_line_strict_names_its_line(tmp_path):
    log = tmp_path / "power.csv"
    log.write_bytes(b"timestamp,watts\n1700000000,10\n" + b"9" * (MAX_LOG_LINE_BYTES + 10) + b"\n1700000002,12\n")
    with pytest.raises(MalformedLog, match=rf"{log} line 3: longer than {MAX_LOG_LINE_BYTES:,} bytes"):
        LogTail(str(log), csv_parser(log)).read()


@pytest.mark.parametrize("length", [MAX_LOG_LINE_BYTES + 1, READ_CHUNK + 12_345, 3 * READ_CHUNK])
def test_overlong_line_skipped_then_reading_goes_on(tmp_path, length):
    log = tmp_path / "power.csv"
    log.write_bytes(b"timestamp,watts\n1700000000,10\n" + b"x" * length + b"\n1700000002,12\n")
    tail = LogTail(str(log), csv_parser(log), skip_malformed=True)
    got = tail.read()
    assert [(s.watts, s.line) for s in got] == [(10.0, 2), (12.0, 4)]
    assert tail.skipped == 1


def test_endless_line_does_not_fill_memory(tmp_path):
    log = tmp_path / "power.csv"
    log.write_bytes(b"timestamp,watts\n" + b"1" * (4 * READ_CHUNK))  # no newline at all
    with pytest.raises(MalformedLog, match="line 2: longer than"):
        LogTail(str(log), csv_parser(log)).read()


# --- a large log at the first read ------------------------------------------------------------------

def write_log(path: Path, n: int, t0: float = T0, period: float = 0.1) -> None:
    with open(path, "w") as f:
        f.write("timestamp,watts\n")
        f.writelines(f"{t0 + i * period:.3f},{100 + i % 50}.5\n" for i in range(n))


def test_first_read_of_a_large_log_starts_near_since_with_exact_lines(tmp_path):
    log = tmp_path / "power.csv"
    n = 300_000
    write_log(log, n)
    assert log.stat().st_size > SEEK_MIN_BYTES
    since = T0 + 29_000.0  # 10,000 samples before the end
    tail = LogTail(str(log), csv_parser(log), since=lambda: since)
    got = tail.read()
    first_needed = 290_000  # sample index whose t is `since` (t = T0 + i * 0.1)
    assert got[0].t <= since and len(got) < 20_000  # not the whole log
    assert [s.t for s in got if s.t >= since][0] == pytest.approx(since)
    # line numbers are the file's own: header is line 1, sample i is on line i + 2
    for s in (got[0], got[len(got) // 2], got[-1]):
        i = round((s.t - T0) / 0.1)
        assert s.line == i + 2
    assert got[-1].line == n + 1 and len([s for s in got if s.t >= since]) == n - first_needed
    with open(log, "a") as f:  # later reads go on from there
        f.write(f"{T0 + n * 0.1:.3f},7\n")
    assert tail.read()[-1].watts == 7.0 and tail.read()[-1].line == n + 2


def test_large_log_without_since_is_read_whole(tmp_path):
    log = tmp_path / "power.csv"
    write_log(log, 200_000)
    got = LogTail(str(log), csv_parser(log)).read()
    assert len(got) == 200_000 and got[0].line == 2


def test_seek_lands_before_since_even_with_garbage_in_the_middle(tmp_path):
    log = tmp_path / "power.csv"
    n = 250_000
    write_log(log, n)
    with open(log, "a") as f:  # a malformed stretch near the end, before `since`
        f.write("garbage\n" * 2000)
        f.writelines(f"{T0 + (n + i) * 0.1:.3f},5\n" for i in range(1000))
    since = T0 + (n + 500) * 0.1
    got = LogTail(str(log), csv_parser(log), skip_malformed=True, since=lambda: since).read()
    wanted = [s for s in got if s.t >= since]
    assert len(wanted) == 500 and wanted[0].t == pytest.approx(since)


# --- overflow ------------------------------------------------------------------------------------

def test_scaled_watts_that_overflow_are_malformed_not_inf(tmp_path):
    parser = CsvLogParser("x.csv", {"timestamp": 0, "watts": 1}, watts_scale=1e12)
    with pytest.raises(MalformedLog, match="line 1: expected a number of watts"):
        parser.feed(1, "1700000000,1e300")


def test_non_finite_joules_never_ok():
    for bad in (float("inf"), float("-inf"), float("nan")):
        r = EnergyReading(meter="m", method="external", scope="wall", joules=bad, duration_s=1.0, n_updates=5,
                          update_period_s=0.1, quality="ok")
        assert r.joules is None and r.quality == "unavailable" and "non-finite" in r.reason


def test_window_far_outside_the_log_is_a_reason_not_an_overflow():
    parser = csv_parser("x.csv", {"timestamp": 0, "watts": 1})()
    samples = [parser.feed(i + 1, f"{T0 + i},{100}") for i in range(10)]
    from harness.meters.external_log import _Uncovered

    for t0, t1 in ((1e300, 1e300 + 1), (-1e300, T0), (T0, float("inf"))):
        with pytest.raises(_Uncovered, match="does not cover the window"):
            apportion(samples, t0, t1, "preceding", 1.0, 3.0)


# --- property tests ------------------------------------------------------------------------------

def read_or_typed_error(path: Path, make_parser, skip: bool):
    t = time.monotonic()
    try:
        with alarm(20):
            out = list(LogTail(str(path), make_parser, skip_malformed=skip).read())
    except MeterError as e:
        out = e
    assert time.monotonic() - t < 20
    return out


@FUZZ
@given(data=st.binary(max_size=4000), skip=st.booleans(), ptd=st.booleans())
def test_random_bytes_give_samples_or_a_typed_error(tmp_path, data, skip, ptd):
    log = tmp_path / "fuzz.log"
    log.write_bytes(data)
    make = (lambda: PtdaemonLogParser(str(log), "UTC", 0.0)) if ptd else csv_parser(log)
    out = read_or_typed_error(log, make, skip)
    assert isinstance(out, (list, MeterError))


cell = st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
                 st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.integers(-10**30, 10**30).map(str),
                 st.sampled_from(["timestamp", "watts", "time", "w", "", "2026-11-30T12:00:00", "1e309", "-1"]))
rows = st.lists(st.lists(cell, min_size=0, max_size=5), max_size=30)


@FUZZ
@given(header=st.lists(st.sampled_from(["timestamp", "watts", "time", "mark", "x"]), max_size=4), body=rows,
       columns=st.sampled_from([None, {"timestamp": "time", "watts": "watts"}, {"timestamp": 0, "watts": 1},
                                {"timestamp": 1, "watts": 0, "mark": 2}]),
       skip=st.booleans(), cut=st.integers(0, 10_000), delimiter=st.sampled_from([",", ";", "\t"]))
def test_random_rows_in_pieces_equal_whole(tmp_path, header, body, columns, skip, cut, delimiter):
    """Any CSV-ish log read whole, and read as a writer tears it (a read between two
    writes at any byte), gives the same samples, or the same typed error."""
    text = "\n".join(delimiter.join(r) for r in [header] + body) + "\n"
    raw = text.encode("utf-8", "surrogatepass")
    make = csv_parser(tmp_path / "x.csv", columns, delimiter=delimiter)
    whole = tmp_path / "whole.csv"
    whole.write_bytes(raw)
    expected = read_or_typed_error(whole, make, skip)

    torn = tmp_path / "torn.csv"
    torn.write_bytes(raw[: cut % (len(raw) + 1)])
    tail = LogTail(str(torn), make, skip_malformed=skip)
    try:
        tail.read()
        with open(torn, "ab") as f:
            f.write(raw[cut % (len(raw) + 1):])
        got = list(tail.read())
    except MeterError as e:
        got = e
    if isinstance(expected, MeterError):
        assert isinstance(got, MeterError) and str(got).split(":")[0] == str(expected).split(":")[0]
    else:
        assert got == expected


# --- benchmark (pytest-benchmark; no speed assertion) -----------------------------------------------

@pytest.fixture(scope="module")
def million_line_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("biglog") / "power.csv"
    write_log(path, 1_000_000)
    return path


def test_bench_first_read_of_a_million_line_log(benchmark, million_line_log):
    """A meter started against a log that already holds a million lines: its first read
    (the one start() makes) and then a window's incremental read."""
    since = T0 + 1_000_000 * 0.1 - 60  # the meter started 60 s before the last sample
    result = benchmark.pedantic(lambda: LogTail(str(million_line_log), csv_parser(million_line_log),
                                                since=lambda: since).read(), rounds=3, iterations=1)
    assert result[-1].line == 1_000_001 and len(result) < 50_000
