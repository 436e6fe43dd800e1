"""OnnxBackend on the CPU provider: tokens and logits against the torch reference,
options reaching the session, provider errors, user-supplied files, and placement
reporting with the fallback guard. Tests that need onnxruntime-openvino skip unless
OpenVINOExecutionProvider is installed (it replaces the onnxruntime package, so it
runs in its own environment: see the README)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from backends.base import BackendError, DecodeResult, LoadInfo  # noqa: E402
from backends.onnx_backend import (  # noqa: E402
    CPU_EP, OnnxBackend, OnnxOptions, available_providers, nodes_from_profile, parse_providers,
    summarize_placement,
)
from workloads.models import build_model, full_forward  # noqa: E402
from workloads.models.llama import decode_step, prefill  # noqa: E402
from workloads.zoo import ZOO, ModelArgs, ModelSpec  # noqa: E402

TINY = ModelSpec(ZOO["tiny"])
# as in test_onnx_export.py (same cache key, so one export serves both files)
MICRO = ModelSpec(ModelArgs("micro", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                            tie_embeddings=False, max_seq_len=256))
HAS_OPENVINO = "OpenVINOExecutionProvider" in ort.get_available_providers()
openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="needs onnxruntime-openvino (OpenVINOExecutionProvider)")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """Same folder as test_onnx_export.py's: the tiny export happens once per session."""
    return tmp_path_factory.getbasetemp() / "onnx-cache"


def _backend(onnx_cache, **kw) -> OnnxBackend:
    kw.setdefault("intra_op_threads", 2)
    return OnnxBackend(OnnxOptions(cache_dir=str(onnx_cache), **kw))


@pytest.fixture(scope="module")
def cpu(onnx_cache):
    b = _backend(onnx_cache)
    info = b.load(TINY, "fp32", max_batch=8, max_seq=64)
    yield b, info
    b.close()


@pytest.fixture(scope="module")
def reference():
    return build_model(TINY, "fp32")


def _torch_greedy(model, prompt: np.ndarray, n: int) -> np.ndarray:
    """The torch reference's greedy tokens: static-cache prefill, then decode steps."""
    tokens = torch.from_numpy(prompt)
    model.setup_cache(tokens.shape[0], prompt.shape[1] + n + 1)
    with torch.no_grad():
        tok = prefill(model, tokens).argmax(-1, keepdim=True)
        out = [tok]
        for i in range(n):
            tok = decode_step(model, tok, torch.tensor([prompt.shape[1] + i])).argmax(-1, keepdim=True)
            out.append(tok)
    return torch.cat(out, 1).numpy()


# --- correctness ---------------------------------------------------------------------------

def test_load_reports_export_session_and_device(cpu):
    b, info = cpu
    assert isinstance(info, LoadInfo)
    d = info.details
    assert d["onnx_source"] == "export" and Path(d["onnx_model"]).is_file()
    assert d["session_providers"][0] == CPU_EP and d["output_device"] == "cpu:0"
    assert d["io"] == {"position_ids": True, "attention_mask": False, "next_tokens": True}
    assert info.load_s > 0 and OnnxBackend.device_of(b.options) == "cpu"


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_greedy_tokens_equal_the_torch_reference(cpu, reference, batch):
    b, _ = cpu
    prompt = np.random.default_rng(batch).integers(0, TINY.args.vocab_size, (batch, 9))
    want = _torch_greedy(reference, prompt, 12)
    st = b.prefill(prompt)
    np.testing.assert_array_equal(b.first_tokens(st), want[:, 0])
    r = b.decode(st, 12)
    assert isinstance(r, DecodeResult) and r.tokens.shape == (batch, 12) and r.tokens.dtype == np.int64
    np.testing.assert_array_equal(r.tokens, want[:, 1:])
    assert len(r.step_times) == 12 and all(t2 > t1 for t1, t2 in zip(r.step_times, r.step_times[1:]))


def test_tokens_equal_the_torch_backend(cpu):
    """Same weights, same greedy tokens as the torch backend. torch is required by this file
    (importorskip above): any error of the torch backend is a failure, never a skip."""
    from backends.torch_backend import TorchBackend

    tb = TorchBackend(TorchBackend.Options())
    tb.load(TINY, "fp32", 2, 32)
    prompt = np.random.default_rng(21).integers(0, TINY.args.vocab_size, (2, 8))
    want = tb.decode(tb.prefill(prompt), 10).tokens
    b, _ = cpu
    np.testing.assert_array_equal(b.decode(b.prefill(prompt), 10).tokens, want)


def test_decode_continues_from_its_state(cpu):
    b, _ = cpu
    prompt = np.random.default_rng(7).integers(0, TINY.args.vocab_size, (2, 5))
    whole = b.decode(b.prefill(prompt), 8).tokens
    st = b.prefill(prompt)
    parts = np.concatenate([b.decode(st, 3).tokens, b.decode(st, 5).tokens], axis=1)
    np.testing.assert_array_equal(parts, whole)
    assert st.pos == 5 + 8


def test_logits_teacher_forced_match_reference(cpu, reference):
    b, _ = cpu
    tokens = np.random.default_rng(3).integers(0, TINY.args.vocab_size, (2, 14))
    ref = full_forward(reference, torch.from_numpy(tokens)).numpy()
    got = b.logits(tokens, 10)
    assert got.shape == (2, 14, TINY.args.vocab_size) and got.dtype == np.float32
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_public_iobinding_api_gives_the_same_tokens(cpu, monkeypatch):
    """The decode loop binds through onnxruntime's pybind objects for speed; where a build
    lacks them it uses the public IOBinding API, with the same results."""
    import backends.onnx_backend as ob

    class PublicOnly(ob._Binding):
        def __init__(self, session, dev):
            super().__init__(session, dev)
            self.fast, self.device, self.host = False, dev, ("cpu", 0)

    b, _ = cpu
    prompt = np.random.default_rng(9).integers(0, TINY.args.vocab_size, (2, 6))
    want = b.decode(b.prefill(prompt), 5).tokens
    monkeypatch.setattr(ob, "_Binding", PublicOnly)
    assert not b._binding().fast
    np.testing.assert_array_equal(b.decode(b.prefill(prompt), 5).tokens, want)


def test_prepare_warms_a_batch_size(cpu):
    b, _ = cpu
    assert b.prepare(4, 32) > 0
    with pytest.raises(BackendError, match="positions"):
        b.prepare(1, TINY.args.max_seq_len + 1)


def test_decode_past_max_seq_is_refused(cpu):
    b, _ = cpu
    st = b.prefill(np.zeros((1, 60), np.int64))
    with pytest.raises(BackendError, match="max_seq"):
        b.decode(st, 10)


def test_fp16_tokens(onnx_cache):
    """fp16 on the CPU provider: logits within the fp16 tolerance of the fp32 reference."""
    b = _backend(onnx_cache)
    b.load(MICRO, "fp16", 2, 32)
    tokens = np.random.default_rng(0).integers(0, MICRO.args.vocab_size, (2, 12))
    ref = full_forward(build_model(MICRO, "fp32"), torch.from_numpy(tokens)).numpy()
    got = b.logits(tokens, 8)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 2e-2
    assert b.decode(b.prefill(tokens[:, :8]), 4).tokens.shape == (2, 4)


# --- options and providers ---------------------------------------------------------------

def test_session_options_reach_the_session(onnx_cache):
    b = _backend(onnx_cache, intra_op_threads=1, inter_op_threads=1, graph_optimization_level="basic",
                 allow_spinning=False, session_config={"session.use_device_allocator_for_initializers": "1"},
                 providers=[{"name": "cpu", "options": {"arena_extend_strategy": "kSameAsRequested"}}])
    info = b.load(TINY, "fp32", 1, 16)
    so = b.session.get_session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    assert info.details["intra_op_threads"] == 1
    assert b.providers == [(CPU_EP, {"arena_extend_strategy": "kSameAsRequested"})]
    b.close()


def test_parse_providers():
    assert parse_providers(["cpu"]) == [(CPU_EP, {})]
    assert parse_providers([{"name": "OpenVINO", "options": {"device_type": "NPU", "num_streams": 1,
                                                              "enable_qdq_optimizer": True}}]) == \
        [("OpenVINOExecutionProvider", {"device_type": "NPU", "num_streams": "1", "enable_qdq_optimizer": "true"})]
    assert parse_providers(["QNNExecutionProvider", "CPUExecutionProvider"])[0][0] == "QNNExecutionProvider"
    for bad in ([], [{"options": {}}], [{"name": "cpu", "opts": {}}], [3]):
        with pytest.raises(BackendError):
            parse_providers(bad)


@pytest.mark.parametrize("name,package", [
    ("OpenVINOExecutionProvider", "onnxruntime-openvino"), ("CUDAExecutionProvider", "onnxruntime-gpu"),
    ("qnn", "onnxruntime-qnn"), ("DmlExecutionProvider", "onnxruntime-directml"),
    ("VitisAIExecutionProvider", "onnxruntime-vitisai")])
def test_missing_provider_names_its_package(tmp_path, name, package):
    if parse_providers([name])[0][0] in ort.get_available_providers():
        pytest.skip(f"{name} is installed here")
    b = OnnxBackend(OnnxOptions(providers=[{"name": name, "options": {"device_type": "NPU"}}],
                                cache_dir=str(tmp_path)))
    with pytest.raises(BackendError) as e:
        b.load(TINY, "fp32", 1, 16)
    msg = str(e.value)
    assert parse_providers([name])[0][0] in msg and package in msg and "CPUExecutionProvider" in msg
    assert list(tmp_path.iterdir()) == []  # refused before any export


def test_unknown_provider_points_to_plugins(tmp_path):
    with pytest.raises(BackendError, match="plugin_libraries"):
        OnnxBackend(OnnxOptions(providers=["AcmeNpuExecutionProvider"], cache_dir=str(tmp_path))).load(TINY, "fp32", 1, 8)


def test_missing_plugin_library(tmp_path):
    b = OnnxBackend(OnnxOptions(plugin_libraries=[{"name": "AcmeNpu", "path": str(tmp_path / "libacme_ep.so")}]))
    with pytest.raises(BackendError, match="libacme_ep.so"):
        b.load(TINY, "fp32", 1, 8)


def test_bad_options():
    with pytest.raises(BackendError, match="graph_optimization_level"):
        OnnxBackend(OnnxOptions(graph_optimization_level="max"))
    with pytest.raises(BackendError, match="bf16"):
        OnnxBackend(OnnxOptions()).load(TINY, "bf16", 1, 8)


def test_available_providers_and_describe(cpu):
    b, _ = cpu
    assert CPU_EP in available_providers() and CPU_EP in OnnxBackend.available_providers()
    d = b.describe()
    assert d["onnxruntime"] == ort.__version__ and d["session_providers"] == [CPU_EP]
    assert d["requested_providers"] == [{"name": CPU_EP, "options": {}}] and d["cpu_count"] >= 1 and d["cpu"]


def test_device_labels():
    dev = OnnxBackend.device_of
    assert dev(OnnxOptions()) == "cpu"
    assert dev(OnnxOptions(providers=[{"name": "cuda", "options": {"device_id": 1}}])) == "cuda:1"
    assert dev(OnnxOptions(providers=[{"name": "openvino", "options": {"device_type": "NPU"}}])) == "openvino:npu"
    assert dev(OnnxOptions(providers=["qnn"])) == "qnn"
    assert dev(OnnxOptions(providers=["qnn"], device="npu0")) == "npu0"


# --- user-supplied files ---------------------------------------------------------------------

def test_user_file_runs(cpu, onnx_cache, reference):
    b0, info = cpu
    b = _backend(onnx_cache, model_path=info.details["onnx_model"])
    d = b.load(TINY, "fp32", 2, 32).details
    assert d["onnx_source"] == "user" and "export_s" not in d
    prompt = np.random.default_rng(5).integers(0, TINY.args.vocab_size, (2, 6))
    np.testing.assert_array_equal(b.decode(b.prefill(prompt), 5).tokens, _torch_greedy(reference, prompt, 5)[:, 1:])


def test_user_file_without_next_tokens_argmaxes_on_the_host(cpu, onnx_cache, tmp_path, reference):
    """An Optimum-style file (no next_tokens output, an attention_mask input) runs too."""
    m = onnx.load(cpu[1].details["onnx_model"])
    keep = [o for o in m.graph.output if o.name != "next_tokens"]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    mask = onnx.helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", "total_seq"])
    m.graph.input.insert(1, mask)  # fed, unused: as Optimum exports with a mask
    path = tmp_path / "hf_style.onnx"
    onnx.save(m, str(path))
    b = _backend(onnx_cache, model_path=str(path))
    d = b.load(TINY, "fp32", 2, 32).details
    assert d["io"] == {"position_ids": True, "attention_mask": True, "next_tokens": False}
    prompt = np.random.default_rng(6).integers(0, TINY.args.vocab_size, (2, 6))
    want = _torch_greedy(reference, prompt, 5)
    st = b.prefill(prompt)
    np.testing.assert_array_equal(b.first_tokens(st), want[:, 0])
    np.testing.assert_array_equal(b.decode(st, 5).tokens, want[:, 1:])


def test_user_file_with_bad_names_gives_a_clear_error(cpu, onnx_cache, tmp_path):
    m = onnx.load(cpu[1].details["onnx_model"])
    for v in m.graph.output:
        if v.name == "present.2.value":
            for node in m.graph.node:
                node.output[:] = ["kv.2.v" if x == v.name else x for x in node.output]
            v.name = "kv.2.v"
    path = tmp_path / "bad_names.onnx"
    onnx.save(m, str(path))
    with pytest.raises(BackendError) as e:
        _backend(onnx_cache, model_path=str(path)).load(TINY, "fp32", 1, 8)
    assert str(path) in str(e.value) and "present.2.value" in str(e.value)
    with pytest.raises(BackendError, match="not found"):
        _backend(onnx_cache, model_path=str(tmp_path / "absent.onnx")).load(TINY, "fp32", 1, 8)


def test_user_file_of_another_dtype_is_refused(cpu, onnx_cache):
    with pytest.raises(BackendError, match="float16"):
        _backend(onnx_cache, model_path=cpu[1].details["onnx_model"]).load(TINY, "fp16", 1, 8)


# --- placement and the fallback guard ------------------------------------------------------------

def test_placement_on_the_cpu_provider(cpu):
    p = cpu[1].details["placement"]
    assert p["method"] == "ep_graph_assignment" and p["requested_provider"] == CPU_EP
    assert set(p["nodes_per_provider"]) == {CPU_EP} and p["nodes"] == p["nodes_per_provider"][CPU_EP] > 0
    assert p["ops_per_provider"][CPU_EP]["MatMul"] >= 4 * TINY.args.n_layers
    assert p["compute_nodes"] > 0 and p["compute_nodes_off_requested"] == 0
    assert p["compute_share_off_requested"] == 0.0 and p["cpu_fallback"] == "none"
    assert p["compute_ops_on_cpu"] == {}


def test_placement_from_a_profiling_trace(onnx_cache, monkeypatch):
    """Where ORT cannot report its graph assignment, one profiled run gives the same split."""
    from onnxruntime.capi import onnxruntime_inference_collection as coll

    monkeypatch.delattr(coll.Session, "get_provider_graph_assignment_info")
    b = _backend(onnx_cache)
    p = b.load(TINY, "fp32", 1, 16).details["placement"]
    assert p["method"] == "profiling_trace" and set(p["nodes_per_provider"]) == {CPU_EP}
    assert p["ops_per_provider"][CPU_EP]["MatMul"] >= 4 * TINY.args.n_layers and p["cpu_fallback"] == "none"
    assert b.decode(b.prefill(np.zeros((1, 3), np.int64)), 2).tokens.shape == (1, 2)  # still usable


def test_fallback_guard_refuses_compute_left_on_cpu(onnx_cache):
    """AzureExecutionProvider ships in the plain wheel and takes no node of this graph:
    every MatMul falls back to the CPU, which is what the guard exists for."""
    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no second provider in this onnxruntime")
    b = _backend(onnx_cache, providers=["AzureExecutionProvider", CPU_EP])
    with pytest.raises(BackendError) as e:
        b.load(TINY, "fp32", 1, 16)
    msg = str(e.value)
    assert "AzureExecutionProvider left compute on the CPU" in msg and "MatMul x" in msg
    assert "allow_cpu_fallback" in msg
    assert b.session is None


def test_allow_cpu_fallback_times_it_and_reports_the_split(onnx_cache):
    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no second provider in this onnxruntime")
    b = _backend(onnx_cache, providers=["AzureExecutionProvider", CPU_EP], allow_cpu_fallback=True)
    p = b.load(TINY, "fp32", 1, 16).details["placement"]
    assert p["cpu_fallback"] == "compute" and p["compute_share_off_requested"] == 1.0
    assert p["compute_ops_on_cpu"]["MatMul"] >= 4 * TINY.args.n_layers and "Shape" in p["shape_ops_on_cpu"]
    assert b.decode(b.prefill(np.zeros((1, 3), np.int64)), 2).tokens.shape == (1, 2)


def test_summarize_placement_classes():
    ov = "OpenVINOExecutionProvider"
    shape_only = summarize_placement([(ov, "MatMul"), (ov, "Softmax"), (CPU_EP, "Shape"), (CPU_EP, "Gather")], ov, "x")
    assert shape_only["cpu_fallback"] == "shape-only" and shape_only["compute_share_off_requested"] == 0.0
    assert shape_only["shape_ops_on_cpu"] == {"Shape": 1, "Gather": 1}
    other = summarize_placement([(ov, "MatMul"), (CPU_EP, "Softmax")], ov, "x")
    assert other["cpu_fallback"] == "other" and other["other_ops_on_cpu"] == {"Softmax": 1}
    compute = summarize_placement([(ov, "MatMul"), (CPU_EP, "MatMul"), (CPU_EP, "GroupQueryAttention")], ov, "x")
    assert compute["cpu_fallback"] == "compute" and compute["compute_share_off_requested"] == pytest.approx(2 / 3)
    assert compute["summary"] == "CPU: 2, OpenVINO: 1"


def test_nodes_from_profile(tmp_path):
    trace = tmp_path / "p.json"
    trace.write_text("""[
      {"cat": "Session", "name": "model_run", "args": {}},
      {"cat": "Node", "name": "mm_0_fence_before", "args": {"op_name": "MatMul", "provider": "CPUExecutionProvider"}},
      {"cat": "Node", "name": "mm_0_kernel_time", "args": {"op_name": "MatMul", "provider": "CPUExecutionProvider"}},
      {"cat": "Node", "name": "OpenVINO-EP-subgraph_1_0_kernel_time",
       "args": {"op_name": "OpenVINO-EP-subgraph_1", "provider": "OpenVINOExecutionProvider"}}]""")
    assert sorted(nodes_from_profile(trace)) == [(CPU_EP, "MatMul"),
                                                 ("OpenVINOExecutionProvider", "OpenVINO-EP-subgraph_1")]


# --- OpenVINO (its own environment: pip install onnxruntime-openvino) ----------------------------

@openvino
def test_openvino_placement_and_tokens(onnx_cache, reference):
    b = _backend(onnx_cache, providers=[{"name": "OpenVINOExecutionProvider", "options": {"device_type": "CPU"}}])
    info = b.load(TINY, "fp32", 2, 32)
    p = info.details["placement"]
    ovp = "OpenVINOExecutionProvider"
    assert p["requested_provider"] == ovp and p["nodes_per_provider"].get(ovp, 0) > 0
    assert p["compute_ops_on_cpu"] == {} and p["cpu_fallback"] in ("none", "shape-only", "other")
    assert ovp in info.details["provider_options"] and info.details["session_providers"][0] == ovp
    assert OnnxBackend.device_of(b.options) == "openvino:cpu"
    prompt = np.random.default_rng(11).integers(0, TINY.args.vocab_size, (2, 7))
    np.testing.assert_array_equal(b.decode(b.prefill(prompt), 6).tokens, _torch_greedy(reference, prompt, 6)[:, 1:])


def _with_a_float64_matmul(src: str, dst: Path) -> Path:
    """The same model with its second MatMul computed in float64 (Cast in, Cast out):
    same results, and an op OpenVINO leaves to the CPU provider."""
    m = onnx.load(src)
    g = m.graph
    i = [k for k, n in enumerate(g.node) if n.op_type == "MatMul"][1]
    n = g.node[i]
    a, b, out = n.input[0], n.input[1], n.output[0]
    mk = onnx.helper.make_node
    g.node.insert(i, mk("Cast", [a], [a + "_f64"], to=onnx.TensorProto.DOUBLE, name="to_f64_a"))
    g.node.insert(i + 1, mk("Cast", [b], [b + "_f64"], to=onnx.TensorProto.DOUBLE, name="to_f64_b"))
    n.input[0], n.input[1], n.output[0] = a + "_f64", b + "_f64", out + "_f64"
    g.node.insert(i + 3, mk("Cast", [out + "_f64"], [out], to=onnx.TensorProto.FLOAT, name="from_f64"))
    onnx.save(m, str(dst))
    return dst


@openvino
def test_openvino_fallback_guard(cpu, onnx_cache, tmp_path, reference):
    """OpenVINO cannot run a float64 MatMul: ORT quietly gives it to the CPU provider.
    The cell is refused, with the operator named; allowed, the split is reported."""
    path = _with_a_float64_matmul(cpu[1].details["onnx_model"], tmp_path / "f64.onnx")
    opts = dict(providers=[{"name": "OpenVINOExecutionProvider", "options": {"device_type": "CPU"}}],
                model_path=str(path))
    with pytest.raises(BackendError) as e:
        _backend(onnx_cache, **opts).load(TINY, "fp32", 1, 16)
    assert "OpenVINOExecutionProvider left compute on the CPU" in str(e.value) and "MatMul x1" in str(e.value)
    b = _backend(onnx_cache, allow_cpu_fallback=True, **opts)
    p = b.load(TINY, "fp32", 2, 32).details["placement"]
    assert p["cpu_fallback"] == "compute" and p["compute_ops_on_cpu"] == {"MatMul": 1}
    assert p["compute_nodes_off_requested"] == 1 and 0 < p["compute_share_off_requested"] < 0.1
    assert p["ops_per_provider"][CPU_EP]["Cast"] == 3
    prompt = np.random.default_rng(12).integers(0, TINY.args.vocab_size, (2, 7))
    np.testing.assert_array_equal(b.decode(b.prefill(prompt), 6).tokens, _torch_greedy(reference, prompt, 6)[:, 1:])
