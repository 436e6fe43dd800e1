"""Result files: one folder per run, one JSON line per cell, loaders into pandas.

results/<run-id>/
  run.json          inventory, harness version, git commit, resolved config, status
  results.jsonl     one CellRecord per finished cell (ok, failed or invalid), as JSON,
                    with schema_version in every line (harness.records)
  timelines/        power and telemetry per cell (CSV)
  logs/             each worker's stderr

Only the parent process appends to results.jsonl, one whole line per write(), flushed
and fsynced: a kill -9 can at worst leave a partial last line, which loaders skip.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import re
import typing
from typing import Any

from harness.records import CellError, CellRecord, EnergyRecord, MeterEnergy, RecordError, record_from_json

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
    line = (json.dumps(record.to_json(), default=_json_default) + "\n").encode()
    fd = open_nofollow(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn last line (a killed writer): start a fresh one, not glue onto it
        os.write(fd, line)
        os.fsync(fd)
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
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{where}: not UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ResultsError(f"{where}: JSON nested too deeply") from None
    if not _depth_ok(data):
        raise ResultsError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep")
    return data


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


#: fields that are data no report reads, and that version-1 records hold in another shape
#: (energy.tokens was a number before the one energy record)
_UNCHECKED = {(EnergyRecord, "tokens")}


def _check_type(value: Any, tp: Any, key: str) -> None:
    """value against a dataclass field annotation (str, int, float, bool, Optional[...],
    list[...], dict[...], a dataclass). Raises RecordError's message body as ValueError."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
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
    if dataclasses.is_dataclass(tp):
        obj = value
        if not isinstance(obj, tp):
            raise ValueError(f"{key}: expected a mapping, got {_type_name(value)}")
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            if (tp, f.name) in _UNCHECKED:
                continue
            _check_type(getattr(obj, f.name), hints[f.name], f"{key}.{f.name}" if key else f.name)
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
        if ok and typing.get_args(tp):
            for k, v in value.items():
                _check_type(v, typing.get_args(tp)[1], f"{key}.{k}")
    elif tp is list or origin is list:
        ok = isinstance(value, list)
        if ok and typing.get_args(tp):
            for i, v in enumerate(value):
                _check_type(v, typing.get_args(tp)[0], f"{key}[{i}]")
    else:
        return
    if not ok:
        want = getattr(tp, "__name__", str(tp))
        raise ValueError(f"{key}: expected {want}, got {_type_name(value)}")


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


#: keys of a metric summary (harness.stats / request_metrics): numbers wherever they appear
_SUMMARY_KEYS = ("mean", "sd", "median", "min", "max", "n", "p50", "p90", "p99")
#: accuracy fields the gate and reports compare as numbers or flags
_ACCURACY_NUMBERS = ("rel_err", "tolerance")
_ACCURACY_FLAGS = ("passed", "logits_passed")


def check_record(record: CellRecord) -> None:
    """Every typed field of a record, nested ones included, has the type the reports read
    it as: a record from another lab with a list where a number belongs is refused here,
    with the key, rather than crashing a report later. Plain-mapping fields that are data
    (describe, load details) are left as they are."""
    _check_type(record, CellRecord, "")
    for name, m in record.metrics.items():
        if isinstance(m, dict):
            for k in _SUMMARY_KEYS:
                if k in m and not _number(m[k]):
                    raise ValueError(f"metrics.{name}.{k}: expected a number, got {_type_name(m[k])}")
            s = m.get("samples")
            if s is not None and not (isinstance(s, list) and all(_number(x) for x in s)):
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
        if not (_number(v) or (isinstance(v, list) and all(_number(x) for x in v))):
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


def read_records(path: Path) -> list[CellRecord]:
    """Every complete record, upgraded to today's schema. A line that is not JSON (a torn
    line left by a killed writer; a later append starts a fresh line after it) is skipped;
    a JSON line that is not a cell record, whose fields have the wrong types, that is not
    UTF-8, nests too deep or is too long, or one from a newer harness, is refused with its
    file and line."""
    if not path.exists():
        return []
    out = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        for n, raw in _lines(f, path):
            raw = raw.strip()
            if not raw:
                continue
            where = f"{path}:{n}"
            try:
                data = _parse_json(raw, where)
            except ResultsError:
                if raw.startswith((b"{", b"[")) and not raw.endswith((b"}", b"]")):
                    continue  # a torn line (killed writer): skipped, as before
                raise
            except json.JSONDecodeError:
                continue
            try:
                out.append(parse_record(data, where))
            except RecordError as e:
                raise ResultsError(str(e)) from None
    return out


def read_run_json(run_dir: Path) -> dict:
    """run.json of a run folder, bounded and checked to be a mapping."""
    meta_path = Path(run_dir) / "run.json"
    try:
        size = meta_path.stat().st_size
        if size > MAX_RUN_JSON_BYTES:
            raise ResultsError(f"{meta_path}: {size} bytes, over the {MAX_RUN_JSON_BYTES // 2**20} MiB limit")
        with open(meta_path, "rb") as f:
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
