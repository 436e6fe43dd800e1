"""Energy from another machine's power-meter log: a generic CSV and the SPEC
PTDaemon sample log (the format MLPerf Power uses).

Why: an NPU or PIM card without software telemetry can only be measured at the
wall, by a meter that another machine logs. That log is written while the run
goes on and may be readable only after a window closes, so this meter records
window edges by this machine's wall clock (``time.time()``) and, at
``end_window`` (waiting up to ``settle_s`` for the log to reach the window's
end), attributes samples to the window by timestamp.

Time: a log timestamp is converted to this machine's clock as
``t = log_time - clock_offset_s``, where ``clock_offset_s`` is how far the
meter host's clock is ahead of this one (measure it with NTP/chrony, or by a
mark), or ``auto``: estimated from a power signature the harness produces
before the cells (harness.meters.clock, which also flags every figure of a
meter whose configured offset is off by more than half its sample period).
Timestamps without a zone are read in ``tz`` (an IANA name, e.g.
"UTC", "Europe/Berlin"; default: this machine's local zone). PTDaemon writes
its host's local time.

Attribution: a sample is the average power over the interval that ends at its
timestamp (``sample_covers: preceding``, PTDaemon's behaviour; a power
analyser reports the mean over its last update interval) or that starts at it
(``following``). A sample whose interval straddles a window edge contributes
in proportion to the overlap. A window the log does not cover, or that
contains a gap longer than ``max_gap_s`` or an invalid sample (PTDaemon writes
-1 for one), is unavailable, with the reason.

Parsing is strict: a malformed line raises :class:`MalformedLog` naming the
file, the line and what was expected, unless ``skip_malformed`` is set, in
which case such lines are counted and skipped. A strict meter that met a
malformed line can never read past it, so it is marked unavailable once, with
that reason, and plans no window (a log that is merely missing may still
appear, so that stays a per-window reason).
"""

import copy
import csv
import math
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, ClassVar, NamedTuple, Optional, Union
from zoneinfo import ZoneInfo

from harness.schema import regular_file_problem

from .base import (EnergyReading, Meter, MeterError, check_positive, check_scope, log,
                   median_interval)

PTD_TIME_FORMATS = ("%m-%d-%Y %H:%M:%S.%f", "%m-%d-%Y %H:%M:%S")
#: a meter host's clock a day or more off this one is a wrong setting (or the wrong
#: zone), not skew: bounded so that window arithmetic stays in range (1e300 overflowed)
MAX_OFFSET_S = 86400.0
_EPOCH_MAX = 1e11  # seconds; beyond this a number is probably milliseconds


class MalformedLog(MeterError):
    """A line of the log is not what its format says: a strict meter cannot read past it."""


class BadHeader(MalformedLog):
    """The CSV header lacks a named column: no line of the log can be read, so this is
    never skipped, ``skip_malformed`` or not."""


class LogSample(NamedTuple):
    """One log line: time on this machine's clock, watts (None: invalid sample)."""

    t: float
    watts: Optional[float]
    line: int
    mark: Optional[str] = None


def _zone(tz: Optional[str]) -> Optional[ZoneInfo]:
    if tz is None:
        return None
    try:
        return ZoneInfo(tz)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError for odd keys
        raise MeterError(f"option 'tz': unknown time zone {tz!r} (expected an IANA name such as "
                         f"'UTC' or 'Europe/Berlin')") from None


def _to_unix(dt: datetime, zone: Optional[ZoneInfo]) -> float:
    """Naive datetimes are in ``zone`` (None: this machine's local zone)."""
    if dt.tzinfo is None and zone is not None:
        dt = dt.replace(tzinfo=zone)
    return dt.timestamp()


def _finite(text: str) -> float:
    v = float(text.strip())
    if not math.isfinite(v):
        raise ValueError("not finite")
    return v


class _LineParser:
    """Shared state of both formats: file name, zone, clock offset, time order."""

    def __init__(self, path: str, tz: Optional[str], clock_offset_s: float):
        self.path = path
        self.zone = _zone(tz)
        self.offset = float(clock_offset_s)
        self.last: Optional[tuple[float, int]] = None  # (t, line) of the previous sample

    def fail(self, lineno: int, what: str) -> MalformedLog:
        return MalformedLog(f"{self.path} line {lineno}: {what}")

    def _ordered(self, t: float, lineno: int, raw_ts: str) -> float:
        if self.last is not None and t < self.last[0]:
            raise self.fail(lineno, f"timestamp {raw_ts!r} is earlier than line {self.last[1]}'s; "
                                    f"expected samples in time order (a daylight-saving change? set 'tz')")
        self.last = (t, lineno)
        return t

    def feed(self, lineno: int, line: str) -> Optional[LogSample]:
        raise NotImplementedError


class PtdaemonLogParser(_LineParser):
    """``Time,MM-DD-YYYY HH:MM:SS.fff,Watts,<w>,Volts,<v>,Amps,<a>,PF,<pf>,Mark,<m>``."""

    def feed(self, lineno: int, line: str) -> Optional[LogSample]:
        line = line.strip().lstrip("\ufeff")
        if not line:
            return None
        fields = [f.strip() for f in line.split(",")]
        if fields[0] != "Time" or len(fields) < 2:
            raise self.fail(lineno, f"expected a PTDaemon sample line 'Time,<MM-DD-YYYY HH:MM:SS.fff>,"
                                    f"Watts,<number>,...', got {line[:60]!r}")
        raw_ts = fields[1]
        dt = None
        for fmt in PTD_TIME_FORMATS:
            try:
                dt = datetime.strptime(raw_ts, fmt)
                break
            except ValueError:
                continue
        if dt is None:
            raise self.fail(lineno, f"expected a timestamp like '11-27-2026 18:40:01.123' after 'Time,', "
                                    f"got {raw_ts[:40]!r}")
        rest = fields[2:]
        if len(rest) % 2:
            raise self.fail(lineno, f"expected 'name,value' pairs after the timestamp; "
                                    f"{rest[-1][:20]!r} has no value")
        pairs = list(zip(rest[0::2], rest[1::2]))
        watts_vals = [v for k, v in pairs if k == "Watts"]
        if len(watts_vals) != 1:
            raise self.fail(lineno, "expected exactly one 'Watts,<number>' pair" +
                            (" (multi-channel logs are not supported: log one channel)" if watts_vals else ""))
        try:
            watts = _finite(watts_vals[0])
        except ValueError:
            raise self.fail(lineno, f"expected a number after 'Watts', got {watts_vals[0][:20]!r}") from None
        mark = next((v for k, v in pairs if k == "Mark"), None)
        try:
            t = _to_unix(dt, self.zone) - self.offset
        except (ValueError, OverflowError, OSError):
            raise self.fail(lineno, f"expected a representable date, got {raw_ts!r}") from None
        t = self._ordered(t, lineno, raw_ts)
        return LogSample(t, watts if watts >= 0 else None, lineno, mark)


class CsvLogParser(_LineParser):
    """A CSV with (at least) a timestamp and a watts column, mapped by ``columns``.

    ``columns`` maps "timestamp" and "watts" to header names (then the first
    non-comment line is the header) or to 0-based column numbers (then there
    is no header). Timestamps: unix seconds, ISO 8601, "epoch_ms" numbers, or
    a ``strptime`` format given as ``timestamp_format``.
    """

    def __init__(self, path: str, columns: dict, tz: Optional[str] = None, clock_offset_s: float = 0.0,
                 timestamp_format: Optional[str] = None, delimiter: str = ",", watts_scale: float = 1.0):
        super().__init__(path, tz, clock_offset_s)
        for key in ("timestamp", "watts"):
            if key not in columns:
                raise MeterError(f"option 'columns' must map {key!r} to a column name or number "
                                 f"(got keys {sorted(columns)})")
            v = columns[key]
            if isinstance(v, bool) or not isinstance(v, (str, int)) or (isinstance(v, int) and v < 0):
                raise MeterError(f"option 'columns.{key}' must be a header name or a column number >= 0, "
                                 f"got {v!r}")
        if len(delimiter) != 1:
            raise MeterError(f"option 'delimiter' must be one character, got {delimiter[:20]!r}")
        check_positive("watts_scale", watts_scale)
        self.columns = {"timestamp": columns["timestamp"], "watts": columns["watts"]}
        self.mark_col = columns.get("mark")
        self.needs_header = any(isinstance(v, str) for v in (*self.columns.values(), self.mark_col)
                                if v is not None)
        self.index: Optional[dict] = None if self.needs_header else dict(self.columns)
        if self.mark_col is not None and not self.needs_header:
            self.index["mark"] = self.mark_col
        self.fmt = timestamp_format
        self.delimiter = delimiter
        self.scale = watts_scale

    def _split(self, lineno: int, line: str) -> list[str]:
        try:
            rows = list(csv.reader([line], delimiter=self.delimiter))
        except csv.Error as e:
            raise self.fail(lineno, f"expected a CSV row: {e}") from None
        return [c.strip() for c in rows[0]] if rows else []

    def _timestamp(self, lineno: int, text: str) -> float:
        fmt = self.fmt
        try:
            if fmt in (None, "epoch_s", "epoch_ms"):
                try:
                    v = _finite(text)
                except ValueError:
                    if fmt is not None:
                        raise
                    dt = datetime.fromisoformat(text)
                    return _to_unix(dt, self.zone)
                if fmt == "epoch_ms":
                    v /= 1000.0
                if not 0 <= v < _EPOCH_MAX:
                    raise self.fail(lineno, f"expected unix seconds between 1970 and year 5138, got "
                                            f"{text[:30]!r} (milliseconds? set timestamp_format: epoch_ms)")
                return v
            return _to_unix(datetime.strptime(text, fmt), self.zone)
        except MeterError:
            raise
        except (ValueError, OverflowError, OSError, TypeError):
            want = {None: "unix seconds or an ISO 8601 time", "epoch_s": "unix seconds",
                    "epoch_ms": "unix milliseconds"}.get(fmt, f"a time in the format {fmt!r}")
            raise self.fail(lineno, f"expected {want} in column {self.columns['timestamp']!r}, "
                                    f"got {text[:30]!r}") from None

    def feed(self, lineno: int, line: str) -> Optional[LogSample]:
        line = line.strip().lstrip("\ufeff")
        if not line or line.startswith("#"):
            return None
        cells = self._split(lineno, line)
        if self.index is None:  # this is the header
            # built aside and kept only whole: a header that failed must fail again on the
            # next read, not leave a half index that makes data of the header line
            index = {}
            wanted = dict(self.columns)
            if self.mark_col is not None:
                wanted["mark"] = self.mark_col
            for key, col in wanted.items():
                if isinstance(col, int):
                    index[key] = col
                elif col in cells:
                    index[key] = cells.index(col)
                else:
                    raise BadHeader(f"{self.path} line {lineno}: expected a header with a column {col[:60]!r} "
                                    f"(for {key}); the header is {', '.join(cells)[:120]!r}")
            self.index = index
            return None
        need = max(self.index.values()) + 1
        if len(cells) < need:
            raise self.fail(lineno, f"expected at least {need} columns, got {len(cells)}")
        raw_ts, raw_w = cells[self.index["timestamp"]], cells[self.index["watts"]]
        t = self._timestamp(lineno, raw_ts) - self.offset
        try:
            watts = _finite(raw_w) * self.scale
            if not math.isfinite(watts):  # a finite figure times watts_scale can overflow
                raise ValueError("not finite")
        except ValueError:
            raise self.fail(lineno, f"expected a number of watts in column {self.columns['watts']!r}, "
                                    f"got {raw_w[:30]!r}") from None
        mark = cells[self.index["mark"]] if "mark" in self.index and self.index["mark"] < len(cells) else None
        t = self._ordered(t, lineno, raw_ts)
        return LogSample(t, watts if watts >= 0 else None, lineno, mark)


def parse_lines(parser: _LineParser, text: str, first_line: int = 1,
                skip_malformed: bool = False) -> tuple[list[LogSample], int]:
    """Parse ``text`` line by line; returns (samples, number of skipped lines)."""
    out, skipped = [], 0
    for i, line in enumerate(text.splitlines()):
        try:
            s = parser.feed(first_line + i, line)
        except MeterError as e:
            if not skip_malformed or isinstance(e, BadHeader):
                raise
            skipped += 1
            continue
        if s is not None:
            out.append(s)
    return out, skipped


def parse_ptdaemon_log(text: str, path: str = "<ptdaemon log>", tz: Optional[str] = None,
                       clock_offset_s: float = 0.0) -> list[LogSample]:
    """All samples of a PTDaemon log given as text (raises MeterError on a bad line)."""
    return parse_lines(PtdaemonLogParser(path, tz, clock_offset_s), text)[0]


def parse_csv_log(text: str, path: str = "<csv log>", columns: Optional[dict] = None,
                  tz: Optional[str] = None, clock_offset_s: float = 0.0,
                  timestamp_format: Optional[str] = None, delimiter: str = ",",
                  watts_scale: float = 1.0) -> list[LogSample]:
    """All samples of a CSV power log given as text (raises MeterError on a bad line)."""
    parser = CsvLogParser(path, columns or {"timestamp": "timestamp", "watts": "watts"}, tz,
                          clock_offset_s, timestamp_format, delimiter, watts_scale)
    return parse_lines(parser, text)[0]


#: Bounds on reading a meter log. A sample line is tens of bytes; a longer one than
#: MAX_LOG_LINE_BYTES is malformed (and a file of one endless line cannot fill memory).
#: Each read() goes through the file in READ_CHUNK pieces from where the last one stopped.
#: A log over SEEK_MIN_BYTES at its first read (a meter host that has logged for weeks) is
#: not parsed from its start: the harness needs samples from the run's start on, and log
#: lines are time ordered, so the first read searches by time for that point (bisection
#: over byte offsets) and reads on from there.
MAX_LOG_LINE_BYTES = 64 << 10
READ_CHUNK = 1 << 20
SEEK_MIN_BYTES = 4 << 20


class LogTail:
    """Reads a growing log file incrementally, only complete lines.

    A last line without its newline is held back (the writer may be mid-line;
    a half-written "345.2" must not be read as "34"). A file that shrank or was
    replaced is read again from the start. Only a regular file is read: it is
    opened with O_NONBLOCK and checked with fstat, so a FIFO (or a device) is
    refused at once instead of blocking until the cell times out.

    ``since``: a callable giving the earliest host time the caller needs samples
    from (None: everything); used only to skip the old part of a large log at the
    first read (see SEEK_MIN_BYTES).
    """

    def __init__(self, path: str, make_parser, skip_malformed: bool = False,
                 since: Optional[Callable[[], Optional[float]]] = None):
        self.path = path
        self.make_parser = make_parser
        self.skip_malformed = skip_malformed
        self.since = since
        self._reset()

    def _reset(self) -> None:
        self.parser = self.make_parser()
        self.offset = 0
        self.lineno = 0
        self.samples: list[LogSample] = []
        self.skipped = 0
        self.ident: Optional[tuple] = None
        self.seeked_to_line: Optional[int] = None  # the first line read after a seek by time
        self._discarding = False  # inside an over-long line that skip_malformed is skipping

    def _open(self) -> tuple[int, os.stat_result]:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise MeterError(f"{self.path}: log file not found (is the meter host writing it here?)") from None
        except OSError as e:
            raise MeterError(f"{self.path}: cannot read the log: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise MeterError(f"{self.path}: cannot read the log: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a pipe, device or socket"
            raise MeterError(f"{self.path}: the log is {kind}, not a regular file; point the meter at "
                             f"the file the meter host writes")
        return fd, st

    def read(self) -> list[LogSample]:
        fd, st = self._open()
        try:
            if self.ident is not None and ((st.st_ino, st.st_dev) != self.ident or st.st_size < self.offset):
                self._reset()
            self.ident = (st.st_ino, st.st_dev)
            if self.lineno == 0 and st.st_size > SEEK_MIN_BYTES and self.since is not None:
                since = self.since()
                if since is not None:
                    self._seek_to(fd, st.st_size, since)
            self._consume(fd)
        except OSError as e:
            raise MeterError(f"{self.path}: cannot read the log: {e.strerror or e}") from None
        finally:
            os.close(fd)
        return self.samples

    # reading lines ---------------------------------------------------------
    def _consume(self, fd: int, max_lines: Optional[int] = None) -> None:
        """Parse complete lines from self.offset on (at most max_lines of them)."""
        done = 0
        while max_lines is None or done < max_lines:
            data = os.pread(fd, READ_CHUNK, self.offset)
            if not data:
                return
            if self._discarding:  # the rest of an over-long line being skipped
                nl = data.find(b"\n")
                self.offset += len(data) if nl < 0 else nl + 1
                self._discarding = nl < 0
                continue
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) > MAX_LOG_LINE_BYTES:
                    self._too_long(len(data), whole=False)
                    continue
                return  # a torn last line: wait for its newline
            for raw in data[: end + 1].split(b"\n")[:-1]:
                if max_lines is not None and done >= max_lines:
                    return
                done += 1
                if len(raw) > MAX_LOG_LINE_BYTES:
                    self._too_long(len(raw) + 1, whole=True)
                    continue
                self._line(raw)
            if len(data) < READ_CHUNK:
                return

    def _too_long(self, nbytes: int, whole: bool) -> None:
        lineno = self.lineno + 1
        if not self.skip_malformed:
            raise MalformedLog(f"{self.path} line {lineno}: longer than {MAX_LOG_LINE_BYTES:,} bytes; "
                               f"expected one sample per line")
        self.skipped += 1
        self.lineno, self.offset = lineno, self.offset + nbytes
        self._discarding = not whole

    def _line(self, raw: bytes) -> None:
        lineno = self.lineno + 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            if not self.skip_malformed:
                raise MalformedLog(f"{self.path} line {lineno}: expected UTF-8 text") from None
            self.skipped += 1
            self.lineno, self.offset = lineno, self.offset + len(raw) + 1
            return
        try:
            s = self.parser.feed(lineno, line)
        except MeterError as e:
            if not self.skip_malformed or isinstance(e, BadHeader):
                raise  # offset stays before this line: the error repeats, it does not vanish
            self.skipped += 1
            s = None
        if s is not None:
            self.samples.append(s)
        self.lineno, self.offset = lineno, self.offset + len(raw) + 1

    # the first read of a large log -----------------------------------------
    def _seek_to(self, fd: int, size: int, since: float) -> None:
        """Move to (about) the first line stamped at or after host time ``since``, after
        reading the header a CSV log needs; line numbers stay exact (newlines counted)."""
        start = self.offset
        if not self._ready():
            self._consume(fd, max_lines=64)  # the header is the first line that is not a comment
            if not self._ready():
                return
            start = self.offset
        lo, hi = start, size
        while hi - lo > 2 * MAX_LOG_LINE_BYTES:
            mid = (lo + hi) // 2
            t = self._time_at(fd, mid)
            if t is not None and t < since:
                lo = mid
            else:  # at or after `since`, or unreadable there: look earlier (reads more, misses nothing)
                hi = mid
        if lo == start:
            return
        head = os.pread(fd, MAX_LOG_LINE_BYTES + 1, lo)
        nl = head.find(b"\n")
        if nl < 0:
            return
        target = lo + nl + 1
        lines = 0
        pos = self.offset
        while pos < target:  # exact line numbers for messages: newlines counted at C speed
            chunk = os.pread(fd, min(READ_CHUNK, target - pos), pos)
            if not chunk:
                return
            lines += chunk.count(b"\n")
            pos += len(chunk)
        self.offset, self.lineno = target, self.lineno + lines
        self.seeked_to_line = self.lineno + 1

    def _ready(self) -> bool:
        return getattr(self.parser, "index", True) is not None

    def _time_at(self, fd: int, pos: int) -> Optional[float]:
        """Host time of the first parseable sample line that starts after byte ``pos``."""
        data = os.pread(fd, 4 * MAX_LOG_LINE_BYTES, pos)
        lines = data.split(b"\n")[1:-1]  # the first piece may be a line's tail, the last torn
        probe = copy.copy(self.parser)
        for raw in lines[:16]:
            probe.last = None
            try:
                s = probe.feed(0, raw.decode("utf-8"))
            except (MeterError, UnicodeDecodeError):
                continue
            if s is not None:
                return s.t
        return None


#: how far before the meter's start() a large log's first read begins (see LogTail)
LOOKBACK_S = 600.0


def _hms(t: float) -> str:
    """A host time as HH:MM:SS for messages; any float (a time far out of range from a
    wrong offset must not turn a message into an OverflowError)."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(t))
    except (OverflowError, ValueError, OSError):
        return f"{t:.6g} s"


class _Uncovered(Exception):
    """Internal: the log does not cover the window; the message is the reason."""


def apportion(samples: list[LogSample], t0: float, t1: float, covers: str, period: float,
              gap_limit: float) -> tuple[float, int]:
    """Joules in [t0, t1] from interval-average samples, and the samples used.

    Each sample covers (t_prev, t] ("preceding") or [t, t_next) ("following");
    the first/last open interval is one ``period`` long. Raises _Uncovered with
    a plain reason when the window is not fully covered by valid samples.
    """
    if not samples:
        raise _Uncovered("the log has no samples yet")
    spans = []
    for i, s in enumerate(samples):
        if covers == "preceding":
            a = samples[i - 1].t if i else s.t - period
            b = s.t
        else:
            a = s.t
            b = samples[i + 1].t if i + 1 < len(samples) else s.t + period
        spans.append((a, b, s))
    lo, hi = spans[0][0], spans[-1][1]
    if t0 < lo or t1 > hi:
        raise _Uncovered(
            f"log does not cover the window: log spans {_hms(lo)}-{_hms(hi)} (this clock), window is "
            f"{_hms(t0)}-{_hms(t1)} ({t1 - hi:+.1f} s past the log's end; check clock_offset_s/tz, or raise settle_s)")
    joules, used = 0.0, 0
    for a, b, s in spans:
        overlap = min(b, t1) - max(a, t0)
        if overlap <= 0:
            continue
        if b - a > gap_limit:
            raise _Uncovered(f"gap of {b - a:.1f} s in the log before line {s.line} inside the window "
                             f"(max_gap_s={gap_limit:.1f})")
        if s.watts is None:
            raise _Uncovered(f"invalid meter sample (negative watts) at line {s.line} inside the window")
        if overlap > 0:
            joules += s.watts * overlap
            used += 1
    return joules, used


@dataclass
class _LogOptions:
    path: str
    tz: Optional[str] = None
    #: seconds the meter host's clock is ahead of this one (an int too: YAML reads 2 as one), or "auto"
    clock_offset_s: Union[float, int, str] = field(default=0.0, metadata={"range": (-MAX_OFFSET_S, MAX_OFFSET_S)})
    scope: str = "wall"
    sample_covers: str = "preceding"
    period_s: Optional[float] = field(default=None, metadata={"range": (1e-6, 3600.0)})
    max_gap_s: Optional[float] = field(default=None, metadata={"range": (1e-6, 86400.0)})
    settle_s: float = field(default=3.0, metadata={"range": (0.0, 3600.0)})
    skip_malformed: bool = False
    name: Optional[str] = None

    def __post_init__(self):
        check_scope(self.scope)
        if self.sample_covers not in ("preceding", "following"):
            raise MeterError(f"option 'sample_covers' must be preceding or following, got {self.sample_covers!r}")
        check_positive("period_s", self.period_s)
        check_positive("max_gap_s", self.max_gap_s)
        check_positive("settle_s", self.settle_s, allow_zero=True)
        if isinstance(self.clock_offset_s, str):
            if self.clock_offset_s != "auto":
                raise MeterError(f"option 'clock_offset_s' must be a number of seconds or 'auto', "
                                 f"got {self.clock_offset_s!r}")
        elif not (math.isfinite(self.clock_offset_s) and abs(self.clock_offset_s) <= MAX_OFFSET_S):
            raise MeterError(f"option 'clock_offset_s' must be a number of seconds from {-MAX_OFFSET_S:g} to "
                             f"{MAX_OFFSET_S:g}, got {self.clock_offset_s!r}")
        else:
            self.clock_offset_s = float(self.clock_offset_s)
        _zone(self.tz)

    def file_problems(self) -> list[tuple[str, str]]:
        """Checked when a suite is validated (not when a worker builds the meter: there a
        bad log makes the meter unavailable, said once). The path, if it exists already
        (the meter host may create it later), must be a regular file: a FIFO would block
        every read until the cell times out."""
        if os.path.lexists(self.path) and (why := regular_file_problem(self.path, "meter log", None)):
            return [("path", why)]
        return []

    @property
    def auto_offset(self) -> bool:
        return self.clock_offset_s == "auto"

    @property
    def fixed_offset_s(self) -> float:
        """The configured offset; 0 until the signature has measured an "auto" one."""
        return 0.0 if self.auto_offset else self.clock_offset_s


@dataclass
class PtdaemonLogOptions(_LogOptions):
    """Options of a ``{type: ptdaemon-log, path: ...}`` meter (see module docstring)."""


@dataclass
class CsvLogOptions(_LogOptions):
    """Options of a ``{type: csv-log, path: ...}`` meter (see module docstring).

    columns: {"timestamp": <header or number>, "watts": <header or number>,
    optional "mark"}; timestamp_format: None (unix seconds or ISO 8601),
    "epoch_s", "epoch_ms" or a strptime format; watts_scale: multiply the watts
    column (0.001 for a milliwatt log).
    """

    columns: dict = field(default_factory=lambda: {"timestamp": "timestamp", "watts": "watts"})
    timestamp_format: Optional[str] = None
    delimiter: str = ","
    watts_scale: float = field(default=1.0, metadata={"range": (1e-12, 1e12)})

    def __post_init__(self):
        super().__post_init__()
        CsvLogParser(self.path, self.columns, self.tz, self.fixed_offset_s, self.timestamp_format,
                     self.delimiter, self.watts_scale)  # validates columns/delimiter

    def file_problems(self) -> list[tuple[str, str]]:
        out = super().file_problems()
        if out or not os.path.exists(self.path):
            return out
        # the log exists now: its header must name the columns (else no line can be read)
        tail = LogTail(self.path, lambda: CsvLogParser(self.path, self.columns, self.tz, self.fixed_offset_s,
                                                       self.timestamp_format, self.delimiter,
                                                       self.watts_scale))
        try:
            fd, _ = tail._open()
            try:
                tail._consume(fd, max_lines=64)
            finally:
                os.close(fd)
        except BadHeader as e:
            out.append(("columns", str(e)))
        except (MeterError, OSError):
            pass  # a bad data line is the strict/skip_malformed rule's business, per window
        return out


class ExternalLogMeter(Meter):
    """Shared window logic of the log importers."""

    ends_late: ClassVar[bool] = True  # end_window waits up to settle_s for the log
    aligns_clock: ClassVar[bool] = True

    def __init__(self, options=None):
        super().__init__(options)
        self.method = "external"
        self.scope = self.options.scope
        self.name = self.options.name or f"{self.type}:{os.path.basename(self.options.path)}"
        self.clock_offset_s = self.options.fixed_offset_s   # the one the parser applies
        self.alignment = None   # harness.meters.clock.ClockAlignment, once measured
        self._since: Optional[float] = None  # host time the run needs samples from (set by start)
        self.tail = self._new_tail()

    def _new_tail(self) -> LogTail:
        return LogTail(self.options.path, self._make_parser, self.options.skip_malformed, since=lambda: self._since)

    def _make_parser(self) -> _LineParser:
        raise NotImplementedError

    def start(self) -> None:
        super().start()
        # samples from well before the start are never asked for (windows, the clock
        # signature and the period estimate all come later): a log's older part is skipped
        self._since = time.time() - LOOKBACK_S
        if not os.path.exists(self.options.path):
            # not an error yet: the meter host may create it once the run starts
            log.info("meter %s: %s does not exist yet; it is read at the end of each window",
                     self.name, self.options.path)
            return
        try:  # the first read now: a bad header says so before any cell, later reads are incremental
            self._read()
        except MeterError:
            pass  # a malformed log marked the meter unavailable; any other trouble is per window

    # the log ----------------------------------------------------------------
    def _read(self) -> list[LogSample]:
        """The samples so far; a malformed line (strict) marks the meter unavailable for good."""
        try:
            return self.tail.read()
        except MalformedLog as e:
            self.mark_unavailable(str(e))
            raise

    def sample_period(self, samples: list[LogSample]) -> float:
        p = median_interval([s.t for s in samples[-2000:]])
        return p or self.options.period_s or 1.0

    def read_until(self, t: float) -> tuple[list[LogSample], Optional[str]]:
        """(samples, None) once the log reaches host time ``t`` or settle_s has passed;
        ([], reason) when the log cannot be read."""
        deadline = time.time() + self.options.settle_s
        while True:
            try:
                samples = self._read()
            except MeterError as e:
                if time.time() < deadline and "not found" in str(e):
                    time.sleep(0.1)
                    continue
                return [], str(e)
            reached = bool(samples) and (samples[-1].t if self.options.sample_covers == "preceding"
                                         else samples[-1].t + self.sample_period(samples)) >= t
            if reached or time.time() >= deadline:
                return samples, None
            time.sleep(min(0.1, max(0.0, deadline - time.time())))

    # the clock --------------------------------------------------------------
    def set_alignment(self, alignment) -> None:
        """Record the signature's verdict on this log's clock; apply its offset when
        the option says ``auto`` and the signature was found."""
        self.alignment = alignment
        if alignment.applied:
            self.clock_offset_s = alignment.offset_s
            self.tail = self._new_tail()

    def clock_problem(self) -> Optional[str]:
        """Why this meter's timestamps cannot be trusted against this host (None: they can)."""
        if self.alignment is not None:
            return self.alignment.problem
        if self.options.auto_offset:
            return ("clock_offset_s: auto, but no clock alignment was run: the log's clock is unknown "
                    "against this host")
        return None

    # windows ----------------------------------------------------------------
    def end_window(self, name: str, at: Optional[float] = None) -> list[EnergyReading]:
        t0, t1 = self._close_window(name, at)
        if not self.available:
            return [self.unavailable_reading(t0, t1, self.reason or "unavailable")]
        samples, err = self.read_until(t1)
        if err:
            return [self.unavailable_reading(t0, t1, err)]
        period = self.sample_period(samples)
        gap_limit = self.options.max_gap_s or 3 * period
        tele = {"log": self.options.path, "clock_offset_s": self.clock_offset_s,
                "clock_offset_from": "signature" if self.alignment and self.alignment.applied else "option",
                "sample_covers": self.options.sample_covers, "skipped_lines": self.tail.skipped}
        try:
            joules, used = apportion(samples, t0, t1, self.options.sample_covers, period, gap_limit)
        except _Uncovered as e:
            return [self.unavailable_reading(t0, t1, f"{self.options.path}: {e}", telemetry=tele)]
        inside = [s for s in samples if t0 - period <= s.t <= t1 + period]
        watts = [s.watts for s in inside if s.watts is not None]
        if watts:
            tele.update(watts_min=min(watts), watts_max=max(watts))
        marks = sorted({s.mark for s in inside if s.mark})
        if marks:
            tele["marks"] = marks[:20]
        win_period = median_interval([s.t for s in inside])
        skew = self.clock_problem()
        return [EnergyReading(meter=self.name, method="external", scope=self.scope, joules=joules,
                              duration_s=t1 - t0, n_updates=used,
                              update_period_s=win_period or period,
                              quality="clock-skew" if skew else "ok", reason=skew,
                              telemetry=tele, t_start=t0, t_end=t1)]

    def expected_period_s(self) -> Optional[float]:
        """None when the log cannot be read now: windows are sized by the meters that can."""
        if not self.available:
            return None
        try:
            samples = self._read()
        except MeterError:
            return None
        return self.sample_period(samples)

    def timeline(self, since: Optional[float] = None) -> list[dict]:
        try:
            samples = self._read()
        except MeterError:
            samples = self.tail.samples
        return [{"t": s.t, "meter": self.name, "watts": s.watts, "mark": s.mark}
                for s in samples if since is None or s.t >= since]


class PtdaemonLogMeter(ExternalLogMeter):
    """Wall power from a SPEC PTDaemon sample log (MLPerf Power)."""

    type: ClassVar[str] = "ptdaemon-log"
    Options: ClassVar[type] = PtdaemonLogOptions

    def _make_parser(self) -> _LineParser:
        return PtdaemonLogParser(self.options.path, self.options.tz, self.clock_offset_s)


class CsvLogMeter(ExternalLogMeter):
    """Power from a generic ``timestamp,watts`` CSV written by any meter."""

    type: ClassVar[str] = "csv-log"
    Options: ClassVar[type] = CsvLogOptions

    def _make_parser(self) -> _LineParser:
        o = self.options
        return CsvLogParser(o.path, o.columns, o.tz, self.clock_offset_s, o.timestamp_format,
                            o.delimiter, o.watts_scale)

