"""The backend contract (backends.base), checked on every backend installed here.

Model backends: first_tokens() is the token prefill generated, and decode() advances
its state, so that decode(s, 3) then decode(s, 2) generates what decode(s, 5) does -- the
batching engine relies on both and never touches a backend's state itself. Request
backends: issue() streams one request into a backends.base.RequestResult.
"""
from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
from pathlib import Path
import threading

import numpy as np
import pytest
import torch

from backends.base import ModelBackend, Request, RequestBackend, RequestResult
from backends.openai_http import OpenAIHttpBackend, OpenAIHttpOptions
from harness.registry import load_backend_class
from workloads.models import build_model, full_forward
from workloads.zoo import ZOO, ModelSpec

SPEC = ModelSpec(ZOO["tiny"], seed=0)  # as test_onnx_backend.py's TINY: one ONNX export serves both
PROMPTS = np.random.default_rng(5).integers(0, SPEC.args.vocab_size, (2, 8))
FAULTY_PLUGIN = Path(__file__).resolve().parent / "plugins" / "faulty_backend"


# --- every model backend installed here ------------------------------------------------

def _torch(tmp):
    from backends.torch_backend import TorchBackend, TorchOptions
    return TorchBackend(TorchOptions(device="cpu", threads=1))


def _onnx(tmp):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from backends.onnx_backend import OnnxBackend, OnnxOptions
    return OnnxBackend(OnnxOptions(cache_dir=str(tmp.getbasetemp() / "onnx-cache"), intra_op_threads=2))


def _llamacpp(tmp):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from backends.llamacpp_backend import LlamaCppBackend, LlamaCppOptions
    return LlamaCppBackend(LlamaCppOptions(threads=2, cache_dir=str(tmp.mktemp("gguf"))))


def _transformers(tmp):
    pytest.importorskip("transformers")
    from backends.hf_backend import HFBackend, HFOptions
    return HFBackend(HFOptions())


def _faulty(tmp):
    """The test plugin (tests/plugins/faulty_backend) with no fault: a backend from outside this repo."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(FAULTY_PLUGIN))
    try:
        from faulty_backend import FaultyBackend, FaultyOptions
    finally:
        mp.undo()
    return FaultyBackend(FaultyOptions(fault="none"))


MODEL_BACKENDS = {"torch": _torch, "onnxruntime": _onnx, "llama.cpp": _llamacpp, "transformers": _transformers,
                  "faulty": _faulty}


@pytest.fixture(scope="module", params=list(MODEL_BACKENDS))
def backend(request, tmp_path_factory):
    b = MODEL_BACKENDS[request.param](tmp_path_factory)
    b.load(SPEC, "fp32", 2, 32)
    b.prepare(2, 32)
    yield b
    b.close()


@pytest.fixture(scope="module")
def greedy() -> np.ndarray:
    """The reference model's greedy tokens [batch, 6] after PROMPTS, recomputed in full at each step."""
    model = build_model(SPEC, "fp32")
    toks = torch.from_numpy(PROMPTS)
    out = []
    with torch.inference_mode():
        for _ in range(6):
            nxt = full_forward(model, toks)[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            toks = torch.cat([toks, nxt], dim=1)
    return torch.cat(out, dim=1).numpy()


def test_first_tokens_are_what_prefill_generated(backend, greedy):
    first = backend.first_tokens(backend.prefill(PROMPTS))
    assert isinstance(first, np.ndarray) and first.shape == (2,) and first.dtype == np.int64
    np.testing.assert_array_equal(first, greedy[:, 0])


def test_decode_advances_its_state(backend, greedy):
    state = backend.prefill(PROMPTS)
    a, b = backend.decode(state, 3).tokens, backend.decode(state, 2).tokens
    assert a.shape == (2, 3) and b.shape == (2, 2)
    whole = backend.decode(backend.prefill(PROMPTS), 5).tokens
    np.testing.assert_array_equal(np.concatenate([a, b], axis=1), whole)
    np.testing.assert_array_equal(whole, greedy[:, 1:6])
    # the first token stays readable after decoding (the engine may read it late)
    np.testing.assert_array_equal(backend.first_tokens(state), greedy[:, 0])


# --- each registered backend is one of the two kinds ------------------------------------

@pytest.mark.parametrize("name, kind", [("torch", "model"), ("onnxruntime", "model"), ("llama.cpp", "model"),
                                        ("transformers", "model"), ("openai-http", "request")])
def test_registered_backends_are_one_of_the_two_kinds(name, kind):
    cls = load_backend_class(name)
    wanted, other = (ModelBackend, RequestBackend) if kind == "model" else (RequestBackend, ModelBackend)
    assert issubclass(cls, wanted) and not issubclass(cls, other) and cls.kind == kind


def test_the_plugin_backend_is_a_model_backend():
    assert isinstance(_faulty(None), ModelBackend)


def test_a_request_backend_has_no_model_methods():
    for method in ("prefill", "first_tokens", "decode", "logits"):
        assert not hasattr(OpenAIHttpBackend, method), method


# --- the request backend against a minimal OpenAI-compatible endpoint -------------------

class _Endpoint(BaseHTTPRequestHandler):
    """/v1/models and streamed /v1/completions: one chunk per token, then usage and [DONE]."""

    bodies: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def _send(self, content_type: str, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        self._send("application/json", json.dumps({"data": [{"id": "tiny"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/completions":  # no /tokenize here: the client must do without
            self.send_error(404)
            return
        self.bodies.append(body)
        n = body["max_tokens"]
        events = [{"choices": [{"index": 0, "text": f" t{i}", "finish_reason": "length" if i == n - 1 else None}]}
                  for i in range(n)]
        events.append({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}})
        stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self._send("text/event-stream", stream)


@pytest.fixture
def endpoint():
    _Endpoint.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Endpoint.bodies
    server.shutdown()
    server.server_close()


def test_issue_streams_one_request_into_a_request_result(endpoint):
    url, bodies = endpoint
    be = OpenAIHttpBackend(OpenAIHttpOptions(url=url, timeout_s=30))
    try:
        info = be.load(SPEC, "fp32", 1, 32)  # finds the model, probes the prompt format
        assert info.details["served_models"] == ["tiny"] and info.details["prompt_format"] == "token_ids"
        r = be.issue(Request(id=7, prompt_len=5, max_tokens=3, prompt_ids=[1, 2, 3, 4, 5]))
    finally:
        be.close()
    assert type(r) is RequestResult and r.ok, r.error
    assert (r.id, r.prompt_len, r.n_requested, r.n_generated, r.n_prompt) == (7, 5, 3, 3, 5)
    assert len(r.token_times) == 3 and r.t_issue <= r.t_first_token <= r.t_end
    assert not r.count_mismatch and not r.prompt_mismatch and r.finish_reason == "length"
    assert bodies[-1]["prompt"] == [1, 2, 3, 4, 5] and bodies[-1]["model"] == "tiny"
    assert bodies[-1]["max_tokens"] == 3 and bodies[-1]["min_tokens"] == 3 and bodies[-1]["ignore_eos"] is True


def test_issue_reports_a_failure_on_the_result_never_raises():
    dead = OpenAIHttpBackend(OpenAIHttpOptions(url="http://127.0.0.1:9", model="tiny", timeout_s=5, probe=False))
    r = dead.issue(Request(id=1, prompt_len=4, max_tokens=2))
    assert type(r) is RequestResult and not r.ok and r.t_end is not None and r.n_generated == 0
