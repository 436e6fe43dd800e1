"""`GET /metrics` of `harness serve`: Prometheus text with vLLM's metric names, so the
dashboards and tools that scrape vLLM (aiperf and inference-perf probe /metrics) read
this server too.

Each server has its own ``prometheus_client.CollectorRegistry`` (never the global one:
two servers in one process, as in the tests, must not share counts). Measured at the
HTTP layer, from a request's arrival (its body parsed and checked) to the engine's token
events, so no engine internals are read:

* ``vllm:num_requests_waiting``: requests accepted whose first token has not come (queued
  or in prefill); ``vllm:num_requests_running``: first token out, last one not yet. vLLM
  counts a request in prefill as running; here the HTTP layer cannot tell the two apart.
* ``vllm:prompt_tokens_total`` (at the first token: the prompt is prefilled),
  ``vllm:generation_tokens_total`` (each token), ``vllm:request_success_total``
  (label ``finished_reason``), ``vllm:request_prompt_tokens`` and
  ``vllm:request_generation_tokens`` (per finished request).
* Histograms, vLLM's buckets: ``vllm:time_to_first_token_seconds``,
  ``vllm:inter_token_latency_seconds`` (every gap between two tokens of a request: vLLM
  0.11's name) and the same observations under ``vllm:time_per_output_token_seconds``
  (the older name, still read by dashboards), ``vllm:request_time_per_output_token_seconds``
  (per request: (last - first token) / (tokens - 1)) and ``vllm:e2e_request_latency_seconds``.

Every series carries the label ``model_name``, as vLLM's do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import threading
import time
from typing import Optional

# vLLM's buckets (vllm/v1/metrics/loggers.py), so histograms from the two servers compare bin by bin
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsUnavailable(RuntimeError):
    """prometheus_client is not installed."""


@dataclass
class RequestTrace:
    """One request's timing as the HTTP layer sees it; made by ServeMetrics.begin()."""

    metrics: "ServeMetrics"
    n_prompt: int
    t_arrival: float
    t_first: Optional[float] = None
    t_last: Optional[float] = None
    n_out: int = 0
    done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def token(self, t: float) -> None:
        """A token produced at t (time.perf_counter(), the engine's step time)."""
        m = self.metrics
        if self.done:
            return
        if self.t_first is None:
            self.t_first = t
            m.ttft.observe(max(0.0, t - self.t_arrival))
            m.prompt_tokens.inc(self.n_prompt)
            m._move(waiting=-1, running=+1)
        else:
            gap = max(0.0, t - self.t_last)
            m.itl.observe(gap)
            m.tpot_legacy.observe(gap)
        self.t_last = t
        self.n_out += 1
        m.generation_tokens.inc()

    def finish(self, reason: Optional[str]) -> None:
        """The request ended: `reason` is its finish_reason, None for a failed or dropped one
        (it then leaves the gauges without counting as a success). Idempotent."""
        with self._lock:
            if self.done:
                return
            self.done = True
        m = self.metrics
        m._move(**({"running": -1} if self.t_first is not None else {"waiting": -1}))
        if reason is None:
            return
        m.success.labels(finished_reason=reason).inc()
        m.e2e.observe(max(0.0, (self.t_last or time.perf_counter()) - self.t_arrival))
        m.req_prompt.observe(self.n_prompt)
        m.req_gen.observe(self.n_out)
        if self.n_out >= 2 and self.t_first is not None and self.t_last is not None:
            m.req_tpot.observe((self.t_last - self.t_first) / (self.n_out - 1))


class ServeMetrics:
    """The metrics of one server, in a registry of its own."""

    def __init__(self, model_name: str):
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise MetricsUnavailable("GET /metrics needs prometheus_client: pip install 'accel-harness[serve]'") \
                from None
        from prometheus_client import disable_created_metrics

        # no `_created` series beside every counter and histogram, as on vLLM's /metrics
        # (a process-wide switch of prometheus_client; nothing else here exports metrics)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._n = {"waiting": 0, "running": 0}
        r, lab = self.registry, ["model_name"]

        def hist(name, doc, buckets):
            return Histogram(name, doc, lab, buckets=buckets, registry=r).labels(model_name)

        def counter(name, doc):
            return Counter(name, doc, lab, registry=r).labels(model_name)

        for key, name, doc in (("running", "vllm:num_requests_running", "Requests with their first token out, "
                                "not finished"),
                               ("waiting", "vllm:num_requests_waiting", "Requests accepted, no token yet "
                                "(queued or in prefill)")):
            Gauge(name, doc, lab, registry=r).labels(model_name).set_function(lambda k=key: self._n[k])
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens prefilled")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated")
        self.success = _Labelled(Counter("vllm:request_success", "Requests finished, by finish reason",
                                         ["model_name", "finished_reason"], registry=r), model_name=model_name)
        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token, from arrival", TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Gap between consecutive tokens of a request",
                        TOKEN_BUCKETS)
        self.tpot_legacy = hist("vllm:time_per_output_token_seconds", "Gap between consecutive tokens of a request "
                                "(vLLM's name before inter_token_latency_seconds)", TOKEN_BUCKETS)
        self.req_tpot = hist("vllm:request_time_per_output_token_seconds", "Per request: (last token - first "
                             "token) / (tokens - 1)", TOKEN_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Arrival to last token, finished requests",
                        REQUEST_BUCKETS)
        self.req_prompt = hist("vllm:request_prompt_tokens", "Prompt tokens per finished request",
                               TOKEN_COUNT_BUCKETS)
        self.req_gen = hist("vllm:request_generation_tokens", "Generated tokens per finished request",
                            TOKEN_COUNT_BUCKETS)

    def _move(self, **delta: int) -> None:
        with self._lock:
            for k, v in delta.items():
                self._n[k] += v

    def begin(self, n_prompt: int, t_arrival: float) -> RequestTrace:
        """A request accepted by the engine: it waits until its first token."""
        self._move(waiting=+1)
        return RequestTrace(self, int(n_prompt), t_arrival)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Labelled:
    """A labelled metric with some labels fixed: ``.labels(finished_reason=...)``."""

    def __init__(self, metric, **fixed: str):
        self.metric, self.fixed = metric, fixed

    def labels(self, **more: str):
        return self.metric.labels(**self.fixed, **more)
