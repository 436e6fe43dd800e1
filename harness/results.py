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

import json
import os
from pathlib import Path
import re
from typing import Any

from harness.records import CellRecord, RecordError, record_from_json

_RUN_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ResultsError(ValueError):
    pass


def safe_run_dir(output: str | Path, run_id: str) -> Path:
    """results/<run_id>, refusing names that could escape the results folder."""
    if not _RUN_ID_OK.fullmatch(run_id) or ".." in run_id:
        raise ResultsError(f"run name {run_id!r}: expected letters, digits, '.', '_' or '-' "
                           "(no path separators), at most 128 characters")
    return Path(output) / run_id


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_record(path: Path, record: CellRecord) -> None:
    line = (json.dumps(record.to_json(), default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
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


def read_records(path: Path) -> list[CellRecord]:
    """Every complete record, upgraded to today's schema. A line that is not JSON (a torn
    line left by a killed writer; a later append starts a fresh line after it) is skipped;
    a JSON line that is not a cell record, or one from a newer harness, is refused with
    its file and line."""
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            try:
                out.append(record_from_json(data, f"{path}:{n}"))
            except RecordError as e:
                raise ResultsError(str(e)) from None
    return out


def load_run(run_dir: str | Path) -> tuple[dict, list[CellRecord]]:
    """run.json and the cell records of one run folder (read, never executed)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise ResultsError(f"{run_dir}: not a run folder (no run.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{meta_path}: cannot read ({e})") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    records = read_records(run_dir / "results.jsonl")
    # A resumed run may hold a failed attempt and a later success of one cell: keep the last.
    latest: dict[str, CellRecord] = {}
    for r in records:
        latest[r.cell_id] = r
    return meta, list(latest.values())
