"""int8 weight-only on onnxruntime's CPU provider: quantized for real (MatMulNBits), judged
by the gate at the int8 tolerance, recorded as precision int8 through a real run."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from backends.onnx_backend import OnnxBackend, OnnxOptions  # noqa: E402
from harness.results import load_run  # noqa: E402
from workloads import export_onnx as ex  # noqa: E402
from workloads.zoo import ZOO, ModelSpec  # noqa: E402

# the README's tolerances, written out: not read from harness.accuracy.TOLERANCE, the table under test
FP32_TOL, INT8_TOL = 1e-4, 6e-2

TINY = ModelSpec(ZOO["tiny"])


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "onnx-cache"  # shared with test_onnx_backend's fp32 export
    fp32 = OnnxBackend(OnnxOptions(cache_dir=str(cache), intra_op_threads=2))
    fp32.load(TINY, "fp32", max_batch=4, max_seq=64)
    q = OnnxBackend(OnnxOptions(cache_dir=str(cache), intra_op_threads=2, weight_quant="int8"))
    info = q.load(TINY, "fp32", max_batch=4, max_seq=64)
    yield fp32, q, info
    fp32.close()
    q.close()


def test_every_weight_matmul_is_quantized_and_the_precision_is_int8(int8):
    _, q, info = int8
    assert info.details["precision"] == "int8" and info.details["weight_block"] == 32
    model = onnx.load(str(q.model_path))
    ops = [n.op_type for n in model.graph.node]
    a = TINY.args
    # per layer: the q/k/v/o and the three MLP projections are weights (7, maybe fused by the
    # folding pass), plus the output head; attention's two matmuls (scores, values) are not
    assert ops.count("MatMulNBits") >= a.n_layers * 2 + 1
    assert info.details["quantized_matmuls"] == ops.count("MatMulNBits")
    assert info.details["fp32_matmuls_left"] == ops.count("MatMul")
    weights = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul":  # what stays fp32 multiplies activations by activations
            assert node.input[1] not in weights, node.name


def test_int8_files_shrink_by_the_layer_weights_bytes(int8):
    fp32, q, _ = int8
    size = lambda p: sum(f.stat().st_size for f in p.parent.iterdir())  # noqa: E731
    a = TINY.args
    layer_weights = a.n_layers * (a.dim * (a.dim + 2 * a.kv_dim) + a.dim * a.dim + 3 * a.dim * a.ffn_dim)
    # each layer weight goes from 4 bytes to 1 + 4/32; a tied head becomes an extra int8 copy of
    # the embedding table (which stays fp32 for its gather)
    head = a.vocab_size * a.dim * (1 + 4 / 32) if a.tie_embeddings else -a.vocab_size * a.dim * (3 - 4 / 32)
    expected = size(fp32.model_path) - layer_weights * (3 - 4 / 32) + head
    assert size(q.model_path) == pytest.approx(expected, rel=0.05)


def test_int8_logits_error_is_inside_its_tolerance_and_above_fp32s(int8):
    fp32, q, _ = int8
    toks = np.random.default_rng(1).integers(0, TINY.args.vocab_size, (2, 24))
    ref, got = fp32.logits(toks, 12), q.logits(toks, 12)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert FP32_TOL < rel < INT8_TOL, rel  # quantized for real, and within its gate


def test_quantize_of_a_cached_variant_is_a_cache_hit(int8, tmp_path_factory):
    fp32, q, _ = int8
    exp = ex.export_model(TINY, "fp32", cache_dir=str(tmp_path_factory.getbasetemp() / "onnx-cache"))
    again = ex.quantize_export(exp, "int8")
    assert again.cache_hit and again.path == q.model_path
    with pytest.raises(ex.ExportError, match="unknown"):
        ex.quantize_export(exp, "int3")


SUITE = """\
name: int8
warmup: 1
repetitions: 2
backends:
  - type: onnxruntime
    name: ort-int8
    options: {intra_op_threads: 2, weight_quant: int8, cache_dir: CACHE}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1]
    prompt_lens: [16]
    gen_lens: [8]
"""


def test_a_run_records_precision_int8_and_passes_the_gate(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "onnx-cache"
    (tmp_path / "s.yaml").write_text(SUITE.replace("CACHE", str(cache)))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(tmp_path / "s.yaml"), "--output",
                           str(tmp_path / "out"), "--name", "r", "--quiet"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    _, records = load_run(tmp_path / "out" / "r")
    (rec,) = records
    assert rec.status == "ok" and rec.valid, rec.error
    assert rec.precision == "int8"
    assert rec.accuracy["tolerance"] == INT8_TOL and rec.accuracy["rel_err"] < INT8_TOL and rec.accuracy["passed"]


def test_weight_quant_with_a_user_file_is_refused_at_validation(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "s.yaml").write_text(SUITE.replace("cache_dir: CACHE", f"model_path: {tmp_path / 'm.onnx'}"))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(tmp_path / "s.yaml"), "--output",
                           str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "weight_quant" in proc.stderr and "Traceback" not in proc.stderr
