"""The in-process batching engine: a model backend as a system under test.

Request scenarios drive it through :class:`EngineSUT` (no HTTP); ``harness serve`` puts
an OpenAI-compatible HTTP face on the same engine.

Batching (:class:`BatchingEngine`): one scheduler thread owns the backend. It takes
the oldest waiting request plus every other waiting request with the same prompt
length (up to ``max_batch``), prefills them as one batch, then decodes one step at a
time for the whole batch, streaming each token as its step returns; a request leaves
the batch when it has its tokens. Requests with different prompt lengths are never
padded together (padding would change what is computed), so they run in separate
batches, in arrival order. Static batching: a request arriving while a batch decodes
waits for it to finish.

The engine never reads or writes the backend's decode state: the first token comes
from ``first_tokens(state)`` and each ``decode(state, 1)`` advances the state itself.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import itertools
import queue
import threading
import time

import numpy as np

from backends.base import ModelBackend, Request, RequestResult


@dataclass
class Job:
    id: int
    prompt: list[int]
    max_tokens: int
    ignore_eos: bool
    min_tokens: int
    sink: "queue.SimpleQueue"
    t_submit: float
    n_out: int = 0
    finished: bool = False
    cancelled: bool = False


class BatchingEngine:
    """One thread that owns a loaded model backend and runs submitted requests in batches.

    Events put on a job's sink: ("token", token_id, t, finish_reason or None) and
    ("error", message, t). t is time.perf_counter() when the step returned.
    """

    def __init__(self, backend: ModelBackend, vocab_size: int, max_batch: int = 8, max_seq: int = 512,
                 batch_wait_s: float = 0.0, eos_token_id: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.backend, self.vocab_size = backend, vocab_size
        self.max_batch, self.max_seq = max_batch, max_seq
        self.batch_wait_s, self.eos_token_id = batch_wait_s, eos_token_id
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._prepared: set[int] = set()
        self.stats = {"batches": 0, "requests": 0, "tokens": 0, "batch_sizes": {}, "errors": 0, "prepare_s": 0.0}

    # lifetime ------------------------------------------------------------------------------------
    def start(self, prepare_all: bool = True) -> "BatchingEngine":
        if prepare_all:  # caches / CUDA graphs for every batch size, outside any request
            for b in range(1, self.max_batch + 1):
                self._prepare(b)
        self._thread = threading.Thread(target=self._loop, name="batching-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        with self._cond:
            while self._waiting:
                j = self._waiting.popleft()
                j.sink.put(("error", "server stopping", time.perf_counter()))

    def _prepare(self, batch: int) -> None:
        if batch in self._prepared:
            return
        t0 = time.perf_counter()
        self.backend.prepare(batch, self.max_seq)
        self.stats["prepare_s"] += time.perf_counter() - t0
        self._prepared.add(batch)

    # requests ------------------------------------------------------------------------------------
    def submit(self, prompt: list[int], max_tokens: int, *, ignore_eos: bool = True, min_tokens: int = 0,
               sink: "queue.SimpleQueue | None" = None) -> Job:
        """Queue one request; ValueError says what is wrong with it (a 400 for HTTP)."""
        if not prompt:
            raise ValueError("prompt is empty")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        bad = next((t for t in prompt if not (0 <= t < self.vocab_size)), None)
        if bad is not None:
            raise ValueError(f"token id {bad} outside the vocabulary [0, {self.vocab_size})")
        if len(prompt) + max_tokens > self.max_seq:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the server's "
                             f"context of {self.max_seq} positions (--max-seq)")
        job = Job(next(self._ids), list(prompt), int(max_tokens), bool(ignore_eos), int(min_tokens),
                   sink or queue.SimpleQueue(), time.perf_counter())
        with self._cond:
            if self._stop:
                raise RuntimeError("server stopping")
            self._waiting.append(job)
            self._cond.notify()
        return job

    @staticmethod
    def cancel(job: Job) -> None:
        job.cancelled = True

    def stats_json(self) -> dict:
        """The counters, with batch sizes keyed by strings (JSON objects have string keys)."""
        return dict(self.stats, batch_sizes={str(b): n for b, n in self.stats["batch_sizes"].items()})

    # the scheduler -------------------------------------------------------------------------------
    def _take_group(self) -> list[Job] | None:
        with self._cond:
            while not self._stop and not self._waiting:
                self._cond.wait(0.1)
            if self._stop:
                return None
        if self.batch_wait_s > 0:
            time.sleep(self.batch_wait_s)
        with self._cond:
            while self._waiting and self._waiting[0].cancelled:
                self._waiting.popleft()
            if not self._waiting:
                return []
            plen = len(self._waiting[0].prompt)
            group = []
            for j in list(self._waiting):
                if len(group) >= self.max_batch:
                    break
                if not j.cancelled and len(j.prompt) == plen:
                    group.append(j)
            taken = {id(j) for j in group}
            self._waiting = deque(j for j in self._waiting if id(j) not in taken and not j.cancelled)
            return group

    def _loop(self) -> None:
        while True:
            group = self._take_group()
            if group is None:
                return
            if not group:
                continue
            try:
                self._run(group)
            except Exception as e:  # noqa: BLE001 - fail this batch, keep serving
                self.stats["errors"] += 1
                t = time.perf_counter()
                for j in group:
                    if not j.finished:
                        j.finished = True
                        j.sink.put(("error", f"{type(e).__name__}: {e}", t))

    def _emit(self, j: Job, token: int, t: float) -> None:
        if j.finished:
            return
        j.n_out += 1
        reason = None
        if j.n_out >= j.max_tokens:
            reason = "length"
        elif (not j.ignore_eos and self.eos_token_id is not None and token == self.eos_token_id
              and j.n_out >= j.min_tokens):
            reason = "stop"
        if reason or j.cancelled:
            j.finished = True
        if not j.cancelled:
            j.sink.put(("token", int(token), t, reason))
            self.stats["tokens"] += 1

    def _run(self, group: list[Job]) -> None:
        B = len(group)
        self._prepare(B)
        self.stats["batches"] += 1
        self.stats["requests"] += B
        self.stats["batch_sizes"][B] = self.stats["batch_sizes"].get(B, 0) + 1
        ids = np.asarray([j.prompt for j in group], dtype=np.int64)
        state = self.backend.prefill(ids)
        first = np.asarray(self.backend.first_tokens(state)).reshape(-1)  # on the host: the step is done
        t = time.perf_counter()
        for j, tok in zip(group, first):
            self._emit(j, tok, t)
        for _ in range(max(j.max_tokens for j in group) - 1):
            if all(j.finished for j in group):
                break
            toks = np.asarray(self.backend.decode(state, 1).tokens)[:, -1]
            t = time.perf_counter()
            for j, tok in zip(group, toks):
                self._emit(j, tok, t)


class EngineSUT:
    """The engine as a system under test, without HTTP. Token times are taken when each
    decode step returns (after the device has finished: the tokens are on the host)."""

    def __init__(self, engine: BatchingEngine, timeout_s: float = 600.0):
        self.engine, self.timeout_s = engine, timeout_s

    def issue(self, request: Request) -> RequestResult:
        prompt = request.prompt_ids
        if prompt is None:
            rng = np.random.default_rng(request.id & 0x7FFFFFFF)
            prompt = rng.integers(0, self.engine.vocab_size, size=request.prompt_len).tolist()
        t_issue = time.perf_counter()
        res = RequestResult(id=request.id, prompt_len=request.prompt_len, n_requested=request.max_tokens,
                            t_issue=t_issue, n_prompt=len(prompt))
        try:
            job = self.engine.submit(prompt, request.max_tokens)
        except (ValueError, RuntimeError) as e:
            res.error, res.t_end = f"rejected: {e}", time.perf_counter()
            return res
        deadline = t_issue + self.timeout_s
        while True:
            try:
                ev = job.sink.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                self.engine.cancel(job)
                res.error = f"timeout: no token within {self.timeout_s:g} s"
                break
            if ev[0] == "error":
                res.error, res.t_end = f"engine error: {ev[1]}", ev[2]
                break
            _, tok, t, reason = ev
            res.token_times.append(t)
            res.token_ids.append(int(tok))
            if res.t_first_token is None:
                res.t_first_token = t
            res.t_end = t
            if reason:
                res.finish_reason = reason
                break
        res.n_generated = len(res.token_times)
        if res.t_end is None:
            res.t_end = time.perf_counter()
        res.check_counts()
        return res

    def describe(self) -> dict:
        return {"sut": "in-process", "max_batch": self.engine.max_batch, "max_seq": self.engine.max_seq,
                "engine_stats": self.engine.stats_json()}
