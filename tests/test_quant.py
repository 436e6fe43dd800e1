"""Weight-only quantization helpers (backends/quant.py), on CPU, against values computed
here independently with numpy; the CUDA-only decisions (FP8 capability guard, graph
capture) with torch.cuda's answers monkeypatched, since no GPU is needed to check them."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from backends import quant
from backends.base import BackendError
from backends.torch_backend import QUANTIZED_LINEARS, TorchBackend, TorchOptions
from workloads.models import build_model
from workloads.zoo import ZOO, ModelSpec


def weights(rows=16, cols=64, seed=0):
    w = np.random.default_rng(seed).normal(size=(rows, cols)).astype(np.float32)
    w[3] *= 50.0  # rows of very different ranges: one scale for all would crush the small ones
    w[5] = 0.0  # a row of zeros
    return w


def test_scales_are_absmax_over_qmax_per_output_row_and_one_for_a_zero_row():
    w = weights()
    for scheme, qmax in (("int8", 127.0), ("fp8", 448.0)):
        got = quant.quantize(torch.from_numpy(w), scheme).scale.numpy()
        expected = np.abs(w).max(axis=1) / qmax
        expected[5] = 1.0
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert got.shape == (w.shape[0],)


def test_int8_codes_are_rounded_and_round_trip_within_half_a_step():
    w = weights()
    q = quant.quantize(torch.from_numpy(w), "int8")
    assert q.data.dtype == torch.int8 and q.data.is_contiguous()
    scale = np.abs(w).max(axis=1) / 127
    scale[5] = 1.0
    codes = np.clip(np.rint(w / scale[:, None]), -127, 127)
    np.testing.assert_array_equal(q.data.numpy(), codes)
    assert q.data.numpy().min() >= -127  # symmetric: -128 never used
    err = np.abs(quant.dequantize(q).numpy() - w)
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()
    # each row's largest weight is exact: it defines the scale
    big = np.abs(w).argmax(axis=1)
    rows = np.arange(w.shape[0])
    np.testing.assert_allclose(quant.dequantize(q).numpy()[rows, big], w[rows, big], rtol=1e-6)


def test_e4m3_round_trip_within_its_rounding_bound():
    w = weights(seed=1)
    q = quant.quantize(torch.from_numpy(w), "fp8")
    assert q.data.dtype == torch.float8_e4m3fn
    scale = np.abs(w).max(axis=1) / 448
    scale[5] = 1.0
    x = np.abs(w / scale[:, None])
    # e4m3: 3 mantissa bits, so rounding is within 2^-4 of a normal value (>= 2^-6); below
    # that, subnormals are spaced 2^-9 apart, half a spacing is 2^-10
    bound = np.maximum(x * 2.0**-4, 2.0**-10) * scale[:, None]
    err = np.abs(quant.dequantize(q).numpy() - w)
    assert (err <= bound * (1 + 1e-6)).all()
    assert err[3].max() > 0  # it really rounded (fp8 is not fp32 in disguise)


def test_e4m3_cast_saturates_at_448_instead_of_nan():
    x = torch.tensor([1000.0, -1e6, 448.0, 449.0, 0.0, 1e-12])
    got = quant.to_e4m3(x).float().numpy()
    np.testing.assert_array_equal(got[:5], [448.0, -448.0, 448.0, 448.0, 0.0])
    assert np.isfinite(got).all()


def test_zero_rows_dequantize_to_exact_zeros():
    w = np.zeros((4, 32), dtype=np.float32)
    for scheme in ("int8", "fp8"):
        deq = quant.dequantize(quant.quantize(torch.from_numpy(w), scheme)).numpy()
        assert np.isfinite(deq).all() and (deq == 0).all()


def test_quant_linear_matches_numpy_matmul_of_the_dequantized_weight():
    w = weights(rows=24, cols=48, seed=2)
    x = np.random.default_rng(3).normal(size=(5, 48)).astype(np.float32)
    for scheme in ("int8", "fp8"):
        q = quant.quantize(torch.from_numpy(w), scheme)
        layer = quant.QuantLinear(q, torch.float32)
        deq = q.data.float().numpy().astype(np.float64) * q.scale.numpy()[:, None]
        got = layer(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, x.astype(np.float64) @ deq.T, rtol=1e-4, atol=1e-4)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="int4"):
        quant.quantize(torch.zeros(2, 2), "int4")


def test_quantize_linears_swaps_every_matmul_and_keeps_the_tied_embedding_float():
    spec = ModelSpec(ZOO["tiny"], seed=0)
    model = build_model(spec, "fp32")
    table = model.tok_embeddings.weight.detach().clone()
    done = quant.quantize_linears(model, "int8", QUANTIZED_LINEARS)
    assert len(done) == 4 * spec.args.n_layers + 1 and "output" in done
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model.tok_embeddings.weight.dtype == torch.float32
    torch.testing.assert_close(model.tok_embeddings.weight, table, rtol=0, atol=0)
    # the head now reads int8 codes of that table
    assert model.output.weight_q.dtype == torch.int8 and model.output.weight_q.shape == table.shape
    model.setup_cache(1, 8)  # caches take the embedding's dtype, not the int8 head's
    assert model.get_caches()[0].k.dtype == torch.float32


@pytest.mark.parametrize("cap, ok", [((8, 9), True), ((9, 0), True), ((10, 0), True), ((8, 6), False),
                                     ((8, 0), False), ((7, 5), False)])
def test_fp8_needs_capability_8_9(cap, ok):
    why = quant.capability_problem("fp8", "cuda", cap)
    assert (why is None) is ok
    if not ok:
        assert "8.9" in why and f"{cap[0]}.{cap[1]}" in why


def test_device_type_rules():
    assert quant.capability_problem("int8", "cpu", None) is None
    assert quant.capability_problem("int8", "cuda", (7, 0)) is None
    assert "cuda" in quant.capability_problem("fp8", "cpu", None)
    assert "none" in quant.capability_problem("fp8", "cuda", None)  # no GPU visible


def test_capability_is_asked_of_cuda_only_when_it_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quant.device_capability(torch.device("cuda")) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert quant.device_capability(torch.device("cuda:0")) == (9, 0)
    assert quant.device_capability(torch.device("cpu")) is None


def test_backend_refuses_fp8_on_an_older_gpu_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(BackendError, match=r"weight_quant: fp8 .*8\.9.*8\.0"):
        TorchBackend(TorchOptions(device="cuda", weight_quant="fp8"))


def test_graph_capture_only_on_a_cuda_device_that_exists(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not quant.use_cuda_graph(cuda, True)
    assert not quant.use_cuda_graph(cpu, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert quant.use_cuda_graph(cuda, True)
    assert not quant.use_cuda_graph(cuda, False)
    assert not quant.use_cuda_graph(cpu, True)


def test_cpu_prepare_captures_no_graph_with_weight_quant():
    b = TorchBackend(TorchOptions(device="cpu", threads=1, weight_quant="int8"))
    b.load(ModelSpec(ZOO["tiny"], seed=0), "fp32", 1, 16)
    b.prepare(1, 16)
    assert b._graphs == {}
    b.close()


SUITE = """\
name: q
warmup: 1
repetitions: 2
backends:
  - type: torch
    name: t
    options: {device: DEVICE, weight_quant: SCHEME}
workloads:
  - model: tiny
    dtypes: [fp32]
    batch_sizes: [1]
    prompt_lens: [8]
    gen_lens: [4]
"""


@pytest.mark.parametrize("device, scheme, words", [("cpu", "fp8", ["weight_quant", "cuda"]),
                                                    ("cpu", "int4", ["weight_quant", "int8", "fp8"])])
def test_suite_validation_names_the_key_and_line(tmp_path, device, scheme, words):
    (tmp_path / "s.yaml").write_text(SUITE.replace("DEVICE", device).replace("SCHEME", scheme))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(tmp_path / "s.yaml"), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert f"{tmp_path / 's.yaml'}:7" in proc.stderr, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
