"""The fused ONNX graph (workloads/onnx_fused.py, `graph: fused` on the onnxruntime backend):
ONNX Runtime's GroupQueryAttention / SkipSimplifiedLayerNormalization graph with a
preallocated KV cache written in place. Judged against the torch reference and the
portable export on the same weights, through the backend and through a real run."""
from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from backends.base import BackendError  # noqa: E402
from backends.onnx_backend import OnnxBackend, OnnxOptions  # noqa: E402
from harness.results import load_run  # noqa: E402
from workloads import export_onnx as ex  # noqa: E402
from workloads.models import build_model, full_forward  # noqa: E402
from workloads.zoo import ZOO, ModelArgs, ModelSpec  # noqa: E402

TINY = ModelSpec(ZOO["tiny"])
MICRO = ModelSpec(ModelArgs("micro", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                            tie_embeddings=False, max_seq_len=256))
INT8_TOL = 6e-2  # the README's int8 tolerance, written out


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "onnx-cache"


def _backend(onnx_cache, **kw) -> OnnxBackend:
    return OnnxBackend(OnnxOptions(cache_dir=str(onnx_cache), intra_op_threads=2, **kw))


@pytest.fixture(scope="module")
def pair(onnx_cache):
    """The portable and the fused graph of the same tiny model."""
    portable, fused = _backend(onnx_cache), _backend(onnx_cache, graph="fused")
    portable.load(TINY, "fp32", max_batch=8, max_seq=64)
    info = fused.load(TINY, "fp32", max_batch=8, max_seq=64)
    yield portable, fused, info
    portable.close()
    fused.close()


def test_the_graph_is_ten_fused_nodes_a_layer(pair):
    _, fused, info = pair
    assert info.details["graph"] == "fused" and info.details["kv_cache"] == "preallocated"
    model = onnx.load(str(fused.model_path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    n = TINY.args.n_layers
    assert ops.count("GroupQueryAttention") == n
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * n  # the first norm has no residual yet
    assert ops.count("MatMul") == 4 * n + 1  # qkv, o, gate/up, down, and the head
    layer_ops = {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "MatMul", "GroupQueryAttention", "Split", "QuickGelu", "Mul"}
    assert sum(ops.count(o) for o in layer_ops) == 10 * n + 2  # + the final norm and the head
    assert len(ops) < 11 * n + 20


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_greedy_tokens_equal_the_portable_graph(pair, batch):
    portable, fused, _ = pair
    prompt = np.random.default_rng(batch).integers(0, TINY.args.vocab_size, (batch, 9))
    want = portable.decode(portable.prefill(prompt), 14)
    st = fused.prefill(prompt)
    got = fused.decode(st, 14)
    np.testing.assert_array_equal(fused.first_tokens(st), portable.first_tokens(portable.prefill(prompt)))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert got.tokens.dtype == np.int64 and len(got.step_times) == 14
    assert all(t2 > t1 for t1, t2 in zip(got.step_times, got.step_times[1:]))


def test_logits_match_the_torch_reference(pair):
    _, fused, _ = pair
    tokens = np.random.default_rng(3).integers(0, TINY.args.vocab_size, (2, 14))
    ref = full_forward(build_model(TINY, "fp32"), torch.from_numpy(tokens)).numpy()
    got = fused.logits(tokens, 10)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_an_untied_head_matches_the_torch_reference(onnx_cache):
    b = _backend(onnx_cache, graph="fused")
    b.load(MICRO, "fp32", max_batch=2, max_seq=32)
    tokens = np.random.default_rng(4).integers(0, MICRO.args.vocab_size, (2, 12))
    ref = full_forward(build_model(MICRO, "fp32"), torch.from_numpy(tokens)).numpy()
    assert np.abs(b.logits(tokens, 5) - ref).max() / np.abs(ref).max() < 1e-5


def test_each_state_owns_its_cache(pair):
    """Two sequences decoded in turns give what each gives alone: the buffers written in
    place belong to one state, not to the backend."""
    _, fused, _ = pair
    a, b = (np.random.default_rng(s).integers(0, TINY.args.vocab_size, (2, 6)) for s in (11, 12))
    alone_a, alone_b = (fused.decode(fused.prefill(p), 10).tokens for p in (a, b))
    sa, sb = fused.prefill(a), fused.prefill(b)
    turns_a = [fused.decode(sa, 4).tokens]
    turns_b = [fused.decode(sb, 7).tokens]
    turns_a.append(fused.decode(sa, 6).tokens)
    turns_b.append(fused.decode(sb, 3).tokens)
    np.testing.assert_array_equal(np.concatenate(turns_a, 1), alone_a)
    np.testing.assert_array_equal(np.concatenate(turns_b, 1), alone_b)
    assert sa.pos == 16 and sa.cache_len == 64


def test_the_public_iobinding_api_gives_the_same_tokens(pair, monkeypatch):
    import backends.onnx_backend as ob

    class PublicOnly(ob._Binding):
        def __init__(self, session, dev):
            super().__init__(session, dev)
            self.fast, self.device, self.host = False, dev, ("cpu", 0)

    _, fused, _ = pair
    prompt = np.random.default_rng(9).integers(0, TINY.args.vocab_size, (2, 6))
    want = fused.decode(fused.prefill(prompt), 5).tokens
    want_logits = fused.logits(prompt, 3)
    monkeypatch.setattr(ob, "_Binding", PublicOnly)
    assert not fused._binding().fast
    np.testing.assert_array_equal(fused.decode(fused.prefill(prompt), 5).tokens, want)
    np.testing.assert_allclose(fused.logits(prompt, 3), want_logits, rtol=0, atol=1e-6)


def test_decode_past_max_seq_is_refused(pair):
    _, fused, _ = pair
    st = fused.prefill(np.zeros((1, 60), np.int64))
    fused.decode(st, 4)
    with pytest.raises(BackendError, match="max_seq 64"):
        fused.decode(st, 1)


def test_decode_past_the_preallocated_cache_is_refused(onnx_cache):
    """Loaded without a max_seq, a prefill's cache holds just its prompt: a decode step
    would write past the buffer, and is refused before the session runs."""
    b = _backend(onnx_cache, graph="fused")
    b.load(TINY, "fp32", max_batch=1, max_seq=0)
    st = b.prefill(np.zeros((1, 8), np.int64))
    assert st.cache_len == 8
    with pytest.raises(BackendError, match="preallocated cache of 8 positions"):
        b.decode(st, 1)


def test_a_prompt_longer_than_max_seq_gets_a_cache_of_its_length(pair):
    """logits() on gate sequences longer than the load's max_seq: the cache is sized to them."""
    portable, fused, _ = pair
    tokens = np.random.default_rng(5).integers(0, TINY.args.vocab_size, (1, 80))
    assert np.abs(fused.logits(tokens, 70) - portable.logits(tokens, 70)).max() < 1e-4


def test_fp16_fused_tokens_match_the_portable_fp16_graph(onnx_cache):
    p, f = _backend(onnx_cache), _backend(onnx_cache, graph="fused")
    p.load(MICRO, "fp16", 2, 32)
    f.load(MICRO, "fp16", 2, 32)
    tokens = np.random.default_rng(6).integers(0, MICRO.args.vocab_size, (2, 20))
    ref = p.logits(tokens, 10)
    assert np.abs(f.logits(tokens, 10) - ref).max() / np.abs(ref).max() < 2e-2


def test_int8_fused_quantizes_every_weight_and_stays_in_tolerance(pair, onnx_cache):
    portable, _, _ = pair
    q = _backend(onnx_cache, graph="fused", weight_quant="int8")
    info = q.load(TINY, "fp32", max_batch=2, max_seq=64)
    assert info.details["precision"] == "int8" and info.details["graph"] == "fused"
    ops = [n.op_type for n in onnx.load(str(q.model_path), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 4 * TINY.args.n_layers + 1 and ops.count("MatMul") == 0
    assert info.details["quantized_matmuls"] == ops.count("MatMulNBits") and info.details["fp32_matmuls_left"] == 0
    tokens = np.random.default_rng(1).integers(0, TINY.args.vocab_size, (2, 24))
    ref = portable.logits(tokens, 12)
    rel = float(np.abs(q.logits(tokens, 12) - ref).max() / np.abs(ref).max())
    assert 1e-4 < rel < INT8_TOL, rel


def test_export_refuses_an_unknown_graph(onnx_cache):
    with pytest.raises(ex.ExportError, match="unknown"):
        ex.export_model(TINY, "fp32", cache_dir=onnx_cache, graph="fancy")
    fused = ex.export_model(TINY, "fp32", cache_dir=onnx_cache, graph="fused")
    portable = ex.export_model(TINY, "fp32", cache_dir=onnx_cache)
    assert fused.path != portable.path and fused.meta["graph"] == "fused" and portable.meta["graph"] == "portable"


SUITE = """\
name: fused
warmup: 1
repetitions: 2
backends:
  - type: onnxruntime
    name: ort-fused-int8
    options: {intra_op_threads: 2, graph: fused, weight_quant: int8, cache_dir: CACHE}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1, 2]
    prompt_lens: [16]
    gen_lens: [8]
"""


def test_a_run_records_the_fused_graph_and_passes_the_gate(tmp_path, onnx_cache):
    (tmp_path / "s.yaml").write_text(SUITE.replace("CACHE", str(onnx_cache)))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(tmp_path / "s.yaml"), "--output",
                           str(tmp_path / "out"), "--name", "r", "--quiet"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    _, records = load_run(tmp_path / "out" / "r")
    assert len(records) == 2
    for rec in records:
        assert rec.status == "ok" and rec.valid, rec.error
        assert rec.precision == "int8" and rec.load["details"]["graph"] == "fused"
        assert rec.accuracy["passed"] and rec.accuracy["rel_err"] < INT8_TOL
        assert rec.accuracy["timed_output"]["status"] == "pass", rec.accuracy["timed_output"]


def test_graph_fused_with_a_user_file_is_refused_at_validation(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "s.yaml").write_text(SUITE.replace("weight_quant: int8, cache_dir: CACHE",
                                                   f"model_path: {tmp_path / 'm.onnx'}"))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(tmp_path / "s.yaml"), "--output",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "graph" in proc.stderr and "Traceback" not in proc.stderr
