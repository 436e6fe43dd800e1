"""What `harness run --resume` runs: the suite compared with the one the run started with,
and the cells still to run.

The comparison is of the suite *as planned* (validated, defaults filled, optional backends
that were skipped left out), redacted as run.json's `config` holds it. Header values and
URL credentials are therefore not compared: a key rotated between two attempts changes
nothing a cell measures, and a hash of the unredacted suite in the world-readable run.json
would let anyone who reads it test guesses of a short password offline.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import json
from typing import Any

from harness.records import CellRecord, PlannedCell
from harness.redact import redact_suite
from harness.results import ResultsError

#: suite keys that change no cell's measurement: a resume may change them without --force
#: (timeout_s is what one raises before `--retry-failed` of a cell that timed out).
#: `output` is where the folder was made and is not compared at all.
COSMETIC_KEYS = ("name", "description", "timeout_s", "cluster", "max_concurrent_groups", "lab")
#: the error kind of a cell whose cluster node died under it (harness.fleet): a plain
#: --resume runs it again, as it does a cell that never ran
NODE_LOST = "node-lost"
#: keys added with the fleet (issue 17), left out of `config` while unset, so a run made
#: before them resumes without a "changed" suite
_FLEET_KEYS = ("cluster", "max_concurrent_groups")
#: suite keys every cell's measurement depends on
COMMON_KEYS = ("seed", "warmup", "repetitions", "scenario", "energy", "accuracy", "meters")
MAX_SHOWN = 20  # changed keys listed in a refusal before "... and N more"


class SuiteChanged(ResultsError):
    """The suite of a resume differs from the run's in something a cell measures (exit 2)."""


def planned_config(suite) -> dict:
    """A suite as run.json's `config` holds it: redacted, through JSON (tuples are lists)."""
    config = json.loads(json.dumps(redact_suite(asdict(suite)), default=str))
    for key in _FLEET_KEYS:
        if config.get(key) is None:
            config.pop(key, None)
    for b in config.get("backends") or []:
        if isinstance(b, dict) and b.get("placement") is None:
            b.pop("placement", None)
        elif isinstance(b, dict) and isinstance(b.get("placement"), dict) and not b["placement"].get("node_label"):
            b["placement"].pop("node_label", None)  # as runs made before placement by node label hold it
    return config


def _short(v: Any, n: int = 60) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= n else f"{text[:n]}..."


def _path(base: str, key: Any) -> str:
    return f"{base}.{key}" if base else str(key)


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k, v in old.items():
            if k not in new:
                out.append(f"{_path(path, k)} removed (was {_short(v)})")
            else:
                _diff(v, new[k], _path(path, k), out)
        for k, v in new.items():
            if k not in old:
                out.append(f"{_path(path, k)} added: {_short(v)}")
    elif isinstance(old, list) and isinstance(new, list) and path in ("backends", "workloads"):
        _diff_entries(old, new, path, out)
    elif old != new:
        out.append(f"{path}: {_short(old)} -> {_short(new)}")


def _diff_entries(old: list, new: list, path: str, out: list[str]) -> None:
    """Backends matched by label (a reordered list is no change), workloads by position;
    each named in the line, e.g. `backends[1] (onnx-cpu) removed`."""
    def label(e: Any) -> str:
        return str(e.get("name" if path == "backends" else "model")) if isinstance(e, dict) else "?"

    if path == "backends":
        old_at = {label(e): (i, e) for i, e in enumerate(old)}
        new_at = {label(e): (i, e) for i, e in enumerate(new)}
        for name, (i, e) in old_at.items():
            if name not in new_at:
                out.append(f"backends[{i}] ({name}) removed")
            else:
                _diff(e, new_at[name][1], f"backends[{new_at[name][0]}] ({name})", out)
        for name, (i, _) in new_at.items():
            if name not in old_at:
                out.append(f"backends[{i}] ({name}) added")
        return
    for i in range(max(len(old), len(new))):
        if i >= len(new):
            out.append(f"{path}[{i}] ({label(old[i])}) removed")
        elif i >= len(old):
            out.append(f"{path}[{i}] ({label(new[i])}) added")
        else:
            _diff(old[i], new[i], f"{path}[{i}] ({label(new[i])})", out)


def suite_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes a cell's measurement depends on, cosmetic changes), one line each."""
    measured: list[str] = []
    cosmetic: list[str] = []
    for key in dict.fromkeys([*old, *new]):
        if key == "output":
            continue
        lines: list[str] = []
        _diff({key: old[key]} if key in old else {}, {key: new[key]} if key in new else {}, "", lines)
        (cosmetic if key in COSMETIC_KEYS else measured).extend(lines)
    return measured, cosmetic


def cell_settings(config: dict, cell: PlannedCell) -> str | None:
    """What one cell's measurement depends on under `config`, canonical, or None when
    `config` would not plan it (its backend or workload is not there)."""
    backend = next((b for b in config.get("backends") or []
                    if isinstance(b, dict) and b.get("name") == cell.backend), None)
    # the first workload that holds the cell, as Plan.workload picks it
    workload = next((w for w in config.get("workloads") or []
                     if isinstance(w, dict) and w.get("model") == cell.model
                     and cell.dtype in (w.get("dtypes") or []) and cell.batch in (w.get("batch_sizes") or [])), None)
    if backend is None or workload is None:
        return None
    return json.dumps({"common": {k: config.get(k) for k in COMMON_KEYS},
                       "backend": {k: backend.get(k) for k in ("type", "options")},
                       "workload": {k: workload.get(k) for k in ("model", "checkpoint", "seed")}},
                      sort_keys=True, default=str)


@dataclass
class ResumeDecision:
    todo: list[PlannedCell]  # cells to run, in plan order
    changes: list[str] = field(default_factory=list)  # measured changes (accepted: --force)
    cosmetic: list[str] = field(default_factory=list)  # accepted without --force
    superseded: set[str] = field(default_factory=set)  # cells whose records leave results.jsonl
    retried: list[str] = field(default_factory=list)  # failed cells run again (--retry-failed)
    failed_kept: list[str] = field(default_factory=list)  # failed cells left as they are
    lost: list[str] = field(default_factory=list)  # cells whose cluster node died: run again, old record superseded


def decide(cells: list[PlannedCell], new_config: dict, meta: dict, records: list[CellRecord], force: bool,
           retry_failed: bool, where: str) -> ResumeDecision:
    """The cells a resume runs. Raises SuiteChanged (listing what changed) when the suite
    differs in what a cell measures and `force` is not set."""
    old_config = meta.get("config")
    if isinstance(old_config, dict):
        changes, cosmetic = suite_changes(old_config, new_config)
    else:
        changes, cosmetic = ["run.json holds no suite config to compare with"], []
    if changes and not force:
        shown = changes[:MAX_SHOWN] + ([f"... and {len(changes) - MAX_SHOWN} more"] if len(changes) > MAX_SHOWN else [])
        raise SuiteChanged(
            f"{where}: the suite changed since the run started:\n" + "\n".join(f"  {c}" for c in shown)
            + "\n--resume runs the suite the run started with; add --force to run this one instead (cells whose "
              "settings changed are run again, and their old records, and those of cells no longer planned, "
              "move to results.superseded.jsonl)")
    superseded: set[str] = set()
    if force and changes:
        planned = {c.id: c for c in cells}
        superseded = {r.cell_id for r in records if r.cell_id not in planned}
        if isinstance(old_config, dict):
            recorded = {r.cell_id for r in records}
            superseded |= {cid for cid in recorded & set(planned)
                           if cell_settings(old_config, planned[cid]) != cell_settings(new_config, planned[cid])}
    latest: dict[str, CellRecord] = {}
    for r in records:
        if r.cell_id not in superseded:
            latest[r.cell_id] = r  # a cell retried before: its last record stands
    # a cell lost with its node never ran to an end: it runs again, and its failure record
    # leaves results.jsonl, so the finished run holds one record per cell
    lost = {cid for cid, r in latest.items() if r.failed and r.error is not None and r.error.kind == NODE_LOST}
    superseded |= lost
    for cid in lost:
        del latest[cid]
    failed = [cid for cid, r in latest.items() if r.failed]
    done = {cid for cid in latest if not (retry_failed and latest[cid].failed)}
    todo = [c for c in cells if c.id not in done]
    planned_ids = {c.id for c in cells}
    return ResumeDecision(todo, changes if force else [], cosmetic, superseded,
                          retried=[c for c in failed if retry_failed and c in planned_ids],
                          failed_kept=[] if retry_failed else [c for c in failed if c in planned_ids],
                          lost=sorted(lost))
