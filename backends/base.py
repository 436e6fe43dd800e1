"""The Backend protocol: what the harness asks of anything that runs a model.

A backend knows nothing of scenarios, repetitions or meters' windows (MLPerf LoadGen's
split). Two kinds:

* ModelBackend runs the model in this process: it loads weights, runs prefill and
  decode when told, returns logits for the accuracy gate, and says when the device is
  idle. The harness does all timing around these calls.
* RequestBackend sends requests to a serving endpoint and streams tokens back (the
  OpenAI-compatible client: how vendor NPU servers are reached).

Backends register under the entry-point group ``harness.backends``:

    [project.entry-points."harness.backends"]
    my-npu = "my_npu_pkg.backend:MyNpuBackend"
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
import platform
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from workloads.zoo import ModelSpec

if TYPE_CHECKING:
    from backends.slots import SlotDecoder


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


# --- requests: what request backends and the load generators exchange -------------------

@dataclass
class Request:
    """One request as the load generators issue it."""

    id: int
    prompt_len: int
    max_tokens: int
    prompt_ids: list[int] | None = None  # token ids, where the generator made them


@dataclass
class RequestResult:
    """What one request did. Times are ``time.perf_counter()`` seconds."""

    id: int
    prompt_len: int  # asked for
    n_requested: int  # max_tokens asked for
    t_issue: float  # the request left the client
    t_first_token: float | None = None
    t_end: float | None = None  # last token, or the failure
    token_times: list[float] = field(default_factory=list)  # one per streamed chunk
    n_generated: int = 0  # the SUT's count (server `usage`); chunk count where it gives none
    n_prompt: int | None = None  # prompt tokens as the SUT reports them
    error: str | None = None
    count_mismatch: bool = False  # n_generated != n_requested
    prompt_mismatch: bool = False  # n_prompt != prompt_len
    finish_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    t_arrival: float | None = None  # set by the load generator (scheduled arrival for server)
    # the produced token ids, where the SUT knows them (the in-process engine; an endpoint
    # that returns them and is declared to serve the reference weights): the accuracy
    # gate re-scores them. Empty: not known.
    token_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def n_chunks(self) -> int:
        return len(self.token_times)

    def check_counts(self) -> None:
        """Flag a generated or prompt count different from what was asked."""
        self.count_mismatch = self.n_generated != self.n_requested
        if self.n_prompt is not None:
            self.prompt_mismatch = self.n_prompt != self.prompt_len


# --- the contract -------------------------------------------------------------------------

class Backend(ABC):
    """What every backend has. Subclass one of the two kinds below, not this."""

    #: registered name, as written in suite files
    name: ClassVar[str] = ""
    #: "model" (ModelBackend: runs the model in this process) or "request" (RequestBackend:
    #: sends requests to a server); scenarios declare which kinds they drive
    kind: ClassVar[str] = ""
    #: dataclass of the options a suite may give this backend (validated by harness.schema)
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

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Hardware and software inventory of the device this backend drives."""

    @abstractmethod
    def load(self, spec: ModelSpec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        """Make the model ready for batches up to max_batch and sequences up to max_seq
        (a request backend: reach the endpoint and check it serves the model)."""

    def meters(self) -> list[dict[str, Any]]:
        """Meter configs (as in a suite's `meters:` list) for the device this backend
        drives, used when the suite does not name meters itself."""
        return []

    @classmethod
    def installed_here(cls) -> str:
        """What this backend can use on this machine, for `harness list` (ONNX Runtime:
        the execution providers installed); empty when there is nothing to say."""
        return ""

    # optional capabilities: the defaults say "not available"; the harness never probes
    # a backend with hasattr.
    def memory(self) -> dict[str, int]:
        """Device memory figures (e.g. {"device_peak_bytes": ...}) for the cell just run."""
        return {}

    def native_server(self) -> "RequestBackend | None":
        """A request backend over this backend's own serving stack, where it ships one
        (a vendor NPU runtime's server): request scenarios then measure that server
        rather than the harness's batching engine. None: the harness's engine is used.
        The backend owns the server it returns and closes it in its own close()."""
        return None

    def slot_decoder(self, n_slots: int, max_seq: int) -> "SlotDecoder | None":
        """A batch that sequences join and leave between decode steps (backends/slots.py),
        for the engine's continuous batching. None: this backend batches only sequences
        that start together (the engine then batches statically)."""
        return None

    def close(self) -> None:
        """Free the model and device memory (a request backend: its connections)."""


class ModelBackend(Backend):
    """Runs the model in this process: prefill, decode, logits.

    The harness does all timing around these calls (after synchronize()), owns the
    repetitions and meters' windows, and never reads or writes the opaque decode state:
    decode() advances it, first_tokens() reads what prefill produced.
    """

    kind: ClassVar[str] = "model"

    def weights_device(self) -> str:
        """Where this backend draws the seeded random weights (the generator differs by
        device type): the accuracy gate builds its fp32 reference there."""
        return "cpu"

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
    def first_tokens(self, state: Any) -> np.ndarray:
        """The token prefill generated for each sequence, [batch] int64 on the host."""

    @abstractmethod
    def decode(self, state: Any, n: int) -> DecodeResult:
        """Generate n more tokens greedily from state, and advance state past them: a
        second decode(state, m) continues where the first stopped."""

    def synchronize(self) -> None:
        """Block until all work issued so far has finished on the device."""

    @abstractmethod
    def logits(self, token_ids: np.ndarray, n_prefill: int) -> np.ndarray:
        """Logits [batch, T, vocab] (float32) at every position of token_ids [batch, T],
        computed the way this backend runs: the first n_prefill tokens by prefill, the
        rest one decode step at a time through the cache (teacher-forced). Accuracy gate."""


class RequestBackend(Backend):
    """Sends requests to a serving endpoint (a vendor NPU server, vLLM, llama.cpp's
    server): it has no prefill, decode or logits of its own, so it runs under the request
    scenarios only; the gate can re-score only the token ids it returns (RequestResult.
    token_ids), where the backend says the endpoint serves the workload's weights."""

    kind: ClassVar[str] = "request"

    def prepare_requests(self, requests: list[Request]) -> None:
        """Work to do per request before any is timed (openai-http counts text prompts
        with the server's tokenizer); called once with every request a scenario will
        issue, warm-ups included, before the idle baseline. Default: nothing."""

    @abstractmethod
    def issue(self, request: Request) -> RequestResult:
        """Send one request and stream its tokens; blocking, thread-safe. Every failure is
        an error on the result, never an exception."""


def cpu_model() -> str:
    """The CPU's marketing name (for describe() and the run inventory)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
