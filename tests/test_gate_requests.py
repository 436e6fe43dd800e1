"""The accuracy gate re-scores the tokens request scenarios produced.

Real runs through `python -m harness run` (worker processes): a model backend under a
request scenario is checked on the tokens the in-process engine streamed (a plugin
whose decode() returns wrong tokens fast is INVALID); an openai-http endpoint declared
to serve the reference weights (`harness serve` of the same tiny model and seed, on
127.0.0.1) is checked on the token ids it streams back, INVALID when they are wrong,
and "unchecked" with the reason when not declared.
"""
from __future__ import annotations


import pytest

from backends.base import Request
from backends.openai_http import OpenAIHttpClient, OpenAIHttpOptions, _chunk_ids
from harness.serve import FaultSpec, start_server
from tests.test_gate_timed import _run, _suite
from tests.test_plugin import faulty, faulty_plugin, plugin_env  # noqa: F401

GEN = 6
SINGLE = {"type": "single-stream", "requests": 3, "warmup_requests": 0}


# --- pieces -----------------------------------------------------------------------------------

def test_chunk_ids_reads_vllm_and_llama_cpp_keys_and_nothing_else():
    assert _chunk_ids({"text": "a", "token_ids": [5, 6]}) == [5, 6]  # vLLM, return_token_ids
    assert _chunk_ids({"content": "a", "tokens": [7]}) == [7]  # llama.cpp, return_tokens
    assert _chunk_ids({"text": "a"}) == []
    assert _chunk_ids({"tokens": ["a", "b"]}) == [] and _chunk_ids({"token_ids": [True]}) == []


def test_ids_are_asked_for_only_when_declared():
    plain = OpenAIHttpClient(OpenAIHttpOptions()).body(Request(id=1, prompt_len=4, max_tokens=2))
    declared = OpenAIHttpClient(OpenAIHttpOptions(serves_reference_weights=True)).body(
        Request(id=1, prompt_len=4, max_tokens=2))
    assert "return_token_ids" not in plain and "return_tokens" not in plain
    assert declared["return_token_ids"] is True and declared["return_tokens"] is True


def test_wrong_tokens_fault_replaces_the_given_fraction():
    f = FaultSpec.parse("wrong-tokens=1")
    assert [f.token(t, 100) for t in (0, 5, 99)] == [1, 6, 0]
    assert FaultSpec.parse("wrong-tokens=0").token(5, 100) == 5
    with pytest.raises(ValueError):
        FaultSpec.parse("wrong-tokens=2")


@pytest.fixture(scope="module")
def server():
    h = start_server("torch", "tiny", max_batch=2, max_seq=64, seed=0, options={"device": "cpu", "threads": 1})
    yield h
    h.stop()


def test_serve_streams_token_ids_only_when_asked(server):
    client = OpenAIHttpClient(OpenAIHttpOptions(url=server.url, serves_reference_weights=True))
    client.check()
    req = Request(id=3, prompt_len=5, max_tokens=4, prompt_ids=[11, 12, 13, 14, 15])
    res = client.issue(req)
    assert res.ok and len(res.token_ids) == 4 == res.n_generated
    # the same ids the engine itself produces for that prompt (greedy, same weights)
    job = server.engine.submit([11, 12, 13, 14, 15], 4)
    direct = [job.sink.get(timeout=60)[1] for _ in range(4)]
    assert res.token_ids == direct
    plain = OpenAIHttpClient(OpenAIHttpOptions(url=server.url))
    plain.check()
    assert plain.issue(req).token_ids == []  # not asked for, not kept
    text = OpenAIHttpClient(OpenAIHttpOptions(url=server.url, serves_reference_weights=True, send_token_ids=False))
    text.check()
    r = text.issue(req)
    assert r.ok and r.token_ids == [] and any("text prompt's ids" in n for n in r.notes)


# --- real runs --------------------------------------------------------------------------------

def test_wrong_tokens_under_a_request_scenario_is_invalid(faulty_plugin, tmp_path):
    scenario = {"type": "concurrency", "concurrency": 1, "requests": 3, "warmup_requests": 0}
    _, records = _run(tmp_path, _suite([faulty("cheat", fault="wrong-tokens")], gen_len=GEN, scenario=scenario),
                      env=plugin_env(faulty_plugin))
    (r,) = records.values()
    acc, timed = r.accuracy, r.accuracy["timed_output"]
    assert acc["logits_passed"] is True  # logits() alone would have passed it
    assert r.status == "invalid" and r.valid is False and acc["passed"] is False
    assert timed["status"] == "fail" and timed["checked_tokens"] == 3 * GEN
    assert timed["agreement"] <= 2 / GEN and "timed path" in acc["reason"]
    assert timed["first_disagreement"]["token"] == 0


def _endpoint(name: str, url: str, **options) -> dict:
    return {"type": "openai-http", "name": name, "options": {"url": url, **options}}


def test_endpoint_token_ids_checked_where_declared_invalid_when_wrong_unchecked_otherwise(server, tmp_path):
    wrong = start_server(engine=server.engine, fault="wrong-tokens=1")
    try:
        backends = [_endpoint("ref", server.url, serves_reference_weights=True),
                    _endpoint("wrong", wrong.url, serves_reference_weights=True),
                    _endpoint("plain", server.url)]
        _, records = _run(tmp_path, _suite(backends, gen_len=GEN, scenario=SINGLE))
    finally:
        wrong.stop()
    by = {r.backend: r for r in records.values()}

    ref = by["ref"].accuracy
    assert by["ref"].ok and by["ref"].valid, ref
    assert ref["timed_output"]["status"] == "pass" and ref["timed_output"]["agreement"] == 1.0
    assert ref["timed_output"]["checked_tokens"] == 3 * GEN and "endpoint" in ref["timed_output"]["reference"]
    # tokens established, logits not: passed stays None and the status says so
    assert ref["passed"] is None and ref["logits_passed"] is None
    assert "logits not checkable" in ref["status"] and "not checkable" in ref["logits"]

    bad = by["wrong"]
    assert bad.status == "invalid" and bad.valid is False and bad.accuracy["passed"] is False
    assert bad.accuracy["timed_output"]["agreement"] == 0.0, bad.accuracy
    assert "timed path" in bad.accuracy["reason"]

    plain = by["plain"].accuracy
    assert by["plain"].ok and plain["passed"] is None
    assert plain["timed_output"]["status"] == "unchecked" and plain["timed_output"]["passed"] is None
    assert "serves_reference_weights" in plain["timed_output"]["reason"]
    assert "agreement" not in plain["timed_output"]
