"""The torch backend (cpu): greedy tokens equal the reference model's, across batch switches."""
import numpy as np
import pytest
import torch

from backends.base import BackendError
from backends.torch_backend import TorchBackend, TorchOptions
from harness.accuracy import compare, gate_tokens
from workloads.models import build_model, full_forward, reference_logits
from workloads.zoo import ZOO, ModelSpec

SPEC = ModelSpec(ZOO["tiny"], seed=11)


def greedy_reference(prompts: np.ndarray, n: int) -> np.ndarray:
    model = build_model(SPEC, "fp32")
    toks = torch.from_numpy(prompts)
    out = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = full_forward(model, toks)[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            toks = torch.cat([toks, nxt], dim=1)
    return torch.cat(out, dim=1).numpy()


@pytest.fixture(scope="module")
def backend():
    b = TorchBackend(TorchOptions(device="cpu", threads=1))
    b.load(SPEC, "fp32", 4, 64)
    yield b
    b.close()


def run(b, prompts, gen):
    b.prepare(prompts.shape[0], prompts.shape[1] + gen)
    state = b.prefill(prompts)
    res = b.decode(state, gen - 1)
    return np.concatenate([b.first_tokens(state)[:, None], res.tokens], axis=1), res


@pytest.mark.parametrize("batch", [1, 4, 2, 1])
def test_greedy_tokens_equal_reference_across_batch_switches(backend, batch):
    prompts = np.random.default_rng(batch).integers(0, SPEC.args.vocab_size, (batch, 10))
    tokens, res = run(backend, prompts, 8)
    np.testing.assert_array_equal(tokens, greedy_reference(prompts, 8))
    assert len(res.step_times) == 7 and all(b > a for a, b in zip(res.step_times, res.step_times[1:]))


def test_decode_past_the_cache_is_refused(backend):
    prompts = np.zeros((1, 10), dtype=np.int64)
    backend.prepare(1, 12)
    state = backend.prefill(prompts)
    with pytest.raises(BackendError, match="exceeds the cache"):
        backend.decode(state, 5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gate_passes_for_each_dtype(dtype):
    b = TorchBackend(TorchOptions(device="cpu"))
    b.load(SPEC, dtype, 2, 32)
    gate = gate_tokens(SPEC.args.vocab_size, 2, 24, 1)
    result = compare(b.logits(gate, 16), reference_logits(SPEC, gate), dtype)
    assert result["passed"], result
    if dtype == "fp32":
        assert result["rel_err"] < 1e-5


def test_gate_catches_a_wrong_model():
    b = TorchBackend(TorchOptions(device="cpu"))
    b.load(ModelSpec(ZOO["tiny"], seed=12), "fp32", 2, 32)  # other weights: "fast because wrong"
    gate = gate_tokens(SPEC.args.vocab_size, 2, 24, 1)
    assert not compare(b.logits(gate, 16), reference_logits(SPEC, gate), "fp32")["passed"]


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="sees no CUDA device"):
        TorchBackend(TorchOptions(device="cuda"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_int8_weights_pass_the_int8_gate_and_say_so(dtype):
    """weight_quant: int8 really quantizes (error far above fp32's ~1e-6) yet stays within
    the int8 tolerance of the fp32 reference, and the load details carry the precision."""
    b = TorchBackend(TorchOptions(device="cpu", threads=1, weight_quant="int8"))
    info = b.load(SPEC, dtype, 2, 32)
    assert info.details["precision"] == "int8" and info.details["weight_scales"] == "per output channel"
    assert info.details["quantized_linears"] == 4 * SPEC.args.n_layers + 1
    gate = gate_tokens(SPEC.args.vocab_size, 2, 24, 1)
    result = compare(b.logits(gate, 16), reference_logits(SPEC, gate), "int8")
    assert result["passed"], result
    assert result["rel_err"] > 1e-3  # not the fp32 path in disguise
    assert b.describe()["weight_quant"] == "int8"


def test_int8_decode_advances_its_state_like_one_long_decode():
    b = TorchBackend(TorchOptions(device="cpu", threads=1, weight_quant="int8"))
    b.load(SPEC, "fp32", 2, 40)
    b.prepare(2, 40)
    prompts = np.random.default_rng(5).integers(0, SPEC.args.vocab_size, (2, 12))
    whole = b.decode(b.prefill(prompts), 24).tokens
    split = b.prefill(prompts)
    parts = np.concatenate([b.decode(split, 10).tokens, b.decode(split, 14).tokens], axis=1)
    np.testing.assert_array_equal(parts, whole)


def test_the_fp8_tolerance_still_fails_other_weights():
    """fp8's tolerance is the loosest but one; a model with other weights must still fail it."""
    b = TorchBackend(TorchOptions(device="cpu", threads=1))
    b.load(ModelSpec(ZOO["tiny"], seed=12), "fp32", 2, 32)
    gate = gate_tokens(SPEC.args.vocab_size, 2, 24, 1)
    result = compare(b.logits(gate, 16), reference_logits(SPEC, gate), "fp8")
    assert result["tolerance"] == 0.25 and not result["passed"] and result["rel_err"] > 2 * 0.25, result
