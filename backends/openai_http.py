"""`openai-http`: any OpenAI-compatible serving endpoint as a system under test.

Many accelerators run LLMs only through their vendor's serving stack (vLLM-style
servers with an OpenAI API). This backend streams ``POST /v1/completions`` with
``stream: true`` and times every streamed chunk on arrival. Standard library
only (http.client): no new dependency.

* Fixed output length: ``max_tokens`` plus, by default, ``ignore_eos: true`` and
  ``min_tokens: max_tokens`` (vLLM extensions; set ``fixed_length_params: []``
  for a server that rejects unknown fields). The count recorded is the
  server's own (``usage.completion_tokens``); a count different from the one
  asked for is flagged ``count_mismatch`` on the request, never hidden.
* Prompts as token-id lists (``send_token_ids: true``, exact counts) where the
  server accepts them; else text, ``text_unit`` repeated, and the true prompt
  count taken from ``usage.prompt_tokens`` (a difference is flagged
  ``prompt_mismatch``). At load, a probe request checks that token-id prompts
  are accepted and falls back to text if they are not.
* An API key only from the environment variable named by ``api_key_env``; the
  key is never stored in the options, records or logs, and is scrubbed from
  any error text a server echoes back. ``describe()`` lists header *names* only.

This is a request backend (backends.base.RequestBackend): it has no
prefill/decode of its own and no logits (the accuracy gate cannot see inside a
remote server), so only the request scenarios drive it, through ``issue()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import http.client
import json
import math
import os
import socket
import threading
import time
from typing import Any, ClassVar, Optional
from urllib.parse import urlsplit

import numpy as np

from backends.base import BackendError, LoadInfo, Request, RequestBackend, RequestResult
from workloads.zoo import ModelSpec

_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest)


@dataclass
class OpenAIHttpOptions:
    url: str = "http://127.0.0.1:8000"  # base URL (a trailing /v1 or /v1/completions is accepted)
    model: Optional[str] = None  # model id in the API; default: the first of GET /v1/models
    headers: dict = field(default_factory=dict)  # extra request headers (names are recorded, values never)
    api_key_env: Optional[str] = None  # NAME of an env var holding the key; sent as `Authorization: Bearer`
    timeout_s: float = 600.0  # per socket operation: connect, and the gap between streamed chunks
    send_token_ids: bool = True  # prompts as token-id lists (exact counts); false: text
    fixed_length_params: list = field(default_factory=lambda: ["ignore_eos", "min_tokens"])
    extra_body: dict = field(default_factory=dict)  # merged into every request body
    text_unit: str = " the"  # text prompts: this string repeated ...
    text_unit_tokens: int = 1  # ... counting as this many tokens each
    include_usage: bool = True  # ask for `usage` in the stream (stream_options.include_usage)
    probe: bool = True  # one 1-token request at load(): checks the endpoint and the prompt format


class OpenAIHttpClient:
    """The HTTP side: ``issue(request) -> RequestResult``, thread-safe, with a keep-alive pool."""

    def __init__(self, options: OpenAIHttpOptions):
        self.options = options
        u = urlsplit(options.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise BackendError(f"openai-http url must be http(s)://host[:port][/prefix], got {options.url!r}")
        prefix = u.path.rstrip("/")
        for tail in ("/v1/completions", "/v1"):
            if prefix.endswith(tail):
                prefix = prefix[: -len(tail)]
                break
        self.scheme, self.host = u.scheme, u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = prefix
        self.endpoint = f"{u.scheme}://{u.hostname}:{self.port}{prefix}"  # never the userinfo
        self.model = options.model
        self.send_token_ids = options.send_token_ids
        self.probe_notes: list[str] = []
        self._pool: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # secrets ---------------------------------------------------------------------------------------
    def _key(self) -> Optional[str]:
        name = self.options.api_key_env
        if not name:
            return None
        key = os.environ.get(name)
        if not key:
            raise BackendError(f"openai-http: api_key_env names {name!r}, but that environment variable is not set")
        return key

    def _scrub(self, text: str) -> str:
        secrets = []
        try:
            k = self._key()
            if k:
                secrets.append(k)
        except BackendError:
            pass
        secrets += [str(v) for v in self.options.headers.values() if len(str(v)) >= 8]
        for s in secrets:
            text = text.replace(s, "***")
        return text

    def _headers(self, stream: bool) -> dict:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
        h.update({str(k): str(v) for k, v in self.options.headers.items()})
        key = self._key()
        if key and not any(k.lower() == "authorization" for k in h):
            h["Authorization"] = f"Bearer {key}"
        return h

    # connections -------------------------------------------------------------------------------------
    def _new_conn(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.options.timeout_s)
        conn.connect()
        try:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        return conn

    def _get_conn(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._pool:
                return self._pool.pop(), True
        return self._new_conn(), False

    def _put_conn(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._pool.append(conn)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for c in pool:
            c.close()

    def _send(self, method: str, path: str, body: Optional[bytes], headers: dict):
        """(connection, response), retrying once on a stale pooled connection."""
        conn, reused = self._get_conn()
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers)
            return conn, conn.getresponse()
        except _STALE:
            conn.close()
            if not reused:
                raise
        conn = self._new_conn()
        conn.request(method, self.prefix + path, body=body, headers=headers)
        return conn, conn.getresponse()

    def _finish(self, conn, resp) -> None:
        """Return a connection whose response was read to the end to the pool."""
        if resp.will_close or not resp.isclosed():
            conn.close()
        else:
            self._put_conn(conn)

    # API ------------------------------------------------------------------------------------------------
    def get_json(self, path: str) -> dict:
        conn, resp = self._send("GET", path, None, self._headers(stream=False))
        data = resp.read()
        self._finish(conn, resp)
        if resp.status != 200:
            raise BackendError(self._scrub(f"GET {self.endpoint}{path}: HTTP {resp.status}: {_message(data)}"))
        return json.loads(data)

    def models(self) -> list[str]:
        return [m.get("id") for m in self.get_json("/v1/models").get("data", [])]

    def _prompt(self, request: Request) -> Any:
        if self.send_token_ids:
            ids = request.prompt_ids
            if ids is None:
                ids = np.random.default_rng(request.id & 0x7FFFFFFF).integers(10, 1000, request.prompt_len).tolist()
            return [int(t) for t in ids]
        units = max(1, math.ceil(request.prompt_len / max(1, self.options.text_unit_tokens)))
        return self.options.text_unit * units

    def body(self, request: Request) -> dict:
        o = self.options
        b: dict[str, Any] = {"model": self.model, "prompt": self._prompt(request), "max_tokens": request.max_tokens,
                             "stream": True, "temperature": 0.0}
        if "ignore_eos" in o.fixed_length_params:
            b["ignore_eos"] = True
        if "min_tokens" in o.fixed_length_params:
            b["min_tokens"] = request.max_tokens
        if o.include_usage:
            b["stream_options"] = {"include_usage": True}
        b.update(o.extra_body)
        if b["model"] is None:
            b.pop("model")
        return b

    def issue(self, request: Request) -> RequestResult:
        """Stream one completion; every failure becomes an error on the result, never an exception."""
        res = RequestResult(id=request.id, prompt_len=request.prompt_len, n_requested=request.max_tokens,
                             t_issue=time.perf_counter())
        conn = resp = None
        usage: Optional[dict] = None
        done = False
        try:
            payload = json.dumps(self.body(request)).encode()
            headers = self._headers(stream=True)
            res.t_issue = time.perf_counter()
            conn, resp = self._send("POST", "/v1/completions", payload, headers)
            if resp.status != 200:
                data = resp.read(65536)
                res.error = f"HTTP {resp.status}: {_message(data)}"
                conn.close()
                conn = None
                return res
            while True:
                line = resp.readline()
                t = time.perf_counter()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (": keep-alive"), event: lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                obj = json.loads(data)
                if obj.get("error"):
                    res.error = f"server error in stream: {_message(json.dumps(obj).encode())}"
                    break
                if obj.get("usage"):
                    usage = obj["usage"]
                for ch in obj.get("choices") or []:
                    if ch.get("text") or ch.get("token_ids"):
                        res.token_times.append(t)
                        if res.t_first_token is None:
                            res.t_first_token = t
                        res.t_end = t
                    if ch.get("finish_reason"):
                        res.finish_reason = ch["finish_reason"]
            if done:
                resp.read()  # the end of the chunked body, so the connection can be reused
                self._finish(conn, resp)
                conn = None
            elif res.error is None:
                res.error = f"stream ended before data: [DONE] (after {len(res.token_times)} chunks)"
        except (OSError, http.client.HTTPException, ValueError, BackendError) as e:
            kind = "timeout" if isinstance(e, (socket.timeout, TimeoutError)) else type(e).__name__
            res.error = f"{kind}: {e} (after {len(res.token_times)} chunks)"
        finally:
            if conn is not None:
                conn.close()
            if res.error:
                res.error = self._scrub(res.error)
        if res.t_end is None or not res.ok:
            res.t_end = time.perf_counter() if not res.ok else res.t_end
        if usage and usage.get("completion_tokens") is not None:
            res.n_generated = int(usage["completion_tokens"])
            res.n_prompt = usage.get("prompt_tokens")
        else:
            res.n_generated = len(res.token_times)
            if res.ok:
                res.notes.append("no usage in the stream: generated count is the number of chunks")
        if res.ok:
            res.check_counts()
            if not self.send_token_ids:
                res.notes.append("text prompt")
        return res

    def check(self) -> dict:
        """Reach the endpoint, pick the model, probe the prompt format; returns what was found."""
        info: dict[str, Any] = {"endpoint": self.endpoint}
        try:
            served = self.models()
        except (OSError, http.client.HTTPException) as e:
            raise BackendError(f"openai-http: cannot reach {self.endpoint}/v1/models: {self._scrub(str(e))}") from None
        except BackendError as e:  # reachable, but no model list (some servers have none)
            if self.model is None:
                raise BackendError(f"{e}; set options.model") from None
            self.probe_notes.append(f"no model list: {e}")
            served = []
        info["served_models"] = served
        if self.model is None:
            if not served:
                raise BackendError(f"openai-http: {self.endpoint}/v1/models lists no model; set options.model")
            self.model = served[0]
        elif served and self.model not in served:
            raise BackendError(f"openai-http: model {self.model!r} is not served at {self.endpoint} "
                               f"(it serves: {', '.join(map(str, served))})")
        if self.options.probe:
            req = Request(id=-1000, prompt_len=4, max_tokens=2, prompt_ids=[11, 12, 13, 14])
            r = self.issue(req)
            if not r.ok and self.send_token_ids and r.error.startswith(("HTTP 400", "HTTP 422")):
                self.send_token_ids = False
                self.probe_notes.append(f"token-id prompts refused ({r.error[:120]}); using text prompts")
                r = self.issue(req)
            if not r.ok:
                raise BackendError(f"openai-http: probe completion failed: {r.error}")
            if r.count_mismatch:
                self.probe_notes.append(f"probe asked for 2 tokens and got {r.n_generated}: the server may not "
                                        f"honour {self.options.fixed_length_params}")
        info["prompt_format"] = "token_ids" if self.send_token_ids else "text"
        info["probe_notes"] = list(self.probe_notes)
        return info

    def describe(self) -> dict:
        o = self.options
        return {"backend": "openai-http", "endpoint": self.endpoint, "model": self.model,
                "header_names": sorted(map(str, o.headers)), "api_key_env": o.api_key_env,
                "prompt_format": "token_ids" if self.send_token_ids else "text",
                "fixed_length_params": list(o.fixed_length_params), "timeout_s": o.timeout_s,
                "probe_notes": list(self.probe_notes)}


def _message(data: bytes) -> str:
    try:
        obj = json.loads(data)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return data[:300].decode("utf-8", "replace")


class OpenAIHttpBackend(RequestBackend):
    """A serving endpoint in the backend registry: load() checks it, issue() drives it."""

    name: ClassVar[str] = "openai-http"
    Options = OpenAIHttpOptions
    dtypes = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")  # a label only: the server decides

    def __init__(self, options: OpenAIHttpOptions):
        super().__init__(options)
        self.client = OpenAIHttpClient(options)
        self.info: dict = {}

    @classmethod
    def device_of(cls, options: Any) -> str:
        u = urlsplit(getattr(options, "url", "") or "")
        return f"endpoint:{u.hostname}:{u.port}" if u.port else f"endpoint:{u.hostname}"

    def describe(self) -> dict[str, Any]:
        return dict(self.client.describe(), served_models=self.info.get("served_models"))

    def load(self, spec: ModelSpec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        t0 = time.perf_counter()
        self.info = self.client.check()
        return LoadInfo(load_s=time.perf_counter() - t0, details=dict(self.info, weights="whatever the server loaded"))

    def issue(self, request: Request) -> RequestResult:
        return self.client.issue(request)

    def close(self) -> None:
        self.client.close()
