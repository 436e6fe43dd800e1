"""Write the reference model to GGUF, the file format llama.cpp runs.

The tensors are those of `workloads.models` (seeded random weights or a local Hugging
Face checkpoint, built in fp32 on the CPU), renamed and laid out the way llama.cpp's own
converter (convert_hf_to_gguf.py, class LlamaModel) writes a Hugging Face Llama:

    token_embd.weight                 embedding table (also the output head when tied:
                                      no output.weight is written then)
    blk.{i}.attn_norm / ffn_norm      RMSNorm weights (always f32)
    blk.{i}.attn_q / attn_k           query and key projections, rows permuted from the
                                      Hugging Face "rotate half" rotary layout to
                                      llama.cpp's interleaved pairs (LlamaModel.permute:
                                      n_head for q, n_head_kv for k)
    blk.{i}.attn_v / attn_output
    blk.{i}.ffn_gate / ffn_up / ffn_down
    output_norm.weight, output.weight (untied heads only)
    rope_freqs.weight                 Llama 3 rope scaling: per-dimension divisor of the
                                      rotary frequency, computed as the converter does

Precisions: f32, f16 (matrices in f16, norms f32), q8_0 (every matrix, the embedding
included, in Q8_0 as `convert_hf_to_gguf.py --outtype q8_0` does) and q4_0 (matrices in
Q4_0; the embedding/output table in Q8_0 -- llama-quantize would use Q6_K there, which
the gguf package cannot write -- so the head stays accurate).

llama.cpp refuses a model without a vocabulary, so a placeholder one of vocab_size
pieces is written (SentencePiece-style "llama" model: <unk>, <s>, </s>, the 256 byte
tokens, then <t{id}>). The harness feeds token ids, never text.

Files are cached like ONNX exports: $ACCEL_HARNESS_CACHE/gguf (default
~/.cache/accel-harness/gguf), named from ModelSpec.key(precision) and EXPORT_VERSION,
written to a temporary name in the same folder and renamed into place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import json
import math
import os
from pathlib import Path
import tempfile
import time
from typing import Any

import numpy as np

from workloads.zoo import ModelArgs, ModelSpec
from workloads.cache import cache_root as _cache_root, checkpoint_stamp

#: bump when the written file changes (names, layouts, metadata): old cache entries are
#: then ignored, never reused.
EXPORT_VERSION = 1
PRECISIONS = ("f32", "f16", "q8_0", "q4_0")
#: harness dtype -> the GGUF precision that runs it unquantized
DTYPE_TO_PRECISION = {"fp32": "f32", "fp16": "f16"}
#: GGUF precision -> the accuracy gate's tolerance key (harness.accuracy.TOLERANCE)
PRECISION_TO_TOLERANCE_KEY = {"f32": "fp32", "f16": "fp16", "q8_0": "q8_0", "q4_0": "q4_0"}
#: quantized types store blocks of this many values along a row
QK = 32


class GGUFExportError(ValueError):
    """The gguf package is missing, or the model cannot be written at that precision."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFExportError("GGUF export needs the `gguf` package: pip install 'accel-harness[llamacpp]'") from None
    return gguf


# --- layout helpers (pure numpy, testable without gguf) -------------------------------

def permute_rotary(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Rows of a q or k projection from the Hugging Face rotate-half layout to
    llama.cpp's (GPT-J style) interleaved pairs: convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def llama3_rope_factors(args: ModelArgs) -> np.ndarray | None:
    """Per-frequency divisors llama.cpp applies with rope_freqs.weight (theta_i / f_i),
    for Llama 3 rope scaling; None without scaling. Same formula as the converter's
    LlamaModel.generate_extra_tensors, evaluated in float64 like the torch reference's
    frequencies (workloads.models.llama._llama3_scale), stored as float32."""
    s = args.rope_scaling
    if s is None:
        return None
    dim = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor)
            out.append(1.0 / ((1 - smooth) / s.factor + smooth))
    return np.asarray(out, dtype=np.float32)


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The reference Transformer's weights under llama.cpp names, float32 numpy,
    [out, in] row-major (the writer reverses the shape into ggml's ne order)."""
    import torch

    a: ModelArgs = model.args

    def np32(t: "torch.Tensor") -> np.ndarray:
        return t.detach().to(torch.float32).cpu().contiguous().numpy()

    t: dict[str, np.ndarray] = {"token_embd.weight": np32(model.tok_embeddings.weight)}
    for i, layer in enumerate(model.layers):
        p = f"blk.{i}."
        q, k, v = layer.attention.wqkv.weight.split([a.dim, a.kv_dim, a.kv_dim])
        t[p + "attn_norm.weight"] = np32(layer.attention_norm.weight)
        t[p + "attn_q.weight"] = np.ascontiguousarray(permute_rotary(np32(q), a.n_heads, a.n_heads))
        t[p + "attn_k.weight"] = np.ascontiguousarray(permute_rotary(np32(k), a.n_heads, a.n_kv_heads))
        t[p + "attn_v.weight"] = np32(v)
        t[p + "attn_output.weight"] = np32(layer.attention.wo.weight)
        gate, up = layer.feed_forward.w13.weight.split(a.ffn_dim)
        t[p + "ffn_norm.weight"] = np32(layer.ffn_norm.weight)
        t[p + "ffn_gate.weight"] = np32(gate)
        t[p + "ffn_up.weight"] = np32(up)
        t[p + "ffn_down.weight"] = np32(layer.feed_forward.w2.weight)
    t["output_norm.weight"] = np32(model.norm.weight)
    if not a.tie_embeddings:
        t["output.weight"] = np32(model.output.weight)
    factors = llama3_rope_factors(a)
    if factors is not None:
        t["rope_freqs.weight"] = factors
    return t


def tensor_type(name: str, shape: tuple[int, ...], precision: str) -> str:
    """The GGML type one tensor is stored in: 'F32', 'F16', 'Q8_0' or 'Q4_0'."""
    if len(shape) < 2 or name == "rope_freqs.weight":
        return "F32"  # norms and rope factors stay f32, as the converter keeps them
    if precision == "f32":
        return "F32"
    if precision == "f16":
        return "F16"
    if shape[-1] % QK:
        raise GGUFExportError(f"{name}: rows of {shape[-1]} values cannot be split into blocks of {QK} "
                              f"for {precision}")
    if precision == "q8_0":
        return "Q8_0"
    if precision == "q4_0":
        return "Q8_0" if name in ("token_embd.weight", "output.weight") else "Q4_0"
    raise GGUFExportError(f"unknown GGUF precision {precision!r}; known: {', '.join(PRECISIONS)}")


# --- vocabulary -----------------------------------------------------------------------

# llama.cpp token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def placeholder_vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """vocab_size unique pieces in SentencePiece shape: <unk>, <s>, </s>, <0x00>..<0xFF>
    (when there is room), then <t{id}>. Scores decrease with the id."""
    tokens, types = ["<unk>", "<s>", "</s>"], [_UNKNOWN, _CONTROL, _CONTROL]
    if vocab_size >= 3 + 256:
        tokens += [f"<0x{b:02X}>" for b in range(256)]
        types += [_BYTE] * 256
    tokens, types = tokens[:vocab_size], types[:vocab_size]
    tokens += [f"<t{i}>" for i in range(len(tokens), vocab_size)]
    types += [_NORMAL] * (vocab_size - len(types))
    scores = [-float(i) for i in range(vocab_size)]
    return tokens, scores, types


# --- writing --------------------------------------------------------------------------

FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}  # gguf.LlamaFileType values


def write_gguf(model, path: str | os.PathLike, precision: str, name: str | None = None) -> dict[str, Any]:
    """Write `model` (a reference Transformer) to `path` at `precision`; returns a summary
    (tensor types, byte counts) for the cache's meta file."""
    return write_tensors(model.args, gguf_tensors(model), path, precision, name)


def random_tensors(args: ModelArgs, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 tensors under llama.cpp names for `args`, numpy only (no torch):
    for throwaway files such as a probe of what the installed llama.cpp can run."""
    rng = np.random.default_rng(seed)

    def mat(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / inp ** 0.5).astype(np.float32)

    t = {"token_embd.weight": rng.standard_normal((args.vocab_size, args.dim)).astype(np.float32)}
    for i in range(args.n_layers):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(args.dim, np.float32)
        t[p + "attn_q.weight"] = mat(args.dim, args.dim)
        t[p + "attn_k.weight"] = mat(args.kv_dim, args.dim)
        t[p + "attn_v.weight"] = mat(args.kv_dim, args.dim)
        t[p + "attn_output.weight"] = mat(args.dim, args.dim)
        t[p + "ffn_norm.weight"] = np.ones(args.dim, np.float32)
        t[p + "ffn_gate.weight"] = mat(args.ffn_dim, args.dim)
        t[p + "ffn_up.weight"] = mat(args.ffn_dim, args.dim)
        t[p + "ffn_down.weight"] = mat(args.dim, args.ffn_dim)
    t["output_norm.weight"] = np.ones(args.dim, np.float32)
    if not args.tie_embeddings:
        t["output.weight"] = mat(args.vocab_size, args.dim)
    return t


def write_tensors(a: ModelArgs, tensors: dict[str, np.ndarray], path: str | os.PathLike, precision: str,
                  name: str | None = None) -> dict[str, Any]:
    """Write float32 tensors already under llama.cpp names (see gguf_tensors) with the
    metadata of `a` to a GGUF file at `precision`."""
    gguf = _gguf()
    from gguf import GGMLQuantizationType as Q

    if precision not in PRECISIONS:
        raise GGUFExportError(f"unknown GGUF precision {precision!r}; known: {', '.join(PRECISIONS)}")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name or a.name)
    w.add_context_length(a.max_seq_len)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.n_layers)
    w.add_feed_forward_length(a.ffn_dim)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_rope_dimension_count(a.head_dim)
    w.add_rope_freq_base(float(a.rope_theta))
    w.add_layer_norm_rms_eps(float(a.norm_eps))
    w.add_vocab_size(a.vocab_size)
    w.add_file_type(FILE_TYPES[precision])
    if hasattr(w, "add_key_length"):  # head_dim, explicit (converter writes it when config has it)
        w.add_key_length(a.head_dim)
        w.add_value_length(a.head_dim)

    tokens, scores, types = placeholder_vocab(a.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    summary: dict[str, Any] = {"tensors": {}, "bytes": 0}
    for tname, arr in tensors.items():
        ttype = tensor_type(tname, arr.shape, precision)
        if ttype == "F32":
            data, raw = arr.astype(np.float32, copy=False), None
        elif ttype == "F16":
            data, raw = arr.astype(np.float16), None
        else:
            qt = getattr(Q, ttype)
            data, raw = gguf.quants.quantize(arr, qt), qt
        if raw is None:
            w.add_tensor(tname, data)
        else:
            w.add_tensor(tname, data, raw_dtype=raw)
        summary["tensors"][ttype] = summary["tensors"].get(ttype, 0) + 1
        summary["bytes"] += int(data.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return summary


# --- the on-disk cache ------------------------------------------------------------------

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where GGUF files live (workloads.cache)."""
    return _cache_root("gguf", cache_dir)


def cache_name(spec: ModelSpec, precision: str) -> str:
    h = hashlib.sha256(f"gguf-e{EXPORT_VERSION}|{checkpoint_stamp(spec)}".encode()).hexdigest()[:8]
    return f"{spec.key(precision)}-g{EXPORT_VERSION}-{h}.gguf"


def gguf_path(spec: ModelSpec, precision: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file a GGUF export of (spec, precision) is (or would be) cached at."""
    return cache_root(cache_dir) / cache_name(spec, precision)


@dataclass
class GGUFModel:
    path: Path
    precision: str
    cache_hit: bool
    export_s: float  # 0.0 on a cache hit
    meta: dict[str, Any] = field(default_factory=dict)


def export_gguf(spec: ModelSpec, precision: str, cache_dir: str | os.PathLike | None = None,
                force: bool = False) -> GGUFModel:
    """The cached GGUF file of (spec, precision); written first if not on disk yet."""
    if precision not in PRECISIONS:
        raise GGUFExportError(f"unknown GGUF precision {precision!r}; known: {', '.join(PRECISIONS)}")
    final = gguf_path(spec, precision, cache_dir)
    meta_file = final.with_suffix(".json")
    if final.exists() and not force:
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = {}
        return GGUFModel(final, precision, True, 0.0, meta)

    _gguf()  # fail before building the model if the package is missing
    from workloads.models.weights import build_model

    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        t0 = time.perf_counter()
        model = build_model(spec, "fp32", "cpu")
        summary = write_gguf(model, tmp, precision)
        del model
        gguf = _gguf()
        meta = {"export_version": EXPORT_VERSION, "precision": precision, "model": spec.args.name,
                "weights": "checkpoint" if spec.checkpoint else f"random(seed={spec.seed})",
                "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"), **summary}
        meta["export_s"] = time.perf_counter() - t0
        meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, final)  # atomic: the file appears complete or not at all
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GGUFModel(final, precision, False, meta["export_s"], meta)


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None
