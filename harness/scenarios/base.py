"""What a scenario is: how requests reach a backend for one cell, and what comes back.

A scenario knows nothing of models (MLPerf LoadGen's split): it is handed a loaded
backend and a typed :class:`CellContext`, issues work the way its name says, and
returns a typed :class:`ScenarioOutcome`. The worker turns that into the cell's
``CellRecord`` (adding the accuracy gate, roofline, memory and provenance); the
scenario never assembles a record.

Scenarios register under the entry-point group ``harness.scenarios`` (the built-in
ones in this project's pyproject.toml), so a third party adds one in its own package:

    [project.entry-points."harness.scenarios"]
    burst = "my_pkg.burst:BurstScenario"

A scenario class has:

* ``name``: the suite's ``scenario: {type: NAME}``;
* ``Config``: a dataclass schema of its keys (validated by ``harness.schema``, so a key
  it does not take is reported, never silently ignored); it has a ``type`` field;
* ``backend_kinds``: the backend kinds it can drive ("model", "request");
* ``points(config)``: the cells one suite cell expands into (a server sweep: one per
  rate); ``max_seq`` the KV-cache positions a backend must hold; ``run(ctx)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np

from backends.base import Backend
from harness.records import EnergyRecord, PlannedCell


@dataclass(frozen=True)
class ScenarioPoint:
    label: str  # the cell's scenario label: offline, server@4
    rate: Optional[float] = None  # requests/s, for one point of a server sweep


@dataclass
class CellContext:
    """Everything a scenario may use to run one cell."""

    backend: Backend  # loaded for the group's largest batch and max_seq
    cell: PlannedCell
    vocab_size: int
    seed: int  # the workload's seed (prompts, arrivals)
    warmup: int  # untimed repetitions (batch scenarios)
    repetitions: int  # timed repetitions (batch scenarios)
    meters: list  # started meters (harness.meters.Meter); empty: no energy to measure
    energy_settings: Any  # harness.energy.EnergySettings
    # the run's results folder, for files a scenario writes per cell (mlperf: LoadGen's logs);
    # None outside a run
    run_dir: Optional[str] = None


@dataclass
class TimedOutput:
    """The tokens a backend produced inside timed windows, kept for the accuracy gate
    (which re-scores them with the reference after the cell, outside every window).

    Repetitions of one cell run the same prompts, so a deterministic backend produces one
    output; each distinct one is kept, so a backend that is right only sometimes is
    caught whichever repetition it is wrong in."""

    prompts: np.ndarray  # [batch, prompt_len]
    outputs: list[np.ndarray] = field(default_factory=list)  # distinct [batch, gen_len]: first token + decode
    repetitions: int = 0  # timed runs whose output was added

    def add(self, generated: np.ndarray) -> None:
        self.repetitions += 1
        if not any(np.array_equal(generated, o) for o in self.outputs):
            self.outputs.append(generated)

    def sequences(self, limit: int) -> list["ProducedSequence"]:
        """The first `limit` sequences of each distinct output, as the gate re-scores them."""
        return [ProducedSequence(self.prompts[i].tolist(), out[i].tolist(), sequence=i, output=k)
                for k, out in enumerate(self.outputs) for i in range(min(self.prompts.shape[0], limit))]


@dataclass
class ProducedSequence:
    """One prompt and the tokens produced after it, as the accuracy gate re-scores them
    (plain lists: a request scenario's outcome stays JSON-serializable)."""

    prompt: list[int]  # token ids
    produced: list[int]  # the first token, then every decoded one
    sequence: int  # index in the batch, or the request's id
    output: int = 0  # which distinct output of a batch cell


@dataclass
class RequestOutputs:
    """The tokens measured requests produced (request scenarios), kept for the same gate.

    Requests differ in prompt and output length, so each is its own sequence rather than
    a row of a batch; one measured pass, so each is one output. `reason` says why there
    is nothing to check when `kept` is empty (the SUT returned no token ids)."""

    kept: list[ProducedSequence] = field(default_factory=list)  # the first ok requests with ids
    reason: Optional[str] = None
    source: str = ""  # what produced the ids, for the record: "in-process engine", "endpoint"

    @property
    def repetitions(self) -> int:  # one measured pass
        return 1 if self.kept else 0

    def sequences(self, limit: int) -> list[ProducedSequence]:
        return self.kept[:limit]


@dataclass
class ScenarioOutcome:
    """What a scenario measured for one cell; the worker makes the record of it."""

    status: str = "ok"  # ok | failed (e.g. every request failed)
    metrics: dict = field(default_factory=dict)  # metric name -> summary (see CellRecord.metrics)
    samples: dict = field(default_factory=dict)  # raw per-repetition times (batch scenarios)
    tokens: dict = field(default_factory=dict)  # token counts per repetition (batch scenarios)
    prepare_s: Optional[float] = None  # cache allocation / graph capture before the warm-up
    energy: Optional[EnergyRecord] = None  # None when ctx.meters is empty
    timeline: list[dict] = field(default_factory=list)  # power samples over the cell, for the CSV
    warnings: list[str] = field(default_factory=list)
    # what the timed path produced (batch scenarios: TimedOutput; request scenarios:
    # RequestOutputs, empty with its reason where the SUT returned no token ids); None:
    # the scenario kept nothing to check
    timed_output: Optional[TimedOutput | RequestOutputs] = None
    # request scenarios
    scenario_config: Optional[dict] = None
    summary: Optional[list] = None
    requests: Optional[list] = None
    steady_window: Optional[dict] = None
    runs: Optional[list] = None
    sut: Optional[dict] = None


class Scenario(ABC):
    name: ClassVar[str] = ""
    Config: ClassVar[type]
    backend_kinds: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, config: Any):
        self.config = config

    def points(self) -> list[ScenarioPoint]:
        """The cells one suite cell expands into (default: one, labelled with the name)."""
        return [ScenarioPoint(self.name)]

    def max_seq(self, prompt_len: int, gen_len: int) -> int:
        """KV-cache positions a backend must hold to run this scenario on a cell."""
        return prompt_len + gen_len

    @abstractmethod
    def run(self, ctx: CellContext) -> ScenarioOutcome:
        """Measure one cell."""
