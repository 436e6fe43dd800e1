"""The Backend protocol: what the harness asks of anything that runs a model.

A backend knows nothing of scenarios, repetitions or meters' windows (MLPerf LoadGen's
split): it loads a model, runs prefill and decode when told, and says when the device
is idle. The harness does all timing around these calls.

Backends register under the entry-point group ``harness.backends``:

    [project.entry-points."harness.backends"]
    my-npu = "my_npu_pkg.backend:MyNpuBackend"
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
import platform
from typing import Any, ClassVar

import numpy as np

from workloads.zoo import ModelSpec


class BackendError(RuntimeError):
    """A backend cannot do what the cell asks (missing package, device, dtype...).
    The message is shown to the user as is: say what is missing and how to get it."""


@dataclass
class DecodeResult:
    tokens: np.ndarray  # [batch, n] generated token ids
    # seconds from the start of decode() to the completion of each step, where the
    # backend can observe it (device events on CUDA); None where it cannot.
    step_times: list[float] | None = None


@dataclass
class LoadInfo:
    load_s: float = 0.0  # building or reading weights
    compile_s: float = 0.0  # export, compilation, graph capture: never inside a timed window
    details: dict[str, Any] = field(default_factory=dict)  # e.g. provider placement


class Backend(ABC):
    #: registered name, as written in suite files
    name: ClassVar[str] = ""
    #: dataclass of the options a suite may give this backend (validated by the config loader)
    Options: ClassVar[type]
    #: dtypes this backend can run
    dtypes: ClassVar[tuple[str, ...]] = ("fp32",)
    #: a dotted package name -> pip requirement that provides it; checked before a run
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Any):
        self.options = options

    @classmethod
    def device_of(cls, options: Any) -> str:
        """Device label for tables (cpu, cuda:0, npu...), known before load()."""
        return getattr(options, "device", "cpu")

    def weights_device(self) -> str:
        """Where this backend draws the seeded random weights (the generator differs by
        device type): the accuracy gate builds its fp32 reference there."""
        return "cpu"

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Hardware and software inventory of the device this backend drives."""

    @abstractmethod
    def load(self, spec: ModelSpec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        """Make the model ready for batches up to max_batch and sequences up to max_seq."""

    def prepare(self, batch: int, seq_len: int) -> float:
        """Get ready to run `batch` sequences of up to seq_len positions (allocate a
        cache sized to them, capture a graph...).
        Called before a cell's warm-up, outside every timed window; returns the seconds
        spent compiling or capturing, reported apart from load time."""
        return 0.0

    @abstractmethod
    def prefill(self, token_ids: np.ndarray) -> Any:
        """Run prompts [batch, prompt_len] from an empty cache; returns an opaque state
        holding the first generated token of each sequence."""

    @abstractmethod
    def decode(self, state: Any, n: int) -> DecodeResult:
        """Generate n more tokens greedily from state."""

    def synchronize(self) -> None:
        """Block until all work issued so far has finished on the device."""

    def meters(self) -> list[dict[str, Any]]:
        """Meter configs (as in a suite's `meters:` list) for the device this backend
        drives, used when the suite does not name meters itself."""
        return []

    @abstractmethod
    def logits(self, token_ids: np.ndarray, n_prefill: int) -> np.ndarray:
        """Logits [batch, T, vocab] (float32) at every position of token_ids [batch, T],
        computed the way this backend runs: the first n_prefill tokens by prefill, the
        rest one decode step at a time through the cache (teacher-forced). Accuracy gate."""

    def close(self) -> None:
        """Free the model and device memory."""


def cpu_model() -> str:
    """The CPU's marketing name (for describe() and the run inventory)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
