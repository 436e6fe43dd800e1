"""Result files: one folder per run, one JSON line per cell, loaders into pandas.

results/<run-id>/
  run.json          inventory, harness version, git commit, resolved config, status
  results.jsonl     one CellRecord per finished cell (ok, failed or invalid), as JSON,
                    with schema_version in every line (harness.records)
  timelines/        power and telemetry per cell (CSV)
  logs/             each worker's stderr

Only the parent process appends to results.jsonl, one whole line per write(), flushed
and fsynced: a kill -9 can at worst leave a partial last line, which loaders skip and a
resume moves out (repair_torn_lines). A write a full disk cuts short is cut back off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import sys
import os
from pathlib import Path
import re
import stat
import typing
from typing import Any, Callable, Optional

from harness.records import CellError, CellRecord, EnergyRecord, MeterEnergy, RecordError, record_from_json

try:  # 3x faster than json on records (issue 21); optional: the stdlib decides whenever it is unsure
    import orjson as _orjson
except ImportError:  # pragma: no cover - the report extra installs it
    _orjson = None

#: Result folders come from other labs: everything read from them is bounded. A real
#: record is a few hundred kB at most (a request scenario with record_token_times), a
#: run.json well under 1 MB; these limits leave room for both many times over.
MAX_LINE_BYTES = 16 * 2**20  # one results.jsonl line
MAX_RUN_JSON_BYTES = 64 * 2**20  # run.json
MAX_DEPTH = 64  # JSON nesting; real records nest about 6 deep

_RUN_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ResultsError(ValueError):
    pass


def safe_run_dir(output: str | Path, run_id: str) -> Path:
    """results/<run_id>, refusing names that could escape the results folder."""
    if not _RUN_ID_OK.fullmatch(run_id) or ".." in run_id:
        raise ResultsError(f"run name {run_id!r}: expected letters, digits, '.', '_' or '-' "
                           "(no path separators), at most 128 characters")
    return Path(output) / run_id


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink as the last component, so that a run folder whose
    results.jsonl (or report.md, ...) was replaced by a link to a file elsewhere never
    writes there. The folder itself is the caller's: it names it."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as e:
        if os.path.islink(path):
            raise ResultsError(f"{path}: is a symbolic link; refusing to write through it") from None
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a short write (a full disk) returns less than asked; the next one raises
        view = view[os.write(fd, view):]


def write_bytes_nofollow(path: Path, data: bytes) -> None:
    """Replace path's content, never through a symlink."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    # The temp name holds the pid, so two processes never share one; O_EXCL refuses a
    # symlink (or anything) planted under that name.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()  # a leftover of a killed process that had this pid
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symlink at path itself, never writes through it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_record(path: Path, record: CellRecord) -> None:
    """One whole line or nothing: a write that fails part-way (disk full) is cut back off,
    so the file never holds a fragment this process made."""
    line = (json.dumps(record.to_json(), default=_json_default) + "\n").encode()
    fd = open_nofollow(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn last line (a killed writer): start a fresh one, not glue onto it
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)  # the caller holds the run folder's lock: nobody appended since
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Iterative: a record nested past `limit` is refused before anything recurses into it
    (asdict, deepcopy and the report all recurse)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:  # only containers are pushed: a record's thousands of numbers are looked at once
        v, d = stack.pop()
        if d > limit:
            return False
        stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v) if isinstance(x, (dict, list)))
    return True


def open_regular(path: Path):
    """A binary file object on `path`, refused (ResultsError) unless it is a regular file: a
    FIFO, device or directory planted in a run folder from elsewhere must not block or
    stream forever (O_NONBLOCK: opening a FIFO does not wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror or e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise ResultsError(f"{path}: expected a regular file, found {kind}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _lone_surrogate(data: Any) -> bool:
    """A string (or key) holding half of a UTF-16 surrogate pair (JSON's "\\ud800"): valid
    JSON, but no file or terminal can be written with it."""
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


_DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_RUN_19 = b"0" * 19


def _long_integer(raw: bytes) -> bool:
    """Nineteen digits or more in a row, not after a decimal point: an integer orjson would
    read as a float (it keeps 64 bits; json keeps every digit). May be true of a string or an
    exponent (json then decides). Bytes methods, not a regex: a regex scan of a 12 kB record
    costs what orjson saves."""
    zeros = raw.translate(_DIGITS_TO_0)
    if _RUN_19 not in zeros:  # a substring test: no list of pieces for the usual record
        return False
    pieces = zeros.split(_RUN_19)
    # a piece ends just before a run; empty: the text starts with it, or a run of 38 or more
    return not pieces[0] or any(p and p[-1] != 46 for p in pieces[:-1])  # 46: "."
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def _fast_loads(raw: bytes) -> Any:
    """orjson's value where it is json's, else _SLOW. orjson refuses (and so leaves to json,
    with json's messages) what json reads with a remark or an error: NaN, 1e400, lone
    surrogates, invalid UTF-8, a BOM, nesting past 1024; the one input both read differently,
    an integer of 19 digits or more, never reaches it."""
    if _orjson is None or _long_integer(raw):
        return _SLOW
    try:
        return _orjson.loads(raw)
    except _orjson.JSONDecodeError:
        return _SLOW


_SLOW = object()


def _depth_ok_raw(raw: bytes, data: Any, limit: int = MAX_DEPTH) -> bool:
    """_depth_ok of `data`, parsed from `raw`, read off the text: in valid JSON without an
    escaped quote, the pieces between quotes alternate code and strings, and the nesting is
    the running count of the code's brackets (a twentieth of the walk's time on a record)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:  # fewer openers than the limit, strings included
        return True
    if b'\\"' in raw:
        return _depth_ok(data, limit)
    code = b"".join(raw.split(b'"')[0::2]).translate(None, _NOT_BRACKETS)
    if len(code) <= limit:
        return True
    depth = 0
    for c in code:
        if c == 91 or c == 123:  # [ {
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def _parse_json(raw: bytes, where: str) -> Any:
    data = _fast_loads(raw)
    if data is not _SLOW:
        if not _depth_ok_raw(raw, data):
            text = raw.decode("utf-8")
            raise ResultsError(f"{_at_line(where, text, _too_deep_at(text))}: JSON nested more than {MAX_DEPTH} "
                               "levels deep")
        return data  # orjson refuses lone surrogates: nothing left to check
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{where}: not UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ResultsError(f"{_at_line(where, text, _too_deep_at(text))}: JSON nested more than {MAX_DEPTH} "
                           "levels deep") from None
    except json.JSONDecodeError:
        raise  # callers skip a torn last line
    except ValueError as e:  # Python's guard on huge integers (a 5000-digit number), not a decode error
        raise ResultsError(f"{where}: {str(e).split(';')[0]}") from None
    if not _depth_ok(data):
        raise ResultsError(f"{_at_line(where, text, _too_deep_at(text))}: JSON nested more than {MAX_DEPTH} "
                           "levels deep")
    if "\\u" in text and _lone_surrogate(data):
        m = re.search(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", text)
        raise ResultsError(f"{_at_line(where, text, m.start() if m else -1)}: a string holds a lone UTF-16 "
                           f"surrogate ({m.group(0) if m else 'escape'}), not text")
    return data


def _too_deep_at(text: str, limit: int = MAX_DEPTH) -> int:
    """Offset of the first bracket nested past `limit` (outside strings), -1 if none."""
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return i
        elif ch in "]}":
            depth -= 1
    return -1


def _at_line(where: str, text: str, offset: int) -> str:
    """`where` with the line of `offset` in a whole file (a results line's `where` has its line already)."""
    if offset < 0 or re.search(r":\d+$", where):
        return where
    return f"{where}:{text.count(chr(10), 0, offset) + 1}"


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


#: fields that are data no report reads, and that version-1 records hold in another shape
#: (energy.tokens was a number before the one energy record)
_UNCHECKED = {(EnergyRecord, "tokens")}


@functools.lru_cache(maxsize=None)
def _type_hints(tp: type) -> dict:
    # resolving a dataclass's annotations is ~1 ms; a report checks thousands of records (issue 21)
    return typing.get_type_hints(tp)


_SHAPES: dict[int, tuple] = {}  # id(annotation) -> (annotation, origin, args, fields); hashing a typing object is slow


def _shape(tp: Any) -> tuple:
    """(origin, args, dataclass fields to check) of an annotation, worked out once per type."""
    hit = _SHAPES.get(id(tp))
    if hit is None or hit[0] is not tp:
        fields = tuple(f.name for f in dataclasses.fields(tp) if (tp, f.name) not in _UNCHECKED) \
            if dataclasses.is_dataclass(tp) else None
        hit = _SHAPES[id(tp)] = (tp, typing.get_origin(tp), typing.get_args(tp), fields)
    return hit[1:]


def _check_type(value: Any, tp: Any, key: str) -> None:
    """value against a dataclass field annotation (str, int, float, bool, Optional[...],
    list[...], dict[...], a dataclass). Raises RecordError's message body as ValueError."""
    origin, args, fields = _shape(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return
        first = None
        for a in args:
            if a is type(None):
                continue
            try:
                _check_type(value, a, key)
                return
            except ValueError as e:
                first = first or e
        raise first or ValueError(f"{key}: unexpected {_type_name(value)}")
    if tp is Any:
        return
    if fields is not None:
        obj = value
        if not isinstance(obj, tp):
            raise ValueError(f"{key}: expected a mapping, got {_type_name(value)}")
        hints = _type_hints(tp)
        for name in fields:
            _check_type(getattr(obj, name), hints[name], f"{key}.{name}" if key else name)
        return
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is dict or origin is dict:
        ok = isinstance(value, dict)
        if ok and args:
            for k, v in value.items():
                _check_type(v, args[1], f"{key}.{k}")
    elif tp is list or origin is list:
        ok = isinstance(value, list)
        if ok and args:
            for i, v in enumerate(value):
                _check_type(v, args[0], f"{key}[{i}]")
    else:
        return
    if not ok:
        want = getattr(tp, "__name__", str(tp))
        raise ValueError(f"{key}: expected {want}, got {_type_name(value)}")


def _fits(tp: Any) -> Callable[[Any], bool]:
    """A predicate true where _check_type(value, tp) passes, built once per annotation (issue
    21: the walk above looked each annotation up again for every value of every record). It
    may say False where _check_type passes (then _check_type decides and words the message);
    never True where _check_type raises."""
    hit = _FITS.get(id(tp))
    if hit is not None and hit[0] is tp:
        return hit[1]
    origin, args, fields = _shape(tp)
    plain = _item_types(tp)
    if plain is not None:  # a number, string or flag (or None): its exact type, one set lookup
        fn = lambda v: type(v) in plain  # noqa: E731
    elif origin is typing.Union:
        parts = [_fits(a) for a in args if a is not type(None)]
        nullable = type(None) in args
        if len(parts) == 1:
            part = parts[0]
            fn = lambda v: (v is None and nullable) or part(v)  # noqa: E731
        else:
            fn = lambda v: (v is None and nullable) or any(f(v) for f in parts)  # noqa: E731
    elif tp is Any:
        fn = lambda v: True  # noqa: E731
    elif fields is not None:
        hints = _type_hints(tp)
        fn = _fits_fields(tp, tuple((name, _fits(hints[name])) for name in fields))
    elif tp is dict or origin is dict or tp is list or origin is list:
        is_dict = tp is dict or origin is dict
        item = (args[1] if is_dict else args[0]) if args else None
        fn = _fits_container(dict if is_dict else list, None if item is None else _fits(item),
                             None if item is None else _item_types(item))
    else:
        fn = lambda v: True  # noqa: E731
    _FITS[id(tp)] = (tp, fn)
    return fn


_FITS: dict[int, tuple] = {}  # id(annotation) -> (annotation, predicate), as _SHAPES
#: scalar annotation -> the exact types _check_type accepts for it (a bool is not a number)
_PLAIN_TYPES = ((float, frozenset({float, int})), (int, frozenset({int})), (str, frozenset({str})),
                (bool, frozenset({bool})))


def _item_types(tp: Any) -> Optional[frozenset]:
    """The exact types a value of `tp` may have, where `tp` is a scalar (float, int, str,
    bool) or a Union of scalars and None; else None. orjson and json make exactly these types."""
    for a, types in _PLAIN_TYPES:
        if tp is a:
            return types
    origin, args, _ = _shape(tp)
    if origin is typing.Union:
        out = frozenset({type(None)}) if type(None) in args else frozenset()
        for a in args:
            if a is not type(None):
                types = next((t for b, t in _PLAIN_TYPES if a is b), None)
                if types is None:
                    return None
                out |= types
        return out
    return None


def _fits_fields(tp: type, checks: tuple) -> Callable[[Any], bool]:
    def fits(v: Any) -> bool:  # a loop, not all() over a generator: a record has ~100 fields
        if not isinstance(v, tp):
            return False
        for name, f in checks:
            if not f(getattr(v, name)):
                return False
        return True
    return fits


def _fits_container(kind: type, item: Optional[Callable], item_types: Optional[frozenset]) -> Callable[[Any], bool]:
    if item is None:
        return lambda v: type(v) is kind
    if item_types is not None:  # numbers or strings: every item's type in one C-level pass
        if kind is dict:
            return lambda v: type(v) is dict and item_types.issuperset(map(type, v.values()))
        return lambda v: type(v) is list and item_types.issuperset(map(type, v))

    def fits(v: Any) -> bool:
        if type(v) is not kind:
            return False
        for x in (v.values() if kind is dict else v):
            if not item(x):
                return False
        return True
    return fits


def _numbers(xs: list) -> bool:
    """Every item a number or None (_number), floats looked at by type alone."""
    for x in xs:
        if type(x) is not float and not _number(x):
            return False
    return True


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


#: keys of a metric summary (harness.stats / request_metrics): numbers wherever they appear
_SUMMARY_KEYS = ("mean", "sd", "median", "min", "max", "n", "p50", "p90", "p99")
#: metrics every table reads as a summary mapping (a number there crashed the run table)
_SUMMARY_METRICS = ("prefill_tps", "decode_tps", "ttft_s", "tpot_s", "e2e_s", "itl_s", "issue_lag_s")
#: accuracy fields the gate and reports compare as numbers or flags
_ACCURACY_NUMBERS = ("rel_err", "tolerance")
_ACCURACY_FLAGS = ("passed", "logits_passed")


def check_record(record: CellRecord) -> None:
    """Every typed field of a record, nested ones included, has the type the reports read
    it as: a record from another lab with a list where a number belongs is refused here,
    with the key, rather than crashing a report later. Plain-mapping fields that are data
    (describe, load details) are left as they are."""
    if not _fits(CellRecord)(record):
        _check_type(record, CellRecord, "")  # raises, naming the key
    for name, m in record.metrics.items():
        if name in _SUMMARY_METRICS and not (m is None or isinstance(m, dict)):
            raise ValueError(f"metrics.{name}: expected a mapping (mean, sd, median, ...), got {_type_name(m)}")
        if isinstance(m, dict):
            for k in _SUMMARY_KEYS:
                if k in m and not _number(m[k]):
                    raise ValueError(f"metrics.{name}.{k}: expected a number, got {_type_name(m[k])}")
            s = m.get("samples")
            if s is not None and not (isinstance(s, list) and _numbers(s)):
                raise ValueError(f"metrics.{name}.samples: expected a list of numbers")
        elif not (_number(m) or isinstance(m, (str, bool, list))):
            raise ValueError(f"metrics.{name}: unexpected {_type_name(m)}")
    for k in _ACCURACY_NUMBERS:
        if not _number(record.accuracy.get(k)):
            raise ValueError(f"accuracy.{k}: expected a number, got {_type_name(record.accuracy[k])}")
    for k in _ACCURACY_FLAGS:
        if record.accuracy.get(k) is not None and not isinstance(record.accuracy[k], bool):
            raise ValueError(f"accuracy.{k}: expected true or false, got {_type_name(record.accuracy[k])}")
    for k, v in record.tokens.items():
        if not (_number(v) or (isinstance(v, list) and _numbers(v))):
            raise ValueError(f"tokens.{k}: expected a number, got {_type_name(v)}")
    for i, row in enumerate(record.summary or []):
        if not isinstance(row, dict):
            raise ValueError(f"summary[{i}]: expected a mapping, got {_type_name(row)}")


def parse_record(data: Any, where: str) -> CellRecord:
    """A checked CellRecord from one parsed line; RecordError names where and the key."""
    try:
        record = record_from_json(data, where)
    except (TypeError, AttributeError, KeyError) as e:  # a nested field of a shape the upgrade cannot read
        raise RecordError(f"{where}: not a cell record: {e}") from None
    try:
        check_record(record)
    except ValueError as e:
        raise RecordError(f"{where}: {e}") from None
    return record


def _lines(f, path: Path):
    """(line number, bytes) of a binary file, never holding more than MAX_LINE_BYTES of
    one line (a file with no newline at all is refused, not read whole)."""
    n = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise ResultsError(f"{path}:{n}: line longer than {MAX_LINE_BYTES // 2**20} MiB; not a cell record")
        yield n, raw


@contextlib.contextmanager
def _no_cycle_collection():
    """The cyclic collector paused while records are read: records hold no cycles (reference
    counting frees them), and its full passes over a growing heap cost a third of reading
    10,000 records, more with every record (issue 21)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_records(path: Path) -> list[CellRecord]:
    """Every complete record, upgraded to today's schema. A line that is not JSON (a torn
    line left by a killed writer; a later append starts a fresh line after it) is skipped;
    a JSON line that is not a cell record, whose fields have the wrong types, that is not
    UTF-8, nests too deep or is too long, or one from a newer harness, is refused with its
    file and line."""
    if not path.exists():
        return []
    out = []
    with open_regular(path) as f, _no_cycle_collection():
        for n, raw in _lines(f, path):
            raw = raw.strip()
            if not raw:
                continue
            where = f"{path}:{n}"
            try:
                data = _parse_json(raw, where)
            except ResultsError:
                if raw.startswith((b"{", b"[")) and not raw.endswith((b"}", b"]")):
                    _say_skipped(where)  # a torn line (killed writer): skipped, as before
                    continue
                raise
            except json.JSONDecodeError as e:
                _refuse_unless_torn(raw, where, e)
                _say_skipped(where)
                continue
            try:
                out.append(parse_record(data, where))
            except RecordError as e:
                raise ResultsError(str(e)) from None
    return out


_SKIPPED_SAID: set[str] = set()


def _say_skipped(where: str) -> None:
    """A skipped fragment is said (once per line and process), so a record never leaves a
    report without a word: a killed writer's tail, or a line someone cut short."""
    if where not in _SKIPPED_SAID:
        _SKIPPED_SAID.add(where)
        print(f"warning: {where}: skipped an unfinished record line (a killed writer's fragment, or a line cut "
              f"short); `harness run --resume` moves such lines to logs/torn-lines.txt", file=sys.stderr)


def _torn(raw: bytes, where: str) -> bool:
    """A line read_records skips as a killed writer's fragment: not JSON, or an unfinished
    object. Lines it would refuse (a JSON value that is not a record, ...) are not torn:
    they raise here, as there."""
    body = raw.strip()
    if not body:
        return False
    try:
        _parse_json(body, where)
    except ResultsError:
        if body.startswith((b"{", b"[")) and not body.endswith((b"}", b"]")):
            return True
        raise
    except json.JSONDecodeError as e:
        _refuse_unless_torn(body, where, e)
        return True
    return False


def _refuse_unless_torn(body: bytes, where: str, e: json.JSONDecodeError) -> None:
    """A killed writer leaves a prefix of one record's line, which starts with '{'. Any other
    line that is not JSON (a BOM, a comment, garbage) was never written by the harness: refuse
    it, rather than let a record vanish from every report without a word."""
    if not body.startswith(b"{"):
        raise ResultsError(f"{where}: not a JSON record ({e.msg} at column {e.colno}): "
                           f"{body[:40].decode('utf-8', 'replace')!r}")


def repair_torn_lines(path: Path, fragments_path: Path) -> int:
    """Leave results.jsonl holding whole lines only (the resuming run holds the folder's
    lock): every torn fragment (a kill -9 mid-write, at the end or, from older harness
    versions, mid-file) is moved to `fragments_path` and the file is rewritten without it,
    atomically. A last line that is a whole record without its newline gets the newline,
    not the bin. Returns how many fragments were moved; writes nothing when there are none."""
    if not path.exists():
        return 0

    def scan():
        with open(path, "rb") as f:
            for n, raw in _lines(f, path):
                yield raw, raw.strip() and _torn(raw, f"{path}:{n}")

    needs = False
    last_newline = True
    for raw, torn in scan():
        needs = needs or torn
        last_newline = raw.endswith(b"\n")
    if not needs and last_newline:
        return 0
    moved = 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    frag_fd = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            for raw, torn in scan():
                if torn:
                    if frag_fd is None:
                        frag_fd = open_nofollow(fragments_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                    _write_all(frag_fd, raw if raw.endswith(b"\n") else raw + b"\n")
                    moved += 1
                elif raw.strip():
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
            out.flush()
            os.fsync(out.fileno())
        if frag_fd is not None:
            os.fsync(frag_fd)  # the fragment is safe elsewhere before it leaves results.jsonl
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if frag_fd is not None:
            os.close(frag_fd)
    return moved


def supersede_records(path: Path, cell_ids: set[str], to_path: Path) -> int:
    """Move every record of `cell_ids` from results.jsonl to `to_path` (appended; nothing
    is deleted), rewriting results.jsonl atomically. Run after repair_torn_lines, under the
    run folder's lock. Returns how many lines moved."""
    if not path.exists() or not cell_ids:
        return 0
    moved = 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    to_fd = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as f:
            for n, raw in _lines(f, path):
                if not raw.strip():
                    continue
                data = _parse_json(raw.strip(), f"{path}:{n}")
                if isinstance(data, dict) and data.get("cell_id") in cell_ids:
                    if to_fd is None:
                        to_fd = open_nofollow(to_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                    _write_all(to_fd, raw)
                    moved += 1
                else:
                    out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        if to_fd is not None:
            os.fsync(to_fd)  # kept elsewhere before it leaves results.jsonl
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if to_fd is not None:
            os.close(to_fd)
    return moved


def read_run_json(run_dir: Path) -> dict:
    """run.json of a run folder, bounded and checked to be a mapping."""
    meta_path = Path(run_dir) / "run.json"
    try:
        size = meta_path.stat().st_size
        if size > MAX_RUN_JSON_BYTES:
            raise ResultsError(f"{meta_path}: {size} bytes, over the {MAX_RUN_JSON_BYTES // 2**20} MiB limit")
        with open_regular(meta_path) as f:
            raw = f.read(MAX_RUN_JSON_BYTES + 1)
    except OSError as e:
        raise ResultsError(f"{meta_path}: cannot read ({e.strerror or e})") from None
    if len(raw) > MAX_RUN_JSON_BYTES:  # not a regular file, or grew while read
        raise ResultsError(f"{meta_path}: over the {MAX_RUN_JSON_BYTES // 2**20} MiB limit")
    try:
        meta = _parse_json(raw, str(meta_path))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{meta_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{meta_path}: expected a JSON object, got {_type_name(meta)}")
    for key, tp in (("run_id", str), ("inventory", dict), ("calibration", dict), ("attempts", list)):
        if meta.get(key) is not None and not isinstance(meta[key], tp):
            raise ResultsError(f"{meta_path}: {key}: expected {'a mapping' if tp is dict else tp.__name__}, "
                               f"got {_type_name(meta[key])}")
    inv = meta.get("inventory") or {}
    for key, tp in (("cpu", dict), ("gpus", list), ("hostname", str)):
        if inv.get(key) is not None and not isinstance(inv[key], tp):
            raise ResultsError(f"{meta_path}: inventory.{key}: expected {tp.__name__}, got {_type_name(inv[key])}")
    if any(not isinstance(g, dict) for g in inv.get("gpus") or []):
        raise ResultsError(f"{meta_path}: inventory.gpus: expected a list of mappings")
    # the names reports match against a device catalog (harness.catalog) and print
    named = [("inventory.cpu.model", (inv.get("cpu") or {}).get("model"))]
    named += [(f"inventory.gpus[{i}].name", g.get("name")) for i, g in enumerate(inv.get("gpus") or [])]
    for key, v in named:
        if v is not None and not isinstance(v, str):
            raise ResultsError(f"{meta_path}: {key}: expected a string, got {_type_name(v)}")
    return meta


def load_run(run_dir: str | Path) -> tuple[dict, list[CellRecord]]:
    """run.json and the cell records of one run folder (read, never executed)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise ResultsError(f"{run_dir}: not a run folder (no run.json)")
    meta = read_run_json(run_dir)
    records = read_records(run_dir / "results.jsonl")
    # A resumed run may hold a failed attempt and a later success of one cell: keep the last.
    latest: dict[str, CellRecord] = {}
    for r in records:
        latest[r.cell_id] = r
    return meta, list(latest.values())
