"""A cell's power timeline (timelines/<cell>.csv in its run folder), for the report's figure."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.cells import ResultCell
from harness.results import ResultsError


@dataclass
class PowerSample:
    t: float  # seconds, on the clock of the record's energy windows
    phase: str
    meter: str
    watts: Optional[float]


def _timeline_path(c: ResultCell, resolved: Optional[dict] = None) -> Optional[Path]:
    """The cell's power timeline CSV, if it exists inside its run folder (resolved: run folders
    already resolved, by folder)."""
    rel = c.record.energy_timeline
    if not rel:
        return None
    path = (c.run_dir / rel).resolve()
    if resolved is None:
        root = c.run_dir.resolve()
    else:
        root = resolved.get(c.run_dir) or resolved.setdefault(c.run_dir, c.run_dir.resolve())
    if root not in path.parents or not path.is_file():
        return None
    return path


def read_timeline(c: ResultCell) -> list[PowerSample]:
    """The cell's power timeline CSV (inside its run folder only)."""
    path = _timeline_path(c)
    return _read_csv(path) if path is not None else []


def _read_csv(path: Path) -> list[PowerSample]:
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append(PowerSample(float(row["t"]), row.get("phase") or "", row.get("meter") or "",
                                        float(row["watts"]) if row.get("watts") not in (None, "") else None))
            except (KeyError, ValueError):
                continue  # a row of another shape (a meter's extra telemetry): not a power sample
    return rows


def pick_timeline_cell(cells: list[ResultCell],
                       cell_id: Optional[str]) -> tuple[Optional[ResultCell], list[PowerSample]]:
    """The chosen cell (by id, optionally "RUN:CELL_ID") or the one with the most power samples."""
    if cell_id:
        has_run = ":" in cell_id and not cell_id.startswith("cuda")
        run, _, cid = cell_id.rpartition(":") if has_run else ("", "", cell_id)
        found = [c for c in cells if c.record.cell_id == cid and (not run or run == c.run_id)]
        if not found:
            found = [c for c in cells if c.record.cell_id == cell_id]
        if not found:
            have = [c.record.cell_id for c in cells if c.record.energy_timeline]
            raise ResultsError(f"--timeline {cell_id}: no such cell; cells with a power timeline: "
                               + (", ".join(have) if have else "none"))
        return found[0], read_timeline(found[0])
    # The first cell with the most samples. Parsing every CSV costs ~2 ms each at thousands of
    # cells, so files are parsed from the most lines down, stopping once no file left could hold
    # more rows than the best so far (a file's rows never outnumber its lines).
    bounds = []
    resolved: dict = {}
    for i, c in enumerate(cells):
        path = _timeline_path(c, resolved) if c.record.energy_timeline else None
        if path is not None:
            try:
                bounds.append((_row_bound(path), i, path))
            except OSError:
                continue
    bounds.sort(key=lambda t: (-t[0], t[1]))
    best_i, best_rows = None, []
    for bound, i, path in bounds:
        if bound < len(best_rows):
            break
        if bound == len(best_rows) and best_i is not None and i > best_i:
            continue  # at best a tie with an earlier cell, which wins
        try:
            rows = _read_csv(path)
        except OSError:
            continue
        if len(rows) > len(best_rows) or (rows and len(rows) == len(best_rows) and i < best_i):
            best_i, best_rows = i, rows
    return (cells[best_i] if best_i is not None else None), best_rows


def _row_bound(path: Path) -> int:
    """At least the CSV rows the file holds: its lines but the header (a quoted value spanning
    lines only makes rows fewer)."""
    with open(path, "rb") as f:
        data = f.read()
    # csv also ends lines with a lone \r
    lines = max(data.count(b"\n"), data.count(b"\r")) + (1 if data and not data.endswith((b"\n", b"\r")) else 0)
    return max(lines - 1, 0)
