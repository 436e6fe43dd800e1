"""Where a reference model's weights come from: a seed, or a local Hugging Face folder.

Nothing here touches the network. Random weights are drawn in fp32 from a generator on
the target device (drawing 8 B parameters on a CPU would take minutes), then cast, so the
fp32 reference and a bf16 model built from the same seed hold the same values up to
rounding. The same seed gives the same weights on the same kind of device.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from workloads.models.llama import TORCH_DTYPES, Transformer, full_forward
from workloads.zoo import ModelArgs, ModelSpec, RopeScaling


class CheckpointError(ValueError):
    """A local checkpoint folder is missing a file or holds unexpected tensors."""


def build_model(spec: ModelSpec, dtype: str, device: str | torch.device = "cpu") -> Transformer:
    device = torch.device(device)
    with torch.device("meta"):
        model = Transformer(spec.args)
    model = model.to_empty(device=device)
    if spec.args.tie_embeddings:  # to_empty breaks the tie; restore it
        model.output.weight = model.tok_embeddings.weight
    if spec.checkpoint:
        load_hf_checkpoint(model, Path(spec.checkpoint))
    else:
        init_random(model, spec.seed)
    return model.to(TORCH_DTYPES[dtype]).eval().requires_grad_(False)


@torch.no_grad()
def init_random(model: Transformer, seed: int) -> None:
    device = model.output.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=device))
        elif name == "tok_embeddings.weight":
            # rows of norm ~1: the layers' outputs, not the input token, dominate the
            # residual stream, so greedy decoding wanders instead of repeating its input
            p.copy_(torch.randn(p.shape, generator=gen, device=device) / p.shape[1] ** 0.5)
        else:  # Linear [out, in]: unit-variance outputs keep the residual stream healthy
            p.copy_(torch.randn(p.shape, generator=gen, device=device) / p.shape[1] ** 0.5)


# --- Hugging Face Llama layout ------------------------------------------------------

def args_from_hf_config(folder: Path, name: str | None = None) -> ModelArgs:
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (a Hugging Face Llama folder needs config.json)") from None
    rs = cfg.get("rope_scaling") or None
    scaling = None
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        scaling = RopeScaling(rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"],
                              rs["original_max_position_embeddings"])
    try:
        return ModelArgs(
            name=name or folder.name,
            vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            ffn_dim=cfg["intermediate_size"], tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)), rope_scaling=scaling,
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            max_seq_len=int(cfg.get("max_position_embeddings", 4096)))
    except KeyError as e:
        raise CheckpointError(f"{path}: missing key {e.args[0]!r} (expected a Llama config)") from None


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


@torch.no_grad()
def load_hf_checkpoint(model: Transformer, folder: Path) -> None:
    t = _read_safetensors(folder)
    a = model.args

    def take(key: str) -> torch.Tensor:
        try:
            return t.pop(key)
        except KeyError:
            raise CheckpointError(f"{folder}: tensor {key!r} missing") from None

    def put(param: torch.Tensor, value: torch.Tensor, key: str) -> None:
        if tuple(param.shape) != tuple(value.shape):
            raise CheckpointError(f"{folder}: {key} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        param.copy_(value.to(param.dtype))

    put(model.tok_embeddings.weight, take("model.embed_tokens.weight"), "model.embed_tokens.weight")
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        put(layer.attention.wqkv.weight, qkv, p + "self_attn.{q,k,v}_proj.weight")
        put(layer.attention.wo.weight, take(p + "self_attn.o_proj.weight"), p + "self_attn.o_proj.weight")
        w13 = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        put(layer.feed_forward.w13.weight, w13, p + "mlp.{gate,up}_proj.weight")
        put(layer.feed_forward.w2.weight, take(p + "mlp.down_proj.weight"), p + "mlp.down_proj.weight")
        put(layer.attention_norm.weight, take(p + "input_layernorm.weight"), p + "input_layernorm.weight")
        put(layer.ffn_norm.weight, take(p + "post_attention_layernorm.weight"), p + "post_attention_layernorm.weight")
    put(model.norm.weight, take("model.norm.weight"), "model.norm.weight")
    if "lm_head.weight" in t:
        head = t.pop("lm_head.weight")
        if a.tie_embeddings:
            pass  # tied: the embedding already holds it
        else:
            put(model.output.weight, head, "lm_head.weight")
    elif not a.tie_embeddings:
        raise CheckpointError(f"{folder}: tensor 'lm_head.weight' missing (config says untied embeddings)")
    leftover = [k for k in t if not k.endswith("rotary_emb.inv_freq")]
    if leftover:
        raise CheckpointError(f"{folder}: unexpected tensors {leftover[:5]}")


@torch.no_grad()
def save_hf_checkpoint(model: Transformer, folder: Path) -> None:
    """Write a model in the Hugging Face Llama layout (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    a = model.args
    folder.mkdir(parents=True, exist_ok=True)
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.tok_embeddings.weight}
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        q, k, v = layer.attention.wqkv.weight.split([a.dim, a.kv_dim, a.kv_dim])
        t[p + "self_attn.q_proj.weight"], t[p + "self_attn.k_proj.weight"], t[p + "self_attn.v_proj.weight"] = q, k, v
        t[p + "self_attn.o_proj.weight"] = layer.attention.wo.weight
        gate, up = layer.feed_forward.w13.weight.split(a.ffn_dim)
        t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = gate, up
        t[p + "mlp.down_proj.weight"] = layer.feed_forward.w2.weight
        t[p + "input_layernorm.weight"] = layer.attention_norm.weight
        t[p + "post_attention_layernorm.weight"] = layer.ffn_norm.weight
    t["model.norm.weight"] = model.norm.weight
    if not a.tie_embeddings:
        t["lm_head.weight"] = model.output.weight
    save_file({k: v.contiguous().cpu() for k, v in t.items()}, str(folder / "model.safetensors"))
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": a.vocab_size, "hidden_size": a.dim, "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads,
        "intermediate_size": a.ffn_dim, "tie_word_embeddings": a.tie_embeddings,
        "rope_theta": a.rope_theta, "rms_norm_eps": a.norm_eps, "max_position_embeddings": a.max_seq_len,
        "hidden_act": "silu", "head_dim": a.head_dim,
    }
    if a.rope_scaling:
        s = a.rope_scaling
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_position_embeddings}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def reference_logits(spec: ModelSpec, token_ids, device: str = "cpu"):
    """The accuracy gate's reference: the fp32 model, full forward, no cache.
    Returns a float32 numpy array [batch, T, vocab]."""
    import numpy as np

    model = build_model(spec, "fp32", device)
    with torch.inference_mode():
        out = full_forward(model, torch.from_numpy(np.ascontiguousarray(token_ids)).to(device))
    return out.cpu().numpy()
