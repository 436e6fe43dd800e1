"""openai-http measures the model, not the server's cache: distinct prompts per request,
prompt counts verified on the server's tokenizer, text fallback on any rejection of
token ids, and burst delivery marked "not observed".

Each server here is a stdlib http.server on 127.0.0.1 (a free port) with one behaviour
of a real serving stack switched on: llama.cpp's and vLLM's prefix cache, llama.cpp's
HTTP 500 for token-id prompts, a stream without usage beside a /tokenize endpoint, a
proxy that buffers the whole stream. Timing assertions are ratios with wide margins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import math
import threading
import time
from typing import Callable, Optional

import numpy as np
import pytest

from backends.base import RequestBackend, Request, RequestResult
from backends.openai_http import OpenAIHttpBackend, OpenAIHttpOptions, TEXT_WORDS, prompt_text
from harness.energy import EnergySettings
from harness.records import PlannedCell
from harness.registry import load_scenario_class
from harness.scenarios.base import CellContext
from harness.scenarios.lengths import LengthsConfig
from harness.scenarios.loadgen import build_requests
from harness.scenarios.request_metrics import LimitsConfig, request_metrics, tpot_observed
from harness.scenarios.request_scenario import request_warnings
from harness.schema import build

PROMPT, OUT = 64, 4
FIXED = {"type": "fixed", "prompt_len": PROMPT, "output_len": OUT}
UNCACHED_S = 0.04  # the fake server's prefill of a whole uncached prompt


def one_per_word(word: str) -> int:
    return 1


def three_per_word(word: str) -> int:  # another vocabulary: every word costs 3 tokens
    return 3


def per_three_chars(word: str) -> int:  # words of different costs: no word count is exact
    return math.ceil(len(word) / 3)


@dataclass
class Behaviour:
    """What the fake server does; each test switches one thing on."""

    word_cost: Callable[[str], int] = one_per_word  # tokens of one word of a text prompt (plus 1 BOS)
    tokenize: bool = True  # POST /tokenize answers (else 404)
    stream_usage: bool = True  # the last chunk carries usage
    reject_ids: Optional[str] = None  # "http500" | "stream-error": how token-id prompts are refused
    prefix_cache: bool = False  # a first token as fast as the prompt's longest prefix seen before is long
    burst: bool = False  # the whole stream written at once, after the generation
    tpot_s: float = 0.002  # between tokens, when not a burst


@dataclass
class Seen:
    """What the server received."""

    prompts: list = field(default_factory=list)  # every streamed completion's prompt, in order
    tokenize_at: list = field(default_factory=list)  # perf_counter of each /tokenize call
    completion_at: list = field(default_factory=list)  # perf_counter of each streamed completion


def units(prompt) -> list:
    """The prompt as the server's cache sees it: ids, or words."""
    return list(prompt) if isinstance(prompt, list) else prompt.split()


def count(prompt, b: Behaviour) -> int:
    return len(prompt) if isinstance(prompt, list) else 1 + sum(b.word_cost(w) for w in prompt.split())


def common_prefix(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class FakeServer:
    def __init__(self, behaviour: Behaviour):
        self.b, self.seen, self.lock = behaviour, Seen(), threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._json(200, {"data": [{"id": "m"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    outer.tokenize(self, body)
                else:
                    outer.complete(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def tokenize(self, h, body: dict) -> None:
        if not self.b.tokenize:
            h._json(404, {"error": {"message": "no route /tokenize"}})
            return
        self.seen.tokenize_at.append(time.perf_counter())
        text = body["content"]
        n = count(text, self.b) - (0 if body.get("add_special") else 1)  # llama.cpp: BOS only when asked
        h._json(200, {"tokens": list(range(n))})

    def complete(self, h, body: dict) -> None:
        prompt, n = body["prompt"], body["max_tokens"]
        usage = {"prompt_tokens": count(prompt, self.b), "completion_tokens": n}
        if not body.get("stream"):
            h._json(200, {"choices": [{"text": "x" * n}], "usage": usage})
            return
        t = time.perf_counter()
        with self.lock:
            earlier = list(self.seen.prompts)
            self.seen.prompts.append(prompt)
            self.seen.completion_at.append(t)
        if isinstance(prompt, list) and self.b.reject_ids == "http500":
            h._json(500, {"error": {"message": "tokens must be a string"}})
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        if isinstance(prompt, list) and self.b.reject_ids == "stream-error":
            h.wfile.write(b'data: {"error": {"message": "prompt tokens are not supported"}}\n\n')
            return
        cached = 0.0
        if self.b.prefix_cache and earlier:
            u = units(prompt)
            cached = max(common_prefix(u, units(e)) for e in earlier) / len(u)
        time.sleep(UNCACHED_S * (1.0 - cached) + 0.001)
        events = [{"choices": [{"text": f" t{i}", "finish_reason": "length" if i == n - 1 else None}]}
                  for i in range(n)]
        if self.b.stream_usage:
            events.append({"choices": [], "usage": usage})
        lines = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        if self.b.burst:
            time.sleep(self.b.tpot_s * (n - 1))  # generated, then sent at once
            h.wfile.write(b"".join(lines))
        else:
            for i, line in enumerate(lines):
                if 0 < i < n:
                    time.sleep(self.b.tpot_s)
                h.wfile.write(line)
                h.wfile.flush()


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> FakeServer:
        s = FakeServer(Behaviour(**kw))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def backend(url: str, **opts) -> OpenAIHttpBackend:
    be = OpenAIHttpBackend(OpenAIHttpOptions(url=url, timeout_s=30, **opts))
    be.load(None, "fp32", 1, PROMPT + OUT)
    return be


def scenario(mapping: dict):
    cls = load_scenario_class(mapping["type"])
    return cls(build(cls.Config, mapping, "scenario"))


def run_cell(be, mapping: dict):
    """One cell through scenario.run, as the worker runs it."""
    sc = scenario(mapping)
    point = sc.points()[0]
    cell = PlannedCell("http", "openai-http", "tiny", "fp32", 1, PROMPT, OUT, point.label, point.rate)
    return sc.run(CellContext(backend=be, cell=cell, vocab_size=2048, seed=0, warmup=0, repetitions=1,
                              meters=[], energy_settings=EnergySettings()))


def single_stream(n: int = 6, **keys) -> dict:
    return {"type": "single-stream", "requests": n, "warmup_requests": 2, "lengths": FIXED, **keys}


# --- 1. distinct prompts: a prefix cache cannot answer them -------------------------------------------------

@pytest.mark.parametrize("send_token_ids", [True, False])
def test_distinct_prompts_pay_the_uncached_prefill(serve, send_token_ids):
    srv = serve(prefix_cache=True)
    be = backend(srv.url, send_token_ids=send_token_ids)
    try:
        distinct = run_cell(be, single_stream())
        n_before = len(srv.seen.prompts)
        shared = run_cell(be, single_stream(shared_prefix_tokens=PROMPT - 4))
    finally:
        be.close()
    assert distinct.status == "ok" and distinct.warnings == []
    assert be.describe()["prompt_format"] == ("token_ids" if send_token_ids else "text")
    # every prompt the cell sent (warm-ups included) shares no more than a few units with any earlier one
    sent = [units(p) for p in srv.seen.prompts[1:n_before]]  # [0]: the load probe
    assert len(sent) == 8 and all(len(u) >= PROMPT // 2 for u in sent)
    assert max(common_prefix(a, b) for i, a in enumerate(sent) for b in sent[:i]) <= 2
    ttft = distinct.metrics["ttft_s"]["p50"]
    assert ttft >= 0.75 * UNCACHED_S  # the uncached prefill, not the cache
    # asked for on purpose, a shared prefix is what the cache answers: every measured request hits it
    assert shared.metrics["ttft_s"]["p50"] < 0.5 * ttft
    if not send_token_ids:  # calibrated on the server's tokenizer: 63 words and a BOS are 64 tokens
        assert be.describe()["text_prompts"] == {"tokens_per_word": 1.0, "extra_tokens": 1, "source": "/tokenize"}
        assert all(r["n_prompt"] == PROMPT and not r["prompt_mismatch"] for r in distinct.requests)


def test_each_pass_of_a_sweep_and_the_warmups_have_prompts_of_their_own():
    class Recorder(RequestBackend):
        def __init__(self):
            super().__init__(None)
            self.prepared, self.issued = [], []

        def load(self, spec, dtype, max_batch, max_seq):
            raise AssertionError("not loaded in this test")

        def prepare_requests(self, requests):
            self.prepared = list(requests)

        def issue(self, r: Request) -> RequestResult:
            self.issued.append(r)
            t = time.perf_counter()
            return RequestResult(id=r.id, prompt_len=r.prompt_len, n_requested=r.max_tokens, t_issue=t,
                                 t_first_token=t, t_end=t, token_times=[t], n_generated=r.max_tokens,
                                 n_prompt=r.prompt_len)

        def describe(self) -> dict:
            return {}

    sut = Recorder()
    sc = scenario({"type": "server", "rates": [200.0, 400.0], "requests": 4, "warmup_requests": 2, "lengths": FIXED})
    runs = sc.measure(sut, seed=3)
    assert len(runs) == 2 and len(sut.issued) == 2 + 4 + 4
    prompts = [tuple(r.prompt_ids) for r in sut.issued]
    assert len(set(prompts)) == len(prompts)  # warm-ups, pass 1, pass 2: no prompt sent twice
    assert sorted(map(tuple, (r.prompt_ids for r in sut.prepared))) == sorted(prompts)  # all prepared first
    lens = [[r.prompt_len for r in sut.issued[2:6]], [r.prompt_len for r in sut.issued[6:]]]
    assert lens[0] == lens[1]  # the same lengths at every rate

    # one cell per rate (how `harness run` measures a sweep): each rate's cell sends the prompts
    # its point of the whole sweep sends, so server@400 does not repeat server@200's prompts
    alone = {}
    for rate in (200.0, 400.0):
        one = Recorder()
        sc.measure(one, seed=3, rate=rate)
        alone[rate] = [tuple(r.prompt_ids) for r in one.issued[2:]]
    assert alone[200.0] == prompts[2:6] and alone[400.0] == prompts[6:]


def test_shared_prefix_tokens_shares_exactly_that_prefix():
    lengths = LengthsConfig(type="uniform", prompt_len=[4, 40], output_len=[2, 4])
    reqs = build_requests(lengths, 20, 0, [10, 1000], shared_prefix_tokens=16)
    prefix = max(reqs, key=lambda r: r.prompt_len).prompt_ids[:16]
    assert any(r.prompt_len < 16 for r in reqs)  # a shorter prompt is all prefix
    assert all(r.prompt_ids[: min(16, r.prompt_len)] == prefix[: r.prompt_len] for r in reqs)
    long = [r for r in reqs if r.prompt_len > 24]
    assert len({tuple(r.prompt_ids[16:24]) for r in long}) == len(long)  # after the prefix: their own
    assert build_requests(lengths, 5, 0, [10, 1000])[0].prompt_ids != reqs[0].prompt_ids
    cls = load_scenario_class("single-stream")
    with pytest.raises(Exception, match="shared_prefix_tokens"):
        build(cls.Config, {"type": "single-stream", "shared_prefix_tokens": -1}, "scenario")


def test_text_prompts_differ_from_their_first_word():
    texts = [prompt_text(r.prompt_ids, 30, TEXT_WORDS) for r in build_requests(
        LengthsConfig(type="fixed", prompt_len=30, output_len=2), 50, 0, [10, 1000])]
    assert len({t.split()[0] for t in texts}) > 25 and len(set(texts)) == 50
    assert len(TEXT_WORDS) > 200 and all(w.startswith(" ") and " " not in w[1:] for w in TEXT_WORDS)
    # more words than ids (a vocabulary of less than a token per word): seeded by the ids
    assert prompt_text([5, 6], 10, TEXT_WORDS) == prompt_text([5, 6], 10, TEXT_WORDS)
    assert len(prompt_text([5, 6], 10, TEXT_WORDS).split()) == 10


# --- 2. token ids refused in any way: text -----------------------------------------------------------------

@pytest.mark.parametrize("refusal", ["http500", "stream-error"])
def test_token_ids_refused_falls_back_to_text_and_the_cell_runs(serve, refusal):
    srv = serve(reject_ids=refusal)
    be = backend(srv.url)
    try:
        out = run_cell(be, single_stream(4))
    finally:
        be.close()
    d = be.describe()
    assert d["prompt_format"] == "text" and "token-id prompts refused" in d["probe_notes"][0]
    assert out.status == "ok" and out.metrics["ok"] == 4 and out.warnings == []
    assert isinstance(srv.seen.prompts[0], list) and all(isinstance(p, str) for p in srv.seen.prompts[1:])
    assert all(r["n_prompt"] == PROMPT for r in out.requests)


def test_a_server_refusing_text_too_names_both_errors(serve):
    srv = serve(reject_ids="http500")
    srv.complete = lambda h, body: h._json(500, {"error": {"message": "down"}})
    with pytest.raises(Exception, match=r"token ids \(HTTP 500.*\) and with text \(HTTP 500"):
        backend(srv.url)


# --- 3. counts verified without usage in the stream -------------------------------------------------------

def test_no_usage_prompt_counts_from_tokenize_counted_before_the_run(serve):
    srv = serve(stream_usage=False, word_cost=three_per_word)
    be = backend(srv.url, send_token_ids=False)
    try:
        out = run_cell(be, single_stream())
    finally:
        be.close()
    d = be.describe()
    assert d["stream_usage"] is False and d["tokenize_endpoint"] == "/tokenize"
    assert d["text_prompts"] == {"tokens_per_word": 3.0, "extra_tokens": 1, "source": "/tokenize"}
    assert out.warnings == [] and out.metrics["prompt_unverified"] == 0
    assert all(r["n_prompt"] == PROMPT and not r["prompt_mismatch"] for r in out.requests)  # 21 words + BOS
    assert all("prompt count from the server's /tokenize" in r["notes"] for r in out.requests)
    # every prompt was counted before the measured run: no /tokenize call while it ran
    first_measured = srv.seen.completion_at[1 + 2]  # after the probe and the two warm-ups
    assert not [t for t in srv.seen.tokenize_at if t >= first_measured]


def test_prompt_counts_off_are_flagged_with_the_servers_count(serve):
    told = serve(stream_usage=False, word_cost=three_per_word)
    be = backend(told.url, send_token_ids=False, text_tokens_per_word=1)  # told 1 token a word: wrong
    try:
        out = run_cell(be, single_stream(4))
    finally:
        be.close()
    assert all(r["n_prompt"] == 1 + 3 * PROMPT and r["prompt_mismatch"] for r in out.requests)
    assert out.metrics["prompt_mismatch"] == 4 and out.metrics["prompt_tokens"] == 4 * (1 + 3 * PROMPT)
    assert any("4 requests had a prompt of a different length" in w for w in out.warnings)

    uneven = serve(stream_usage=False, word_cost=per_three_chars)  # calibrated, but words differ
    be = backend(uneven.url, send_token_ids=False)
    try:
        out = run_cell(be, single_stream(8))
    finally:
        be.close()
    sent = uneven.seen.prompts[-8:]
    for r, p in zip(out.requests, sent):
        assert r["n_prompt"] == count(p, uneven.b)  # the server's own count, whatever it is
        assert r["prompt_mismatch"] == (r["n_prompt"] != PROMPT)
        assert abs(r["n_prompt"] - PROMPT) <= 0.25 * PROMPT  # about N, not 387 for 64
    assert out.metrics["prompt_mismatch"] == sum(r["prompt_mismatch"] for r in out.requests)


def test_no_usage_and_no_tokenize_calibrates_from_a_completion_and_says_unverified(serve):
    srv = serve(stream_usage=False, tokenize=False, word_cost=three_per_word)
    be = backend(srv.url, send_token_ids=False)
    try:
        out = run_cell(be, single_stream(4))
    finally:
        be.close()
    d = be.describe()
    assert d["tokenize_endpoint"] is None
    assert d["text_prompts"] == {"tokens_per_word": 3.0, "extra_tokens": 1, "source": "completion usage"}
    assert all(r["n_prompt"] is None for r in out.requests) and out.metrics["prompt_unverified"] == 4
    assert any("prompt lengths in tokens are unverified" in w for w in out.warnings)
    assert all(count(p, srv.b) == PROMPT for p in srv.seen.prompts[1:])  # calibrated all the same


# --- 4. burst delivery: TPOT and ITL not observed --------------------------------------------------------------

def test_burst_delivery_marks_tpot_not_observed(serve):
    burst, paced = serve(burst=True, tpot_s=0.005), serve(tpot_s=0.005)
    outs = {}
    for name, srv in (("burst", burst), ("paced", paced)):
        be = backend(srv.url)
        try:
            # 32 tokens, not 8: the burst rule tolerates 20 % of long gaps, and with 7 gaps one
            # descheduled reader thread (twice in one request) was enough to fail it in CI
            outs[name] = run_cell(be, single_stream(5, lengths={"type": "fixed", "prompt_len": 8, "output_len": 32},
                                                    limits={"tpot_s": 1.0}))
        finally:
            be.close()
    m = outs["burst"].metrics
    assert m["ok"] == 5 and m["tpot_not_observed"] == 5 and m["tpot_s"] is None and m["itl_s"] is None
    assert all(r["tpot_observed"] is False and r["tpot_s"] is None for r in outs["burst"].requests)
    assert m["ttft_s"]["p50"] >= UNCACHED_S + 31 * 0.005 * 0.8  # the decode is inside the first token
    assert m["goodput"]["requests"] == 0  # a TPOT limit cannot be shown to be met
    assert any("5 of 5 requests arrived in one burst" in w for w in outs["burst"].warnings)
    p = outs["paced"].metrics
    assert p["tpot_not_observed"] == 0 and p["tpot_s"]["p50"] > 0.003 and p["itl_s"]["n"] == 5 * 31
    assert p["goodput"]["requests"] == 5 and outs["paced"].warnings == []


def result(gaps: list[float], n: Optional[int] = None) -> RequestResult:
    times = list(np.cumsum([0.05] + gaps))
    return RequestResult(id=0, prompt_len=4, n_requested=n or len(times), t_issue=0.0, t_first_token=times[0],
                         t_end=times[-1], token_times=times, n_generated=n or len(times), n_prompt=4, t_arrival=0.0)


def test_burst_rule():
    assert not tpot_observed(result([20e-6] * 9))  # one burst
    assert not tpot_observed(result([20e-6] * 9 + [0.005]))  # 90 % near zero: a descheduled reader inside a burst
    assert tpot_observed(result([0, 0, 0, 0.02] * 4))  # 4 tokens a step (speculative): 75 %, TPOT is the mean
    assert tpot_observed(result([0.001] * 9))  # 1 ms a token: observed
    assert not tpot_observed(result([], n=16))  # 16 tokens in one chunk
    assert tpot_observed(result([], n=1))  # one token: nothing hidden
    m = request_metrics([result([20e-6] * 9), result([0.002] * 9)], limits=LimitsConfig())
    assert m["tpot_not_observed"] == 1 and m["tpot_s"]["n"] == 1 and m["itl_s"]["n"] == 9
    assert request_warnings(m)[0].startswith("1 of 2 requests arrived in one burst")
