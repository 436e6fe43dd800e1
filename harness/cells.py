"""Loaded result cells: each CellRecord of a run folder together with the run it came
from, which is what reports, compare and verify select, label and group by."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import gc
from pathlib import Path
from typing import Optional

from harness.records import CellRecord
from harness.results import load_run
from harness.roofline import roofline
from harness.seal import RunSeal, run_status


@dataclass
class ResultCell:
    """One cell record with the run it came from."""

    run_id: str
    run_dir: Path
    meta: dict  # the run's run.json
    record: CellRecord
    seal: Optional[RunSeal] = None  # the run's seal state (harness.seal.run_status), set by load_runs

    @property
    def mark(self) -> str:
        """The mark a table puts on this cell's label: † unsealed run, ‡ failing its check."""
        return self.seal.mark if self.seal is not None else ""

    @property
    def precision(self) -> str:
        return self.record.shown_precision

    @property
    def host(self) -> str:
        return (self.meta.get("inventory") or {}).get("hostname") or "?"

    @property
    def workload_key(self) -> tuple:
        """What must match for two cells to be compared."""
        r = self.record
        return (r.model, self.precision, r.batch, r.prompt_len, r.gen_len, r.scenario)

    @property
    def config_key(self) -> tuple:
        """One configuration: a backend on a device in one run."""
        return (self.run_id, self.record.backend, self.record.device)

    @property
    def device_label(self) -> str:
        """The device as a reader knows it: cpu model or GPU name, and host."""
        dev = str(self.record.device or "?")
        inv = self.meta.get("inventory") or {}
        name = None
        if dev.startswith("cuda"):
            idx = int(dev.split(":")[1]) if ":" in dev and dev.split(":")[1].isdigit() else 0
            gpus = inv.get("gpus") or []
            name = next((g.get("name") for g in gpus if g.get("index") == idx), None)
        elif dev == "cpu":
            name = (inv.get("cpu") or {}).get("model")
        return f"{dev} ({name}, {self.host})" if name else f"{dev} ({self.host})"

    @property
    def ok(self) -> bool:
        return self.record.ok

    @property
    def invalid(self) -> bool:
        return self.record.invalid

    @property
    def failed(self) -> bool:
        return self.record.failed

    @property
    def status_label(self) -> str:
        if self.invalid:
            return "INVALID"
        return "FAILED" if self.failed else "ok"

    @property
    def short(self) -> str:
        r = self.record
        return f"{r.backend} {self.precision} b{r.batch} p{r.prompt_len} g{r.gen_len} [{self.run_id}]"


@dataclass
class LoadedRun:
    """One run folder: its run.json and its cells."""

    run_id: str  # run.json's run_id, made unique among the runs loaded together
    run_dir: Path
    meta: dict
    cells: list[ResultCell]
    seal: Optional[RunSeal] = None  # lab, nodes and seal state (harness.seal.run_status)


def load_runs(run_dirs) -> list[LoadedRun]:
    """Every run folder, in order. A record without a roofline gets one from run.json's
    calibration of its device (runs calibrated after they were made)."""
    if not FREEZE_LOADED_RECORDS:
        return _load_runs(run_dirs)
    # the cyclic collector stays paused from the first folder to the freeze: re-enabled
    # between folders, its next pass would walk every record read so far (issue 21)
    was = gc.isenabled()
    gc.disable()
    try:
        runs = _load_runs(run_dirs)
        if sum(len(run.cells) for run in runs) >= FREEZE_AT_RECORDS:
            # Loaded records live as long as the report and hold no reference cycles: set
            # them aside from the cyclic collector, whose full passes would otherwise walk
            # them again and again while the report allocates (a sixth of a 2,000-record
            # report's CPU). Reference counting still frees them. No collection first (a
            # full pass over every record): they were read with the collector paused and
            # hold no cycles; what cyclic garbage the imports left is kept until the
            # command exits.
            gc.freeze()
    finally:
        if was:
            gc.enable()
    return runs


def _load_runs(run_dirs) -> list[LoadedRun]:
    runs: list[LoadedRun] = []
    seen: set[str] = set()
    for d in run_dirs:
        d = Path(d)
        meta, records = load_run(d)
        run_id = str(meta.get("run_id") or d.name)
        if run_id in seen:  # two folders of the same name: keep them apart
            run_id = f"{run_id}({d})"
        seen.add(run_id)
        cals = meta.get("calibration") or {}
        status = run_status(d)  # reports mark the figures of unsealed or failing runs
        cells = []
        for r in records:
            if not r.roofline and not r.failed and cals.get(r.device):
                try:
                    r = dataclasses.replace(r, roofline=roofline(r, cals[r.device]))
                except (KeyError, TypeError, ValueError, ZeroDivisionError):
                    pass  # a calibration of another shape: the record keeps no roofline
            cells.append(ResultCell(run_id, d, meta, r, status))
        runs.append(LoadedRun(run_id, d, meta, cells, status))
    return runs


#: records loaded at once above which load_runs freezes them out of the cyclic collector (issue 21)
FREEZE_AT_RECORDS = 1000
#: set only by the report/compare/verify commands, whose process ends with the report:
#: gc.freeze() is process-wide, and in a long-lived process (a test session, a notebook)
#: frozen objects that own native threads were torn down in the wrong order at exit (CI saw
#: "terminate called without an active exception" after a whole test run)
FREEZE_LOADED_RECORDS = False


def load_cells(run_dirs) -> list[ResultCell]:
    """The cells of every run folder, in order."""
    return [c for run in load_runs(run_dirs) for c in run.cells]
