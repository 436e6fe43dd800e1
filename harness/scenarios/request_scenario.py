"""What the request scenarios (single-stream, concurrency, server) share: their common
keys, the system under test they drive, and one measured run from requests to outcome.

A run: build the requests (seeded lengths and prompt ids; every pass of a sweep has
the same lengths, and prompts of its own), let the SUT prepare them, warm up on
prompts of their own, take the idle baseline, then one measured pass per point of the
scenario (one, or one per rate of a server sweep), each through the load generator
with its steady window measured by the energy engine. No measured prompt was sent
before it is measured, so a server's prefix cache cannot answer it unless
``shared_prefix_tokens`` asks for exactly that.

The system under test of a cell is the backend itself when it is a request backend (it
has ``issue``), else the backend's native server where it ships one, else the
in-process batching engine over the model backend.
"""
from __future__ import annotations

from abc import abstractmethod
import dataclasses
from dataclasses import dataclass, field
import time
from typing import Callable, ClassVar, Optional

import numpy as np

from backends.base import Backend, Request, RequestBackend
from harness.energy import SteadyEnergy
from harness.records import EnergyRecord
from harness.scenarios.base import CellContext, ProducedSequence, RequestOutputs, Scenario, ScenarioOutcome
from harness.scenarios.engine import BatchingEngine, EngineSUT
from harness.scenarios.lengths import LengthsConfig, LengthSampler, fixed_lengths
from harness.scenarios.loadgen import SUT, build_requests, drive, redraw_prompts
from harness.scenarios.request_metrics import LimitsConfig, request_metrics, request_rows


@dataclass
class RequestConfig:
    """The keys every request scenario takes (`scenario:` in a suite, with `type:`)."""

    type: str = ""
    requests: int = 32  # measured requests (per rate for server)
    warmup_requests: int = 2  # issued one at a time before measuring, not recorded
    lengths: Optional[LengthsConfig] = None  # default: fixed at the cell's prompt_len / gen_len
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    token_range: list[int] = field(default_factory=lambda: [10, 1000])  # prompt token ids drawn from [lo, hi)
    max_in_flight: int = 1024  # thread cap; a request over it is issued late (its lag is reported)
    drain_timeout_s: float = 600.0  # after the last issue, give up waiting on requests still running
    record_token_times: bool = False  # keep every request's token times in the record
    # every prompt starts with the same this-many tokens (text prompts: as many words), to
    # measure a server's prefix cache on purpose; 0: prompts share no prefix beyond chance
    shared_prefix_tokens: int = 0

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for values the type check cannot catch."""
        out: list[tuple[str, str]] = []
        if self.requests < 1:
            out.append(("requests", f"expected at least 1 request, got {self.requests}"))
        if len(self.token_range) != 2 or not (0 <= self.token_range[0] < self.token_range[1]):
            out.append(("token_range", f"expected [lo, hi] with 0 <= lo < hi, got {self.token_range!r}"))
        if self.shared_prefix_tokens < 0:
            out.append(("shared_prefix_tokens", f"expected 0 or more tokens, got {self.shared_prefix_tokens}"))
        return out


_WARMUP_STREAM = 0x3A  # the warm-up prompts' id stream (passes use 1, 2, ...)


def request_warnings(m: dict) -> list[str]:
    """The cell's warnings from one pass's metrics: failures, and every figure that is
    not what it claims to be (token counts off, TPOT hidden by burst delivery)."""
    out = [f"{m['failed']} of {m['requests']} requests failed"] if m["failed"] else []
    if m["count_mismatch"]:
        out.append(f"{m['count_mismatch']} requests generated a different number of tokens than asked")
    if m["prompt_mismatch"]:
        out.append(f"{m['prompt_mismatch']} requests had a prompt of a different length in tokens than asked "
                   f"(the server's count is in each request's n_prompt and in prompt_tokens)")
    if m.get("prompt_unverified"):
        out.append(f"{m['prompt_unverified']} requests' prompt lengths in tokens are unverified: the server "
                   "reported none (no usage in the stream, no tokenize endpoint)")
    if m.get("tpot_not_observed"):
        out.append(f"{m['tpot_not_observed']} of {m['ok']} requests arrived in one burst (more than 80 % of "
                   "inter-token gaps under 50 µs): TPOT and inter-token latency not observed for them, and left "
                   "out of their percentiles")
    return out


@dataclass
class Pass:
    """One measured pass over the requests, and how they are issued."""

    requests: list[Request]
    in_flight: int  # closed loop: requests kept in flight; open loop: the cap
    schedule: Optional[np.ndarray] = None  # arrival offsets (s): an open loop
    rate: Optional[float] = None  # requests/s asked for (server)
    offered_rate: Optional[float] = None  # requests/s the drawn arrivals make
    concurrency: Optional[int] = None


@dataclass
class RequestRun:
    """What one measured pass gave."""

    scenario: str
    n_requests: int
    metrics: dict  # harness.scenarios.request_metrics.request_metrics
    steady_window: dict
    requests: list[dict]  # one row per request
    warmup_requests: int
    rate: Optional[float] = None
    offered_rate: Optional[float] = None
    concurrency: Optional[int] = None
    energy: Optional[EnergyRecord] = None  # None: no meters
    timeline: list[dict] = field(default_factory=list)  # power samples over the idle and steady windows
    # ok requests whose SUT returned the produced token ids, in request order (for the gate)
    produced: list[ProducedSequence] = field(default_factory=list)

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("energy", "timeline", "produced")}
        d["energy"] = self.energy.to_json() if self.energy is not None else None
        return d

    def summary_row(self) -> dict:
        """One flat row for tables: the latency-throughput figures."""
        m = self.metrics

        def g(key, stat):
            v = m.get(key)
            return v.get(stat) if v else None

        meters = self.energy.meters if self.energy is not None else []
        energy = next((e for e in meters if (e.windows.get("steady") or {}).get("gross_j") is not None), None)
        return {"scenario": self.scenario, "rate": self.rate, "offered_rate": self.offered_rate,
                "concurrency": self.concurrency,
                "requests": m["requests"], "failed": m["failed"], "count_mismatch": m["count_mismatch"],
                "achieved_rps": m["requests_per_s"], "output_tps": m["output_tokens_per_s"],
                "ttft_p50_s": g("ttft_s", "p50"), "ttft_p99_s": g("ttft_s", "p99"),
                "tpot_p50_s": g("tpot_s", "p50"), "tpot_p99_s": g("tpot_s", "p99"),
                "itl_p50_s": g("itl_s", "p50"), "itl_p90_s": g("itl_s", "p90"), "itl_p99_s": g("itl_s", "p99"),
                "goodput_rps": m["goodput"]["requests_per_s"], "goodput_fraction": m["goodput"]["fraction"],
                "steady_output_tps": m.get("steady", {}).get("output_tokens_per_s"),
                "j_per_output_token": energy.j_per_generated_token_gross if energy else None,
                "energy_meter": energy.meter if energy else None,
                "energy_quality": energy.quality if energy else None}


class RequestScenario(Scenario):
    """Base of the scenarios that issue requests; a subclass says how (:meth:`passes`)."""

    Config: ClassVar[type] = RequestConfig
    backend_kinds: ClassVar[tuple[str, ...]] = ("model", "request")

    def lengths(self, prompt_len: int | None, gen_len: int | None) -> LengthsConfig:
        """The scenario's lengths, or fixed ones from a cell's prompt_len / gen_len."""
        if self.config.lengths is not None:
            return self.config.lengths
        if prompt_len is None or gen_len is None:
            raise ValueError("scenario has no `lengths` and no cell prompt_len/gen_len to fall back on")
        return fixed_lengths(prompt_len, gen_len)

    def max_seq(self, prompt_len: int, gen_len: int) -> int:
        return LengthSampler(self.lengths(prompt_len, gen_len)).max_total()

    @abstractmethod
    def passes(self, requests: list[Request], *, seed: int, batch: int, rate: float | None) -> list[Pass]:
        """The measured passes over `requests`. batch: the cell's batch (the engine's
        largest); rate: one point of a server sweep, None for all of them."""

    @property
    def cooldown_s(self) -> float:
        """Pause between two passes."""
        return 0.0

    def config_json(self, rate: float | None) -> dict:
        """The config as it ran (one rate of a sweep: that rate only), for the record."""
        return dataclasses.asdict(self.config)

    # --- running -------------------------------------------------------------------------------
    def run(self, ctx: CellContext) -> ScenarioOutcome:
        cell = ctx.cell
        energy = SteadyEnergy(ctx.meters, ctx.energy_settings) if ctx.meters else None
        sut, engine = self._sut(ctx)
        try:
            runs = self.measure(sut, seed=ctx.seed, prompt_len=cell.prompt_len, gen_len=cell.gen_len,
                                batch=cell.batch, rate=cell.rate, energy=energy)
            described = sut.describe()
        finally:
            if engine is not None:
                engine.stop()
        first = runs[0]
        m = first.metrics
        return ScenarioOutcome(
            status="ok" if m["ok"] else "failed", metrics=m, summary=[r.summary_row() for r in runs],
            requests=first.requests, steady_window=first.steady_window,
            runs=[r.to_json() for r in runs] if len(runs) > 1 else None, sut=described,
            scenario_config=self.config_json(cell.rate), warnings=request_warnings(m), energy=first.energy,
            timeline=first.timeline, timed_output=self._timed_output(ctx.backend, sut, runs))

    @staticmethod
    def _timed_output(backend: Backend, sut: SUT, runs: list[RequestRun]) -> RequestOutputs:
        """The first ok requests with token ids, for the accuracy gate (harness.accuracy
        bounds how many it re-scores), or why there are none."""
        from harness.accuracy import TIMED_SEQUENCES

        if isinstance(backend, RequestBackend):
            source = "endpoint"
            why = ("the endpoint returned no token ids to re-score: they are asked for, and checked, only where the "
                   "endpoint is declared to serve the workload's exact weights and prompts go as token ids "
                   "(openai-http: serves_reference_weights: true, send_token_ids: true)")
        else:
            # a native server runs the backend's own loaded weights: its ids are checkable too
            source = "in-process engine" if isinstance(sut, EngineSUT) else "native server"
            why = f"no measured request completed with token ids ({source})"
        kept = [seq for r in runs for seq in r.produced][:TIMED_SEQUENCES]
        return RequestOutputs(kept=kept, reason=None if kept else why, source=source)

    def _sut(self, ctx: CellContext) -> tuple[SUT, Optional[BatchingEngine]]:
        """The system under test, and the engine started for it (to stop after the cell).
        A native server belongs to its backend, which closes it."""
        backend = ctx.backend
        if isinstance(backend, RequestBackend):
            return backend, None
        native = backend.native_server()
        if native is not None:
            return native, None
        engine = BatchingEngine(backend, ctx.vocab_size, max_batch=ctx.cell.batch,
                                max_seq=self.max_seq(ctx.cell.prompt_len, ctx.cell.gen_len)).start()
        return EngineSUT(engine), engine

    def measure(self, sut: SUT, *, seed: int, prompt_len: int | None = None, gen_len: int | None = None,
                batch: int = 1, rate: float | None = None, energy: SteadyEnergy | None = None,
                on_run: Callable[[RequestRun], None] | None = None) -> list[RequestRun]:
        """Warm up, take the idle baseline, and run every pass against `sut`.

        prompt_len / gen_len: a cell's fixed lengths, used when the scenario has no
        `lengths`. energy: the meters' engine (None: no energy figures)."""
        cfg = self.config
        requests = build_requests(self.lengths(prompt_len, gen_len), cfg.requests, seed, cfg.token_range,
                                  shared_prefix_tokens=cfg.shared_prefix_tokens)
        passes = self.passes(requests, seed=seed, batch=batch, rate=rate)
        # prompts of their own for every point of a sweep, numbered by the point's place in
        # the whole sweep: a server@8 cell run after a server@4 cell (one cell per rate, each
        # in its own measure call) must not re-send server@4's prompts to a prefix cache
        points = [pt.rate for pt in self.points()]
        for i, p in enumerate(passes):
            k = points.index(p.rate) if p.rate is not None and p.rate in points else i
            if k:
                p.requests = redraw_prompts(p.requests, seed, k, cfg.token_range, cfg.shared_prefix_tokens)
        warmups = redraw_prompts(requests[: cfg.warmup_requests], seed, _WARMUP_STREAM, cfg.token_range,
                                 cfg.shared_prefix_tokens, first_id=-1)
        if isinstance(sut, RequestBackend):  # e.g. openai-http counts text prompts with the server's tokenizer
            sut.prepare_requests([*warmups, *(r for p in passes for r in p.requests)])
        warm = self._warmup(sut, warmups)
        if energy is not None:
            energy.measure_idle()
        runs = []
        for i, p in enumerate(passes):
            if i and self.cooldown_s:
                time.sleep(self.cooldown_s)
            run = self._run_pass(sut, p, energy, warm)
            runs.append(run)
            if on_run:
                on_run(run)
        return runs

    def _warmup(self, sut: SUT, requests: list[Request]) -> int:
        for req in requests:
            try:
                sut.issue(req)
            except Exception:  # noqa: BLE001 - a failing warm-up shows again in the measured run
                pass
        return len(requests)

    def _run_pass(self, sut: SUT, p: Pass, energy: SteadyEnergy | None, warm: int) -> RequestRun:
        cfg = self.config
        hook = energy.window() if energy is not None else None
        results, window, t0 = drive(sut, p.requests, in_flight=p.in_flight, schedule=p.schedule, window_hook=hook,
                                    drain_timeout_s=cfg.drain_timeout_s)
        metrics = request_metrics(results, window, cfg.limits)
        run = RequestRun(
            scenario=self.name, n_requests=len(p.requests), rate=p.rate, offered_rate=p.offered_rate,
            concurrency=p.concurrency, metrics=metrics, warmup_requests=warm,
            steady_window={"begin_s": None if window.t_begin is None else window.t_begin - t0,
                           "end_s": None if window.t_end is None else window.t_end - t0,
                           "unix_begin": window.unix_begin, "unix_end": window.unix_end,
                           "valid": window.valid, "note": window.note},
            requests=request_rows(results, t0, cfg.record_token_times), produced=_produced(p.requests, results))
        if energy is not None:
            steady = metrics["steady"]
            measured = energy.measure(hook, steady.get("output_tokens", 0.0), steady.get("requests_completed", 0),
                                      no_window=None if window.valid else window.note or "no steady window")
            run.energy, run.timeline = measured.record, measured.timeline
        return run


def _produced(requests: list[Request], results: list) -> list[ProducedSequence]:
    """Each ok result that carries token ids, with the prompt ids its request sent."""
    prompts = {r.id: r.prompt_ids for r in requests}
    return [ProducedSequence([int(t) for t in prompts[r.id]], list(r.token_ids), sequence=r.id)
            for r in sorted(results, key=lambda r: r.id)
            if r.ok and r.token_ids and prompts.get(r.id)]
