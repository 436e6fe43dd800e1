"""Issue 15: `GET /metrics` of `harness serve`, Prometheus text with vLLM's names.

The scrape is parsed with prometheus_client's own text parser, and every count is
checked against the requests this test made (prompt lengths computed here: one token
per UTF-8 byte, token-id prompts their own length). Real HTTP on 127.0.0.1.
"""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from harness.serve import start_server

parser = pytest.importorskip("prometheus_client.parser")

KEY = "metrics-test-key-42"


@pytest.fixture(scope="module")
def server():
    mp = pytest.MonkeyPatch()
    mp.setenv("METRICS_TEST_KEY", KEY)
    h = start_server("torch", "tiny", max_batch=4, max_seq=512, options={"device": "cpu", "threads": 1},
                     api_key_env="METRICS_TEST_KEY")
    mp.undo()
    try:
        yield h
    finally:
        h.stop()


def conn(url: str) -> http.client.HTTPConnection:
    u = urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def request(url: str, method: str, path: str, body: dict | None = None, key: str | None = KEY):
    c = conn(url)
    hdr = {"Content-Type": "application/json"}
    if key:
        hdr["Authorization"] = f"Bearer {key}"
    c.request(method, path, json.dumps(body) if body is not None else None, hdr)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), data


def scrape(url: str) -> dict:
    """{(name, labels frozenset): value} of every sample, and the families by name."""
    status, ctype, data = request(url, "GET", "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    samples, families = {}, {}
    for fam in parser.text_string_to_metric_families(data.decode()):
        families[fam.name] = fam
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return {"samples": samples, "families": families}


def value(sc: dict, name: str, **labels) -> float:
    labels.setdefault("model_name", "tiny")
    return sc["samples"][(name, frozenset(labels.items()))]


def test_metrics_need_the_key(server):
    status, _, body = request(server.url, "GET", "/metrics", key=None)
    assert status == 401 and b"API key" in body
    status, _, _ = request(server.url, "GET", "/metrics", key="wrong")
    assert status == 401


def test_head_probe_then_get_on_one_connection(server):
    """Scrapers (aiperf) probe with HEAD, then GET on the same pooled connection."""
    c = conn(server.url)
    hdr = {"Authorization": f"Bearer {KEY}"}
    c.request("HEAD", "/metrics", headers=hdr)
    r = c.getresponse()
    assert r.status == 200 and int(r.getheader("Content-Length")) > 0 and r.read() == b""
    c.request("GET", "/metrics", headers=hdr)
    r = c.getresponse()
    text = r.read().decode()
    assert r.status == 200 and len(text) > 0 and "vllm:num_requests_running" in text
    c.close()


def test_counts_match_the_requests_made(server):
    before = scrape(server.url)
    # (route, body, prompt tokens, output tokens), each count computed here
    made = [("/v1/completions", {"prompt": [3, 4, 5, 6, 7], "max_tokens": 4}, 5, 4),
            ("/v1/completions", {"prompt": "héllo", "max_tokens": 1, "stream": True}, len("héllo".encode()), 1),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "abc"},
                                                   {"role": "user", "content": "de"}], "max_tokens": 7}, 6, 7),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "xyz"}], "max_tokens": 3,
                                      "stream": True, "stream_options": {"include_usage": True}}, 3, 3)]
    for path, body, _, _ in made:
        status, _, data = request(server.url, "POST", path, body)
        assert status == 200, data
    status, _, _ = request(server.url, "POST", "/v1/completions", {"prompt": [1] * 600})  # 400: not counted
    assert status == 400
    after = scrape(server.url)

    def delta(name, **labels):
        return value(after, name, **labels) - (value(before, name, **labels)
                                               if (name, frozenset({"model_name": "tiny", **labels}.items()))
                                               in before["samples"] else 0.0)

    n, prompt, out = len(made), sum(m[2] for m in made), sum(m[3] for m in made)
    assert delta("vllm:prompt_tokens_total") == prompt
    assert delta("vllm:generation_tokens_total") == out
    assert delta("vllm:request_success_total", finished_reason="length") == n
    for h in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
              "vllm:request_prompt_tokens", "vllm:request_generation_tokens"):
        assert delta(h + "_count") == n, h
        assert after["families"][h].type == "histogram"
    assert delta("vllm:request_prompt_tokens_sum") == prompt and delta("vllm:request_generation_tokens_sum") == out
    gaps = sum(m[3] - 1 for m in made)  # a gap between each two consecutive tokens of a request
    assert delta("vllm:inter_token_latency_seconds_count") == gaps
    assert delta("vllm:time_per_output_token_seconds_count") == gaps
    assert delta("vllm:request_time_per_output_token_seconds_count") == sum(1 for m in made if m[3] >= 2)
    # every observation lands in the +Inf bucket, and the bucket counts never go down
    ttft = [(float(dict(k[1])["le"]), v) for k, v in after["samples"].items()
            if k[0] == "vllm:time_to_first_token_seconds_bucket"]
    ttft.sort()
    assert ttft[-1][0] == float("inf") and ttft[-1][1] == value(after, "vllm:time_to_first_token_seconds_count")
    assert all(a[1] <= b[1] for a, b in zip(ttft, ttft[1:]))
    assert 0 < delta("vllm:e2e_request_latency_seconds_sum") < 60
    assert value(after, "vllm:num_requests_running") == 0 and value(after, "vllm:num_requests_waiting") == 0
    assert after["families"]["vllm:num_requests_running"].type == "gauge"
    assert not any(k[0].endswith("_created") for k in after["samples"])  # as on vLLM's /metrics


def test_running_gauge_sees_a_stream_in_flight(server):
    c = conn(server.url)
    c.request("POST", "/v1/completions", json.dumps({"prompt": [1, 2, 3], "max_tokens": 480, "stream": True}),
              {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = c.getresponse()
    assert r.status == 200
    assert r.readline().strip()  # the first chunk's size line: the first token is out
    mid = scrape(server.url)
    rest = r.read().decode()
    c.close()
    assert rest.rstrip().endswith("data: [DONE]"), "the stream was cut: the gauge reading means nothing"
    # 480 tokens take far longer than one scrape on any machine: the stream is still running
    assert value(mid, "vllm:num_requests_running") == 1 and value(mid, "vllm:num_requests_waiting") == 0
    end = scrape(server.url)
    assert value(end, "vllm:num_requests_running") == 0


def test_each_server_counts_its_own_and_dropped_streams_are_no_success(server):
    mine = value(scrape(server.url), "vllm:prompt_tokens_total")
    dropper = start_server(engine=server.engine, fault="drop-after=2")
    try:
        c = conn(dropper.url)
        c.request("POST", "/v1/completions", json.dumps({"prompt": [9, 9], "max_tokens": 8, "stream": True}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        with pytest.raises((http.client.IncompleteRead, ConnectionError, http.client.HTTPException)):
            r.read()
        c.close()
        status, _, data = request(dropper.url, "GET", "/metrics", key=None)
        assert status == 200
        fams = {f.name: f for f in parser.text_string_to_metric_families(data.decode())}
        samples = {(s.name, frozenset(s.labels.items())): s.value for f in fams.values() for s in f.samples}
        tiny = frozenset({"model_name": "tiny"}.items())
        assert samples[("vllm:prompt_tokens_total", tiny)] == 2  # prefilled, then dropped
        assert samples[("vllm:time_to_first_token_seconds_count", tiny)] == 1
        assert samples[("vllm:e2e_request_latency_seconds_count", tiny)] == 0
        assert not [k for k in samples if k[0] == "vllm:request_success_total"]
        assert samples[("vllm:num_requests_running", tiny)] == 0 == samples[("vllm:num_requests_waiting", tiny)]
    finally:
        dropper.stop()
    # the first server's registry did not see the other's request, though they share one engine
    assert value(scrape(server.url), "vllm:prompt_tokens_total") == mine
