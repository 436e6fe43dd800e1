"""A cell's power timeline (timelines/<cell>.csv in its run folder), for the report's figure."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Optional

from harness.cells import ResultCell
from harness.results import ResultsError


@dataclass
class PowerSample:
    t: float  # seconds, on the clock of the record's energy windows
    phase: str
    meter: str
    watts: Optional[float]


def read_timeline(c: ResultCell) -> list[PowerSample]:
    """The cell's power timeline CSV (inside its run folder only)."""
    rel = c.record.energy_timeline
    if not rel:
        return []
    path = (c.run_dir / rel).resolve()
    if c.run_dir.resolve() not in path.parents or not path.exists():
        return []
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
    best, best_rows = None, []
    for c in cells:
        rows = read_timeline(c) if c.record.energy_timeline else []
        if len(rows) > len(best_rows):
            best, best_rows = c, rows
    return best, best_rows
