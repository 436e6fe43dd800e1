"""ONNX export of the reference model: round trip against torch, the on-disk cache, and
the I/O convention for user-supplied files. Exports only small models (tiny, ~10 s on
2 cores, once per session; a 2-layer model for fp16 and for the variants)."""
from __future__ import annotations

from pathlib import Path
import time

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from workloads import export_onnx as ex  # noqa: E402
from workloads.models import build_model, full_forward  # noqa: E402
from workloads.zoo import ZOO, ModelArgs, ModelSpec  # noqa: E402

TINY = ModelSpec(ZOO["tiny"])
# smaller than tiny, untied head: the fp16 and variant exports stay a few seconds
MICRO = ModelSpec(ModelArgs("micro", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                            tie_embeddings=False, max_seq_len=256))


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """One export cache for the whole test session (shared with test_onnx_backend.py)."""
    return tmp_path_factory.getbasetemp() / "onnx-cache"


@pytest.fixture(scope="module")
def tiny_export(onnx_cache):
    return ex.export_model(TINY, "fp32", cache_dir=onnx_cache)


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run_with_cache(sess, spec, tokens: np.ndarray, n_prefill: int, np_dtype=np.float32) -> tuple[np.ndarray, dict]:
    """Prefill n_prefill tokens, then one token at a time through present -> past."""
    a = spec.args
    B, T = tokens.shape
    names = [o.name for o in sess.get_outputs()]
    past = {n: np.zeros((B, a.n_kv_heads, 0, a.head_dim), np_dtype) for i in range(a.n_layers) for n in ex.past_names(i)}
    out = dict(zip(names, sess.run(None, {"input_ids": tokens[:, :n_prefill],
                                          "position_ids": np.tile(np.arange(n_prefill), (B, 1)), **past})))
    logits = [out["logits"]]
    for t in range(n_prefill, T):
        past = {n.replace("present", "past_key_values"): v for n, v in out.items() if n.startswith("present.")}
        out = dict(zip(names, sess.run(None, {"input_ids": tokens[:, t:t + 1],
                                              "position_ids": np.full((B, 1), t, np.int64), **past})))
        logits.append(out["logits"])
    return np.concatenate(logits, axis=1), out


def _rel(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def test_export_writes_the_convention(tiny_export, onnx_cache):
    assert tiny_export.path.is_file() and tiny_export.path.name == "model.onnx"
    assert tiny_export.path.parent.parent == onnx_cache
    assert (tiny_export.path.parent / "meta.json").is_file()
    io = ex.check_onnx_file(tiny_export.path, n_layers=TINY.args.n_layers)
    assert io.n_layers == 4 and io.has_position_ids and io.has_next_tokens and not io.has_attention_mask
    sess = _session(tiny_export.path)
    ins = {i.name: i for i in sess.get_inputs()}
    assert list(ins)[:3] == ["input_ids", "position_ids", "past_key_values.0.key"]
    assert ins["input_ids"].shape == ["batch", "seq"]
    k = ins["past_key_values.3.value"].shape
    assert isinstance(k[0], str) and k[1] == TINY.args.n_kv_heads and isinstance(k[2], str) and k[3] == 32
    outs = [o.name for o in sess.get_outputs()]
    assert outs[0] == "logits" and outs[-1] == "next_tokens" and "present.3.key" in outs
    meta = tiny_export.meta
    assert meta["key"] == TINY.key("fp32") and meta["exporter"]["export_version"] == ex.EXPORT_VERSION


@pytest.mark.parametrize("batch", [1, 3])
def test_round_trip_matches_torch_through_the_cache(tiny_export, batch):
    """Prefill 6 tokens, then 6 decode steps through the explicit cache: logits at every
    position equal the torch reference's (full forward, no cache) to fp32 precision."""
    model = build_model(TINY, "fp32")
    tokens = np.random.default_rng(batch).integers(0, TINY.args.vocab_size, (batch, 12))
    ref = full_forward(model, torch.from_numpy(tokens)).numpy()
    got, last = _run_with_cache(_session(tiny_export.path), TINY, tokens, 6)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert _rel(got, ref) < 1e-5
    assert last["present.0.key"].shape == (batch, TINY.args.n_kv_heads, 12, TINY.args.head_dim)
    np.testing.assert_array_equal(last["next_tokens"][:, 0], ref[:, -1].argmax(-1))


def test_second_export_is_a_cache_hit(tiny_export, onnx_cache):
    t0 = time.perf_counter()
    again = ex.export_model(TINY, "fp32", cache_dir=onnx_cache)
    assert again.cache_hit and again.export_s == 0.0
    assert again.path == tiny_export.path
    assert time.perf_counter() - t0 < 2.0
    assert again.meta["key"] == TINY.key("fp32")


def test_cache_key_separates_dtype_seed_and_exporter(onnx_cache, monkeypatch):
    p = ex.export_path(TINY, "fp32", onnx_cache)
    assert ex.export_path(TINY, "fp16", onnx_cache) != p
    assert ex.export_path(ModelSpec(TINY.args, seed=1), "fp32", onnx_cache) != p
    assert ex.export_path(TINY, "fp32", onnx_cache) == p  # stable
    monkeypatch.setattr(ex, "EXPORT_VERSION", ex.EXPORT_VERSION + 1)
    assert ex.export_path(TINY, "fp32", onnx_cache) != p


def test_cache_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCEL_HARNESS_CACHE", str(tmp_path))
    assert ex.cache_root() == tmp_path / "onnx"
    assert ex.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("ACCEL_HARNESS_CACHE")
    assert ex.cache_root() == Path.home() / ".cache" / "accel-harness" / "onnx"


def test_killed_export_leaves_nothing(tmp_path, monkeypatch):
    def half_then_die(spec, dtype, path, next_tokens):
        path.write_bytes(b"half a model")
        raise KeyboardInterrupt  # as a Ctrl-C in the middle of an export

    monkeypatch.setattr(ex, "_export_to", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        ex.export_model(MICRO, "fp32", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no final folder, no temporary one
    assert not ex.export_path(MICRO, "fp32", tmp_path).exists()


def test_fp16_export_runs_within_fp16_tolerance(onnx_cache):
    e = ex.export_model(MICRO, "fp16", cache_dir=onnx_cache)
    sess = _session(e.path)
    assert sess.get_inputs()[2].type == "tensor(float16)"
    assert sess.get_outputs()[0].type == "tensor(float)"  # logits always fp32
    tokens = np.random.default_rng(0).integers(0, MICRO.args.vocab_size, (2, 10))
    ref = full_forward(build_model(MICRO, "fp32"), torch.from_numpy(tokens)).numpy()
    got, last = _run_with_cache(sess, MICRO, tokens, 6, np.float16)
    assert last["present.1.value"].dtype == np.float16
    assert _rel(got, ref) < 2e-2


def test_large_models_get_external_data(tmp_path, monkeypatch):
    """Past protobuf's 2 GB the weights go to a data file beside the model, in the same
    atomically renamed folder."""
    monkeypatch.setattr(ex, "EXTERNAL_DATA_BYTES", 0)
    e = ex.export_model(MICRO, "fp32", cache_dir=tmp_path)
    files = sorted(f.name for f in e.path.parent.iterdir())
    assert "model.onnx" in files and "meta.json" in files and len(files) == 3 and e.meta["external_data"]
    data = [f for f in e.path.parent.iterdir() if f.name not in ("model.onnx", "meta.json")][0]
    assert data.stat().st_size >= 0.9 * MICRO.args.weight_bytes("fp32") > e.path.stat().st_size
    tokens = np.random.default_rng(2).integers(0, MICRO.args.vocab_size, (1, 5))
    ref = full_forward(build_model(MICRO, "fp32"), torch.from_numpy(tokens)).numpy()
    got, _ = _run_with_cache(_session(e.path), MICRO, tokens, 3)
    assert _rel(got, ref) < 1e-5


def test_unsupported_dtype():
    with pytest.raises(ex.ExportError, match="bf16"):
        ex.export_model(MICRO, "bf16")


# --- the I/O convention ---------------------------------------------------------------

def test_check_io_accepts_optimum_style_names():
    ins = ["input_ids", "attention_mask", "position_ids"] + [n for i in range(2) for n in ex.past_names(i)]
    outs = ["logits"] + [n for i in range(2) for n in ex.present_names(i)]
    io = ex.check_io(ins, outs, "hf.onnx")
    assert io.n_layers == 2 and io.has_attention_mask and io.has_position_ids and not io.has_next_tokens
    assert io.past[1] == "past_key_values.0.value" and io.present[-1] == "present.1.value"


def test_check_io_names_what_is_missing():
    ins = ["input_ids", "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key"]
    outs = ["logits", "present.0.key", "present.0.value"]
    with pytest.raises(ex.ExportError) as e:
        ex.check_io(ins, outs, "/models/x.onnx", n_layers=2)
    msg = str(e.value)
    assert "/models/x.onnx" in msg
    assert "past_key_values.1.value" in msg and "present.1.key" in msg and "present.1.value" in msg
    with pytest.raises(ex.ExportError, match="no past_key_values"):
        ex.check_io(["input_ids"], ["logits"], "nocache.onnx")
    with pytest.raises(ex.ExportError, match="unexpected inputs \\[token_type_ids\\]"):
        ex.check_io(["input_ids", "token_type_ids", *ex.past_names(0)], ["logits", *ex.present_names(0)], "x.onnx")
    with pytest.raises(ex.ExportError, match="model spec has 2 layers"):
        ex.check_io(["input_ids", *ex.past_names(0), *ex.past_names(1), *ex.past_names(2)],
                    ["logits", *ex.present_names(0), *ex.present_names(1), *ex.present_names(2)], "x.onnx", n_layers=2)


def test_user_file_with_bad_names_is_refused_clearly(tiny_export, tmp_path):
    m = onnx.load(str(tiny_export.path))
    renamed = {"past_key_values.0.key": "past.0.key", "logits": "lm_logits"}
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name in renamed:
            new = renamed[v.name]
            for node in m.graph.node:
                node.input[:] = [new if x == v.name else x for x in node.input]
                node.output[:] = [new if x == v.name else x for x in node.output]
            v.name = new
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ex.ExportError) as e:
        ex.check_onnx_file(bad, n_layers=4)
    msg = str(e.value)
    assert str(bad) in msg and "past_key_values.0.key" in msg and "logits" in msg and "past.0.key" in msg
    with pytest.raises(ex.ExportError, match="not found"):
        ex.check_onnx_file(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(ex.ExportError, match="junk.onnx"):
        ex.check_onnx_file(tmp_path / "junk.onnx")
