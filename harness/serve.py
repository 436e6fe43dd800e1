"""`harness serve`: a reference OpenAI-compatible HTTP server over the in-process
batching engine (harness.scenarios.engine) and any model backend.

    harness serve --backend torch --model tiny [--host 127.0.0.1] [--port 0] [--max-batch 8]
    python -m harness.serve ...            (the same, without the main CLI)

What it is for: testing the ``openai-http`` client and the load generators for
real (HTTP, SSE, sockets), and putting the harness's own backends behind the
same API a vendor's serving stack exposes, so the two can be compared under
the same scenarios. The measurement path never imports this module: request
scenarios drive the engine directly.

API (the subset of OpenAI's that benchmarking needs):

* ``GET /v1/models``; ``GET /health``; ``GET /stats`` (engine counters, not OpenAI)
* ``POST /v1/completions``: ``prompt`` as a list of token ids or as text (a
  deterministic byte-level tokenizer: one token per UTF-8 byte, id = byte mod
  vocab), ``max_tokens``, ``stream``, ``ignore_eos``, ``min_tokens``. Sampling
  is greedy whatever ``temperature`` says. Streams are SSE ``data: {...}``
  chunks, one token each, over chunked HTTP/1.1, the last token's chunk
  carrying ``finish_reason`` and ``usage``, then ``data: [DONE]``. Generated
  text is one printable ASCII character per token (so it re-tokenizes 1:1).
  ``return_token_ids: true`` (vLLM's extension) adds each token's id to its chunk's
  choice as ``token_ids`` (the whole list on a non-streamed answer).
* ``POST /tokenize``: ``{"content": text}`` (llama.cpp's key) or ``{"prompt": text}``
  (vLLM's) -> ``{"tokens": [...], "count": n}``, the ids a completion of that prompt
  would see; the ``openai-http`` client counts text prompts with it.
* ``--api-key-env NAME``: require ``Authorization: Bearer $NAME`` on every route, GET included.

Limits (every malformed request gets a 4xx JSON error and the server stays up):

* request body at most ``--max-body-bytes`` (default 1 MiB, MAX_BODY_BYTES): larger
  ``Content-Length`` is answered 413 without reading the body; a ``Content-Length``
  that is not a plain decimal number (negative, ``abc``, ``1e3``, several values) 400;
  a request body sent chunked (no length) 411. The body is read only up to its length,
  never until EOF.
* request headers at most ``--max-header-bytes`` in all (default 32 KiB,
  MAX_HEADER_BYTES), each line at most 64 KiB and at most 100 headers (the standard
  library's limits): 431.
* JSON nesting at most MAX_JSON_DEPTH (64) levels: 400. ``max_tokens`` and
  ``min_tokens`` must be JSON integers (not floats, booleans, strings or 1e400).
* at most ``--max-connections`` open connections (default 64, MAX_CONNECTIONS); one
  more is answered 503 and closed at once. Idle keep-alive connections close after
  120 s, a request whose headers or body do not arrive within that time too.
* ``--fault error-rate=0.2,drop-rate=0.5,drop-after=3,wrong-tokens=1,seed=0``: fault
  injection for tests: HTTP 500 for a fraction of requests; the connection
  closed mid-stream after ``drop-after`` tokens for a fraction of streams
  (``drop-after`` alone means every stream); a fraction of produced tokens replaced
  by the next id (text and id alike: a server whose model is not the one declared).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
import hmac
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
import queue
import socket
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

from backends.base import ModelBackend
from harness.scenarios.engine import BatchingEngine, Job

# --- tokenizer ------------------------------------------------------------------------------------

def encode_text(text: str, vocab: int) -> list[int]:
    """Byte-level: one token per UTF-8 byte, id = byte mod vocab."""
    return [b % vocab for b in text.encode("utf-8")]


def token_text(token: int) -> str:
    """One printable ASCII character per token id (re-encodes to exactly one token)."""
    return chr(32 + int(token) % 95)


# --- faults ---------------------------------------------------------------------------------------------

@dataclass
class FaultSpec:
    error_rate: float = 0.0  # fraction of completions answered with HTTP 500
    drop_rate: float = 0.0  # fraction of streams whose connection is closed mid-stream
    drop_after: int = 0  # tokens sent before such a drop
    wrong_tokens: float = 0.0  # fraction of produced tokens replaced by the next id
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
            if key not in ("error_rate", "drop_rate", "drop_after", "wrong_tokens", "seed") or not val:
                raise ValueError(f"--fault: expected error-rate=P, drop-rate=P, drop-after=N, wrong-tokens=P, seed=N; "
                                 f"got {part!r}")
            setattr(f, key, int(val) if key in ("drop_after", "seed") else float(val))
        if "drop_after" in text.replace("-", "_") and "drop_rate" not in text.replace("-", "_"):
            f.drop_rate = 1.0
        for k in ("error_rate", "drop_rate", "wrong_tokens"):
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

    def token(self, token: int, vocab: int) -> int:
        """The token as served: the next id for a `wrong_tokens` fraction of them."""
        if self.wrong_tokens <= 0:
            return token
        with self._lock:
            wrong = self._rng.random() < self.wrong_tokens
        return (token + 1) % vocab if wrong else token


# --- HTTP --------------------------------------------------------------------------------------------

MAX_BODY_BYTES = 1 << 20
MAX_HEADER_BYTES = 32 << 10
MAX_CONNECTIONS = 64
MAX_JSON_DEPTH = 64


def json_depth_ok(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Is the nesting of this JSON text at most `limit`? A linear scan (brackets inside
    strings skipped), run before json.loads so that deep input never reaches the
    recursive decoder."""
    depth, in_str, esc = 0, False, False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def _json_int(body: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = body.get(key, default)
    if v is None:
        v = default
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{key} must be an integer, got {str(type(v).__name__)} {str(v)[:40]!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{key} must be in [{lo}, {hi}], got {str(v)[:40]}")
    return v


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    max_body_bytes: int = MAX_BODY_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections: int = MAX_CONNECTIONS

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address) -> None:
        # the connection cap: a thread per connection, so without it a flood of idle
        # connections is a flood of threads
        if not self._slots.acquire(blocking=False):
            try:
                body = json.dumps({"error": {"message": f"too many connections (--max-connections "
                                             f"{self.max_connections})", "type": "server_error", "code": 503}})
                request.settimeout(1.0)
                request.sendall(("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                 f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
                                 + body).encode())
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # socketserver prints a traceback to stderr here; a client's broken connection is
        # not the server's error, and anything else was already answered with a 500
        pass

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

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, socket.timeout, OSError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug must cost one request, never the server or a traceback
            self.close_connection = True
            try:
                self._error(500, f"internal error: {type(e).__name__}", "server_error")
            except Exception:  # noqa: BLE001 - headers may be out already
                pass

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        size = sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if size > self.server.max_header_bytes:
            self.close_connection = True
            self._error(431, f"request headers of {size} bytes exceed {self.server.max_header_bytes} "
                             "(--max-header-bytes)")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # the standard library's errors (bad request line, header line too long, too many
        # headers, unsupported method) as JSON like ours, never its HTML page
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # a request line too broken to name a version: answer with a status line and
            # headers anyway (HTTP/0.9 would get a bare body a client cannot tell from data)
            self.request_version = "HTTP/1.1"
        try:
            # every malformed request is a client error: an unknown method 405 (stdlib: 501),
            # an unknown HTTP version 400 (stdlib: 505)
            code = {501: 405, 505: 400}.get(int(code), int(code))
            self._error(code, message or explain or "bad request")
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
        if not self._authorized():
            self._error(401, "missing or wrong API key", "authentication_error")
            return
        if path == "/v1/models":
            self._json(200, {"object": "list", "data": [{
                "id": self.server.model_name, "object": "model", "created": 0, "owned_by": "accel-harness",
                "max_model_len": self.server.engine.max_seq}]})
        elif path in ("/health", "/healthz"):
            self._json(200, {"status": "ok"})
        elif path == "/stats":
            self._json(200, self.server.engine.stats_json())
        else:
            self._error(404, f"no route {path}")

    def _authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode("utf-8", "replace"), f"Bearer {key}".encode())

    def _read_body(self) -> Optional[bytes]:
        """The request body, or None after answering the error (the connection then closes:
        an unread body must not be parsed as the next request)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._error(411, "send the body with a Content-Length (chunked request bodies are not supported)")
            return None
        values = self.headers.get_all("Content-Length") or []
        text = values[0].strip() if len(values) == 1 else ""
        if not values:
            return b""
        if not (text.isascii() and text.isdigit() and len(text) <= 19):
            self.close_connection = True
            self._error(400, f"Content-Length must be one non-negative decimal integer, got "
                             f"{', '.join(v[:40] for v in values)!r}")
            return None
        n = int(text)
        if n > self.server.max_body_bytes:
            self.close_connection = True
            self._error(413, f"request body of {n} bytes exceeds {self.server.max_body_bytes} (--max-body-bytes)")
            return None
        raw = self.rfile.read(n) if n else b""
        if len(raw) < n:  # the client closed early
            self.close_connection = True
            return None
        return raw

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if not self._authorized():  # before the body is read: no work for a client without the key
            self.close_connection = True
            self._error(401, "missing or wrong API key", "authentication_error")
            return
        raw = self._read_body()
        if raw is None:
            return
        if path not in ("/v1/completions", "/tokenize"):
            self._error(404, f"no route {path[:200]} (this server has /v1/completions and /tokenize)")
            return
        try:
            if not json_depth_ok(raw):
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, RecursionError) as e:
            self._error(400, f"request body is not valid JSON: {e}")
            return
        if path == "/tokenize":
            self._tokenize(body)
            return
        model = body.get("model")
        if model is not None and model != self.server.model_name:
            self._error(404, f"model {str(model)[:200]!r} not served here; this server has {self.server.model_name!r}",
                        "not_found_error")
            return
        try:
            prompt = self._prompt_ids(body.get("prompt"))
            # ranges beyond the context are the engine's to explain (prompt + max_tokens)
            max_tokens = _json_int(body, "max_tokens", 16, 1, 1 << 31)
            min_tokens = _json_int(body, "min_tokens", 0, 0, 1 << 31)
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
        ids = body.get("return_token_ids") is True
        if stream:
            self._stream(job, rid, len(prompt), drop_after, ids)
        else:
            self._complete(job, rid, len(prompt), ids)

    def _tokenize(self, body: dict) -> None:
        text = body.get("content", body.get("prompt"))
        if not isinstance(text, str):
            self._error(400, "expected `content` (or `prompt`): the text to tokenize")
            return
        ids = encode_text(text, self.server.engine.vocab_size)
        self._json(200, {"tokens": ids, "count": len(ids), "max_model_len": self.server.engine.max_seq})

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

    def _next(self, job: Job):
        try:
            ev = job.sink.get(timeout=self.server.max_wait_s)
        except queue.Empty:
            self.server.engine.cancel(job)
            return ("error", f"no token within {self.server.max_wait_s:g} s", time.perf_counter())
        if ev[0] == "token" and self.server.fault:
            ev = (ev[0], self.server.fault.token(ev[1], self.server.engine.vocab_size), *ev[2:])
        return ev

    def _usage(self, n_prompt: int, n_out: int) -> dict:
        return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}

    def _complete(self, job: Job, rid: str, n_prompt: int, with_ids: bool) -> None:
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
        choice = {"index": 0, "text": "".join(token_text(t) for t in toks), "logprobs": None, "finish_reason": reason}
        if with_ids:
            choice["token_ids"] = [int(t) for t in toks]
        self._json(200, {"id": rid, "object": "text_completion", "created": int(time.time()),
                         "model": self.server.model_name, "choices": [choice],
                         "usage": self._usage(n_prompt, len(toks))})

    def _stream(self, job: Job, rid: str, n_prompt: int, drop_after: Optional[int], with_ids: bool) -> None:
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
                choice = {"index": 0, "text": token_text(tok), "logprobs": None, "finish_reason": reason}
                if with_ids:
                    choice["token_ids"] = [int(tok)]
                chunk = {"id": rid, "object": "text_completion", "created": created, "model": self.server.model_name,
                         "choices": [choice]}
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
            self.engine.backend.close()

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
    from harness.registry import load_backend_class
    from harness.schema import build
    from workloads.zoo import ModelSpec, get_model

    cls = load_backend_class(backend)
    if not issubclass(cls, ModelBackend):
        raise ValueError(f"backend {backend!r} sends requests to a server of its own; harness serve runs a model "
                         "backend (torch, onnxruntime, ...)")
    opts = build(cls.Options, dict(options or {}), f"backend {backend} options")
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
                 max_wait_s: float = 600.0, max_body_bytes: int = MAX_BODY_BYTES,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_connections: int = MAX_CONNECTIONS) -> ServerHandle:
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
    for name, v in (("--max-body-bytes", max_body_bytes), ("--max-header-bytes", max_header_bytes),
                    ("--max-connections", max_connections)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    srv = _Server((host, port), _Handler, bind_and_activate=False)
    srv.max_body_bytes, srv.max_header_bytes, srv.max_connections = max_body_bytes, max_header_bytes, max_connections
    try:
        srv.server_bind()
        srv.server_activate()
    except OSError:
        srv.server_close()
        if owns:
            engine.stop()
            engine.backend.close()
        raise
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
    s.add_argument("--fault", help="fault injection: error-rate=P,drop-rate=P,drop-after=N,wrong-tokens=P,seed=N")
    s.add_argument("--ready-file", help="write the server's URL to this file once it accepts requests")
    s.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help=f"largest request body; larger gets 413 unread (default {MAX_BODY_BYTES})")
    s.add_argument("--max-header-bytes", type=int, default=MAX_HEADER_BYTES,
                   help=f"largest total of request headers; more gets 431 (default {MAX_HEADER_BYTES})")
    s.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                   help=f"open connections at once; one more gets 503 and is closed (default {MAX_CONNECTIONS})")
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
                              eos_token_id=args.eos_token_id, verbose=args.verbose,
                              max_body_bytes=args.max_body_bytes, max_header_bytes=args.max_header_bytes,
                              max_connections=args.max_connections)
    except Exception as e:  # noqa: BLE001 - bad backend, model, option or port: one clear line
        from harness.registry import RegistryError
        from harness.schema import ConfigError

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
