"""LoadGen-style load generators: how requests reach a system under test (SUT).

The load generator knows nothing of models, tokenizers or HTTP. It hands
:class:`Request` objects to anything with one blocking method::

    class SUT(Protocol):
        def issue(self, request: Request) -> RequestResult: ...

and times what comes back. Two SUTs ship: ``backends.openai_http.OpenAIHttpClient``
(any OpenAI-compatible streaming endpoint) and ``harness.serve.EngineSUT`` (an
in-process backend behind the same batching engine as ``harness serve``).

Scenarios (``ScenarioConfig.type``):

* ``offline``: every request issued at once.
* ``single-stream``: one request at a time, the next issued when the last ends.
* ``concurrency``: a closed loop holding ``concurrency`` requests in flight.
* ``server``: an open loop, Poisson arrivals at ``rate`` requests/s
  (exponential inter-arrival times from a seeded ``numpy`` generator); a
  list of ``rates`` is a sweep, one result per rate. Latency is measured from
  the *scheduled* arrival, as MLPerf LoadGen does, so a generator that falls
  behind cannot hide queueing; the lag is reported (``issue_lag_s``).

Concurrency uses threads (one per request in flight): a SUT blocks in
``issue`` on I/O or on an engine's queue, so the GIL is not the bottleneck at
the rates a single host drives.

Metric definitions (``request_metrics``), per successful request r:

* TTFT_r = first token - arrival; e2e_r = last token - arrival
* TPOT_r = (last token - first token) / (n_generated_r - 1), n_generated from
  the SUT's own count (the server's ``usage``), never from chunks
* inter-token latency: gaps between consecutive streamed tokens, pooled over
  requests whose stream delivered one chunk per token
* requests/s and output tokens/s over the span first arrival -> last end
* goodput: requests/s that finished without error *and* met every limit
  (``limits.ttft_s`` on TTFT_r, ``limits.tpot_s`` on TPOT_r)
* steady-state window: from when the load is fully up to when it starts
  draining (see :class:`SteadyWindow`); throughput and energy per output
  token are also given over that window alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import threading
import time
from typing import Any, Callable, Iterable, Literal, Optional, Protocol, Sequence

import numpy as np

LENGTHS_DIR = Path(__file__).resolve().parents[2] / "workloads" / "lengths"
SCENARIO_TYPES = ("offline", "single-stream", "concurrency", "server")


# --- requests and results ------------------------------------------------------------

@dataclass
class Request:
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
    t_first_token: Optional[float] = None
    t_end: Optional[float] = None  # last token, or the failure
    token_times: list[float] = field(default_factory=list)  # one per streamed chunk
    n_generated: int = 0  # the SUT's count (server `usage`); chunk count where it gives none
    n_prompt: Optional[int] = None  # prompt tokens as the SUT reports them
    error: Optional[str] = None
    count_mismatch: bool = False  # n_generated != n_requested
    prompt_mismatch: bool = False  # n_prompt != prompt_len
    finish_reason: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    t_arrival: Optional[float] = None  # set by the load generator (scheduled arrival for server)

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


class SUT(Protocol):
    def issue(self, request: Request) -> RequestResult: ...


_RESULT_FIELDS = None


def as_result(obj: Any) -> RequestResult:
    """A SUT's result as a RequestResult: SUTs outside harness/ (backends/ never imports
    harness/) return their own dataclass with the same field names."""
    global _RESULT_FIELDS
    if isinstance(obj, RequestResult):
        return obj
    if _RESULT_FIELDS is None:
        _RESULT_FIELDS = [f.name for f in dataclasses.fields(RequestResult)]
    return RequestResult(**{k: getattr(obj, k) for k in _RESULT_FIELDS if hasattr(obj, k)})


def failed(request: Request, t_issue: float, message: str) -> RequestResult:
    return RequestResult(id=request.id, prompt_len=request.prompt_len, n_requested=request.max_tokens,
                         t_issue=t_issue, t_end=time.perf_counter(), error=message)


# --- configuration (validated by harness.config from the suite's `scenario:` key) ----

@dataclass
class LengthsConfig:
    """Prompt and output lengths, in tokens.

    fixed:   ``{type: fixed, prompt_len: 64, output_len: 32}``
    uniform: ``{type: uniform, prompt_len: [16, 256], output_len: [8, 128]}`` (inclusive)
    file:    ``{type: file, path: sharegpt_like}``: a JSON list of [prompt_len,
             output_len] pairs (or ``{"pairs": [...]}``), sampled with replacement;
             a bare name is looked up in workloads/lengths/.
    ``max_prompt_len`` / ``max_output_len`` clip what is drawn (a small model's
    context); ``min_output_len`` keeps TPOT defined.
    """

    type: Literal["fixed", "uniform", "file"] = "fixed"
    prompt_len: Any = None  # int (fixed) or [lo, hi] (uniform)
    output_len: Any = None
    path: Optional[str] = None
    max_prompt_len: Optional[int] = None
    max_output_len: Optional[int] = None
    min_output_len: int = 2


@dataclass
class LimitsConfig:
    """Latency limits a request must meet to count towards goodput (None: no limit)."""

    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None


@dataclass
class ScenarioConfig:
    type: Literal["offline", "single-stream", "concurrency", "server"] = "offline"
    requests: int = 32  # measured requests (per rate for server)
    concurrency: Optional[int] = None  # concurrency scenario: requests in flight (default: the cell's batch)
    rates: list[float] = field(default_factory=list)  # server: requests/s, one measurement per rate
    duration_s: Optional[float] = None  # server: stop issuing after this long (whichever of requests/duration first)
    warmup_requests: int = 2  # issued one at a time before measuring, not recorded
    lengths: Optional[LengthsConfig] = None  # default: fixed at the cell's prompt_len / gen_len
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    token_range: list[int] = field(default_factory=lambda: [10, 1000])  # prompt token ids drawn from [lo, hi)
    max_in_flight: int = 1024  # thread cap for offline/server; a request over it is issued late (lag reported)
    drain_timeout_s: float = 600.0  # after the last issue, give up waiting on requests still running
    cooldown_s: float = 0.0  # pause between rates of a sweep
    record_token_times: bool = False  # keep every request's token times in the record

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for values the type check cannot catch."""
        out: list[tuple[str, str]] = []
        if self.requests < 1:
            out.append(("requests", f"expected at least 1 request, got {self.requests}"))
        if self.type == "server":
            if not self.rates:
                out.append(("rates", "the server scenario needs a list of rates (requests/s), e.g. [1, 2, 4]"))
            for i, r in enumerate(self.rates):
                if not (isinstance(r, (int, float)) and r > 0 and math.isfinite(r)):
                    out.append((f"rates[{i}]", f"expected a rate > 0 requests/s, got {r!r}"))
        elif self.rates:
            out.append(("rates", f"rates apply to the server scenario only, not {self.type!r}"))
        if self.concurrency is not None and self.concurrency < 1:
            out.append(("concurrency", f"expected at least 1, got {self.concurrency}"))
        if self.duration_s is not None and self.duration_s <= 0:
            out.append(("duration_s", f"expected > 0 seconds, got {self.duration_s}"))
        if len(self.token_range) != 2 or not (0 <= self.token_range[0] < self.token_range[1]):
            out.append(("token_range", f"expected [lo, hi] with 0 <= lo < hi, got {self.token_range!r}"))
        for k in ("ttft_s", "tpot_s"):
            v = getattr(self.limits, k)
            if v is not None and not v > 0:
                out.append((f"limits.{k}", f"expected a limit > 0 seconds, got {v!r}"))
        if self.lengths is not None:
            try:
                LengthSampler(self.lengths)
            except ValueError as e:
                out.append(("lengths", str(e)))
        return out


def scenario_from_dict(data: dict | ScenarioConfig | None) -> ScenarioConfig:
    """Build a ScenarioConfig from a plain mapping (tests, scripts; the suite loader has its own checker)."""
    if isinstance(data, ScenarioConfig):
        return data
    data = dict(data or {})
    if isinstance(data.get("lengths"), dict):
        data["lengths"] = LengthsConfig(**data["lengths"])
    if isinstance(data.get("limits"), dict):
        data["limits"] = LimitsConfig(**data["limits"])
    cfg = ScenarioConfig(**data)
    bad = cfg.problems()
    if bad:
        raise ValueError("; ".join(f"scenario.{k}: {m}" for k, m in bad))
    return cfg


# --- lengths ------------------------------------------------------------------------------

def _pair(v: Any, key: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v) and 1 <= v[0] <= v[1]:
        return int(v[0]), int(v[1])
    raise ValueError(f"uniform lengths: {key} must be [lo, hi] with 1 <= lo <= hi, got {v!r}")


def resolve_lengths_path(path: str) -> Path:
    p = Path(path)
    if p.exists():
        return p
    for cand in (LENGTHS_DIR / path, LENGTHS_DIR / f"{path}.json"):
        if cand.exists():
            return cand
    shipped = ", ".join(sorted(f.stem for f in LENGTHS_DIR.glob("*.json"))) or "none"
    raise ValueError(f"lengths file {path!r} not found (shipped in workloads/lengths: {shipped})")


def load_length_pairs(path: str) -> np.ndarray:
    data = json.loads(resolve_lengths_path(path).read_text())
    pairs = data["pairs"] if isinstance(data, dict) else data
    arr = np.asarray(pairs, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0 or (arr < 1).any():
        raise ValueError(f"lengths file {path!r}: expected a non-empty list of [prompt_len, output_len] pairs >= 1")
    return arr


class LengthSampler:
    """Draws (prompt_len, output_len) pairs from a LengthsConfig with a seeded rng."""

    def __init__(self, cfg: LengthsConfig):
        self.cfg = cfg
        self.pairs = None
        if cfg.type == "fixed":
            for k in ("prompt_len", "output_len"):
                v = getattr(cfg, k)
                if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                    raise ValueError(f"fixed lengths: {k} must be an integer >= 1, got {v!r}")
        elif cfg.type == "uniform":
            _pair(cfg.prompt_len, "prompt_len")
            _pair(cfg.output_len, "output_len")
        elif cfg.type == "file":
            if not cfg.path:
                raise ValueError("file lengths: give a path (or a name shipped in workloads/lengths)")
            self.pairs = load_length_pairs(cfg.path)
        else:
            raise ValueError(f"lengths type must be fixed, uniform or file, got {cfg.type!r}")
        if cfg.min_output_len < 1:
            raise ValueError(f"min_output_len must be >= 1, got {cfg.min_output_len}")

    def sample(self, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        c = self.cfg
        if c.type == "fixed":
            p = np.full(n, c.prompt_len)
            o = np.full(n, c.output_len)
        elif c.type == "uniform":
            (pl, ph), (ol, oh) = _pair(c.prompt_len, "prompt_len"), _pair(c.output_len, "output_len")
            p = rng.integers(pl, ph + 1, size=n)
            o = rng.integers(ol, oh + 1, size=n)
        else:
            idx = rng.integers(0, len(self.pairs), size=n)
            p, o = self.pairs[idx, 0], self.pairs[idx, 1]
        if c.max_prompt_len:
            p = np.minimum(p, c.max_prompt_len)
        if c.max_output_len:
            o = np.minimum(o, c.max_output_len)
        o = np.maximum(o, c.min_output_len)
        return [(int(a), int(b)) for a, b in zip(p, o)]

    def max_total(self) -> int:
        """Longest prompt + output this sampler can draw (to size a KV cache)."""
        c = self.cfg
        if c.type == "fixed":
            p, o = c.prompt_len, c.output_len
        elif c.type == "uniform":
            p, o = c.prompt_len[1], c.output_len[1]
        else:
            p, o = int(self.pairs[:, 0].max()), int(self.pairs[:, 1].max())
        if c.max_prompt_len:
            p = min(p, c.max_prompt_len)
        if c.max_output_len:
            o = min(o, c.max_output_len)
        return int(p + max(o, c.min_output_len))


def lengths_for(cfg: ScenarioConfig, prompt_len: int | None = None, gen_len: int | None = None) -> LengthsConfig:
    """The scenario's lengths, or fixed ones from a cell's prompt_len / gen_len."""
    if cfg.lengths is not None:
        return cfg.lengths
    if prompt_len is None or gen_len is None:
        raise ValueError("scenario has no `lengths` and no cell prompt_len/gen_len to fall back on")
    return LengthsConfig(type="fixed", prompt_len=prompt_len, output_len=gen_len)


def scenario_max_seq(cfg: ScenarioConfig, prompt_len: int | None = None, gen_len: int | None = None) -> int:
    """KV-cache positions a backend must hold to serve every request of this scenario."""
    return LengthSampler(lengths_for(cfg, prompt_len, gen_len)).max_total()


def build_requests(cfg: ScenarioConfig, n: int, seed: int, prompt_len: int | None = None,
                   gen_len: int | None = None, first_id: int = 0) -> list[Request]:
    """n requests with seeded lengths and prompt token ids (the same list for every rate of a sweep)."""
    rng = np.random.default_rng([seed, 0x5EED])
    sampler = LengthSampler(lengths_for(cfg, prompt_len, gen_len))
    lo, hi = cfg.token_range
    out = []
    for i, (p, o) in enumerate(sampler.sample(n, rng)):
        ids = rng.integers(lo, hi, size=p).tolist()
        out.append(Request(id=first_id + i, prompt_len=p, max_tokens=o, prompt_ids=ids))
    return out


def poisson_schedule(rate: float, n: int, seed: int) -> np.ndarray:
    """Arrival offsets (s) of n requests at `rate`/s: cumulative exponential gaps, first gap included."""
    rng = np.random.default_rng([seed, 0xA1, int(round(rate * 1000))])
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def make_sharegpt_like(n: int = 400, seed: int = 20240601) -> dict:
    """The synthetic lengths list shipped as workloads/lengths/sharegpt_like.json.

    Log-normal prompt and output lengths, parameters chosen to resemble the
    right-skewed shape commonly reported for ShareGPT conversations (median
    prompt ~100 tokens with a long tail, median output ~200 tokens). No
    dataset was fitted: none is available offline. Regenerate with
    ``python -c "from harness.scenarios.loadgen import write_sharegpt_like; write_sharegpt_like()"``.
    """
    p_mu, p_sigma, o_mu, o_sigma, lo, hi = math.log(100.0), 1.0, math.log(200.0), 0.8, 4, 1024
    rng = np.random.default_rng(seed)
    p = np.clip(np.round(rng.lognormal(p_mu, p_sigma, n)), lo, hi).astype(int)
    o = np.clip(np.round(rng.lognormal(o_mu, o_sigma, n)), lo, hi).astype(int)
    return {
        "description": "SYNTHETIC (prompt_len, output_len) pairs in tokens, ShareGPT-like shape. "
                       "Not taken from any dataset: drawn from log-normal distributions whose parameters "
                       "were chosen by hand to resemble published ShareGPT length statistics.",
        "generator": {"function": "harness.scenarios.loadgen.make_sharegpt_like", "n": n, "seed": seed,
                      "rng": "numpy.random.default_rng(seed).lognormal, prompts drawn first then outputs",
                      "prompt": {"mu": p_mu, "sigma": p_sigma, "median": math.exp(p_mu)},
                      "output": {"mu": o_mu, "sigma": o_sigma, "median": math.exp(o_mu)},
                      "rounded_and_clipped_to": [lo, hi]},
        "pairs": [[int(a), int(b)] for a, b in zip(p, o)],
    }


def write_sharegpt_like(path: str | Path = LENGTHS_DIR / "sharegpt_like.json") -> None:
    d = make_sharegpt_like()
    text = json.dumps({k: v for k, v in d.items() if k != "pairs"}, indent=1)[:-2]
    text += ',\n "pairs": [\n' + ",\n".join(f"  [{a}, {b}]" for a, b in d["pairs"]) + "\n ]\n}\n"
    Path(path).write_text(text)


# --- the steady-state window ------------------------------------------------------------------

class SteadyWindow:
    """The stretch of a run during which the offered load is fully up.

    begin: closed loop (offline, single-stream, concurrency): the moment the
        target number of requests is first in flight (offline: all of them);
        server: the first completion (arrivals and departures both under way).
    end: closed loop: the first completion after the last request was issued
        (from then on nothing replaces a finished request); server: the last
        arrival. Offline therefore ends at its first completion.

    Meters passed in get ``begin_window("steady")`` / ``end_window("steady")``
    at those moments, from whichever thread sees them.
    """

    NAME = "steady"

    def __init__(self, meters: Sequence | None = None):
        self.meters = [m for m in (meters or []) if getattr(m, "available", True)]
        self.t_begin: Optional[float] = None  # perf_counter
        self.t_end: Optional[float] = None
        self.unix_begin: Optional[float] = None
        self.unix_end: Optional[float] = None
        self.readings: dict[str, list] = {}
        self.errors: dict[str, str] = {}
        self.note: Optional[str] = None
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            if self.t_begin is not None or self.t_end is not None:
                return
            self.t_begin, self.unix_begin = time.perf_counter(), time.time()
            for m in self.meters:
                try:
                    m.begin_window(self.NAME)
                except Exception as e:  # noqa: BLE001 - meter trouble is data, the run goes on
                    self.errors[m.name] = f"begin_window failed: {type(e).__name__}: {e}"

    def end(self, note: Optional[str] = None) -> None:
        with self._lock:
            if self.t_end is not None:
                return
            self.t_end, self.unix_end = time.perf_counter(), time.time()
            if self.t_begin is None:
                self.note = note or "the load never reached its steady state before draining"
                return
            if note:
                self.note = note
            for m in self.meters:
                if m.name in self.errors:
                    try:
                        m.end_window(self.NAME)
                    except Exception:  # noqa: BLE001
                        pass
                    continue
                try:
                    self.readings[m.name] = list(m.end_window(self.NAME) or [])
                except Exception as e:  # noqa: BLE001
                    self.errors[m.name] = f"end_window failed: {type(e).__name__}: {e}"

    @property
    def valid(self) -> bool:
        return self.t_begin is not None and self.t_end is not None and self.t_end > self.t_begin


class _Tracker:
    """In-flight bookkeeping shared by the request threads; fires the steady window."""

    def __init__(self, n: int, target: int, kind: str, window: SteadyWindow):
        self.n, self.target, self.kind, self.window = n, target, kind, window
        self.in_flight = self.issued = self.completed = 0
        self.lock = threading.Lock()

    def on_issue(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.issued += 1
            begin = self.kind != "server" and self.in_flight >= self.target
            end = self.kind == "server" and self.issued == self.n
        if begin:
            self.window.begin()
        if end:
            self.window.end(None if self.window.t_begin is not None else
                            "no request completed before the last arrival: no steady state")

    def on_complete(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.completed += 1
            begin = self.kind == "server"
            end = self.kind != "server" and self.issued == self.n
        if begin:
            self.window.begin()
        if end:
            self.window.end()


# --- driving a SUT -------------------------------------------------------------------------------

def drive(sut: SUT, requests: list[Request], *, kind: str, concurrency: int | None = None,
          schedule: Sequence[float] | None = None, meters: Sequence | None = None,
          max_in_flight: int = 1024, drain_timeout_s: float = 600.0) -> tuple[list[RequestResult], SteadyWindow, float]:
    """Issue `requests` to `sut` the way scenario `kind` does; returns (results in request order,
    steady window, t0). schedule: arrival offsets (s) for the server scenario."""
    if kind not in SCENARIO_TYPES:
        raise ValueError(f"unknown scenario {kind!r}; expected one of {', '.join(SCENARIO_TYPES)}")
    n = len(requests)
    if kind == "single-stream":
        cap = 1
    elif kind == "concurrency":
        cap = max(1, int(concurrency or 1))
    else:
        cap = max(1, int(max_in_flight))
    if kind == "server" and (schedule is None or len(schedule) != n):
        raise ValueError("the server scenario needs one scheduled arrival per request")
    window = SteadyWindow(meters)
    tracker = _Tracker(n, min(cap, n), kind, window)
    results: list[Optional[RequestResult]] = [None] * n
    slots = threading.BoundedSemaphore(cap)
    threads: list[threading.Thread] = []

    def work(i: int, req: Request, t_arrival: Optional[float]) -> None:
        t_issue = time.perf_counter()
        tracker.on_issue()
        try:
            res = as_result(sut.issue(req))
        except Exception as e:  # noqa: BLE001 - a failed request is a result; the run goes on
            res = failed(req, t_issue, f"{type(e).__name__}: {e}")
        if res.t_end is None:
            res.t_end = time.perf_counter()
        res.t_arrival = t_arrival if t_arrival is not None else res.t_issue
        results[i] = res
        tracker.on_complete()  # before the slot frees: the next issue must come after this completion
        slots.release()

    t0 = time.perf_counter()
    for i, req in enumerate(requests):
        t_arrival = None
        if schedule is not None:
            t_arrival = t0 + float(schedule[i])
            delay = t_arrival - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        slots.acquire()
        th = threading.Thread(target=work, args=(i, req, t_arrival), name=f"loadgen-{req.id}", daemon=True)
        th.start()
        threads.append(th)
    deadline = time.perf_counter() + drain_timeout_s
    for th in threads:
        th.join(timeout=max(0.0, deadline - time.perf_counter()))
    for i, r in enumerate(results):
        if r is None:  # still running: the SUT hung past the drain timeout
            r = failed(requests[i], t0, f"no answer within drain_timeout_s={drain_timeout_s:g} s of the last issue")
            r.t_arrival = t0
            results[i] = r
    window.end("the run ended before the load started draining")
    return [r for r in results if r is not None], window, t0


# --- metrics ---------------------------------------------------------------------------------------

def _pct(values: Sequence[float]) -> dict | None:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return None
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "mean": float(v.mean()), "min": float(v.min()),
            "max": float(v.max()), "n": int(v.size)}


def _per_request(r: RequestResult) -> dict:
    ttft = r.t_first_token - r.t_arrival if r.ok and r.t_first_token is not None else None
    e2e = r.t_end - r.t_arrival if r.ok and r.t_end is not None else None
    tpot = None
    if r.ok and r.n_generated >= 2 and r.t_first_token is not None and r.t_end is not None:
        tpot = (r.t_end - r.t_first_token) / (r.n_generated - 1)
    return {"ttft_s": ttft, "e2e_s": e2e, "tpot_s": tpot}


def _tokens_between(r: RequestResult, a: float, b: float) -> float:
    """Tokens of r that arrived in [a, b]: chunks in the window, scaled to the true count."""
    if not r.token_times:
        return 0.0
    inside = sum(1 for t in r.token_times if a <= t <= b)
    return inside * (r.n_generated / len(r.token_times)) if r.n_generated else float(inside)


def request_metrics(results: Sequence[RequestResult], window: SteadyWindow | None = None,
                    limits: LimitsConfig | None = None) -> dict:
    """Every latency and throughput figure of one scenario run (definitions: module docstring)."""
    limits = limits or LimitsConfig()
    ok = [r for r in results if r.ok]
    per = [_per_request(r) for r in ok]
    out: dict[str, Any] = {"requests": len(results), "ok": len(ok), "failed": len(results) - len(ok)}
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = r.error.split(":")[0][:80]
            errors[key] = errors.get(key, 0) + 1
    out["errors"] = errors
    out["count_mismatch"] = sum(1 for r in ok if r.count_mismatch)
    out["prompt_mismatch"] = sum(1 for r in ok if r.prompt_mismatch)
    out["ttft_s"] = _pct([p["ttft_s"] for p in per])
    out["tpot_s"] = _pct([p["tpot_s"] for p in per])
    out["e2e_s"] = _pct([p["e2e_s"] for p in per])
    gaps, skipped = [], 0
    for r in ok:
        if len(r.token_times) == r.n_generated and r.n_generated >= 2:
            gaps.extend(np.diff(r.token_times).tolist())
        elif r.n_generated >= 2:
            skipped += 1
    out["itl_s"] = _pct(gaps)
    out["itl_requests_skipped"] = skipped  # streams that merged tokens into fewer chunks
    out["issue_lag_s"] = _pct([r.t_issue - r.t_arrival for r in results if r.t_arrival is not None])
    starts = [r.t_arrival for r in results if r.t_arrival is not None]
    ends = [r.t_end for r in results if r.t_end is not None]
    span = (max(ends) - min(starts)) if starts and ends else 0.0
    out["span_s"] = span
    gen = sum(r.n_generated for r in ok)
    out["output_tokens"] = gen
    out["prompt_tokens"] = sum((r.n_prompt if r.n_prompt is not None else r.prompt_len) for r in ok)
    out["requests_per_s"] = len(ok) / span if span > 0 else None
    out["output_tokens_per_s"] = gen / span if span > 0 else None
    good = 0
    for r, p in zip(ok, per):
        if limits.ttft_s is not None and (p["ttft_s"] is None or p["ttft_s"] > limits.ttft_s):
            continue
        if limits.tpot_s is not None and p["tpot_s"] is not None and p["tpot_s"] > limits.tpot_s:
            continue
        good += 1
    out["goodput"] = {"limits": dataclasses.asdict(limits), "requests": good,
                      "fraction": good / len(results) if results else None,
                      "requests_per_s": good / span if span > 0 else None}
    if window is not None:
        out["steady"] = steady_metrics(results, window)
    return out


def steady_metrics(results: Sequence[RequestResult], window: SteadyWindow) -> dict:
    w: dict[str, Any] = {"valid": window.valid, "note": window.note}
    if not window.valid:
        return w
    a, b = window.t_begin, window.t_end
    toks = sum(_tokens_between(r, a, b) for r in results)
    done = sum(1 for r in results if r.ok and r.t_end is not None and a <= r.t_end <= b)
    w.update(duration_s=b - a, unix_begin=window.unix_begin, unix_end=window.unix_end,
             output_tokens=toks, requests_completed=done,
             output_tokens_per_s=toks / (b - a), requests_per_s=done / (b - a))
    return w


# --- energy over the steady window ---------------------------------------------------------------

def idle_baseline(meters: Sequence, seconds: float) -> dict[str, float]:
    """Average watts per meter key over `seconds` of doing nothing (for net energy)."""
    live = [m for m in meters if getattr(m, "available", True)]
    if not live or seconds <= 0:
        return {}
    opened = []
    for m in live:
        try:
            m.begin_window("idle-before")
            opened.append(m)
        except Exception:  # noqa: BLE001
            pass
    time.sleep(seconds)
    out = {}
    for m in opened:
        try:
            for r in m.end_window("idle-before") or []:
                if r.joules is not None and r.duration_s > 0:
                    out[r.meter] = r.joules / r.duration_s
        except Exception:  # noqa: BLE001
            pass
    return out


def steady_energy(window: SteadyWindow, results: Sequence[RequestResult], settings: Any = None,
                  idle_w: dict[str, float] | None = None) -> dict:
    """Energy per output token over the steady window, per meter reading, with provenance.

    settings: anything with min_window_s / min_updates (harness.energy.EnergySettings);
    a reading from a shorter window, or with fewer meter updates, is flagged
    "short-window", never silently reported.
    """
    min_s = getattr(settings, "min_window_s", 1.0)
    min_up = getattr(settings, "min_updates", 10)
    idle_w = idle_w or {}
    out: dict[str, Any] = {"window": "steady", "meters": []}
    if not window.meters:
        out["status"] = "no meters"
        return out
    if not window.valid:
        out["status"] = "no steady window"
        out["reason"] = window.note
        return out
    a, b = window.t_begin, window.t_end
    toks = sum(_tokens_between(r, a, b) for r in results)
    done = sum(1 for r in results if r.ok and r.t_end is not None and a <= r.t_end <= b)
    out.update(status="ok", tokens=toks, requests_completed=done, duration_s=b - a)
    for name, why in window.errors.items():
        out["meters"].append({"meter": name, "quality": "unavailable", "reason": why, "gross_j": None})
    for readings in window.readings.values():
        for r in readings:
            quality, reason = r.quality, r.reason
            if quality == "ok" and r.joules is not None:
                short = []
                if r.duration_s < min_s:
                    short.append(f"{r.duration_s:.3f} s < min_window_s {min_s:g} s")
                if r.n_updates < min_up:
                    short.append(f"{r.n_updates} meter updates < min_updates {min_up}")
                if short:
                    quality, reason = "short-window", "; ".join(short)
            g = r.joules
            iw = idle_w.get(r.meter)
            net = g - iw * r.duration_s if g is not None and iw is not None else None
            out["meters"].append({
                "meter": r.meter, "method": r.method, "scope": r.scope, "quality": quality, "reason": reason,
                "update_period_s": r.update_period_s, "n_updates": r.n_updates, "duration_s": r.duration_s,
                "gross_j": g, "net_j": net, "idle_w": iw, "avg_w": r.watts,
                "j_per_output_token_gross": g / toks if g is not None and toks else None,
                "j_per_output_token_net": net / toks if net is not None and toks else None,
                "output_tokens_per_j_gross": toks / g if g else None,
                "j_per_request_gross": g / done if g is not None and done else None,
            })
    return out


# --- scenarios -----------------------------------------------------------------------------------

def request_rows(results: Sequence[RequestResult], t0: float, token_times: bool = False) -> list[dict]:
    """Raw per-request samples for a record (times relative to the run start)."""
    rows = []
    for r in results:
        p = _per_request(r) if r.ok else {"ttft_s": None, "e2e_s": None, "tpot_s": None}
        row = {"id": r.id, "prompt_len": r.prompt_len, "n_prompt": r.n_prompt, "n_requested": r.n_requested,
               "n_generated": r.n_generated, "n_chunks": r.n_chunks,
               "arrival_s": None if r.t_arrival is None else r.t_arrival - t0,
               "issue_lag_s": None if r.t_arrival is None else r.t_issue - r.t_arrival,
               **p, "error": r.error, "count_mismatch": r.count_mismatch, "prompt_mismatch": r.prompt_mismatch,
               "finish_reason": r.finish_reason}
        if r.notes:
            row["notes"] = r.notes
        if token_times:
            row["token_times_s"] = [t - t0 for t in r.token_times]
        rows.append(row)
    return rows


def _warmup(sut: SUT, cfg: ScenarioConfig, requests: list[Request]) -> int:
    n = 0
    for req in requests[: cfg.warmup_requests]:
        w = dataclasses.replace(req, id=-1 - n)
        try:
            sut.issue(w)
        except Exception:  # noqa: BLE001 - a failing warm-up shows again in the measured run
            pass
        n += 1
    return n


def run_once(sut: SUT, cfg: ScenarioConfig, requests: list[Request], *, rate: float | None = None,
             concurrency: int | None = None, seed: int = 0, meters: Sequence | None = None,
             energy_settings: Any = None, idle_w: dict[str, float] | None = None) -> dict:
    """One measured pass of a scenario over `requests`; returns its record part."""
    schedule = None
    if cfg.type == "server":
        schedule = poisson_schedule(rate, len(requests), seed)
        if cfg.duration_s is not None:
            keep = int(np.searchsorted(schedule, cfg.duration_s, side="right"))
            requests, schedule = requests[: max(1, keep)], schedule[: max(1, keep)]
    conc = concurrency if cfg.type == "concurrency" else None
    results, window, t0 = drive(sut, requests, kind=cfg.type, concurrency=conc, schedule=schedule,
                                meters=meters, max_in_flight=cfg.max_in_flight,
                                drain_timeout_s=cfg.drain_timeout_s)
    out: dict[str, Any] = {"scenario": cfg.type, "n_requests": len(requests)}
    if rate is not None:
        out["rate"] = rate
        arr = np.asarray(schedule)
        out["offered_rate"] = (len(arr) / arr[-1]) if len(arr) and arr[-1] > 0 else None
    if conc is not None:
        out["concurrency"] = conc
    out["metrics"] = request_metrics(results, window, cfg.limits)
    out["steady_window"] = {"begin_s": None if window.t_begin is None else window.t_begin - t0,
                            "end_s": None if window.t_end is None else window.t_end - t0,
                            "unix_begin": window.unix_begin, "unix_end": window.unix_end,
                            "valid": window.valid, "note": window.note}
    out["energy"] = steady_energy(window, results, energy_settings, idle_w)
    out["requests"] = request_rows(results, t0, cfg.record_token_times)
    return out


def run_scenario(sut: SUT, cfg: ScenarioConfig | dict, *, seed: int = 0, prompt_len: int | None = None,
                 gen_len: int | None = None, concurrency: int | None = None, meters: Sequence | None = None,
                 energy_settings: Any = None, on_result: Callable[[dict], None] | None = None) -> dict:
    """Run a whole scenario (every rate of a server sweep) against `sut`.

    prompt_len / gen_len: a cell's fixed lengths, used when the scenario has no
    `lengths`. concurrency: the default in-flight count of the concurrency
    scenario (a cell's batch) when the scenario gives none. meters: started
    meters; each run's steady window is measured on them, with an idle
    baseline of ``energy_settings.idle_s`` seconds first (0 or no settings: no
    net figures).

    Returns ``{"scenario": {...config}, "runs": [one dict per rate, or one],
    "summary": [one flat row per run]}``.
    """
    cfg = scenario_from_dict(cfg)
    requests = build_requests(cfg, cfg.requests, seed, prompt_len, gen_len)
    warm = _warmup(sut, cfg, requests)
    idle_w = idle_baseline(meters or [], getattr(energy_settings, "idle_s", 0.0) or 0.0) if meters else {}
    runs = []
    points: list[Any] = list(cfg.rates) if cfg.type == "server" else [None]
    conc = (cfg.concurrency or concurrency or 1) if cfg.type == "concurrency" else None
    for i, rate in enumerate(points):
        if i and cfg.cooldown_s:
            time.sleep(cfg.cooldown_s)
        run = run_once(sut, cfg, requests, rate=rate, concurrency=conc, seed=seed, meters=meters,
                       energy_settings=energy_settings, idle_w=idle_w)
        run["warmup_requests"] = warm
        runs.append(run)
        if on_result:
            on_result(run)
    return {"scenario": _jsonable(dataclasses.asdict(cfg)), "runs": runs, "summary": [summary_row(r) for r in runs]}


def summary_row(run: dict) -> dict:
    """One flat row of a run for tables: the latency-throughput figures."""
    m = run["metrics"]

    def g(key, stat):
        v = m.get(key)
        return v.get(stat) if v else None

    energy = next((e for e in run.get("energy", {}).get("meters", []) if e.get("gross_j") is not None), None)
    return {"scenario": run["scenario"], "rate": run.get("rate"), "offered_rate": run.get("offered_rate"),
            "concurrency": run.get("concurrency"),
            "requests": m["requests"], "failed": m["failed"], "count_mismatch": m["count_mismatch"],
            "achieved_rps": m["requests_per_s"], "output_tps": m["output_tokens_per_s"],
            "ttft_p50_s": g("ttft_s", "p50"), "ttft_p99_s": g("ttft_s", "p99"),
            "tpot_p50_s": g("tpot_s", "p50"), "tpot_p99_s": g("tpot_s", "p99"),
            "itl_p50_s": g("itl_s", "p50"), "itl_p90_s": g("itl_s", "p90"), "itl_p99_s": g("itl_s", "p99"),
            "goodput_rps": m["goodput"]["requests_per_s"], "goodput_fraction": m["goodput"]["fraction"],
            "steady_output_tps": m.get("steady", {}).get("output_tokens_per_s"),
            "j_per_output_token": energy.get("j_per_output_token_gross") if energy else None,
            "energy_meter": energy.get("meter") if energy else None,
            "energy_quality": energy.get("quality") if energy else None}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    return x


def format_table(rows: Iterable[dict]) -> str:
    """A plain-text latency-throughput table of summary rows."""
    cols = [("rate", "rate/s", "{:.2f}"), ("offered_rate", "drawn/s", "{:.2f}"), ("achieved_rps", "req/s", "{:.2f}"), ("output_tps", "out tok/s", "{:.1f}"),
            ("ttft_p50_s", "TTFT p50 ms", "ms"), ("ttft_p99_s", "TTFT p99 ms", "ms"),
            ("tpot_p50_s", "TPOT p50 ms", "ms"), ("itl_p99_s", "ITL p99 ms", "ms"),
            ("goodput_rps", "goodput/s", "{:.2f}"), ("goodput_fraction", "good %", "pct"),
            ("failed", "failed", "{}")]
    lines = [" | ".join(h for _, h, _ in cols)]
    for r in rows:
        cells = []
        for k, h, f in cols:
            v = r.get(k)
            if v is None:
                s = "-"
            elif f == "ms":
                s = f"{1000 * v:.1f}"
            elif f == "pct":
                s = f"{100 * v:.0f}"
            else:
                s = f.format(v)
            cells.append(s.rjust(len(h)))
        lines.append(" | ".join(cells))
    return "\n".join(lines)
