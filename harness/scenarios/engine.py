"""The in-process batching engine: a model backend as a system under test.

Request scenarios drive it through :class:`EngineSUT` (no HTTP); ``harness serve`` puts
an OpenAI-compatible HTTP face on the same engine.

One scheduler thread owns the backend and streams each token as its step returns.
Two policies (:class:`BatchingEngine`, ``batching=``):

* **continuous** (where the backend offers ``slot_decoder``: torch): before every decode
  step, waiting requests (any prompt lengths, up to ``max_batch`` held in all) are
  prefilled together into free slots and join the running batch at that step; a
  request leaves the batch, freeing its slot, as soon as it has its tokens. Each
  sequence has its own cache position, so a request's tokens are the ones it would get
  alone (greedy). A prefill pauses the running sequences for its duration (no chunked
  prefill).
* **static** (every other model backend: onnxruntime, llama.cpp, transformers run
  batches that start together): the oldest waiting request plus every other waiting
  request with the same prompt length (up to ``max_batch``) are prefilled as one batch
  and decoded to the end; requests with other prompt lengths, and any arriving
  meanwhile, wait for it. The engine never reads or writes the backend's decode state:
  the first token comes from ``first_tokens(state)`` and each ``decode(state, 1)``
  advances the state itself.

``batching="auto"`` (the default) picks continuous where the backend can, static
elsewhere. :meth:`BatchingEngine.batch_stats` says which ran and how full the decode
steps were.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import itertools
import queue
import threading
import time
from typing import Literal

import numpy as np

from backends.base import ModelBackend, Request, RequestResult
from backends.slots import SlotDecoder

BATCHING_POLICIES = ("auto", "continuous", "static")


@dataclass(frozen=True)
class BatchStats:
    """How the engine batched, since it started (a snapshot).

    decode_batch_sizes: for each decode step, how many sequences it advanced (a
    sequence that already had its tokens is not counted, though a static batch still
    computes its row). prefill_batch_sizes: how many prompts each prefill took.
    admitted_mid_batch: requests prefilled while other sequences were decoding (they
    joined a running batch; always 0 under static batching)."""

    policy: str  # "continuous" | "static"
    max_batch: int
    requests: int = 0  # admitted (prefilled)
    tokens: int = 0  # streamed
    errors: int = 0  # failed steps
    decode_steps: int = 0
    decode_batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> decode steps
    prefill_batch_sizes: dict[int, int] = field(default_factory=dict)  # prompts per prefill -> prefills
    admitted_mid_batch: int = 0

    @property
    def mean_decode_batch(self) -> float | None:
        """Sequences per decode step, on average (None before the first step)."""
        if not self.decode_steps:
            return None
        return sum(b * n for b, n in self.decode_batch_sizes.items()) / self.decode_steps

    def to_json(self) -> dict:
        """With string keys for the histograms (JSON objects have string keys)."""
        return {"policy": self.policy, "max_batch": self.max_batch, "requests": self.requests,
                "tokens": self.tokens, "errors": self.errors, "decode_steps": self.decode_steps,
                "decode_batch_sizes": {str(b): n for b, n in sorted(self.decode_batch_sizes.items())},
                "prefill_batch_sizes": {str(b): n for b, n in sorted(self.prefill_batch_sizes.items())},
                "admitted_mid_batch": self.admitted_mid_batch, "mean_decode_batch": self.mean_decode_batch}

    def format(self) -> str:
        """A few lines for a terminal: the decode batch-size histogram and the counters."""
        lines = [f"batching: {self.policy} (max batch {self.max_batch}); {self.requests} requests, "
                 f"{self.tokens} tokens, {self.decode_steps} decode steps, "
                 f"{self.admitted_mid_batch} admitted mid-batch, {self.errors} errors"]
        if self.decode_steps:
            lines.append(f"mean decode batch {self.mean_decode_batch:.2f}; decode steps by batch size:")
            for b in range(1, max(self.decode_batch_sizes) + 1):
                n = self.decode_batch_sizes.get(b, 0)
                lines.append(f"  {b:>3}  {n:>7}  {100 * n / self.decode_steps:5.1f} %")
        return "\n".join(lines)


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
                 batch_wait_s: float = 0.0, eos_token_id: int | None = None,
                 batching: Literal["auto", "continuous", "static"] = "auto"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if batching not in BATCHING_POLICIES:
            raise ValueError(f"batching must be one of {', '.join(BATCHING_POLICIES)}, got {batching!r}")
        self.backend, self.vocab_size = backend, vocab_size
        self.batching = batching  # asked for; self.policy is what runs (known after start())
        self.policy: str | None = None
        self._slots: SlotDecoder | None = None
        self.max_batch, self.max_seq = max_batch, max_seq
        self.batch_wait_s, self.eos_token_id = batch_wait_s, eos_token_id
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._prepared: set[int] = set()
        # batches / batch_sizes: prefills and their sizes (a static batch is one prefill)
        self.stats = {"batches": 0, "requests": 0, "tokens": 0, "batch_sizes": {}, "errors": 0, "prepare_s": 0.0}
        self._stats_lock = threading.Lock()  # the scheduler writes, batch_stats() readers copy
        self._decode_sizes: dict[int, int] = {}
        self._decode_steps = 0
        self._admitted_mid = 0

    # lifetime ------------------------------------------------------------------------------------
    def start(self, prepare_all: bool = True) -> "BatchingEngine":
        """Choose the policy, make the caches (and CUDA graphs) outside any request, and
        start the scheduler. ValueError: continuous batching asked of a backend without it."""
        if self.batching != "static":
            t0 = time.perf_counter()
            self._slots = self.backend.slot_decoder(self.max_batch, self.max_seq)
            self.stats["prepare_s"] += time.perf_counter() - t0
            if self._slots is None and self.batching == "continuous":
                raise ValueError(f"backend {self.backend.name or type(self.backend).__name__!r} cannot join "
                                 "sequences to a running batch (no slot_decoder): use static batching")
        self.policy = "continuous" if self._slots is not None else "static"
        if self.policy == "static" and prepare_all:  # caches / CUDA graphs for every batch size
            for b in range(1, self.max_batch + 1):
                self._prepare(b)
        loop = self._loop_continuous if self.policy == "continuous" else self._loop
        self._thread = threading.Thread(target=loop, name="batching-engine", daemon=True)
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

    def batch_stats(self) -> BatchStats:
        """A snapshot of how the engine has batched so far (safe from any thread)."""
        with self._stats_lock:
            return BatchStats(policy=self.policy or self.batching, max_batch=self.max_batch,
                              requests=self.stats["requests"], tokens=self.stats["tokens"],
                              errors=self.stats["errors"], decode_steps=self._decode_steps,
                              decode_batch_sizes=dict(self._decode_sizes),
                              prefill_batch_sizes=dict(self.stats["batch_sizes"]),
                              admitted_mid_batch=self._admitted_mid)

    def stats_json(self) -> dict:
        """The counters, with batch sizes keyed by strings (JSON objects have string keys),
        and the batch statistics under "batching"."""
        with self._stats_lock:
            out = dict(self.stats, batch_sizes={str(b): n for b, n in self.stats["batch_sizes"].items()})
        out["batching"] = self.batch_stats().to_json()
        return out

    def _count_prefill(self, n: int, mid_batch: bool) -> None:
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["requests"] += n
            self.stats["batch_sizes"][n] = self.stats["batch_sizes"].get(n, 0) + 1
            if mid_batch:
                self._admitted_mid += n

    def _count_step(self, n: int) -> None:
        with self._stats_lock:
            self._decode_steps += 1
            self._decode_sizes[n] = self._decode_sizes.get(n, 0) + 1

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
                with self._stats_lock:
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
            self.stats["tokens"] += 1  # the scheduler thread only: no lock needed for +=

    def _run(self, group: list[Job]) -> None:
        B = len(group)
        self._prepare(B)
        self._count_prefill(B, mid_batch=False)
        ids = np.asarray([j.prompt for j in group], dtype=np.int64)
        state = self.backend.prefill(ids)
        first = np.asarray(self.backend.first_tokens(state)).reshape(-1)  # on the host: the step is done
        t = time.perf_counter()
        for j, tok in zip(group, first):
            self._emit(j, tok, t)
        for _ in range(max(j.max_tokens for j in group) - 1):
            live = sum(not j.finished for j in group)
            if not live:
                break
            self._count_step(live)
            toks = np.asarray(self.backend.decode(state, 1).tokens)[:, -1]
            t = time.perf_counter()
            for j, tok in zip(group, toks):
                self._emit(j, tok, t)

    # continuous batching ----------------------------------------------------------------------
    def _admit(self, free: int, idle: bool) -> list[Job] | None:
        """Waiting requests to prefill now (up to `free`), oldest first, any prompt
        lengths; None when the engine stops. Blocks only when nothing is running (idle)."""
        with self._cond:
            while idle and not self._stop and not self._waiting:
                self._cond.wait(0.1)
            if self._stop:
                return None
            if not (idle and self._waiting and self.batch_wait_s > 0):
                return self._pop_waiting(free)
        time.sleep(self.batch_wait_s)  # an idle engine waits a little to prefill a burst together
        with self._cond:
            return None if self._stop else self._pop_waiting(free)

    def _pop_waiting(self, free: int) -> list[Job]:
        new: list[Job] = []
        while self._waiting and len(new) < free:
            j = self._waiting.popleft()
            if not j.cancelled:
                new.append(j)
        return new

    def _loop_continuous(self) -> None:
        slots = self._slots
        running: dict[int, Job] = {}  # job id -> job, the sequences the decoder holds
        while True:
            new = self._admit(self.max_batch - len(running), idle=not running)
            if new is None and not running:
                return
            try:
                if new:  # join the batch at this step, whatever their prompt lengths
                    self._count_prefill(len(new), mid_batch=bool(running))
                    first = slots.add([j.id for j in new], [j.prompt for j in new])
                    t = time.perf_counter()
                    for j, tok in zip(new, first):
                        running[j.id] = j
                        self._emit(j, tok, t)
                    new = []
                self._leave(running)
                if running:
                    ids, toks = slots.step()
                    t = time.perf_counter()
                    self._count_step(len(ids))
                    for i, tok in zip(ids, toks):
                        self._emit(running[i], tok, t)
                    self._leave(running)
            except Exception as e:  # noqa: BLE001 - fail the sequences held, keep serving
                with self._stats_lock:
                    self.stats["errors"] += 1
                t = time.perf_counter()
                for j in [*running.values(), *(new or [])]:
                    if not j.finished:
                        j.finished = True
                        j.sink.put(("error", f"{type(e).__name__}: {e}", t))
                running.clear()
                try:
                    slots.clear()
                except Exception:  # noqa: BLE001 - the decoder is beyond repair: rebuild it
                    self._slots = slots = self.backend.slot_decoder(self.max_batch, self.max_seq)
            if new is None:  # stopping: the sequences held run to their end, nothing joins
                while running:
                    self._drain_step(slots, running)
                return

    def _leave(self, running: dict[int, Job]) -> None:
        """Sequences with their tokens (or cancelled) leave the batch and free their slot."""
        for j in [j for j in running.values() if j.finished or j.cancelled]:
            self._slots.remove(j.id)
            del running[j.id]

    def _drain_step(self, slots: SlotDecoder, running: dict[int, Job]) -> None:
        try:
            ids, toks = slots.step()
        except Exception as e:  # noqa: BLE001
            t = time.perf_counter()
            for j in running.values():
                j.finished = True
                j.sink.put(("error", f"{type(e).__name__}: {e}", t))
            running.clear()
            return
        t = time.perf_counter()
        self._count_step(len(ids))
        for i, tok in zip(ids, toks):
            self._emit(running[i], tok, t)
        self._leave(running)


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
                "batching": self.engine.policy, "engine_stats": self.engine.stats_json()}
