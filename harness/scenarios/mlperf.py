"""mlperf-server / mlperf-offline: MLPerf LoadGen, not our load generator, decides when
each request is issued, and judges the run by MLPerf's own rules.

The cell's requests form LoadGen's query sample library (QSL: one sample per request,
its prompt and output length); LoadGen's Server scenario issues samples at Poisson
arrivals of ``target_qps`` (Offline: all at once) until both ``min_duration_s`` and
``min_query_count`` are met. Each query becomes one :class:`backends.base.Request` to the
cell's system under test (the request backend, a native server, or the in-process
batching engine, as for every request scenario), on a thread of its own so LoadGen's
issue thread never waits on the SUT.

Two clocks time every request:

* ours (the request's ``RequestResult``: TTFT, TPOT, req/s, the steady window and
  energy), so the cell has the same typed outcome as the ``server`` scenario;
* LoadGen's: it timestamps ``FirstTokenComplete`` and ``QuerySamplesComplete`` calls and
  writes ``mlperf_log_summary.txt`` / ``mlperf_log_detail.txt`` into the cell's folder
  (``<run>/mlperf/<cell>/``). Its VALID/INVALID verdict and percentiles, parsed from the
  summary, are recorded in the cell under ``sut.mlperf``.

Token latencies (``use_token_latencies``) need the first token reported the moment it
exists. The in-process engine streams into a queue we hand it, so the first token is
reported from the engine's own thread as it is produced. A request backend or native
server returns only when the request ends: for those LoadGen times whole queries
(``use_token_latencies`` off, recorded with the reason) and TTFT/TPOT come from our clock.

``mlcommons-loadgen`` is an optional extra (``pip install accel-harness[mlperf]``); a suite
naming these scenarios without it is refused at validation.
"""
from __future__ import annotations

import array
from dataclasses import asdict, dataclass
import importlib.util
import itertools
import math
from pathlib import Path
import queue
import re
import tempfile
import threading
import time
from typing import Any, Callable, ClassVar, Literal, Optional

from backends.base import Request, RequestBackend, RequestResult
from harness.energy import SteadyEnergy
from harness.scenarios.base import CellContext, ScenarioOutcome, ScenarioPoint
from harness.scenarios.engine import BatchingEngine, EngineSUT
from harness.scenarios.loadgen import SUT, SteadyWindow, failed
from harness.scenarios.request_metrics import request_metrics, request_rows
from harness.scenarios.request_scenario import Pass, RequestConfig, RequestRun, RequestScenario, _produced

LOG_FOLDER = "mlperf"  # under the run folder, one sub-folder per cell
SUMMARY_FILE = "mlperf_log_summary.txt"
DETAIL_FILE = "mlperf_log_detail.txt"
_NS = 1e9


def loadgen_available() -> bool:
    return importlib.util.find_spec("mlperf_loadgen") is not None


@dataclass
class MlperfConfig(RequestConfig):
    """LoadGen's test settings, in seconds (LoadGen takes ns and ms). `requests` is the
    size of the query sample library: LoadGen draws its queries from these samples,
    repeating them when it issues more queries than there are samples."""

    type: str = ""
    min_duration_s: float = 10.0  # LoadGen's min_duration (its own default is 600 s)
    max_duration_s: float = 0.0  # 0: no cap
    min_query_count: int = 32
    max_query_count: int = 0  # 0: no cap
    use_token_latencies: bool = True  # judge TTFT / TPOT (LLM rules) rather than whole-query latency
    ttft_latency_s: float = 2.0  # server: the TTFT LoadGen's percentile must stay under
    tpot_latency_s: float = 0.2  # server: the same for TPOT
    target_latency_s: float = 10.0  # server without token latencies: whole-query latency bound
    target_latency_percentile: float = 0.99

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not loadgen_available():
            out.append(("type", f"scenario {self.type!r} needs MLPerf LoadGen: pip install 'accel-harness[mlperf]' "
                                "(the mlcommons-loadgen package)"))
        for key in ("min_duration_s", "ttft_latency_s", "tpot_latency_s", "target_latency_s"):
            v = getattr(self, key)
            if not (v > 0 and math.isfinite(v)):
                out.append((key, f"expected > 0 seconds, got {v!r}"))
        if not (self.max_duration_s >= 0 and math.isfinite(self.max_duration_s)):
            out.append(("max_duration_s", f"expected >= 0 seconds (0: no cap), got {self.max_duration_s!r}"))
        elif 0 < self.max_duration_s < self.min_duration_s:
            out.append(("max_duration_s", f"{self.max_duration_s:g} s is below min_duration_s "
                                          f"({self.min_duration_s:g} s)"))
        if self.min_query_count < 1:
            out.append(("min_query_count", f"expected at least 1 query, got {self.min_query_count}"))
        if self.max_query_count < 0:
            out.append(("max_query_count", f"expected >= 0 queries (0: no cap), got {self.max_query_count}"))
        if not 0 < self.target_latency_percentile < 1:
            out.append(("target_latency_percentile",
                        f"expected a fraction in (0, 1), e.g. 0.99, got {self.target_latency_percentile!r}"))
        return out


@dataclass
class MlperfServerConfig(MlperfConfig):
    type: Literal["mlperf-server"] = "mlperf-server"
    target_qps: float = 0.0  # LoadGen's server_target_qps: mean Poisson arrival rate

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not (self.target_qps > 0 and math.isfinite(self.target_qps)):
            out.append(("target_qps", f"expected a rate > 0 queries/s, got {self.target_qps!r}"))
        return out


@dataclass
class MlperfOfflineConfig(MlperfConfig):
    type: Literal["mlperf-offline"] = "mlperf-offline"
    expected_qps: float = 1.0  # LoadGen's offline_expected_qps: sizes the one query it issues

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not (self.expected_qps > 0 and math.isfinite(self.expected_qps)):
            out.append(("expected_qps", f"expected > 0 queries/s, got {self.expected_qps!r}"))
        return out


# --- LoadGen's summary ---------------------------------------------------------------------------

_LINE = re.compile(r"^\s*([^:=*][^:]*?)\s*:\s*(.+?)\s*$")


def parse_summary(text: str) -> dict[str, Any]:
    """mlperf_log_summary.txt as {"result": VALID|INVALID, "fields": {key: value}} plus the
    token / query latency percentiles in seconds (``ttft_s``, ``tpot_s``, ``latency_s``:
    {"p50": ..., "p99": ..., "mean": ...}) where the summary has them."""
    fields: dict[str, Any] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            key, val = m.group(1), m.group(2)
            try:
                fields[key] = float(val) if "." in val or "e" in val.lower() else int(val)
            except ValueError:
                fields[key] = val
    out: dict[str, Any] = {"result": fields.get("Result is"), "scenario": fields.get("Scenario"),
                           "fields": fields}
    # "50.00 percentile first token latency (ns)", "Mean First Token latency (ns)", ...
    kinds = {"ttft_s": "first token latency", "tpot_s": "time to output token", "latency_s": "latency"}
    for name, phrase in kinds.items():
        stats: dict[str, float] = {}
        for key, val in fields.items():
            low = key.lower()
            if not low.endswith("(ns)") or not isinstance(val, (int, float)):
                continue
            body = low[: -len("(ns)")].strip()
            if name == "latency_s" and ("first token" in body or "output token" in body):
                continue
            if not body.endswith(phrase):
                continue
            head = body[: -len(phrase)].strip()
            pm = re.match(r"^([\d.]+) percentile$", head)
            if pm:
                stats[f"p{float(pm.group(1)):g}"] = val / _NS
            elif head in ("mean", "min", "max"):
                stats[head] = val / _NS
        if stats:
            out[name] = stats
    return out


# --- the first token, as it is produced ------------------------------------------------------------

class _NotifyingSink:
    """The queue an engine job streams into: it calls `on_first` (from the engine's thread)
    the moment the first token is put, then hands every event on unchanged."""

    def __init__(self, on_first: Optional[Callable[[int], None]]):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._on_first = on_first

    def put(self, ev) -> None:
        if self._on_first is not None and ev[0] != "error":
            cb, self._on_first = self._on_first, None
            try:
                cb(int(ev[1]))
            except Exception:  # noqa: BLE001 - a reporting failure must never stop the engine's thread
                pass
        self._q.put(ev)

    def get(self, timeout=None):
        return self._q.get(timeout=timeout)


class _FirstTokenEngine:
    """The batching engine as EngineSUT sees it, with a first-token callback per request:
    the thread that issues a request sets it (thread-local), and the job's sink calls it."""

    def __init__(self, engine: BatchingEngine):
        self._engine = engine
        self.local = threading.local()

    def submit(self, prompt, max_tokens, **kw):
        kw.setdefault("sink", _NotifyingSink(getattr(self.local, "on_first", None)))
        return self._engine.submit(prompt, max_tokens, **kw)

    def __getattr__(self, name):  # vocab_size, max_batch, cancel, policy, stats_json...
        return getattr(self._engine, name)


# --- the scenario ---------------------------------------------------------------------------------

class _MlperfScenario(RequestScenario):
    Config: ClassVar[type] = MlperfConfig
    lg_scenario: ClassVar[str] = ""  # mlperf_loadgen.TestScenario member

    def __init__(self, config: Any):
        super().__init__(config)
        self._hook_engine: Optional[_FirstTokenEngine] = None
        self._cell_dir: Optional[Path] = None
        self._log_rel = ""
        self._result: Optional[dict] = None

    def config_json(self, rate: float | None) -> dict:
        return asdict(self.config)

    def passes(self, requests: list[Request], *, seed: int, batch: int, rate: float | None) -> list[Pass]:
        # one pass; LoadGen decides the arrivals, so there is no schedule of ours
        return [Pass(requests, in_flight=self.config.max_in_flight, rate=rate)]

    def _sut(self, ctx: CellContext) -> tuple[SUT, Optional[BatchingEngine]]:
        backend = ctx.backend
        self._hook_engine = None
        if isinstance(backend, RequestBackend):
            return backend, None
        native = backend.native_server()
        if native is not None:  # it belongs to its backend, which closes it
            return native, None
        engine = BatchingEngine(backend, ctx.vocab_size, max_batch=ctx.cell.batch,
                                max_seq=self.max_seq(ctx.cell.prompt_len, ctx.cell.gen_len)).start()
        self._hook_engine = _FirstTokenEngine(engine)
        return EngineSUT(self._hook_engine), engine  # type: ignore[arg-type] - duck-typed engine

    def run(self, ctx: CellContext) -> ScenarioOutcome:
        base = Path(ctx.run_dir) / LOG_FOLDER if ctx.run_dir else Path(tempfile.mkdtemp(prefix="harness-mlperf-"))
        self._cell_dir = base / ctx.cell.id.replace("/", "_")
        # relative to the run folder, as the record's timeline path is
        self._log_rel = f"{LOG_FOLDER}/{self._cell_dir.name}" if ctx.run_dir else str(self._cell_dir)
        self._cell_dir.mkdir(parents=True, exist_ok=True)
        self._result = None
        return self._with_loadgen(super().run(ctx))

    def _with_loadgen(self, out: ScenarioOutcome) -> ScenarioOutcome:
        """Our outcome, with LoadGen's verdict recorded under sut.mlperf and warned about."""
        res = self._result or {"result": None, "problem": "LoadGen did not run"}
        out.sut = dict(out.sut or {}, mlperf=res)
        if res.get("result") != "VALID":
            unmet = res.get("invalid_because")
            why = res.get("problem") or (f"not satisfied: {', '.join(unmet)}" if unmet else
                                         f"see {res.get('log_dir')}/{SUMMARY_FILE}")
            out.warnings.append(f"MLPerf LoadGen judged the run {res.get('result') or 'not at all'} ({why})")
        if res.get("token_latencies_note"):
            out.warnings.append(res["token_latencies_note"])
        return out

    # LoadGen in place of harness.scenarios.loadgen.drive -----------------------------------------
    def _settings(self, lg, token_latencies: bool):
        c = self.config
        s = lg.TestSettings()
        s.scenario = getattr(lg.TestScenario, self.lg_scenario)
        s.mode = lg.TestMode.PerformanceOnly
        s.min_duration_ms = int(round(c.min_duration_s * 1000))
        if c.max_duration_s:
            s.max_duration_ms = int(round(c.max_duration_s * 1000))
        s.min_query_count = c.min_query_count
        if c.max_query_count:
            s.max_query_count = c.max_query_count
        if self.lg_scenario == "Server":
            s.server_target_qps = float(c.target_qps)
            s.server_target_latency_ns = int(c.target_latency_s * _NS)
            s.server_target_latency_percentile = float(c.target_latency_percentile)
        else:
            s.offline_expected_qps = float(c.expected_qps)
        s.use_token_latencies = token_latencies
        if token_latencies:
            s.ttft_latency = int(c.ttft_latency_s * _NS)
            s.tpot_latency = int(c.tpot_latency_s * _NS)
        return s

    def _run_pass(self, sut: SUT, p: Pass, energy: SteadyEnergy | None, warm: int) -> RequestRun:
        import mlperf_loadgen as lg

        cfg = self.config
        samples = p.requests
        token_latencies = cfg.use_token_latencies and self._hook_engine is not None
        note = None
        if cfg.use_token_latencies and not token_latencies:
            note = ("LoadGen timed whole queries (use_token_latencies off): this SUT returns a request only when it "
                    "ends, so its first token cannot be reported to LoadGen as it arrives; TTFT and TPOT are ours")
        hook = energy.window() if energy is not None else None
        # the steady window, as harness.scenarios.loadgen.drive opens it: Server (an open loop)
        # from the first completion until LoadGen has issued its last query; Offline (all at
        # once) from the moment everything is issued until the first completion
        window = SteadyWindow(hook)
        offline = self.lg_scenario == "Offline"
        results: list[RequestResult] = []
        lock = threading.Lock()
        slots = threading.BoundedSemaphore(max(1, int(p.in_flight)))
        threads: list[threading.Thread] = []
        ids = itertools.count()
        t0 = time.perf_counter()
        issued: list[Request] = []

        def respond(qid: int, data: list[int], n_tokens: Optional[int], first: bool) -> None:
            buf = array.array("i", data or [0])
            addr, n = buf.buffer_info()
            args = (qid, addr, n * buf.itemsize) + ((n_tokens,) if n_tokens is not None else ())
            resp = lg.QuerySampleResponse(*args)
            (lg.FirstTokenComplete if first else lg.QuerySamplesComplete)([resp])

        def work(qid: int, req: Request, t_arrival: float) -> None:
            res: Optional[RequestResult] = None
            slots.acquire()
            try:
                if self._hook_engine is not None:
                    self._hook_engine.local.on_first = (
                        (lambda tok: respond(qid, [tok], None, True)) if token_latencies else None)
                try:
                    res = sut.issue(req)
                except Exception as e:  # noqa: BLE001 - a failed request is a result; the run goes on
                    res = failed(req, t_arrival, f"{type(e).__name__}: {e}")
                if res.t_end is None:
                    res.t_end = time.perf_counter()
                res.t_arrival = t_arrival
                with lock:
                    results.append(res)
                if offline:
                    window.end()
                else:
                    window.begin()
            finally:
                slots.release()
                # LoadGen waits for every query it issued: a failed one still completes (with no tokens)
                n_tok = max(1, res.n_generated) if token_latencies and res is not None else None
                respond(qid, list(res.token_ids) if res is not None else [], n_tok, False)

        arrivals: queue.SimpleQueue = queue.SimpleQueue()

        def issue_query(query_samples) -> None:
            # LoadGen's issue thread: note the arrival and return. Starting a thread here
            # would hold LoadGen's schedule up behind the GIL and the new thread's start
            t_arrival = time.perf_counter()
            for qs in query_samples:
                arrivals.put((qs.id, qs.index, t_arrival))

        def dispatch() -> None:
            while (item := arrivals.get()) is not None:
                qid, index, t_arrival = item
                src = samples[index]
                req = Request(id=next(ids), prompt_len=src.prompt_len, max_tokens=src.max_tokens,
                              prompt_ids=list(src.prompt_ids) if src.prompt_ids is not None else None)
                th = threading.Thread(target=work, args=(qid, req, t_arrival), name=f"mlperf-{req.id}", daemon=True)
                with lock:
                    threads.append(th)
                    issued.append(req)
                th.start()

        def flush_queries() -> None:  # LoadGen has issued its last query
            if offline:
                window.begin()
            else:
                window.end("no query completed before LoadGen issued its last one: no steady state")

        log = lg.LogSettings()
        log.log_output.outdir = str(self._cell_dir)
        log.log_output.copy_summary_to_stdout = False
        log.enable_trace = False
        qsl = lg.ConstructQSL(len(samples), len(samples), lambda s: None, lambda s: None)
        lsut = lg.ConstructSUT(issue_query, flush_queries)
        dispatcher = threading.Thread(target=dispatch, name="mlperf-dispatch", daemon=True)
        dispatcher.start()
        try:
            # an audit.config in the worker's working directory would silently change the
            # test: LoadGen is pointed at one in the cell's folder, where there is none
            lg.StartTestWithLogSettings(lsut, qsl, self._settings(lg, token_latencies), log,
                                        str(self._cell_dir / "audit.config"))
        finally:
            arrivals.put(None)
            dispatcher.join()
            lg.DestroySUT(lsut)
            lg.DestroyQSL(qsl)
        # StartTest returns once every query completed, so every thread is ending
        deadline = time.perf_counter() + cfg.drain_timeout_s
        for th in list(threads):
            th.join(timeout=max(0.0, deadline - time.perf_counter()))
        window.end("the run ended before the load started draining")
        results.sort(key=lambda r: r.id)
        self._result = self._loadgen_result(token_latencies, note, len(samples))

        metrics = request_metrics(results, window, cfg.limits)
        run = RequestRun(
            scenario=self.name, n_requests=len(results), rate=p.rate, offered_rate=None, metrics=metrics,
            warmup_requests=warm,
            steady_window={"begin_s": None if window.t_begin is None else window.t_begin - t0,
                           "end_s": None if window.t_end is None else window.t_end - t0,
                           "unix_begin": window.unix_begin, "unix_end": window.unix_end,
                           "valid": window.valid, "note": window.note},
            requests=request_rows(results, t0, cfg.record_token_times),
            produced=_produced(issued, results))
        if results:
            run.offered_rate = (len(results) / (max(r.t_arrival for r in results) - t0)
                                if max(r.t_arrival for r in results) > t0 else None)
        if energy is not None:
            steady = metrics["steady"]
            measured = energy.measure(hook, steady.get("output_tokens", 0.0), steady.get("requests_completed", 0),
                                      no_window=None if window.valid else window.note or "no steady window")
            run.energy, run.timeline = measured.record, measured.timeline
        return run

    def _loadgen_result(self, token_latencies: bool, note: Optional[str], samples: int) -> dict:
        summary = self._cell_dir / SUMMARY_FILE
        out: dict[str, Any] = {"loadgen_version": _version(), "scenario": self.lg_scenario,
                               "use_token_latencies": token_latencies, "qsl_samples": samples,
                               "log_dir": self._log_rel, "token_latencies_note": note}
        if not summary.is_file():
            out.update(result=None, problem=f"LoadGen wrote no {SUMMARY_FILE}")
            return out
        parsed = parse_summary(summary.read_text(errors="replace"))
        out.update({k: v for k, v in parsed.items() if k != "fields"})
        f = parsed["fields"]
        out["files"] = sorted(x.name for x in self._cell_dir.iterdir() if x.name.startswith("mlperf_log_"))
        for key in ("Completed samples per second", "Completed tokens per second", "Samples per second",
                    "Tokens per second", "Scheduled samples per second"):
            if key in f:
                out[key.lower().replace(" ", "_")] = f[key]
        for key in ("min_duration satisfied", "min_queries satisfied", "early_stopping satisfied",
                    "Min duration satisfied", "Min queries satisfied", "Early stopping satisfied",
                    "Performance constraints satisfied"):
            if key in f:
                out.setdefault("checks", {})[key.lower().removesuffix(" satisfied")] = f[key]
        out["invalid_because"] = [k for k, v in (out.get("checks") or {}).items() if str(v).lower() != "yes"]
        return out


def _version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("mlcommons-loadgen")
    except Exception:  # noqa: BLE001
        return None


class MlperfServerScenario(_MlperfScenario):
    name = "mlperf-server"
    Config = MlperfServerConfig
    lg_scenario = "Server"

    def points(self) -> list[ScenarioPoint]:
        return [ScenarioPoint(f"mlperf-server@{self.config.target_qps:g}", float(self.config.target_qps))]


class MlperfOfflineScenario(_MlperfScenario):
    name = "mlperf-offline"
    Config = MlperfOfflineConfig
    lg_scenario = "Offline"
