"""The reference model: cached paths equal the full forward; weights are reproducible."""
import json

import numpy as np
import pytest
import torch

from workloads.models import build_model, decode_step, full_forward, prefill, reference_logits
from workloads.models.llama import rope_frequencies
from workloads.models.weights import args_from_hf_config, save_hf_checkpoint, CheckpointError
from workloads.zoo import ZOO, ModelArgs, ModelSpec, RopeScaling

TINY = ZOO["tiny"]
# A tiny shape with the Llama 3.1 scaling and untied head, so both code paths are covered.
TINY_UNTIED = ModelArgs("tiny-untied", vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=1, ffn_dim=96,
                        tie_embeddings=False, rope_theta=500000.0, rope_scaling=RopeScaling(factor=8.0), max_seq_len=512)


@pytest.mark.parametrize("args", [TINY, TINY_UNTIED], ids=lambda a: a.name)
@pytest.mark.parametrize("batch,prompt,gen", [(1, 1, 4), (1, 9, 7), (3, 16, 5), (2, 33, 12)])
def test_cached_decode_matches_full_forward(args, batch, prompt, gen):
    model = build_model(ModelSpec(args, seed=3), "fp32")
    model.setup_cache(batch, prompt + gen)
    tokens = torch.randint(0, args.vocab_size, (batch, prompt + gen), generator=torch.Generator().manual_seed(batch))
    ref = full_forward(model, tokens)
    with torch.inference_mode():
        got = [prefill(model, tokens[:, :prompt])]
        for t in range(prompt, prompt + gen):
            got.append(decode_step(model, tokens[:, t:t + 1], torch.tensor([t])))
    got = torch.stack(got, dim=1)
    torch.testing.assert_close(got, ref[:, prompt - 1:], rtol=0, atol=1e-4 * ref.abs().max().item())


def test_same_seed_same_weights_other_seed_other_weights():
    a = build_model(ModelSpec(TINY, seed=7), "fp32").state_dict()
    b = build_model(ModelSpec(TINY, seed=7), "fp32").state_dict()
    c = build_model(ModelSpec(TINY, seed=8), "fp32").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attention.wqkv.weight"], c["layers.0.attention.wqkv.weight"])


def test_low_precision_holds_the_same_weights_rounded():
    f32 = build_model(ModelSpec(TINY, seed=1), "fp32")
    b16 = build_model(ModelSpec(TINY, seed=1), "bf16")
    assert b16.output.weight.dtype == torch.bfloat16
    torch.testing.assert_close(b16.output.weight.float(), f32.output.weight, rtol=1e-2, atol=1e-2)


def test_tied_embeddings_share_storage():
    m = build_model(ModelSpec(TINY), "fp32")
    assert m.output.weight.data_ptr() == m.tok_embeddings.weight.data_ptr()
    assert sum(p.numel() for p in m.parameters()) == TINY.param_count()


@pytest.mark.parametrize("args", [TINY, TINY_UNTIED], ids=lambda a: a.name)
def test_hf_checkpoint_round_trip(tmp_path, args):
    model = build_model(ModelSpec(args, seed=5), "fp32")
    save_hf_checkpoint(model, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["num_key_value_heads"] == args.n_kv_heads
    loaded_args = args_from_hf_config(tmp_path / "ckpt", name=args.name)
    assert loaded_args == args
    loaded = build_model(ModelSpec(loaded_args, checkpoint=str(tmp_path / "ckpt")), "fp32")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    tokens = np.arange(12).reshape(2, 6) % args.vocab_size
    ref = reference_logits(ModelSpec(args, seed=5), tokens)
    got = reference_logits(ModelSpec(loaded_args, checkpoint=str(tmp_path / "ckpt")), tokens)
    np.testing.assert_array_equal(ref, got)


def test_checkpoint_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_model(ModelSpec(TINY), "fp32")
    save_hf_checkpoint(model, tmp_path)
    t = load_file(str(tmp_path / "model.safetensors"))
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        build_model(ModelSpec(TINY, checkpoint=str(tmp_path)), "fp32")


def test_llama3_scaling_matches_meta_reference():
    """Meta's apply_scaling, written out per frequency as in the llama-models repo."""
    import math

    args = ZOO["llama-3.1-8b"]
    base = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float64) / args.head_dim))
    s = args.rope_scaling
    expected = []
    for f in base.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < s.original_max_position_embeddings / s.high_freq_factor:
            expected.append(f)
        elif wavelen > s.original_max_position_embeddings / s.low_freq_factor:
            expected.append(f / s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            expected.append((1 - smooth) * f / s.factor + smooth * f)
    torch.testing.assert_close(rope_frequencies(args), torch.tensor(expected, dtype=torch.float64))
    assert not torch.equal(rope_frequencies(args), base)  # scaling really changed something


@pytest.mark.parametrize("name,params", [("smollm2-135m", 134_515_008), ("llama-3.2-1b", 1_235_814_400),
                                         ("llama-3.1-8b", 8_030_261_248), ("llama-3.1-70b", 70_553_706_496)])
def test_zoo_shapes_have_the_published_parameter_counts(name, params):
    assert ZOO[name].param_count() == params
