"""The load generator (MLPerf LoadGen's split): which requests, when, and how many in
flight; it times what comes back and knows nothing of models, tokenizers or HTTP.

It hands :class:`backends.base.Request` objects to anything with one blocking method
(:class:`SUT`): a request backend (``backends.openai_http``), a backend's native
server, or the in-process batching engine (``harness.scenarios.engine.EngineSUT``).

Two ways of issuing (:func:`drive`):

* closed loop: ``in_flight`` requests at a time, the next issued when one ends
  (single-stream: 1; concurrency: N; all at once: len(requests));
* open loop: each request at its scheduled arrival (the server scenario's Poisson
  arrivals, :func:`poisson_schedule`), at most ``in_flight`` at once. Latency is then
  measured from the *scheduled* arrival, as MLPerf LoadGen does, so a generator that
  falls behind cannot hide queueing; the lag is reported (``issue_lag_s``).

Concurrency uses threads (one per request in flight): a SUT blocks in ``issue`` on I/O
or on an engine's queue, so the GIL is not the bottleneck at the rates a single host
drives.

The steady-state window (:class:`SteadyWindow`) is the stretch during which the
offered load is fully up; an energy window handed to :func:`drive` is opened and
closed with it, from whichever request thread sees the moment.
"""
from __future__ import annotations

import threading
import time
from typing import Optional, Protocol, Sequence

import numpy as np

from backends.base import Request, RequestResult
from harness.scenarios.lengths import LengthsConfig, LengthSampler


class SUT(Protocol):
    """A system under test: one blocking, thread-safe call per request."""

    def issue(self, request: Request) -> RequestResult: ...

    def describe(self) -> dict: ...


class WindowHook(Protocol):
    """What the steady window opens and closes with it (harness.energy.Window)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


def failed(request: Request, t_issue: float, message: str) -> RequestResult:
    return RequestResult(id=request.id, prompt_len=request.prompt_len, n_requested=request.max_tokens,
                         t_issue=t_issue, t_end=time.perf_counter(), error=message)


# --- what to issue, and when -------------------------------------------------------------------

def build_requests(lengths: LengthsConfig, n: int, seed: int, token_range: Sequence[int],
                   first_id: int = 0, shared_prefix_tokens: int = 0) -> list[Request]:
    """n requests with seeded lengths and prompt token ids drawn from [lo, hi) of
    token_range: every request's ids are its own random draw, so no two share a prefix
    longer than chance (a server's prefix cache cannot answer them), except the first
    `shared_prefix_tokens`, which are the same for all when that is what is measured."""
    rng = np.random.default_rng([seed, 0x5EED])
    sampler = LengthSampler(lengths)
    lo, hi = token_range
    out = []
    for i, (p, o) in enumerate(sampler.sample(n, rng)):
        ids = rng.integers(lo, hi, size=p).tolist()
        out.append(Request(id=first_id + i, prompt_len=p, max_tokens=o, prompt_ids=ids))
    return _share_prefix(out, seed, token_range, shared_prefix_tokens)


def redraw_prompts(requests: Sequence[Request], seed: int, stream: int, token_range: Sequence[int],
                   shared_prefix_tokens: int = 0, first_id: Optional[int] = None) -> list[Request]:
    """The same lengths with fresh prompt ids from their own seeded stream: warm-up
    requests and each later pass of a sweep get prompts no earlier request sent, so a
    prefix cache warmed by one pass cannot answer the next."""
    rng = np.random.default_rng([seed, 0x5EED, stream])
    lo, hi = token_range
    out = [Request(id=r.id if first_id is None else first_id - i, prompt_len=r.prompt_len, max_tokens=r.max_tokens,
                   prompt_ids=rng.integers(lo, hi, size=r.prompt_len).tolist()) for i, r in enumerate(requests)]
    return _share_prefix(out, seed, token_range, shared_prefix_tokens)


def _share_prefix(requests: list[Request], seed: int, token_range: Sequence[int], n: int) -> list[Request]:
    """The first n ids of every prompt (all of a shorter one) replaced by one seeded prefix."""
    if n <= 0 or not requests:
        return requests
    prefix = np.random.default_rng([seed, 0x9F1]).integers(*token_range, size=n).tolist()
    for r in requests:
        k = min(n, r.prompt_len)
        r.prompt_ids[:k] = prefix[:k]
    return requests


def poisson_schedule(rate: float, n: int, seed: int) -> np.ndarray:
    """Arrival offsets (s) of n requests at `rate`/s: cumulative exponential gaps, first gap included."""
    rng = np.random.default_rng([seed, 0xA1, int(round(rate * 1000))])
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


# --- the steady-state window ------------------------------------------------------------------

class SteadyWindow:
    """The stretch of a run during which the offered load is fully up.

    begin: closed loop: the moment the target number of requests is first in flight
        (all at once: all of them); open loop: the first completion (arrivals and
        departures both under way).
    end: closed loop: the first completion after the last request was issued (from
        then on nothing replaces a finished request); open loop: the last arrival.
        All-at-once therefore ends at its first completion.

    ``hook`` (an energy window) is begun and ended at those moments; a load that never
    comes up never opens it.
    """

    def __init__(self, hook: Optional[WindowHook] = None):
        self.hook = hook
        self.t_begin: Optional[float] = None  # perf_counter
        self.t_end: Optional[float] = None
        self.unix_begin: Optional[float] = None
        self.unix_end: Optional[float] = None
        self.note: Optional[str] = None
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            if self.t_begin is not None or self.t_end is not None:
                return
            self.t_begin, self.unix_begin = time.perf_counter(), time.time()
            if self.hook is not None:
                self.hook.begin()

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
            if self.hook is not None:
                self.hook.end()

    @property
    def valid(self) -> bool:
        return self.t_begin is not None and self.t_end is not None and self.t_end > self.t_begin


class _Tracker:
    """In-flight bookkeeping shared by the request threads; fires the steady window."""

    def __init__(self, n: int, target: int, open_loop: bool, window: SteadyWindow):
        self.n, self.target, self.open_loop, self.window = n, target, open_loop, window
        self.in_flight = self.issued = self.completed = 0
        self.lock = threading.Lock()

    def on_issue(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.issued += 1
            begin = not self.open_loop and self.in_flight >= self.target
            end = self.open_loop and self.issued == self.n
        if begin:
            self.window.begin()
        if end:
            self.window.end(None if self.window.t_begin is not None else
                            "no request completed before the last arrival: no steady state")

    def on_complete(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.completed += 1
            begin = self.open_loop
            end = not self.open_loop and self.issued == self.n
        if begin:
            self.window.begin()
        if end:
            self.window.end()


# --- driving a SUT -------------------------------------------------------------------------------

def drive(sut: SUT, requests: list[Request], *, in_flight: int, schedule: Sequence[float] | None = None,
          window_hook: Optional[WindowHook] = None,
          drain_timeout_s: float = 600.0) -> tuple[list[RequestResult], SteadyWindow, float]:
    """Issue `requests` to `sut`, at most `in_flight` at a time: a closed loop, or an open
    loop when `schedule` gives each request's arrival offset (s). Returns (results in
    request order, steady window, t0)."""
    n = len(requests)
    if schedule is not None and len(schedule) != n:
        raise ValueError("an open loop needs one scheduled arrival per request")
    cap = max(1, int(in_flight))
    window = SteadyWindow(window_hook)
    tracker = _Tracker(n, min(cap, n), schedule is not None, window)
    results: list[Optional[RequestResult]] = [None] * n
    slots = threading.BoundedSemaphore(cap)
    threads: list[threading.Thread] = []

    def work(i: int, req: Request, t_arrival: Optional[float]) -> None:
        t_issue = time.perf_counter()
        tracker.on_issue()
        try:
            res = sut.issue(req)
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
