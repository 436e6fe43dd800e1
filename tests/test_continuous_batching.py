"""Continuous batching (issue 15): requests of any prompt length join a running batch at
the next decode step and leave when done, with the tokens they would get alone.

Expected outputs come from a second torch backend running each prompt alone through the
static prefill/decode path (batch 1), never through the slot decoder under test. Order
("starts before the running ones finish") is judged in decode steps, not seconds: a long
request runs for hundreds of steps, a short one needs a handful, so a loaded machine
cannot flip the outcome.
"""
from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from backends.base import ModelBackend
from backends.torch_backend import TorchBackend, TorchOptions
from harness.scenarios.engine import BatchingEngine, BatchStats
from harness.serve import start_server
from workloads.models import build_model, full_forward
from workloads.models.llama import decode_rows, prefill_rows
from workloads.zoo import ModelSpec, get_model

ROOT = Path(__file__).resolve().parent.parent
SPEC = ModelSpec(get_model("tiny"), seed=0)
VOCAB = SPEC.args.vocab_size
MAX_SEQ = 256


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, n).tolist()


@pytest.fixture(scope="module")
def solo():
    """Greedy tokens of one prompt run alone (batch 1, the static path), memoised."""
    be = TorchBackend(TorchOptions(device="cpu", threads=1))
    be.load(SPEC, "fp32", 1, MAX_SEQ)
    be.prepare(1, MAX_SEQ)
    memo: dict = {}

    def run(p: list[int], n: int) -> list[int]:
        key = (tuple(p), n)
        if key not in memo:
            state = be.prefill(np.asarray([p], dtype=np.int64))
            toks = [int(be.first_tokens(state)[0])]
            if n > 1:
                toks += be.decode(state, n - 1).tokens[0].tolist()
            memo[key] = toks
        return memo[key]

    yield run
    be.close()


def engine(batching: str = "auto", max_batch: int = 4) -> BatchingEngine:
    be = TorchBackend(TorchOptions(device="cpu", threads=1))
    be.load(SPEC, "fp32", max_batch, MAX_SEQ)
    return BatchingEngine(be, VOCAB, max_batch=max_batch, max_seq=MAX_SEQ, batching=batching).start()


def collect(job) -> list[tuple[int, float]]:
    out = []
    while True:
        ev = job.sink.get(timeout=60)
        assert ev[0] == "token", ev
        out.append((ev[1], ev[2]))
        if ev[3]:
            return out


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


# --- the model: per-sequence positions ------------------------------------------------------------

def test_rows_of_mixed_lengths_match_the_full_forward():
    """Prefill right-padded prompts of different lengths into rows 1..3 of a 4-row cache,
    then decode each at its own position: every logit equals the cache-free forward of
    that sequence alone."""
    model = build_model(SPEC, "fp32")
    model.setup_cache(4, 64)
    lengths, gen = [3, 11, 7], 6
    seqs = [torch.tensor(prompt(n + gen, seed=n)) for n in lengths]
    padded = torch.zeros(3, max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        padded[i, :n] = seqs[i][:n]
    pos = torch.tensor(lengths)
    with torch.inference_mode():
        got = [prefill_rows(model, padded, pos, slice(1, 4))]
        for t in range(gen):
            tok = torch.stack([s[n + t] for s, n in zip(seqs, lengths)])[:, None]
            got.append(decode_rows(model, tok, pos + t, slice(1, 4)))
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        ref = full_forward(model, s[None])[0, n - 1 : n + gen]
        mine = torch.stack([g[i] for g in got])
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


# --- the engine -----------------------------------------------------------------------------------

def test_requests_join_mid_batch_and_get_their_solo_tokens(solo):
    eng = engine()
    try:
        assert eng.policy == "continuous"
        long_a, long_b = prompt(5, 1), prompt(12, 2)
        a, b = eng.submit(long_a, 150), eng.submit(long_b, 140)
        wait_for(lambda: eng.batch_stats().decode_steps >= 3, "the first batch to decode")
        # while a and b decode: prompts of other lengths (1 token, 9, 23) arrive
        late = [(prompt(n, 10 + n), m) for n, m in ((1, 5), (9, 8), (23, 3))]
        jobs = [eng.submit(p, m) for p, m in late]
        outs = [collect(j) for j in (a, b, *jobs)]
    finally:
        eng.stop()
    out_a, out_b, *out_late = outs
    end_a, end_b = out_a[-1][1], out_b[-1][1]
    for (p, m), out in zip(late, out_late):
        assert out[0][1] < min(end_a, end_b), "a late request started only after the running ones finished"
        assert out[-1][1] < min(end_a, end_b), "a short late request should leave before the long ones end"
        assert [t for t, _ in out] == solo(p, m)
    assert [t for t, _ in out_a] == solo(long_a, 150) and [t for t, _ in out_b] == solo(long_b, 140)

    st = eng.batch_stats()
    assert isinstance(st, BatchStats) and st.policy == "continuous" and st.errors == 0
    # three arrived while two ran; only four slots, so the third may have waited for one
    assert st.admitted_mid_batch == 3 and st.requests == 5
    assert 4 in st.decode_batch_sizes and max(st.decode_batch_sizes) == 4
    # every request's first token comes from its prefill, every other token from a step of
    # the size recorded: the histogram accounts for each streamed token exactly once
    n_tokens = 150 + 140 + sum(m for _, m in late)
    assert st.tokens == n_tokens
    assert st.requests + sum(b * n for b, n in st.decode_batch_sizes.items()) == n_tokens
    assert st.decode_steps == sum(st.decode_batch_sizes.values())
    # a and b ran alone together at first and at the end: the longest takes 149 steps
    assert st.decode_steps == 149
    assert json.loads(json.dumps(st.to_json()))["decode_batch_sizes"]["4"] == st.decode_batch_sizes[4]


def test_a_cancelled_sequence_leaves_and_frees_its_slot(solo):
    eng = engine(max_batch=2)
    try:
        keep, drop = prompt(6, 3), prompt(14, 4)
        j_keep, j_drop = eng.submit(keep, 60), eng.submit(drop, 200)
        wait_for(lambda: eng.batch_stats().decode_steps >= 2, "decoding")
        eng.cancel(j_drop)
        third = prompt(4, 5)
        j3 = eng.submit(third, 10)  # the slot freed by the cancelled one takes it
        out3, out_keep = collect(j3), collect(j_keep)
    finally:
        eng.stop()
    assert [t for t, _ in out3] == solo(third, 10)
    assert [t for t, _ in out_keep] == solo(keep, 60)
    assert out3[0][1] < out_keep[-1][1]


def test_static_policy_keeps_the_old_behaviour():
    """--batching static: a request with another prompt length waits for the running batch."""
    eng = engine("static")
    try:
        assert eng.policy == "static"
        a = eng.submit(prompt(5, 1), 40)
        wait_for(lambda: eng.batch_stats().decode_steps >= 2, "the first batch to decode")
        c = eng.submit(prompt(9, 19), 4)
        out_a, out_c = collect(a), collect(c)
    finally:
        eng.stop()
    assert out_c[0][1] > out_a[-1][1]  # started only after the running batch ended
    st = eng.batch_stats()
    assert st.policy == "static" and st.admitted_mid_batch == 0
    assert st.decode_batch_sizes == {1: 39 + 3} and st.prefill_batch_sizes == {1: 2}


class NoSlots(ModelBackend):
    """A real backend that does not offer slot decoding (as onnxruntime and llama.cpp)."""

    name = "no-slots"

    def __init__(self, inner):
        self.inner = inner

    def describe(self):
        return self.inner.describe()

    def load(self, spec, dtype, max_batch, max_seq):
        return self.inner.load(spec, dtype, max_batch, max_seq)

    def prepare(self, batch, seq_len):
        return self.inner.prepare(batch, seq_len)

    def prefill(self, token_ids):
        return self.inner.prefill(token_ids)

    def first_tokens(self, state):
        return self.inner.first_tokens(state)

    def decode(self, state, n):
        return self.inner.decode(state, n)

    def logits(self, token_ids, n_prefill):
        return self.inner.logits(token_ids, n_prefill)


def test_a_backend_without_slots_batches_statically_and_refuses_continuous():
    inner = TorchBackend(TorchOptions(device="cpu", threads=1))
    inner.load(SPEC, "fp32", 2, 32)
    be = NoSlots(inner)
    with pytest.raises(ValueError, match="no-slots.*cannot join sequences.*static"):
        BatchingEngine(be, VOCAB, max_batch=2, max_seq=32, batching="continuous").start()
    eng = BatchingEngine(be, VOCAB, max_batch=2, max_seq=32).start()
    try:
        assert eng.policy == "static"
        assert len(collect(eng.submit([1, 2, 3], 4))) == 4
    finally:
        eng.stop()
    with pytest.raises(ValueError, match="batching must be one of"):
        BatchingEngine(be, VOCAB, batching="dynamic")


# --- harness serve, over HTTP ---------------------------------------------------------------------

def stream(url: str, p: list[int], n: int, out: dict) -> None:
    """POST a streamed completion; out gets (token id, arrival time) per chunk."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    body = {"prompt": p, "max_tokens": n, "stream": True, "ignore_eos": True, "return_token_ids": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    toks = []
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices", []):
            toks += [(t, time.perf_counter()) for t in choice["token_ids"]]
    conn.close()
    out["tokens"] = toks


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_harness_serve_admits_a_request_mid_batch(solo, batching):
    h = start_server("torch", "tiny", max_batch=4, max_seq=MAX_SEQ, options={"device": "cpu", "threads": 1},
                     batching=batching)
    try:
        long_p, short_p = prompt(7, 30), prompt(18, 31)
        res_long, res_short = {}, {}
        th = threading.Thread(target=stream, args=(h.url, long_p, 200, res_long))
        th.start()
        wait_for(lambda: h.engine.batch_stats().decode_steps >= 3, "the long request to decode")
        stream(h.url, short_p, 5, res_short)
        th.join(timeout=120)
        stats = json.loads(_get(h.url + "/stats"))["batching"]
    finally:
        h.stop()
    long_t, short_t = res_long["tokens"], res_short["tokens"]
    assert [t for t, _ in long_t] == solo(long_p, 200) and [t for t, _ in short_t] == solo(short_p, 5)
    assert stats["policy"] == batching
    if batching == "continuous":  # the short one started, and ended, while the long one ran
        assert short_t[0][1] < short_t[-1][1] < long_t[-1][1]
        assert stats["admitted_mid_batch"] == 1 and stats["decode_batch_sizes"] == {"1": 199 - 4, "2": 4}
    else:  # the old policy: it waited for the running batch to end (never ran beside it);
        # judged on the server's counts: two client threads' read times could cross
        assert stats["admitted_mid_batch"] == 0 and stats["decode_batch_sizes"] == {"1": 199 + 4}


def _get(url: str) -> bytes:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", u.path)
    body = conn.getresponse().read()
    conn.close()
    return body


def test_serve_process_prints_its_batch_sizes_on_exit(tmp_path):
    """`harness serve` in its own process: --batching is a flag, and the batch-size
    histogram is printed when it stops."""
    ready = tmp_path / "url"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "harness.serve", "--model", "tiny", "--port", "0",
                             "--max-batch", "2", "--max-seq", "64", "--batching", "continuous",
                             "--option", "threads=1", "--ready-file", str(ready)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read().decode() if proc.poll() is not None else "server did not start"
        out: dict = {}
        stream(ready.read_text().strip(), [3, 1, 4, 1, 5], 6, out)
        assert len(out["tokens"]) == 6
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    text = err.decode()
    assert "batching: continuous (max batch 2); 1 requests, 6 tokens, 5 decode steps" in text
    assert "    1        5  100.0 %" in text

