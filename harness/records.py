"""The typed objects that cross process and file boundaries.

    runner --CellJob--> worker --CellRecord--> results.jsonl --CellRecord--> reports

* :class:`PlannedCell`: one point of a suite's sweep (backend x model x dtype x batch x
  lengths x scenario point), made by ``harness.config.load_plan``.
* :class:`CellJob`: what the runner asks one worker process to run: one (backend, model,
  dtype) group of planned cells with everything the worker needs, so the worker reads
  nothing but this.
* :class:`CellRecord`: what a worker returns for one cell and what ``results.jsonl``
  holds, one JSON line each, with ``schema_version`` written into every line. Records
  of an older schema are upgraded on read (:func:`record_from_json`); a record from a
  newer harness, or one that is not a record at all, is refused with a message naming
  the file and line.
* :class:`EnergyRecord` / :class:`MeterEnergy`: the one energy shape, written by the
  one window engine (``harness.energy``) for batch and request scenarios alike.

JSON stays JSON: ``to_json`` writes plain dicts and lists, ``from_json`` reads them
back. Nested measurement detail that is data rather than structure (a backend's
``describe()`` inventory, per-request rows) stays a plain mapping.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

#: written into every record; bump when a field changes meaning or moves, and teach
#: _upgrade() how to read the previous version.
SCHEMA_VERSION = 2


class RecordError(ValueError):
    """A result line that cannot be read as a cell record (says where and why)."""


def _known(cls, data: dict) -> dict:
    names = _FIELD_NAMES.get(cls)
    if names is None:  # fields() walks the class each call: once per class (issue 21, 10,000 records)
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))
    return {k: v for k, v in data.items() if k in names}


_FIELD_NAMES: dict[type, frozenset] = {}


# --- the plan ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedCell:
    """One cell of a suite's sweep, before it runs."""

    backend: str  # label in tables
    backend_type: str  # registered backend name
    model: str
    dtype: str
    batch: int
    prompt_len: int
    gen_len: int
    scenario: str  # scenario point label: offline | single-stream | concurrency | server@<rate>
    rate: Optional[float] = None  # requests/s of one point of a server sweep

    @property
    def id(self) -> str:
        return (f"{self.backend}/{self.model}/{self.dtype}/b{self.batch}/p{self.prompt_len}/g{self.gen_len}/"
                f"{self.scenario}")

    @property
    def group(self) -> tuple[str, str, str]:
        """Cells sharing a loaded model: one worker process runs them in turn."""
        return (self.backend, self.model, self.dtype)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.model} {self.dtype} b{self.batch} pp{self.prompt_len} tg{self.gen_len}"

    def to_json(self) -> dict:
        return dict(asdict(self), id=self.id)

    @classmethod
    def from_json(cls, data: dict) -> "PlannedCell":
        return cls(**_known(cls, data))


@dataclass
class CellJob:
    """One worker's work: a (backend, model, dtype) group of cells, and how to run them."""

    backend_name: str  # label
    backend_type: str  # registered name
    backend_options: dict  # the suite's options mapping (validated by load_plan; the worker builds Options)
    device: str
    model: str
    dtype: str
    checkpoint: Optional[str]
    seed: int
    warmup: int
    repetitions: int
    scenario: dict  # the suite's scenario mapping, with `type`
    energy: dict  # EnergyConfig as a mapping
    accuracy: dict  # AccuracyConfig as a mapping
    meters: Optional[list]  # meter configs; None: the backend's own
    run_dir: str
    calibration: Optional[dict]
    cells: list[PlannedCell]

    def to_json(self) -> dict:
        d = asdict(self)
        d["cells"] = [c.to_json() for c in self.cells]
        return d

    @classmethod
    def from_json(cls, data: dict) -> "CellJob":
        d = _known(cls, data)
        d["cells"] = [PlannedCell.from_json(c) for c in data["cells"]]
        return cls(**d)


# --- energy ------------------------------------------------------------------------------

@dataclass
class MeterEnergy:
    """One meter's figures for one cell (a RAPL meter gives one per zone).

    The work window is the generation window of a batch cell (prefill + decode, repeated
    until long enough) or the steady-state window of a request scenario. Per-token
    figures are None where the meter gave no reading; ``quality`` says how far to trust
    the rest (ok, estimate, short-window, clock-skew, speed-mismatch, unavailable) and
    ``reason`` why (speed-mismatch: the energy windows' work ran at another speed than
    the timed repetitions, see EnergyRecord.speed).
    """

    meter: str
    method: Optional[str] = None  # counter | sampled | external | estimate
    scope: Optional[str] = None  # gpu-board | cpu-package | dram | npu-module | wall
    quality: str = "unavailable"
    reason: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    update_period_s: Optional[float] = None
    idle_w: Optional[float] = None
    idle_w_before: Optional[float] = None
    idle_w_after: Optional[float] = None
    avg_w: Optional[float] = None  # mean power over the work window
    j_per_prompt_token_gross: Optional[float] = None
    j_per_prompt_token_net: Optional[float] = None
    j_per_generated_token_gross: Optional[float] = None  # decode tokens (batch) / output tokens (requests)
    j_per_generated_token_net: Optional[float] = None
    j_per_generated_token_e2e_gross: Optional[float] = None
    j_per_generated_token_e2e_net: Optional[float] = None
    tokens_per_joule_gross: Optional[float] = None
    tokens_per_joule_net: Optional[float] = None
    energy_per_request_gross_j: Optional[float] = None
    energy_per_request_net_j: Optional[float] = None
    cross_check: Optional[dict] = None  # counter vs sampled power over the work window
    # per window (idle-before, prefill, generation | steady, idle-after): gross_j, net_j,
    # duration_s, avg_w, n_updates, repeats, and the meter's raw reading
    windows: dict[str, Optional[dict]] = field(default_factory=dict)

    @property
    def is_estimate(self) -> bool:
        return self.method == "estimate" or self.quality == "estimate"

    def figure(self, name: str, kind: str = "gross") -> Optional[float]:
        """A per-token figure by its report name (tokens_per_joule, j_per_token, j_per_prompt_token)."""
        key = {"tokens_per_joule": f"tokens_per_joule_{kind}", "j_per_token": f"j_per_generated_token_{kind}",
               "j_per_prompt_token": f"j_per_prompt_token_{kind}"}[name]
        return getattr(self, key)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "MeterEnergy":
        return cls(**_known(cls, data))


@dataclass
class PhaseSpeed:
    """One work window's own throughput, and the timed repetitions' for the same phase.

    tok_s = tokens processed inside the window (per repetition x repeats) / window
    seconds. The timed figures are the median and 95 % bootstrap interval of the timed
    repetitions' per-repetition throughput of the same work (harness.stats). ``agree``
    is None where there was nothing to compare with.
    """

    phase: str  # prefill | generation (prefill + decode, end to end) | steady
    tokens: float = 0.0
    window_s: float = 0.0
    repeats: int = 0
    tok_s: Optional[float] = None
    timed_median: Optional[float] = None
    timed_ci_low: Optional[float] = None
    timed_ci_high: Optional[float] = None
    timed_n: int = 0
    agree: Optional[bool] = None


@dataclass
class EnergySpeed:
    """Was the energy measured on work running at the speed the report quotes?

    Batch cells measure energy in windows of their own, after the timed repetitions;
    each window's throughput is compared with the timed interval (``rule``). Request
    scenarios measure energy over the measured requests themselves (``same_work``).
    ``mismatch`` is the flag's text when a window disagrees (then every meter's figures
    of the cell have quality "speed-mismatch").
    """

    rule: str = ""
    margin: Optional[float] = None
    same_work: bool = False
    phases: list[PhaseSpeed] = field(default_factory=list)
    # derived: decode tokens / (generation - prefill seconds per repetition), and the timed decode_tps median
    decode_tok_s: Optional[float] = None
    timed_decode_tok_s: Optional[float] = None
    mismatch: Optional[str] = None

    @classmethod
    def from_json(cls, data: dict) -> "EnergySpeed":
        d = _known(cls, data)
        d["phases"] = [PhaseSpeed(**_known(PhaseSpeed, p)) for p in data.get("phases") or [] if isinstance(p, dict)]
        return cls(**d)


@dataclass
class EnergyRecord:
    """The energy of one cell over all its meters."""

    status: str = "ok"  # ok | disabled | no meters | unavailable | no steady window
    reason: Optional[str] = None
    window: str = "phases"  # phases (idle, prefill, generation, idle) | steady (request scenarios)
    meters: list[MeterEnergy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)  # token counts the per-token figures divide by
    windows: dict[str, dict] = field(default_factory=dict)  # phase -> start, end, duration, repeats
    # external meters' clocks against this host's, found from a power signature run before
    # the group's cells (harness.meters.clock): one entry per log meter
    clock_alignment: list[dict] = field(default_factory=list)
    # the energy windows' own throughput against the timed repetitions' (optional: records
    # written before it have none, and read as "not checked")
    speed: Optional[EnergySpeed] = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["meters"] = [m.to_json() for m in self.meters]
        return d

    @classmethod
    def from_json(cls, data: dict) -> "EnergyRecord":
        d = _known(cls, data)
        d["meters"] = [MeterEnergy.from_json(m) for m in data.get("meters") or [] if isinstance(m, dict)]
        sp = data.get("speed")
        d["speed"] = EnergySpeed.from_json(sp) if isinstance(sp, dict) else None
        return cls(**d)


# --- the record --------------------------------------------------------------------------

@dataclass
class CellError:
    message: str
    kind: str = "exception"  # exception | load | crash | timeout | node-lost (a cluster node died)
    trace: Optional[str] = None


@dataclass
class CellRecord:
    """One cell's result: what results.jsonl holds, one per line."""

    cell_id: str
    backend: str
    backend_type: str
    model: str
    dtype: str
    batch: int
    prompt_len: int
    gen_len: int
    scenario: str  # scenario point label (offline, server@4, ...)
    status: str  # ok | failed | invalid (out of the accuracy gate)
    valid: bool
    device: str = "-"
    params: Optional[int] = None
    precision: Optional[str] = None  # what the weights really are (q8_0 in an fp32 suite)
    error: Optional[CellError] = None
    load: dict = field(default_factory=dict)  # load_s, compile_s, prepare_s, details (placement...)
    describe: dict = field(default_factory=dict)  # the backend's inventory of its device
    tokens: dict = field(default_factory=dict)  # prompt_per_rep, generated_per_rep, repetitions, warmup
    samples: dict = field(default_factory=dict)  # raw per-repetition times: ttft_s, e2e_s, step_times_s
    # metric -> summary. Batch cells: mean, sd, median, min, max, n, samples (per repetition).
    # Request scenarios: p50, p90, p99, mean, min, max, n (per request), plus counts.
    metrics: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    energy: Optional[EnergyRecord] = None
    energy_timeline: Optional[str] = None  # timelines/<cell>.csv, relative to the run folder
    # status, passed, reason, rel_err, tolerance, reference (the logits check), logits_passed, and
    # timed_output: harness.accuracy.TimedCheck of the tokens the timed path produced
    accuracy: dict = field(default_factory=dict)
    roofline: Optional[dict] = None
    warnings: list[str] = field(default_factory=list)
    # request scenarios only
    scenario_config: Optional[dict] = None
    summary: Optional[list] = None  # one latency-throughput row per run
    requests: Optional[list] = None  # one row per request
    steady_window: Optional[dict] = None
    runs: Optional[list] = None
    sut: Optional[dict] = None
    started_at: Optional[float] = None
    wall_s: Optional[float] = None
    node: Optional[str] = None  # the cluster node that ran it (HARNESS_NODE_NAME or hostname; harness.fleet)
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.valid is not False

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def invalid(self) -> bool:
        """Failed the accuracy gate (a failed cell, which has no outputs at all, is not "invalid")."""
        return self.status == "invalid" or (self.status != "failed" and self.valid is False)

    @property
    def is_request_scenario(self) -> bool:
        """Run by a request-level scenario (single-stream, concurrency, server@rate), read
        from the label so that a failed cell, which has no request figures, still sorts
        into the right table."""
        return self.summary is not None or self.scenario != "offline"

    @property
    def shown_precision(self) -> str:
        return self.precision or self.dtype or "-"

    def metric(self, name: str) -> Optional[dict]:
        m = self.metrics.get(name)
        return m if isinstance(m, dict) else None

    def to_json(self) -> dict:
        d = asdict(self)
        d["energy"] = self.energy.to_json() if self.energy is not None else None
        return {k: v for k, v in d.items() if v is not None or k in ("error", "energy")}

    @classmethod
    def failure(cls, cell: PlannedCell, kind: str, message: str, *, device: str = "-", params: int | None = None,
                trace: str | None = None) -> "CellRecord":
        """The record of a cell that produced no result (crash, timeout, load failure)."""
        return cls(cell_id=cell.id, backend=cell.backend, backend_type=cell.backend_type, model=cell.model,
                   dtype=cell.dtype, batch=cell.batch, prompt_len=cell.prompt_len, gen_len=cell.gen_len,
                   scenario=cell.scenario, status="failed", valid=False, device=device, params=params,
                   precision=cell.dtype, error=CellError(message=message, kind=kind, trace=trace))


_REQUIRED = ("cell_id", "backend", "model", "dtype", "batch", "prompt_len", "gen_len", "status")


def _upgrade(data: dict) -> dict:
    """A version-1 record (no schema_version) in today's shape.

    v1 request-scenario records kept the scenario mapping under `scenario_config`'s place
    only transiently and wrote energy in a second shape (`window: steady`, per-meter
    `gross_j`, `j_per_output_token_*`); v1 batch records wrote `generation_avg_w`.
    """
    d = dict(data)
    d.setdefault("backend_type", d.get("backend", ""))
    d.setdefault("scenario", "offline")
    d.setdefault("valid", d.get("status") == "ok")
    e = d.get("energy")
    if isinstance(e, dict):
        e = dict(e)
        meters = []
        for m in e.get("meters") or []:
            if not isinstance(m, dict):
                continue
            m = dict(m)
            if e.get("window") == "steady":  # the old request-scenario shape
                m.setdefault("j_per_generated_token_gross", m.get("j_per_output_token_gross"))
                m.setdefault("j_per_generated_token_net", m.get("j_per_output_token_net"))
                m.setdefault("tokens_per_joule_gross", m.get("output_tokens_per_j_gross"))
                m.setdefault("energy_per_request_gross_j", m.get("j_per_request_gross"))
                m.setdefault("windows", {"steady": {k: m.get(k) for k in ("gross_j", "net_j", "duration_s",
                                                                           "n_updates", "avg_w")}})
            else:
                m.setdefault("avg_w", m.get("generation_avg_w"))
            meters.append(m)
        e["meters"] = meters
        if e.get("window") != "steady":
            e["window"] = "phases"
            if not e.get("status"):
                e["status"] = "ok"
        d["energy"] = e
    return d


def record_from_json(data: Any, where: str = "record") -> CellRecord:
    """A CellRecord from one parsed results.jsonl line, upgrading older schemas.

    where: 'file:line', used in the error message."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object (a cell record), got {type(data).__name__}")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordError(f"{where}: schema_version: expected an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {version} was written by a newer accel-harness (this one "
                          f"reads up to {SCHEMA_VERSION}); upgrade accel-harness to read this run")
    if version < SCHEMA_VERSION:
        data = _upgrade(data)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise RecordError(f"{where}: not a cell record: missing {', '.join(missing)}")
    d = _known(CellRecord, data)
    d["schema_version"] = SCHEMA_VERSION
    err = data.get("error")
    d["error"] = CellError(**_known(CellError, err)) if isinstance(err, dict) and "message" in err else None
    e = data.get("energy")
    d["energy"] = EnergyRecord.from_json(e) if isinstance(e, dict) else None
    for key in ("load", "describe", "tokens", "samples", "metrics", "memory", "accuracy"):
        if not isinstance(d.get(key, {}), dict):
            raise RecordError(f"{where}: {key}: expected a mapping, got {type(d[key]).__name__}")
    try:
        return CellRecord(**d)
    except TypeError as e:  # a field of the wrong kind
        raise RecordError(f"{where}: not a cell record: {e}") from None
