"""Issue 15: `/v1/chat/completions` on `harness serve`, and the openai-http backend's
`api: chat | completions | auto`.

Real HTTP on 127.0.0.1: the official `openai` client (written by nobody on this team)
on chat and completions, streamed and not; the openai-http backend against a chat-only
server (`--api chat`) through a real `python -m harness run`. Expected counts are
computed here from the documented rules (one token per UTF-8 byte; the chat template
joins message contents with newlines), not with the server's helpers.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from backends.base import Request
from backends.openai_http import OpenAIHttpClient, OpenAIHttpOptions
from harness.schema import ConfigError, build
from harness.serve import start_server
from tests.test_gate_timed import _run, _suite

openai = pytest.importorskip("openai")

N = 6


@pytest.fixture(scope="module")
def server():
    h = start_server("torch", "tiny", max_batch=4, max_seq=128, options={"device": "cpu", "threads": 1})
    chat_only = start_server(engine=h.engine, api="chat")
    completions_only = start_server(engine=h.engine, api="completions")
    try:
        yield {"both": h, "chat": chat_only, "completions": completions_only}
    finally:
        completions_only.stop()
        chat_only.stop()
        h.stop()


def oa(handle) -> "openai.OpenAI":
    return openai.OpenAI(base_url=handle.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def n_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    rq = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(rq, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- the official client --------------------------------------------------------------------------

def test_chat_whole_answer_counts_and_ids(server):
    c = oa(server["both"])
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo wörld"}]
    out = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=N, extra_body={"return_token_ids": True})
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == n_bytes("be brief\nhéllo wörld")  # the documented template
    assert out.usage.completion_tokens == N == len(out.choices[0].message.content)
    ids = out.choices[0].model_extra["token_ids"]
    assert len(ids) == N and all(isinstance(t, int) for t in ids)
    # one user message is exactly the completion of the same text: same work, same greedy tokens
    same = c.completions.create(model="tiny", prompt="be brief\nhéllo wörld", max_tokens=N,
                                extra_body={"return_token_ids": True})
    assert same.choices[0].text == out.choices[0].message.content
    assert same.choices[0].model_extra["token_ids"] == ids and same.usage.prompt_tokens == out.usage.prompt_tokens
    # the newer name for the cap wins over the older
    out2 = c.chat.completions.create(model="tiny", messages=msgs, max_completion_tokens=3, max_tokens=N)
    assert out2.usage.completion_tokens == 3


def test_chat_stream_deltas_and_include_usage(server):
    c = oa(server["both"])
    msgs = [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]}]
    whole = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=N)
    chunks = list(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=N, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    first, *content, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert len(content) == N and all(len(ch.choices[0].delta.content) == 1 for ch in content)
    assert "".join(ch.choices[0].delta.content for ch in content) == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in content] == [None] * (N - 1) + ["length"]
    assert all(ch.usage is None for ch in [first, *content])
    assert last.choices == [] and last.usage.completion_tokens == N
    assert last.usage.prompt_tokens == n_bytes("part one\ntwo") == whole.usage.prompt_tokens


@pytest.mark.parametrize("include", [None, False])
def test_stream_usage_when_not_asked_and_when_refused(server, include):
    c = oa(server["both"])
    kw = {} if include is None else {"stream_options": {"include_usage": include}}
    for chunks in (list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "abc"}],
                                                  max_tokens=4, stream=True, **kw)),
                   list(c.completions.create(model="tiny", prompt="abc", max_tokens=4, stream=True, **kw))):
        with_usage = [ch for ch in chunks if ch.usage is not None]
        if include is None:  # this server's habit: on the last token's chunk
            assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices
            assert with_usage[0].usage.completion_tokens == 4 and with_usage[0].usage.prompt_tokens == 3
        else:
            assert with_usage == []


def test_completions_stream_and_whole_with_the_official_client(server):
    c = oa(server["both"])
    whole = c.completions.create(model="tiny", prompt=[5, 6, 7, 8], max_tokens=N)
    chunks = list(c.completions.create(model="tiny", prompt=[5, 6, 7, 8], max_tokens=N, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"return_token_ids": True}))
    text = [ch for ch in chunks if ch.choices]
    assert "".join(ch.choices[0].text for ch in text) == whole.choices[0].text and len(text) == N
    assert all(len(ch.choices[0].model_extra["token_ids"]) == 1 for ch in text)
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 4 == whole.usage.prompt_tokens


def test_bad_chat_requests_are_400_and_routes_follow_api(server):
    c = oa(server["both"])
    for kw in ({"messages": []}, {"messages": [{"role": "user"}]}, {"messages": [{"content": "x"}]},
               {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
               {"messages": [{"role": "user", "content": "x"}], "n": 2},
               {"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": 1}},
               {"messages": [{"role": "user", "content": "x" * 200}]}):  # over the 128 positions
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="tiny", max_tokens=2, **kw)
    with pytest.raises(openai.NotFoundError):
        oa(server["chat"]).completions.create(model="tiny", prompt="x", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        oa(server["completions"]).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                          max_tokens=2)
    assert oa(server["chat"]).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2).usage.completion_tokens == 2
    code, obj = post(server["both"].url, "/v1/chat/completions", {"model": "other", "messages": [
        {"role": "user", "content": "x"}]})
    assert code == 404 and "not served" in obj["error"]["message"]


# --- the openai-http backend ----------------------------------------------------------------------------

def client(url: str, **kw) -> OpenAIHttpClient:
    c = OpenAIHttpClient(OpenAIHttpOptions(url=url, timeout_s=30, **kw))
    c.check()
    return c


def test_api_auto_takes_completions_where_answered_else_chat(server):
    both = client(server["both"].url)
    assert both.describe()["api"] == "completions" and "answers /v1/completions" in both.describe()["api_reason"]
    assert both.describe()["prompt_format"] == "token_ids"
    chat = client(server["chat"].url)
    d = chat.describe()
    assert d["api"] == "chat" and "HTTP 404" in d["api_reason"] and d["prompt_format"] == "text"
    assert d["text_prompts"]["source"] == "/tokenize"  # counted in the chat form (messages) on this server
    told = client(server["both"].url + "/v1/chat/completions", api="chat")  # the route's own URL is accepted
    assert told.describe()["api"] == "chat" and told.path == "/v1/chat/completions"
    with pytest.raises(ConfigError, match="api"):
        build(OpenAIHttpOptions, {"api": "responses"}, "options")


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_chat_and_completions_measured_the_same_way(server, api):
    c = client(server["both"].url, api=api, send_token_ids=False)
    r = c.issue(Request(id=7, prompt_len=32, max_tokens=N, prompt_ids=list(range(40, 72))))
    assert r.ok, r.error
    # one timestamp per token: chat's role-only delta is not a token, and usage is the server's
    assert r.n_generated == N == r.n_chunks == len(r.token_times)
    assert r.n_prompt == n_bytes(c.text_of(Request(id=7, prompt_len=32, max_tokens=N,
                                                     prompt_ids=list(range(40, 72)))))
    assert r.t_issue < r.t_first_token <= r.t_end and r.token_times == sorted(r.token_times)
    c.close()


def test_harness_run_with_openai_http_chat_against_a_chat_only_server(server, tmp_path):
    scenario = {"type": "concurrency", "concurrency": 2, "requests": 4, "warmup_requests": 1}
    # auto against a chat-only server: the chat path, chosen at load, in a real run
    backends = [{"type": "openai-http", "name": "auto", "options": {"url": server["chat"].url}},
                {"type": "openai-http", "name": "completions",
                 "options": {"url": server["both"].url, "api": "completions"}}]
    _, records = _run(tmp_path, _suite(backends, gen_len=N, scenario=scenario))
    by = {r.backend: r for r in records.values()}
    assert set(by) == {"auto", "completions"}
    for name, rec in by.items():
        assert rec.ok, (name, rec.error)
        assert rec.load["details"]["api"] == ("completions" if name == "completions" else "chat"), rec.load
        m = rec.metrics
        assert m["requests"] == 4 and m["failed"] == 0, m
        assert m["output_tokens"] == 4 * N and m["count_mismatch"] == 0, m
        assert m["ttft_s"]["n"] == 4 and m["ttft_s"]["p50"] > 0, m
        # one chunk per token (chat's role delta not counted), so no request is skipped for
        # merged chunks; a request delivered in a burst on a loaded machine has no TPOT/ITL
        observed = 4 - m["tpot_not_observed"]
        assert m["itl_requests_skipped"] == 0 and (m["tpot_s"] or {"n": 0})["n"] == observed, m
        assert (m["itl_s"] or {"n": 0})["n"] == observed * (N - 1), m
