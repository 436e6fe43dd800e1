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
* ``GET /metrics``: Prometheus text with vLLM's metric names (harness.serve_metrics)
* ``POST /v1/completions``: ``prompt`` as a list of token ids or as text (the byte-level
  tokenizer of harness.serve_tokenizer: one token per UTF-8 byte, id = byte),
  ``max_tokens``, ``stream``, ``stream_options.include_usage``, ``ignore_eos``,
  ``min_tokens``. Sampling is greedy whatever ``temperature`` says. Streams are SSE
  ``data: {...}`` chunks, one token each, over chunked HTTP/1.1, the last token's chunk
  carrying ``finish_reason``, then ``data: [DONE]``. ``usage``: with
  ``stream_options.include_usage: true`` in a last chunk of its own with no choices
  (OpenAI's rule); not asked, on the last token's chunk; ``false``, not sent. Generated
  text is one printable ASCII character per token (so it re-tokenizes 1:1).
  ``return_token_ids: true`` (vLLM's extension) adds each token's id to its chunk's
  choice as ``token_ids`` (the whole list on a non-streamed answer).
* ``POST /v1/chat/completions``: ``messages`` rendered to a prompt by the server's chat
  template (contents joined by newlines, roles unmarked: harness.serve_tokenizer), then as
  above; ``max_completion_tokens`` or ``max_tokens``; streamed deltas in
  ``choices[0].delta.content``, the role in a first delta sent with the first token.
  ``--api chat`` or ``--api completions`` serves only one of the two routes.
* ``POST /tokenize``: ``{"prompt": text}`` (vLLM's key), ``{"content": text}``
  (llama.cpp's) or ``{"messages": [...]}`` (vLLM's chat form: the template applied)
  -> ``{"tokens": [...], "count": n, "max_model_len": m}``, the ids a completion of that
  prompt would see; the ``openai-http`` client counts text prompts with it.
  ``POST /detokenize``: ``{"tokens": [...]}`` -> ``{"prompt": text}``, its inverse (ids
  of 256 and above have no text: 400).
* ``--export-tokenizer DIR``: the same tokenizer and chat template as a Hugging Face
  folder, for tools that need one (aiperf, guidellm, inference-perf).
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
from harness.serve_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricsUnavailable, RequestTrace, ServeMetrics
from harness.serve_tokenizer import decode_ids, encode_text, render_chat, token_text

APIS = ("both", "completions", "chat")  # --api: which OpenAI routes this server answers

# --- tokenizer: harness.serve_tokenizer (byte level; kept importable from here) -----------------------

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
    api: str  # APIS: which generation routes are served
    metrics: Optional[ServeMetrics]  # None: prometheus_client missing, metrics_missing says so
    metrics_missing: Optional[str]


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
        if self.request_version == "HTTP/0.9":  # "GET /path" alone: the stdlib would answer a bare body
            self.send_error(400, "request line without an HTTP version (HTTP/0.9 is not served)")
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
        if self.command != "HEAD":  # HEAD: the headers GET would send, never a body
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
        elif path == "/metrics":
            if self.server.metrics is None:
                self._error(501, self.server.metrics_missing or "no metrics", "server_error")
                return
            body = self.server.metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", METRICS_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        else:
            self._error(404, f"no route {path[:200]}")

    def do_HEAD(self) -> None:  # noqa: N802
        # scrapers probe /metrics with HEAD before GET (aiperf does): a 405 here made it
        # give up on the server's metrics
        self.do_GET()

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

    def _routes(self) -> dict:
        r = {"/tokenize": self._tokenize, "/detokenize": self._detokenize}
        if self.server.api in ("both", "completions"):
            r["/v1/completions"] = lambda body: self._generate(body, chat=False)
        if self.server.api in ("both", "chat"):
            r["/v1/chat/completions"] = lambda body: self._generate(body, chat=True)
        return r

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if not self._authorized():  # before the body is read: no work for a client without the key
            self.close_connection = True
            self._error(401, "missing or wrong API key", "authentication_error")
            return
        raw = self._read_body()
        if raw is None:
            return
        routes = self._routes()
        if path not in routes:
            self._error(404, f"no route {path[:200]} (this server has {', '.join(sorted(routes))})")
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
        routes[path](body)

    def _generate(self, body: dict, chat: bool) -> None:
        """POST /v1/completions (chat false) or /v1/chat/completions: checked, queued on the
        engine, answered whole or streamed."""
        model = body.get("model")
        if model is not None and model != self.server.model_name:
            self._error(404, f"model {str(model)[:200]!r} not served here; this server has {self.server.model_name!r}",
                        "not_found_error")
            return
        try:
            prompt = self._chat_ids(body.get("messages")) if chat else self._prompt_ids(body.get("prompt"))
            # ranges beyond the context are the engine's to explain (prompt + max_tokens);
            # chat's newer name for the output cap wins over the older one, as on OpenAI's API
            cap = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
            max_tokens = _json_int(body, cap, 16, 1, 1 << 31)
            min_tokens = _json_int(body, "min_tokens", 0, 0, 1 << 31)
            if _json_int(body, "n", 1, 1, 1 << 31) != 1:
                raise ValueError("n must be 1: one choice per request is served here")
            ignore_eos = bool(body.get("ignore_eos", False))
            stream = bool(body.get("stream", False))
            include_usage = _include_usage(body.get("stream_options"))
        except ValueError as e:
            self._error(400, str(e))
            return
        err, drop_after = self.server.fault.draw() if self.server.fault else (False, None)
        if err:
            self._error(500, "injected fault: internal server error", "server_error")
            return
        t_arrival = time.perf_counter()
        try:
            job = self.server.engine.submit(prompt, max_tokens, ignore_eos=ignore_eos, min_tokens=int(min_tokens))
        except ValueError as e:
            self._error(400, str(e))
            return
        except RuntimeError as e:
            self._error(503, str(e), "server_error")
            return
        trace = self.server.metrics.begin(len(prompt), t_arrival) if self.server.metrics else None
        fmt = _Format(chat, f"{'chatcmpl' if chat else 'cmpl'}-{job.id}", self.server.model_name, int(time.time()),
                      body.get("return_token_ids") is True)
        try:
            if stream:
                self._stream(job, fmt, len(prompt), drop_after, include_usage, trace)
            else:
                self._complete(job, fmt, len(prompt), trace)
        finally:
            if trace is not None:
                trace.finish(None)  # a request that failed or was dropped leaves the gauges (no-op once finished)

    def _chat_ids(self, messages: Any) -> list[int]:
        return encode_text(render_chat(messages), self.server.engine.vocab_size)

    def _tokenize(self, body: dict) -> None:
        """vLLM's shape: {"prompt": text} or {"messages": [...]} (the chat template applied),
        also llama.cpp's {"content": text} -> {"tokens", "count", "max_model_len"}."""
        try:
            if "messages" in body:
                ids = self._chat_ids(body["messages"])
            else:
                text = body.get("content", body.get("prompt"))
                if not isinstance(text, str):
                    raise ValueError("expected `prompt` (or `content`): the text to tokenize, or `messages`")
                ids = encode_text(text, self.server.engine.vocab_size)
        except ValueError as e:
            self._error(400, str(e))
            return
        self._json(200, {"tokens": ids, "count": len(ids), "max_model_len": self.server.engine.max_seq})

    def _detokenize(self, body: dict) -> None:
        """vLLM's shape: {"tokens": [...]} -> {"prompt": text}, the inverse of /tokenize."""
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            self._error(400, "expected `tokens`: a list of token ids")
            return
        try:
            self._json(200, {"prompt": decode_ids(tokens)})
        except ValueError as e:
            self._error(400, str(e))

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

    def _complete(self, job: Job, fmt: "_Format", n_prompt: int, trace: Optional[RequestTrace]) -> None:
        toks, reason = [], None
        while True:
            ev = self._next(job)
            if ev[0] == "error":
                self._error(500, ev[1], "server_error")
                return
            toks.append(ev[1])
            if trace is not None:
                trace.token(ev[2])
            if ev[3]:
                reason = ev[3]
                break
        if trace is not None:
            trace.finish(reason)
        self._json(200, fmt.whole(toks, reason, _usage(n_prompt, len(toks))))

    def _stream(self, job: Job, fmt: "_Format", n_prompt: int, drop_after: Optional[int],
                include_usage: Optional[bool], trace: Optional[RequestTrace]) -> None:
        """SSE, one token a chunk. Usage: with stream_options.include_usage true, a last chunk
        of its own with no choices (OpenAI's rule); not asked, on the last token's chunk (this
        server's habit, so a client that never asks still gets counts); false, none."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0

        def event(obj: dict) -> None:
            self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

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
                    event({"error": {"message": ev[1], "type": "server_error"}})
                    break
                _, tok, t, reason = ev
                if trace is not None:
                    trace.token(t)
                if sent == 0 and fmt.chat:  # the role first, with the first token (as vLLM sends it)
                    event(fmt.role_chunk())
                chunk = fmt.chunk(tok, reason)
                sent += 1
                if reason:
                    if trace is not None:
                        trace.finish(reason)
                    if include_usage is None:
                        chunk["usage"] = _usage(n_prompt, sent)
                event(chunk)
                if reason:
                    if include_usage:
                        event(fmt.usage_chunk(_usage(n_prompt, sent)))
                    break
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            self.server.engine.cancel(job)
            self.close_connection = True
            # the client went away: its business, not a server error; one line, no traceback
            sys.stderr.write(f"{self.address_string()}: client disconnected after {sent} streamed token(s) "
                             f"({e.__class__.__name__}); request cancelled\n")


def _usage(n_prompt: int, n_out: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


def _include_usage(options: Any) -> Optional[bool]:
    """stream_options.include_usage: True, False, or None where not given."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ValueError("stream_options must be an object")
    v = options.get("include_usage")
    if v is not None and not isinstance(v, bool):
        raise ValueError(f"stream_options.include_usage must be true or false, got {str(v)[:40]!r}")
    return v


@dataclass
class _Format:
    """The JSON of one answer: OpenAI's completion or chat completion objects."""

    chat: bool
    rid: str
    model: str
    created: int
    with_ids: bool  # vLLM's return_token_ids: each choice carries its tokens' ids

    def _obj(self, kind: str, choices: list) -> dict:
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def role_chunk(self) -> dict:
        return self._obj("chat.completion.chunk", [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}])

    def chunk(self, tok: int, reason: Optional[str]) -> dict:
        text = token_text(tok)
        choice: dict[str, Any] = ({"index": 0, "delta": {"content": text}} if self.chat
                                  else {"index": 0, "text": text})
        choice.update(logprobs=None, finish_reason=reason)
        if self.with_ids:
            choice["token_ids"] = [int(tok)]
        return self._obj("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def usage_chunk(self, usage: dict) -> dict:
        return dict(self._obj("chat.completion.chunk" if self.chat else "text_completion", []), usage=usage)

    def whole(self, toks: list[int], reason: Optional[str], usage: dict) -> dict:
        text = "".join(token_text(t) for t in toks)
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}} if self.chat
                                  else {"index": 0, "text": text})
        choice.update(logprobs=None, finish_reason=reason)
        if self.with_ids:
            choice["token_ids"] = [int(t) for t in toks]
        return dict(self._obj("chat.completion" if self.chat else "text_completion", [choice]), usage=usage)

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
                 eos_token_id: int | None = None, batching: str = "auto") -> BatchingEngine:
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
    try:
        return BatchingEngine(be, spec.args.vocab_size, max_batch=max_batch, max_seq=max_seq,
                              batch_wait_s=batch_wait_s, eos_token_id=eos_token_id, batching=batching).start()
    except ValueError:  # --batching continuous on a backend without it
        be.close()
        raise


def start_server(backend: str = "torch", model: str = "tiny", *, host: str = "127.0.0.1", port: int = 0,
                 max_batch: int = 8, max_seq: int = 512, dtype: str = "fp32", options: dict | None = None,
                 seed: int = 0, fault: str | FaultSpec | None = None, api_key_env: str | None = None,
                 engine: BatchingEngine | None = None, served_model_name: str | None = None,
                 batch_wait_s: float = 0.0, eos_token_id: int | None = None, verbose: bool = False,
                 batching: str = "auto", max_wait_s: float = 600.0, max_body_bytes: int = MAX_BODY_BYTES,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_connections: int = MAX_CONNECTIONS,
                 api: str = "both") -> ServerHandle:
    """Serve in this process on a background thread (port 0: a free port).

    Returns a handle with ``url`` (``http://host:port``) and ``stop()``; it also unpacks
    as ``url, stop``. Pass ``engine`` to put another HTTP front (say, with faults) on an
    engine that is already loaded; that engine is then not stopped with this server."""
    if api not in APIS:
        raise ValueError(f"--api must be one of {', '.join(APIS)}, got {api!r}")
    owns = engine is None
    if engine is None:
        engine = build_engine(backend, model, dtype=dtype, options=options, max_batch=max_batch, max_seq=max_seq,
                              seed=seed, batch_wait_s=batch_wait_s, eos_token_id=eos_token_id, batching=batching)
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
    srv.verbose, srv.max_wait_s, srv.api = verbose, max_wait_s, api
    try:
        srv.metrics, srv.metrics_missing = ServeMetrics(srv.model_name), None
    except MetricsUnavailable as e:  # the server runs without; GET /metrics says what to install
        srv.metrics, srv.metrics_missing = None, str(e)
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
    s.add_argument("--port", type=_port, default=0, help="port (default 0: a free one, printed at start)")
    s.add_argument("--max-batch", type=_positive, default=8, help="largest batch the scheduler forms (default 8)")
    s.add_argument("--max-seq", type=_positive, default=512, help="positions per sequence: prompt + max_tokens (default 512)")
    s.add_argument("--seed", type=int, default=0, help="weight seed")
    s.add_argument("--served-model-name", help="model id in the API (default: --model)")
    s.add_argument("--api-key-env", metavar="NAME", help="require `Authorization: Bearer $NAME`")
    s.add_argument("--batch-wait-ms", type=float, default=0.0, help="wait this long for more requests before a batch")
    s.add_argument("--batching", choices=("auto", "continuous", "static"), default="auto",
                   help="continuous: requests join the running batch at the next step (torch); static: only equal "
                        "prompt lengths arriving together batch (the old policy); auto (default): continuous where "
                        "the backend can")
    s.add_argument("--eos-token-id", type=int, help="stop at this token unless ignore_eos (default: never stop early)")
    s.add_argument("--fault", help="fault injection: error-rate=P,drop-rate=P,drop-after=N,wrong-tokens=P,seed=N")
    s.add_argument("--ready-file", help="write the server's URL to this file once it accepts requests")
    s.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help=f"largest request body; larger gets 413 unread (default {MAX_BODY_BYTES})")
    s.add_argument("--max-header-bytes", type=int, default=MAX_HEADER_BYTES,
                   help=f"largest total of request headers; more gets 431 (default {MAX_HEADER_BYTES})")
    s.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                   help=f"open connections at once; one more gets 503 and is closed (default {MAX_CONNECTIONS})")
    s.add_argument("--api", choices=APIS, default="both",
                   help="OpenAI routes to serve: both (default), completions or chat (to stand in for a server "
                        "that has only one)")
    s.add_argument("--export-tokenizer", metavar="DIR",
                   help="write a Hugging Face tokenizer folder matching this server's token ids (for aiperf, "
                        "guidellm, inference-perf offline), then serve")
    s.add_argument("--verbose", action="store_true", help="log every request")
    s.set_defaults(func=cmd_serve)
    return s


def _export(args) -> None:
    """--export-tokenizer DIR, before the model loads (a bad folder fails at once)."""
    from harness.serve_tokenizer import export_tokenizer
    from workloads.zoo import get_model

    m = get_model(args.model)
    if args.max_seq > m.max_seq_len:
        raise ValueError(f"--max-seq {args.max_seq} exceeds {args.model}'s {m.max_seq_len} positions")
    export_tokenizer(args.export_tokenizer, vocab_size=m.vocab_size, max_model_len=args.max_seq,
                     model=args.served_model_name or args.model)
    print(f"tokenizer for {args.served_model_name or args.model} written to {args.export_tokenizer}", flush=True)


def _sigterm(*_):
    raise KeyboardInterrupt


def _port(text: str) -> int:
    """argparse type: a TCP port (0: any free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text[:40]!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {port}")
    return port


def _positive(text: str) -> int:
    """argparse type: a count from 1 to 2**20 (batch sizes, positions)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if not 1 <= n <= 1 << 20:
        raise argparse.ArgumentTypeError(f"expected 1 to {1 << 20}, got {n}")
    return n


def _bind_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be bound, found before a model is loaded (a bad --host
    would otherwise surface as a bare resolver error after the load)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        return f"--host {host[:80]!r}: cannot resolve it ({e})"
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
    except OSError as e:
        return f"--host {host[:80]!r} --port {port}: cannot bind ({e.strerror or e})"
    return None


def cmd_serve(args) -> int:
    if (why := _bind_problem(args.host, args.port)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: this reference server has no TLS and no rate limiting", file=sys.stderr)
    try:
        if args.export_tokenizer:
            _export(args)
        handle = start_server(args.backend, args.model, host=args.host, port=args.port, max_batch=args.max_batch,
                              max_seq=args.max_seq, dtype=args.dtype, options=dict(args.option), seed=args.seed,
                              fault=args.fault, api_key_env=args.api_key_env,
                              served_model_name=args.served_model_name, batch_wait_s=args.batch_wait_ms / 1000,
                              eos_token_id=args.eos_token_id, verbose=args.verbose, batching=args.batching,
                              max_body_bytes=args.max_body_bytes, max_header_bytes=args.max_header_bytes,
                              max_connections=args.max_connections, api=args.api)
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
        print(handle.engine.batch_stats().format(), file=sys.stderr, flush=True)  # how full the steps were
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.serve")
    sub = p.add_subparsers()
    add_serve_command(sub)
    args = p.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
