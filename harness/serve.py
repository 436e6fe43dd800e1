"""`harness serve`: a reference OpenAI-compatible server over any in-process backend.

    harness serve --backend torch --model tiny [--host 127.0.0.1] [--port 0] [--max-batch 8]
    python -m harness.serve ...            (the same, without the main CLI)

What it is for: testing the ``openai-http`` client and the load generators for
real (HTTP, SSE, sockets), and putting the harness's own backends behind the
same API a vendor's serving stack exposes, so the two can be compared under
the same scenarios.

API (the subset of OpenAI's that benchmarking needs):

* ``GET /v1/models``; ``GET /health``; ``GET /stats`` (engine counters, not OpenAI)
* ``POST /v1/completions``: ``prompt`` as a list of token ids or as text (a
  deterministic byte-level tokenizer: one token per UTF-8 byte, id = byte mod
  vocab), ``max_tokens``, ``stream``, ``ignore_eos``, ``min_tokens``. Sampling
  is greedy whatever ``temperature`` says. Streams are SSE ``data: {...}``
  chunks, one token each, over chunked HTTP/1.1, the last token's chunk
  carrying ``finish_reason`` and ``usage``, then ``data: [DONE]``. Generated
  text is one printable ASCII character per token (so it re-tokenizes 1:1).
* ``--api-key-env NAME``: require ``Authorization: Bearer $NAME``.
* ``--fault error-rate=0.2,drop-rate=0.5,drop-after=3,seed=0``: fault
  injection for tests: HTTP 500 for a fraction of requests; the connection
  closed mid-stream after ``drop-after`` tokens for a fraction of streams
  (``drop-after`` alone means every stream).

Batching (:class:`BatchingEngine`): one scheduler thread owns the backend. It
takes the oldest waiting request plus every other waiting request with the
same prompt length (up to ``max_batch``), prefills them as one batch, then
decodes one step at a time for the whole batch, streaming each token as its
step returns; a request leaves the batch when it has its tokens. Requests
with different prompt lengths are never padded together (padding would change
what is computed), so they run in separate batches, in arrival order. Static
batching: a request arriving while a batch decodes waits for it to finish.

Token-by-token decoding needs the backend's state to expose ``next_token``
([B, 1]) and ``pos`` (both shipped backends do). A backend whose state does
not is decoded in one ``decode(state, n)`` call per batch, and its tokens
reach the stream together at the end (the record then shows one burst).
"""
from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass, field
import hmac
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import inspect
import itertools
import json
import os
import queue
import socket
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

from harness.scenarios.loadgen import Request, RequestResult

# --- tokenizer ------------------------------------------------------------------------------------


def encode_text(text: str, vocab: int) -> list[int]:
    """Byte-level: one token per UTF-8 byte, id = byte mod vocab."""
    return [b % vocab for b in text.encode("utf-8")]


def token_text(token: int) -> str:
    """One printable ASCII character per token id (re-encodes to exactly one token)."""
    return chr(32 + int(token) % 95)


# --- the batching engine ----------------------------------------------------------------------------

@dataclass
class _Job:
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
    """One thread that owns a loaded backend and runs submitted requests in batches.

    Events put on a job's sink: ("token", token_id, t, finish_reason or None) and
    ("error", message, t). t is time.perf_counter() when the step returned.
    """

    def __init__(self, backend, vocab_size: int, max_batch: int = 8, max_seq: int = 512,
                 batch_wait_s: float = 0.0, eos_token_id: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.backend, self.vocab_size = backend, vocab_size
        self.max_batch, self.max_seq = max_batch, max_seq
        self.batch_wait_s, self.eos_token_id = batch_wait_s, eos_token_id
        self._waiting: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._prepared: set[int] = set()
        self.stats = {"batches": 0, "requests": 0, "tokens": 0, "batch_sizes": {}, "errors": 0,
                      "step_mode": None, "prepare_s": 0.0}

    # lifetime ------------------------------------------------------------------------------------
    def start(self, prepare_all: bool = True) -> "BatchingEngine":
        if prepare_all:  # caches / CUDA graphs for every batch size, outside any request
            for b in range(1, self.max_batch + 1):
                self._prepare(b)
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
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
        prep = getattr(self.backend, "prepare", None)
        if prep is not None:
            n_args = len(inspect.signature(prep).parameters)
            t0 = time.perf_counter()
            prep(batch, self.max_seq) if n_args >= 2 else prep(batch)
            self.stats["prepare_s"] += time.perf_counter() - t0
        self._prepared.add(batch)

    # requests ------------------------------------------------------------------------------------
    def submit(self, prompt: list[int], max_tokens: int, *, ignore_eos: bool = True, min_tokens: int = 0,
               sink: "queue.SimpleQueue | None" = None) -> _Job:
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
        job = _Job(next(self._ids), list(prompt), int(max_tokens), bool(ignore_eos), int(min_tokens),
                   sink or queue.SimpleQueue(), time.perf_counter())
        with self._cond:
            if self._stop:
                raise RuntimeError("server stopping")
            self._waiting.append(job)
            self._cond.notify()
        return job

    @staticmethod
    def cancel(job: _Job) -> None:
        job.cancelled = True

    # the scheduler -------------------------------------------------------------------------------
    def _take_group(self) -> list[_Job] | None:
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

    def _emit(self, j: _Job, token: int, t: float) -> None:
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

    def _run(self, group: list[_Job]) -> None:
        B = len(group)
        self._prepare(B)
        self.stats["batches"] += 1
        self.stats["requests"] += B
        self.stats["batch_sizes"][B] = self.stats["batch_sizes"].get(B, 0) + 1
        ids = np.asarray([j.prompt for j in group], dtype=np.int64)
        state = self.backend.prefill(ids)
        steppable = hasattr(state, "next_token") and hasattr(state, "pos")
        self.stats["step_mode"] = "token" if steppable else "batch"
        if not steppable:
            self._run_whole(group, state)
            return
        first = _to_numpy(state.next_token).reshape(-1)
        t = time.perf_counter()
        for j, tok in zip(group, first):
            self._emit(j, tok, t)
        steps = max(j.max_tokens for j in group) - 1
        for _ in range(steps):
            if all(j.finished for j in group):
                break
            pos = state.pos
            res = self.backend.decode(state, 1)
            toks = np.asarray(res.tokens)[:, -1]
            t = time.perf_counter()
            if state.pos == pos:  # the backend did not advance its state itself (torch)
                _set_next(state, toks)
                state.pos = pos + 1
            for j, tok in zip(group, toks):
                self._emit(j, tok, t)

    def _run_whole(self, group: list[_Job], state) -> None:
        t = time.perf_counter()
        for j in group:
            self._emit(j, 0, t)  # the first token's id is inside the opaque state
        steps = max(j.max_tokens for j in group) - 1
        if steps > 0:
            res = self.backend.decode(state, steps)
            t = time.perf_counter()
            toks = np.asarray(res.tokens)
            for i in range(toks.shape[1]):
                for j, row in zip(group, toks):
                    self._emit(j, row[i], t)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _set_next(state, toks: np.ndarray) -> None:
    old = state.next_token
    col = np.ascontiguousarray(toks.reshape(-1, 1).astype(np.int64))
    if hasattr(old, "detach"):
        import torch

        state.next_token = torch.from_numpy(col).to(old.device)
    else:
        state.next_token = col


# --- in-process SUT ---------------------------------------------------------------------------------

class EngineSUT:
    """An in-process backend as a system under test: requests go through the same
    batching engine as `harness serve`, without HTTP. Token times are taken when
    each decode step returns (after the device has finished: the tokens are on the host)."""

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
        return {"sut": "in-process", "max_batch": self.engine.max_batch, "max_seq": self.engine.max_seq}


def sut_for_backend(backend, vocab_size: int, max_batch: int, max_seq: int,
                    batch_wait_s: float = 0.0) -> tuple[Any, Any]:
    """The SUT a worker drives for a non-offline cell, and a function that releases it.

    A backend that is itself an endpoint (``sut()``, e.g. openai-http) is driven directly;
    an in-process backend goes behind a BatchingEngine (already loaded for max_batch / max_seq)."""
    if hasattr(backend, "sut"):
        s = backend.sut()
        return s, getattr(s, "close", lambda: None)
    engine = BatchingEngine(backend, vocab_size, max_batch=max_batch, max_seq=max_seq,
                            batch_wait_s=batch_wait_s).start()
    return EngineSUT(engine), engine.stop


def measure_scenario_cell(backend, scenario, *, vocab_size: int, batch: int, prompt_len: int, gen_len: int,
                          seed: int = 0, rate: float | None = None, meters=None, energy_settings=None) -> dict:
    """Record fields of one non-offline cell (what harness/worker.py calls instead of run_offline).

    backend: loaded for max_batch >= batch and max_seq >= scenario_max_seq(scenario, prompt_len, gen_len)
    (or an endpoint backend with ``sut()``). batch: the engine's largest batch, and the in-flight
    count of a concurrency scenario that names none. rate: one rate of a server sweep (a cell
    per rate); None runs every rate of ``scenario.rates`` (then ``runs`` has one entry per rate).
    Returns {"status", "scenario", "metrics", "summary", "energy", "requests", "runs", "sut"}:
    ``metrics``/``energy``/``requests`` are those of the first (or only) run.
    """
    import dataclasses as _dc

    from harness.scenarios.loadgen import run_scenario, scenario_from_dict, scenario_max_seq

    cfg = scenario_from_dict(scenario)
    if rate is not None:
        cfg = _dc.replace(cfg, rates=[float(rate)])
    sut, release = sut_for_backend(backend, vocab_size, max_batch=batch,
                                   max_seq=scenario_max_seq(cfg, prompt_len, gen_len))
    try:
        out = run_scenario(sut, cfg, seed=seed, prompt_len=prompt_len, gen_len=gen_len, concurrency=batch,
                           meters=meters, energy_settings=energy_settings)
        describe = sut.describe() if hasattr(sut, "describe") else {}
        if hasattr(sut, "engine"):
            describe["engine_stats"] = dict(sut.engine.stats, batch_sizes={str(k): v for k, v in
                                                                           sut.engine.stats["batch_sizes"].items()})
    finally:
        release()
    first = out["runs"][0]
    failed = first["metrics"]["failed"]
    return {"status": "ok" if first["metrics"]["ok"] else "failed",
            "scenario": out["scenario"], "metrics": first["metrics"], "summary": out["summary"],
            "energy": first["energy"], "requests": first["requests"], "steady_window": first["steady_window"],
            "runs": out["runs"] if len(out["runs"]) > 1 else None, "sut": describe,
            "warnings": ([f"{failed} of {first['metrics']['requests']} requests failed"] if failed else [])
            + ([f"{first['metrics']['count_mismatch']} requests generated a different number of tokens "
                f"than asked"] if first["metrics"]["count_mismatch"] else [])}


# --- faults ---------------------------------------------------------------------------------------------

@dataclass
class FaultSpec:
    error_rate: float = 0.0  # fraction of completions answered with HTTP 500
    drop_rate: float = 0.0  # fraction of streams whose connection is closed mid-stream
    drop_after: int = 0  # tokens sent before such a drop
    seed: int = 0
    _rng: Any = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def parse(cls, text: str | None) -> "FaultSpec | None":
        if not text:
            return None
        f = cls()
        for part in text.split(","):
            if not part.strip():
                continue
            key, _, val = part.partition("=")
            key = key.strip().replace("-", "_")
            if key not in ("error_rate", "drop_rate", "drop_after", "seed") or not val:
                raise ValueError(f"--fault: expected error-rate=P, drop-rate=P, drop-after=N, seed=N; got {part!r}")
            setattr(f, key, int(val) if key in ("drop_after", "seed") else float(val))
        if "drop_after" in text.replace("-", "_") and "drop_rate" not in text.replace("-", "_"):
            f.drop_rate = 1.0
        for k in ("error_rate", "drop_rate"):
            if not 0.0 <= getattr(f, k) <= 1.0:
                raise ValueError(f"--fault: {k.replace('_', '-')} must be in [0, 1]")
        f._rng = np.random.default_rng(f.seed)
        return f

    def draw(self) -> tuple[bool, Optional[int]]:
        """(answer with an error?, drop after how many tokens or None)."""
        with self._lock:
            err = self.error_rate > 0 and self._rng.random() < self.error_rate
            drop = self.drop_rate > 0 and self._rng.random() < self.drop_rate
        return err, (self.drop_after if drop else None)


# --- HTTP --------------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    engine: BatchingEngine
    model_name: str
    api_key: Optional[str]
    fault: Optional[FaultSpec]
    verbose: bool
    max_wait_s: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "accel-harness-serve/0.1"
    timeout = 120  # idle keep-alive connections
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt: str, *args) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")

    # helpers ---------------------------------------------------------------------------------------
    def _json(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    # routes ------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/v1/models":
            self._json(200, {"object": "list", "data": [{
                "id": self.server.model_name, "object": "model", "created": 0, "owned_by": "accel-harness",
                "max_model_len": self.server.engine.max_seq}]})
        elif path in ("/health", "/healthz"):
            self._json(200, {"status": "ok"})
        elif path == "/stats":
            self._json(200, {k: (v if k != "batch_sizes" else {str(b): n for b, n in v.items()})
                             for k, v in self.server.engine.stats.items()})
        else:
            self._error(404, f"no route {path}")

    def _authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {key}".encode())

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        try:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        if path != "/v1/completions":
            self._error(404, f"no route {path} (this server has /v1/completions)")
            return
        if not self._authorized():
            self._error(401, "missing or wrong API key", "authentication_error")
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            self._error(400, f"request body is not valid JSON: {e}")
            return
        model = body.get("model")
        if model is not None and model != self.server.model_name:
            self._error(404, f"model {model!r} not served here; this server has {self.server.model_name!r}",
                        "not_found_error")
            return
        try:
            prompt = self._prompt_ids(body.get("prompt"))
            max_tokens = body.get("max_tokens", 16)
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise ValueError(f"max_tokens must be an integer, got {max_tokens!r}")
            min_tokens = body.get("min_tokens", 0) or 0
            ignore_eos = bool(body.get("ignore_eos", False))
            stream = bool(body.get("stream", False))
        except ValueError as e:
            self._error(400, str(e))
            return
        err, drop_after = self.server.fault.draw() if self.server.fault else (False, None)
        if err:
            self._error(500, "injected fault: internal server error", "server_error")
            return
        try:
            job = self.server.engine.submit(prompt, max_tokens, ignore_eos=ignore_eos, min_tokens=int(min_tokens))
        except ValueError as e:
            self._error(400, str(e))
            return
        except RuntimeError as e:
            self._error(503, str(e), "server_error")
            return
        rid = f"cmpl-{job.id}"
        if stream:
            self._stream(job, rid, len(prompt), drop_after)
        else:
            self._complete(job, rid, len(prompt))

    def _prompt_ids(self, prompt: Any) -> list[int]:
        vocab = self.server.engine.vocab_size
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return encode_text(prompt, vocab)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
            raise ValueError("batched prompts are not supported: send one prompt per request")
        raise ValueError("prompt must be a non-empty string or a non-empty list of token ids")

    def _next(self, job: _Job):
        try:
            return job.sink.get(timeout=self.server.max_wait_s)
        except queue.Empty:
            self.server.engine.cancel(job)
            return ("error", f"no token within {self.server.max_wait_s:g} s", time.perf_counter())

    def _usage(self, n_prompt: int, n_out: int) -> dict:
        return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}

    def _complete(self, job: _Job, rid: str, n_prompt: int) -> None:
        toks, reason = [], None
        while True:
            ev = self._next(job)
            if ev[0] == "error":
                self._error(500, ev[1], "server_error")
                return
            toks.append(ev[1])
            if ev[3]:
                reason = ev[3]
                break
        self._json(200, {"id": rid, "object": "text_completion", "created": int(time.time()),
                         "model": self.server.model_name,
                         "choices": [{"index": 0, "text": "".join(token_text(t) for t in toks), "logprobs": None,
                                      "finish_reason": reason}],
                         "usage": self._usage(n_prompt, len(toks))})

    def _stream(self, job: _Job, rid: str, n_prompt: int, drop_after: Optional[int]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        created, sent = int(time.time()), 0
        try:
            while True:
                if drop_after is not None and sent >= drop_after:
                    self.server.engine.cancel(job)
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                ev = self._next(job)
                if ev[0] == "error":  # headers are out: report in-band, then end the stream
                    self._chunk(b"data: " + json.dumps({"error": {"message": ev[1], "type": "server_error"}}).encode()
                                + b"\n\n")
                    break
                _, tok, _, reason = ev
                chunk = {"id": rid, "object": "text_completion", "created": created, "model": self.server.model_name,
                         "choices": [{"index": 0, "text": token_text(tok), "logprobs": None, "finish_reason": reason}]}
                sent += 1
                if reason:
                    chunk["usage"] = self._usage(n_prompt, sent)
                self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if reason:
                    break
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.server.engine.cancel(job)
            self.close_connection = True


# --- starting and stopping ----------------------------------------------------------------------------

@dataclass
class ServerHandle:
    url: str
    engine: BatchingEngine
    server: _Server
    _owns_engine: bool = True
    _thread: threading.Thread | None = None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._owns_engine:
            self.engine.stop()
            close = getattr(self.engine.backend, "close", None)
            if close:
                close()

    def __iter__(self):  # url, stop = start_server(...)
        return iter((self.url, self.stop))

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def build_engine(backend: str = "torch", model: str = "tiny", *, dtype: str = "fp32", options: dict | None = None,
                 max_batch: int = 8, max_seq: int = 512, seed: int = 0, batch_wait_s: float = 0.0,
                 eos_token_id: int | None = None) -> BatchingEngine:
    """Load a registered backend with a zoo model and start a batching engine on it."""
    from harness.config import options_from_dict
    from harness.registry import load_backend_class
    from workloads.zoo import ModelSpec, get_model

    cls = load_backend_class(backend)
    opts = options_from_dict(cls.Options, dict(options or {}), f"backend {backend} options")
    spec = ModelSpec(get_model(model), seed=seed)
    if max_seq > spec.args.max_seq_len:
        raise ValueError(f"--max-seq {max_seq} exceeds {model}'s {spec.args.max_seq_len} positions")
    be = cls(opts)
    be.load(spec, dtype, max_batch, max_seq)
    return BatchingEngine(be, spec.args.vocab_size, max_batch=max_batch, max_seq=max_seq,
                          batch_wait_s=batch_wait_s, eos_token_id=eos_token_id).start()


def start_server(backend: str = "torch", model: str = "tiny", *, host: str = "127.0.0.1", port: int = 0,
                 max_batch: int = 8, max_seq: int = 512, dtype: str = "fp32", options: dict | None = None,
                 seed: int = 0, fault: str | FaultSpec | None = None, api_key_env: str | None = None,
                 engine: BatchingEngine | None = None, served_model_name: str | None = None,
                 batch_wait_s: float = 0.0, eos_token_id: int | None = None, verbose: bool = False,
                 max_wait_s: float = 600.0) -> ServerHandle:
    """Serve in this process on a background thread (port 0: a free port).

    Returns a handle with ``url`` (``http://host:port``) and ``stop()``; it also unpacks
    as ``url, stop``. Pass ``engine`` to put another HTTP front (say, with faults) on an
    engine that is already loaded; that engine is then not stopped with this server."""
    owns = engine is None
    if engine is None:
        engine = build_engine(backend, model, dtype=dtype, options=options, max_batch=max_batch, max_seq=max_seq,
                              seed=seed, batch_wait_s=batch_wait_s, eos_token_id=eos_token_id)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {api_key_env}: that environment variable is not set")
    srv = _Server((host, port), _Handler)
    srv.engine, srv.model_name = engine, served_model_name or model
    srv.api_key = api_key
    srv.fault = FaultSpec.parse(fault) if isinstance(fault, str) or fault is None else fault
    srv.verbose, srv.max_wait_s = verbose, max_wait_s
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name="serve-http", daemon=True)
    th.start()
    h, p = srv.server_address[:2]
    return ServerHandle(f"http://{h}:{p}", engine, srv, owns, th)


# --- command line ----------------------------------------------------------------------------------------

def _parse_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, val = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(val)


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    """Add `serve` to the `harness` command line (called from harness/cli.py)."""
    s = subparsers.add_parser("serve", help="serve a backend over an OpenAI-compatible HTTP API (reference server)")
    s.add_argument("--backend", default="torch", help="registered backend (default torch)")
    s.add_argument("--model", default="tiny", help="zoo model name (default tiny)")
    s.add_argument("--dtype", default="fp32")
    s.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="backend option, repeatable (e.g. --option device=cuda --option threads=4)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    s.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed at start)")
    s.add_argument("--max-batch", type=int, default=8, help="largest batch the scheduler forms (default 8)")
    s.add_argument("--max-seq", type=int, default=512, help="positions per sequence: prompt + max_tokens (default 512)")
    s.add_argument("--seed", type=int, default=0, help="weight seed")
    s.add_argument("--served-model-name", help="model id in the API (default: --model)")
    s.add_argument("--api-key-env", metavar="NAME", help="require `Authorization: Bearer $NAME`")
    s.add_argument("--batch-wait-ms", type=float, default=0.0, help="wait this long for more requests before a batch")
    s.add_argument("--eos-token-id", type=int, help="stop at this token unless ignore_eos (default: never stop early)")
    s.add_argument("--fault", help="fault injection: error-rate=P,drop-rate=P,drop-after=N,seed=N")
    s.add_argument("--ready-file", help="write the server's URL to this file once it accepts requests")
    s.add_argument("--verbose", action="store_true", help="log every request")
    s.set_defaults(func=cmd_serve)
    return s


def _sigterm(*_):
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: this reference server has no TLS and no rate limiting", file=sys.stderr)
    try:
        handle = start_server(args.backend, args.model, host=args.host, port=args.port, max_batch=args.max_batch,
                              max_seq=args.max_seq, dtype=args.dtype, options=dict(args.option), seed=args.seed,
                              fault=args.fault, api_key_env=args.api_key_env,
                              served_model_name=args.served_model_name, batch_wait_s=args.batch_wait_ms / 1000,
                              eos_token_id=args.eos_token_id, verbose=args.verbose)
    except Exception as e:  # noqa: BLE001 - bad backend, model, option or port: one clear line
        from harness.config import ConfigError
        from harness.registry import RegistryError

        if not isinstance(e, (ValueError, KeyError, OSError, ConfigError, RegistryError)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {args.model} ({args.backend}, max batch {args.max_batch}, {args.max_seq} positions) "
          f"on {handle.url}/v1  (Ctrl-C stops)", flush=True)
    if threading.current_thread() is threading.main_thread():
        import signal

        signal.signal(signal.SIGTERM, _sigterm)  # `kill` stops it cleanly, like Ctrl-C
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(handle.url + "\n")
        os.replace(tmp, args.ready_file)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.serve")
    sub = p.add_subparsers()
    add_serve_command(sub)
    args = p.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
