"""`openai-http`: any OpenAI-compatible serving endpoint as a system under test.

Many accelerators run LLMs only through their vendor's serving stack (vLLM-style
servers with an OpenAI API). This backend streams ``POST /v1/completions`` or
``POST /v1/chat/completions`` with ``stream: true`` and times every streamed chunk on
arrival, the same way for both (a chunk counts when it carries text: ``choices[].text``
or ``choices[].delta.content``; chat's role-only first delta does not). Standard library
only (http.client): no new dependency.

* ``api``: ``completions``, ``chat``, or ``auto`` (default): completions where the
  server answers it, else chat (the probe at load: ``/v1/completions`` answered 404, 405
  or 501), recorded as ``api`` and ``api_reason`` in the cell. Completions first because
  it measures exactly the workload: prompts can go as token ids, and no chat template
  adds tokens the workload did not ask for (Llama 3's adds a system header of ~25). Chat
  is what vendor servers and other tools default to, and some servers have only it:
  there prompts go as text in one user message, and their count is the server's
  (``usage``, or ``/tokenize`` with ``messages``, vLLM's chat form), template included.

* Fixed output length: ``max_tokens`` plus, by default, ``ignore_eos: true`` and
  ``min_tokens: max_tokens`` (vLLM extensions; set ``fixed_length_params: []``
  for a server that rejects unknown fields). The count recorded is the
  server's own (``usage.completion_tokens``); a count different from the one
  asked for is flagged ``count_mismatch`` on the request, never hidden.
* Prompts as token-id lists (``send_token_ids: true``, exact counts) where the
  server accepts them. At load, a probe request checks that they are accepted and
  falls back to text on any rejection (an HTTP error of any status, or an error
  in the stream: llama.cpp's server answers token ids with HTTP 500).
* Text prompts are distinct per request, like the token-id ones: words drawn
  from ``text_words`` by the request's own seeded token ids, so two requests
  share no prefix beyond chance and a server's prefix cache (llama.cpp, vLLM)
  cannot answer their first token (a shared prefix, when wanted, is the request
  scenarios' ``shared_prefix_tokens``). How many words make N tokens is measured
  at load on the server's own tokenizer (:meth:`OpenAIHttpClient.calibrate`).
* Counts are the server's: ``usage`` in the stream; where the stream has none,
  the prompt count comes from the server's ``/tokenize`` endpoint (llama.cpp's
  server and vLLM have one; the request scenarios count every prompt before the
  run, :meth:`OpenAIHttpClient.prepare`) and the output count from the chunks.
  A prompt of a different length than asked is flagged ``prompt_mismatch``.
* Token ids back, for the accuracy gate, only where the user declares that the endpoint
  serves exactly the workload's weights (``serves_reference_weights: true``: a local
  checkpoint, or ``harness serve`` with the same seed): the body then asks for them
  (vLLM's ``return_token_ids``, llama.cpp's ``return_tokens``) and each chunk's
  ``token_ids`` or ``tokens`` are kept on the result when prompts went as token ids (the
  gate needs the prompt's ids too) and their count is the generated count. Otherwise
  the cell's timed output says "unchecked": a remote model's weights are not ours to know.
* An API key only from the environment variable named by ``api_key_env``; the
  key is never stored in the options, records or logs, and is scrubbed from
  any error text a server echoes back. ``describe()`` lists header *names* only.

This is a request backend (backends.base.RequestBackend): it has no
prefill/decode of its own and no logits (the accuracy gate cannot see inside a
remote server; it re-scores returned token ids, as above), so only the request
scenarios drive it, through ``issue()``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import http.client
import json
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

# Each word with its leading space is a single token in the Llama 2/3, Mistral and GPT
# vocabularies; the calibration at load measures what they cost on any other.
TEXT_WORDS = tuple(dict.fromkeys(f" {w}" for w in """
the of and to in is that for it as was with be by on not he this are or his from at which but have an
had they you were their one all we can her has there been if more when will would who so no she other its
may these what them than some him time into only do could new about two first then out also any like my
over such our made after did many most before must through back years where much your way well down should
because each just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might us great old year off come
since against go came right used take three small house water number part place point hand high light music
city river open green table paper window letter market winter garden story field road school family power
game line name word book home night door car tree food land sea sun air fire friend horse ship stone glass
bird dog king voice money color body war head face eye side week town street child woman man girl boy
""".split()))


APIS = ("auto", "completions", "chat")
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass
class OpenAIHttpOptions:
    url: str = "http://127.0.0.1:8000"  # base URL (a trailing /v1, /v1/completions or /v1/chat/completions is accepted)
    api: str = "auto"  # completions | chat | auto (completions where answered, else chat)
    model: Optional[str] = None  # model id in the API; default: the first of GET /v1/models
    headers: dict = field(default_factory=dict)  # extra request headers (names are recorded, values never)
    api_key_env: Optional[str] = None  # NAME of an env var holding the key; sent as `Authorization: Bearer`
    timeout_s: float = 600.0  # per socket operation: connect, and the gap between streamed chunks
    send_token_ids: bool = True  # prompts as token-id lists (exact counts); false: text
    fixed_length_params: list = field(default_factory=lambda: ["ignore_eos", "min_tokens"])
    extra_body: dict = field(default_factory=dict)  # merged into every request body
    # text prompts: words drawn by each request's token ids, concatenated as written
    # (so each carries its own leading space); None: TEXT_WORDS, common English words
    text_words: Optional[list] = None
    # tokens one word makes on the server; None: measured at load (the server's /tokenize,
    # else the usage of two non-streamed completions), with the tokens it adds (BOS)
    text_tokens_per_word: Optional[float] = None
    include_usage: bool = True  # ask for `usage` in the stream (stream_options.include_usage)
    probe: bool = True  # one 1-token request at load(): checks the endpoint and the prompt format
    # the user's word that the endpoint serves exactly the workload's weights (a local
    # checkpoint, `harness serve` with the same seed): token ids are then asked for and
    # re-scored by the accuracy gate. false: the timed output is "unchecked"
    serves_reference_weights: bool = False

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.api not in APIS:
            out.append(("api", f"expected one of {', '.join(APIS)}, got {self.api!r}"))
        if self.text_words is not None and (not self.text_words or not all(isinstance(w, str) and w
                                                                              for w in self.text_words)):
            out.append(("text_words", f"expected a list of non-empty strings, got {self.text_words!r}"))
        if self.text_tokens_per_word is not None and not self.text_tokens_per_word > 0:
            out.append(("text_tokens_per_word", f"expected a number > 0, got {self.text_tokens_per_word!r}"))
        return out


class OpenAIHttpClient:
    """The HTTP side: ``issue(request) -> RequestResult``, thread-safe, with a keep-alive pool."""

    def __init__(self, options: OpenAIHttpOptions):
        self.options = options
        from harness.redact import redact_url

        try:
            u = urlsplit(options.url)
            u.port  # noqa: B018 - raises ValueError on a port out of range or not a number
        except ValueError:
            u = None
        if u is None or u.scheme not in ("http", "https") or not u.hostname:
            raise BackendError("openai-http url must be http(s)://host[:port][/prefix], "
                               f"got {redact_url(options.url)!r}")
        prefix = u.path.rstrip("/")
        for tail in ("/v1/chat/completions", "/v1/completions", "/v1"):
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
        # the API in use: `auto` starts as completions and may become chat at the probe
        self.api = "completions" if options.api == "auto" else options.api
        self.api_reason = ("auto: not probed, completions assumed" if options.api == "auto"
                           else f"api: {options.api} in the options")
        self.words = tuple(options.text_words) if options.text_words else TEXT_WORDS
        self.text = TextCalibration(tokens_per_word=options.text_tokens_per_word or 1.0,
                                    source="option" if options.text_tokens_per_word else "not measured")
        self.stream_usage: Optional[bool] = None  # did the probe's stream carry usage? None: no probe
        self.tokenize_path: Optional[str] = None  # the server's tokenize endpoint, where it answered
        self._counts: dict[str, int] = {}  # prompt text -> the server's token count
        self._pool: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        if self.api == "chat":
            self._use_chat()

    def _use_chat(self) -> None:
        self.api = "chat"
        if self.send_token_ids:
            self.send_token_ids = False
            self.probe_notes.append("chat: prompts go as text in one user message (messages carry no token ids)")
        with self._lock:
            self._counts.clear()  # counts made on the completions path lack the chat template

    @property
    def path(self) -> str:
        return PATHS[self.api]

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
        # the one rule (harness.redact): header values, URL userinfo, credential query values
        from harness.redact import redact_text, secrets_of

        secrets += secrets_of({"headers": dict(self.options.headers), "url": self.options.url})
        return redact_text(text, secrets)

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

    def post_json(self, path: str, body: dict) -> dict:
        conn, resp = self._send("POST", path, json.dumps(body).encode(), self._headers(stream=False))
        data = resp.read()
        self._finish(conn, resp)
        if resp.status != 200:
            raise BackendError(self._scrub(f"POST {self.endpoint}{path}: HTTP {resp.status}: {_message(data)}"))
        return json.loads(data)

    # prompts ---------------------------------------------------------------------------------------------
    @staticmethod
    def _ids(request: Request) -> list[int]:
        ids = request.prompt_ids
        if ids is None:
            ids = np.random.default_rng(request.id & 0x7FFFFFFF).integers(10, 1000, request.prompt_len).tolist()
        return [int(t) for t in ids]

    def text_of(self, request: Request) -> str:
        """The request's text prompt: its own ids pick the words, as many as make its
        prompt_len tokens on this server (as calibrated)."""
        return prompt_text(self._ids(request), self.text.words_for(request.prompt_len), self.words)

    def _prompt(self, request: Request) -> Any:
        return self._ids(request) if self.send_token_ids else self.text_of(request)

    def _tokenize(self, text: str) -> int:
        """The server's token count of `text` as a prompt, special tokens (BOS) included as
        a completion adds them. llama.cpp reads content/add_special, vLLM
        prompt/add_special_tokens; each ignores the other's keys."""
        if self.api == "chat":  # vLLM's chat form: the template applied, as a chat request would be
            body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "add_generation_prompt": True}
        else:
            body = {"content": text, "prompt": text, "add_special": True, "add_special_tokens": True}
        if self.model is not None:
            body["model"] = self.model
        out = self.post_json(self.tokenize_path, body)
        if isinstance(out.get("count"), int):
            return out["count"]
        if isinstance(out.get("tokens"), list):
            return len(out["tokens"])
        raise BackendError(f"POST {self.endpoint}{self.tokenize_path}: no tokens or count in the answer")

    def count_tokens(self, text: str) -> Optional[int]:
        """The server's token count of a prompt text (cached), or None where it has no
        tokenize endpoint or the call failed."""
        with self._lock:
            if text in self._counts:
                return self._counts[text]
        if self.tokenize_path is None:
            return None
        try:
            n = self._tokenize(text)
        except (OSError, http.client.HTTPException, ValueError, BackendError):
            return None
        with self._lock:
            self._counts[text] = n
        return n

    def _completion_prompt_tokens(self, text: str) -> Optional[int]:
        """usage.prompt_tokens of a non-streamed 1-token completion of `text`, or None."""
        body = dict(self.body(Request(id=-2000, prompt_len=1, max_tokens=1)), stream=False)
        body.update({"messages": _messages(text)} if self.api == "chat" else {"prompt": text})
        body.pop("stream_options", None)
        try:
            usage = self.post_json(self.path, body).get("usage") or {}
        except (OSError, http.client.HTTPException, ValueError, BackendError):
            return None
        n = usage.get("prompt_tokens")
        return n if isinstance(n, int) else None

    def calibrate(self) -> None:
        """Measure what a word of text prompt costs on this server: two texts of 32 and 96
        words (their own seeded words, so no measured prompt is sent early) counted by
        /tokenize, else by the usage of a non-streamed completion; the difference gives
        tokens per word, the rest the tokens the server adds (BOS). An option given
        by the user is kept as is."""
        if self.options.text_tokens_per_word:
            return
        rng = np.random.default_rng(0xCA1B)
        texts = [prompt_text(rng.integers(0, len(self.words), k).tolist(), k, self.words) for k in (32, 96)]
        for source, count in (("/tokenize", self.count_tokens), ("completion usage", self._completion_prompt_tokens)):
            if source == "/tokenize" and self.tokenize_path is None:
                continue
            c1, c2 = count(texts[0]), count(texts[1])
            if c1 is not None and c2 is not None and c2 > c1:
                per_word = (c2 - c1) / 64
                self.text = TextCalibration(tokens_per_word=per_word, extra_tokens=max(0, round(c1 - 32 * per_word)),
                                            source=source)
                return
        self.probe_notes.append("text prompts: could not count tokens on this server (no /tokenize, no usage); "
                                "assuming one token per word, prompt lengths unverified unless the stream has usage")

    def prepare(self, requests: list[Request]) -> None:
        """Count every text prompt with the server's tokenizer before anything is timed
        (RequestBackend.prepare_requests), so a stream without usage still gets the true prompt count
        with no extra call inside a measured run."""
        if not self.send_token_ids and self.tokenize_path is not None:
            for r in requests:
                self.count_tokens(self.text_of(r))

    def body(self, request: Request) -> dict:
        o = self.options
        prompt = self._prompt(request)
        b: dict[str, Any] = {"model": self.model, **({"messages": _messages(prompt)} if self.api == "chat"
                                                      else {"prompt": prompt}),
                             "max_tokens": request.max_tokens, "stream": True, "temperature": 0.0}
        if "ignore_eos" in o.fixed_length_params:
            b["ignore_eos"] = True
        if "min_tokens" in o.fixed_length_params:
            b["min_tokens"] = request.max_tokens
        if o.include_usage:
            b["stream_options"] = {"include_usage": True}
        if o.serves_reference_weights:  # vLLM's key, llama.cpp's key; each ignores the other's
            b["return_token_ids"] = True
            b["return_tokens"] = True
        b.update(o.extra_body)
        if b["model"] is None:
            b.pop("model")
        return b

    def issue(self, request: Request) -> RequestResult:
        """Stream one completion; every failure becomes an error on the result, never an exception."""
        return self._stream(request)[0]

    def _stream(self, request: Request) -> tuple[RequestResult, Optional[dict]]:
        """issue(), and the usage the stream carried (None: none)."""
        res = RequestResult(id=request.id, prompt_len=request.prompt_len, n_requested=request.max_tokens,
                             t_issue=time.perf_counter())
        conn = resp = None
        usage: Optional[dict] = None
        done = False
        ids: list[int] = []  # produced token ids, where the stream carries them
        body = self.body(request)
        try:
            payload = json.dumps(body).encode()
            headers = self._headers(stream=True)
            res.t_issue = time.perf_counter()
            conn, resp = self._send("POST", self.path, payload, headers)
            if resp.status != 200:
                data = resp.read(65536)
                res.error = f"HTTP {resp.status}: {_message(data)}"
                conn.close()
                conn = None
                return res, None
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
                # llama.cpp's own completion format carries `tokens` beside, not in, choices
                for ch in obj.get("choices") or ([obj] if "tokens" in obj else []):
                    got = _chunk_ids(ch)
                    ids += got
                    # completions: text; chat: delta.content (the role-only first delta has none)
                    if ch.get("text") or (ch.get("delta") or {}).get("content") or got:
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
        text = body["prompt"] if isinstance(body.get("prompt"), str) else None
        if self.api == "chat":
            text = body["messages"][0]["content"]
        if usage and usage.get("completion_tokens") is not None:
            res.n_generated = int(usage["completion_tokens"])
            res.n_prompt = usage.get("prompt_tokens")
        else:
            res.n_generated = len(res.token_times)
            if res.ok:
                res.notes.append("no usage in the stream: generated count is the number of chunks")
                if text is not None:
                    res.n_prompt = self.count_tokens(text)  # counted by prepare() before the run, if it ran
                    res.notes.append("prompt count from the server's /tokenize" if res.n_prompt is not None
                                     else "prompt count unverified: no usage and no /tokenize")
        if res.ok:
            res.check_counts()
            if text is not None:
                res.notes.append("text prompt")
            if self.options.serves_reference_weights:
                self._keep_ids(res, ids, text is not None)
        return res, usage

    @staticmethod
    def _keep_ids(res: RequestResult, ids: list[int], text_prompt: bool) -> None:
        """Keep the produced ids for the gate only where they can be re-scored position by
        position: the prompt's ids are known (sent as ids), and there is one per token."""
        if text_prompt:
            res.notes.append("token ids not checked: a text prompt's ids are the server's tokenizer's")
        elif not ids:
            res.notes.append("token ids not checked: the stream carried none (no token_ids / tokens)")
        elif len(ids) != res.n_generated:
            res.notes.append(f"token ids not checked: {len(ids)} ids for {res.n_generated} generated tokens")
        else:
            res.token_ids = ids

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
        self.tokenize_path = "/tokenize"
        if self.count_tokens("hello") is None:
            self.tokenize_path = None
        if not self.send_token_ids:
            self.calibrate()
        if self.options.probe:
            req = Request(id=-1000, prompt_len=4, max_tokens=2, prompt_ids=[11, 12, 13, 14])
            r, usage = self._stream(req)
            if self.options.api == "auto":
                if not r.ok and _route_missing(r.error):
                    self.api_reason = (f"auto: {PATHS['completions']} answered {r.error.split(':')[0]}, so "
                                       f"{PATHS['chat']}")
                    self._use_chat()
                    self.tokenize_path = "/tokenize"  # asked again, in its chat form
                    if self.count_tokens("hello") is None:
                        self.tokenize_path = None
                    self.calibrate()
                    r, usage = self._stream(req)
                else:
                    self.api_reason = (f"auto: the server answers {PATHS['completions']} (exact prompts: token ids "
                                       "where accepted, no chat template in the count)")
            if not r.ok and self.send_token_ids:
                # any rejection, not only 400/422: llama.cpp's server answers token ids with HTTP 500
                refused = r.error
                self.send_token_ids = False
                self.probe_notes.append(f"token-id prompts refused ({refused[:120]}); using text prompts")
                self.calibrate()
                r, usage = self._stream(req)
                if not r.ok:
                    raise BackendError(f"openai-http: probe completion failed with token ids ({refused}) "
                                       f"and with text ({r.error})")
            if not r.ok:
                raise BackendError(f"openai-http: probe completion failed: {r.error}")
            self.stream_usage = usage is not None
            if r.count_mismatch:
                self.probe_notes.append(f"probe asked for 2 tokens and got {r.n_generated}: the server may not "
                                        f"honour {self.options.fixed_length_params}")
        info.update(self._found())
        return info

    def _found(self) -> dict:
        """What load found out about the server, for the cell's record."""
        out: dict[str, Any] = {"api": self.api, "api_reason": self.api_reason,
                               "prompt_format": "token_ids" if self.send_token_ids else "text",
                               "serves_reference_weights": self.options.serves_reference_weights,
                               "stream_usage": self.stream_usage, "tokenize_endpoint": self.tokenize_path,
                               "probe_notes": list(self.probe_notes)}
        if not self.send_token_ids:
            out["text_prompts"] = dataclasses.asdict(self.text)
        return out

    def describe(self) -> dict:
        from harness.redact import redact_suite

        o = self.options
        # endpoint never holds the userinfo; redact_suite is the belt over the braces for
        # anything _found() echoes (probe notes quoting a URL)
        return redact_suite({"backend": "openai-http", "endpoint": self.endpoint, "model": self.model,
                "header_names": sorted(map(str, o.headers)), "api_key_env": o.api_key_env,
                "fixed_length_params": list(o.fixed_length_params), "timeout_s": o.timeout_s, **self._found()})


@dataclass
class TextCalibration:
    """How many words of text prompt make N tokens on the server: N = extra_tokens +
    tokens_per_word x words (extra: what the server adds to every prompt, its BOS)."""

    tokens_per_word: float = 1.0
    extra_tokens: int = 0
    source: str = "not measured"  # /tokenize | completion usage | option | not measured

    def words_for(self, n_tokens: int) -> int:
        return max(1, round((n_tokens - self.extra_tokens) / max(self.tokens_per_word, 1e-6)))


def prompt_text(ids: list[int], n_words: int, words: tuple[str, ...]) -> str:
    """n_words words picked by ids (word i is words[ids[i] mod len(words)]), concatenated:
    prompts with different ids differ from their first word. Where a vocabulary packs
    words into fewer tokens than ids (more words than ids needed), the rest is drawn from
    a generator seeded by the ids."""
    seq = [int(i) for i in ids[:n_words]]
    if len(seq) < n_words:
        seq += np.random.default_rng(seq[:16] or [0]).integers(0, len(words), n_words - len(seq)).tolist()
    return "".join(words[i % len(words)] for i in seq)


def _messages(text: str) -> list[dict]:
    """A chat request's messages for a prompt text: one user message, nothing else (a
    system message would add tokens the workload did not ask for)."""
    return [{"role": "user", "content": text}]


def _route_missing(error: Optional[str]) -> bool:
    """Does a failed request's error say the route is not there (not that the request was bad)?"""
    return bool(error) and error.split(":")[0] in ("HTTP 404", "HTTP 405", "HTTP 501")


def _chunk_ids(choice: dict) -> list[int]:
    """The token ids one streamed choice carries: vLLM's `token_ids`, llama.cpp's `tokens`."""
    for key in ("token_ids", "tokens"):
        got = choice.get(key)
        if isinstance(got, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in got):
            return [int(t) for t in got]
    return []


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

    def prepare_requests(self, requests: list[Request]) -> None:
        self.client.prepare(requests)

    def issue(self, request: Request) -> RequestResult:
        return self.client.issue(request)

    def close(self) -> None:
        self.client.close()
