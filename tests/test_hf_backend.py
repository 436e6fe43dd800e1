"""Our reference model against Hugging Face's LlamaForCausalLM (an independent
implementation of the same architecture), and the transformers backend."""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

from backends.hf_backend import HFBackend, HFOptions  # noqa: E402
from backends.torch_backend import TorchBackend, TorchOptions  # noqa: E402
from harness.accuracy import compare, gate_tokens  # noqa: E402
from workloads.models import build_model, reference_logits  # noqa: E402
from workloads.models.weights import save_hf_checkpoint  # noqa: E402
from workloads.zoo import ZOO, ModelArgs, ModelSpec, RopeScaling  # noqa: E402

# Llama 3 scaling with a short original context, so positions 0..199 cross every
# wavelength band of the scaling and a wrong formula would show.
SCALED = ModelArgs("scaled", vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=1, ffn_dim=96,
                   tie_embeddings=False, rope_theta=500000.0,
                   rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64), max_seq_len=512)


@pytest.mark.parametrize("args", [ZOO["tiny"], SCALED], ids=lambda a: a.name)
def test_reference_model_matches_transformers_llama(tmp_path, args):
    spec = ModelSpec(args, seed=3)
    save_hf_checkpoint(build_model(spec, "fp32"), tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, args.vocab_size, (2, 200))
    ref = reference_logits(spec, tokens)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(theirs - ref).max() <= 1e-4 * np.abs(ref).max()


def test_transformers_backend_generates_the_same_tokens_and_passes_the_gate():
    spec = ModelSpec(ZOO["tiny"], seed=0)
    prompts = np.random.default_rng(0).integers(0, spec.args.vocab_size, (2, 16))
    hf, ours = HFBackend(HFOptions()), TorchBackend(TorchOptions(threads=1))
    for b in (hf, ours):
        b.load(spec, "fp32", 2, 40)
        b.prepare(2, 40)
    hs, os_ = hf.prefill(prompts), ours.prefill(prompts)
    hr, orr = hf.decode(hs, 10), ours.decode(os_, 10)
    np.testing.assert_array_equal(hf.first_tokens(hs), ours.first_tokens(os_))
    np.testing.assert_array_equal(hr.tokens, orr.tokens)
    assert len(hr.step_times) == 10
    gate = gate_tokens(spec.args.vocab_size, 2, 24, 1)
    assert compare(hf.logits(gate, 16), reference_logits(spec, gate), "fp32")["passed"]


def test_static_cache_decodes_past_the_prefill_and_matches_the_dynamic_cache():
    # issue 20: cache_implementation: static failed every cell ("index_copy_(): index 32 is
    # out of bounds"): generate() sized its own static cache to the prefill call
    spec = ModelSpec(ZOO["tiny"], seed=0)
    prompts = np.random.default_rng(1).integers(0, spec.args.vocab_size, (2, 32))
    static, dynamic = HFBackend(HFOptions(cache_implementation="static")), HFBackend(HFOptions())
    for b in (static, dynamic):
        b.load(spec, "fp32", 2, 32 + 1 + 12)
    ss, ds = static.prefill(prompts), dynamic.prefill(prompts)
    first, second = static.decode(ss, 6), static.decode(ss, 6)  # continues from its state, twice
    np.testing.assert_array_equal(static.first_tokens(ss), dynamic.first_tokens(ds))
    np.testing.assert_array_equal(np.concatenate([first.tokens, second.tokens], 1), dynamic.decode(ds, 12).tokens)
