"""The reference Llama written straight into an ONNX graph of ONNX Runtime's fused
operators, for the CPU (and CUDA) execution providers.

The torch export (export_onnx.py) is portable: standard ONNX operators that every
provider runs. It is also about 37 nodes a layer, 1,108 for smollm2-135m after ORT's own
fusions, and at batch 1 on a 2-core CPU the per-node dispatch of 1,108 nodes costs about
as much as the matrix arithmetic (issue 18: ORT int8 decoded at 0.87x llama.cpp q8_0).
This graph is what onnxruntime-genai's model builder makes for Llama, 10 nodes a layer:

    SkipSimplifiedLayerNormalization   residual add + RMSNorm
    MatMul                             fused q/k/v projection
    GroupQueryAttention                rotary, KV cache update, causal GQA softmax
    MatMul                             output projection
    SkipSimplifiedLayerNormalization
    MatMul                             fused gate/up projection
    Split, QuickGelu(alpha=1), Mul     SwiGLU (QuickGelu with alpha 1 is x * sigmoid(x))
    MatMul                             down projection

Same I/O convention as the torch export (input_ids, position_ids, past_key_values.{i},
logits, present.{i}, next_tokens) and the same weights, so the backend runs either file
and the accuracy gate compares either against torch. Weight-only quantization then turns
its MatMuls into MatMulNBits exactly as for the torch export.

The com.microsoft operators exist in the CPU provider (fp32, fp16: tested) and the CUDA
provider (fp16; not yet run on a GPU); others (OpenVINO, QNN, DirectML) would fall back to
the CPU for them, which is why this graph is an option (`graph: fused` on the onnxruntime
backend) and not the default.

Attention semantics: GroupQueryAttention masks causally over the cache (query t of the
new tokens sees cache positions 0..past+t), which is what the torch export's position-
based mask gives for the contiguous positions the harness always feeds; its lengths
(seqlens_k, total_sequence_length) are taken from position_ids, and position_ids also
drive its rotary. The backend binds each past and its present to one preallocated
buffer, which GroupQueryAttention then writes in place (no per-step copy of the cache);
bound to a zero-length past, the same graph concatenates like the portable one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FUSED_VERSION = 1
MS = "com.microsoft"


def _np(t) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def build_fused(model: Any, dtype: str, path: Path, external: bool = False) -> dict[str, Any]:
    """Write `model` (workloads.models.llama.Transformer, weights loaded) as a fused ONNX
    graph to `path` (always with next_tokens); returns the graph's input and output names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from workloads.export_onnx import (INPUT_IDS, LOGITS, NEXT_TOKENS, POSITION_IDS, io_names)
    from workloads.models.llama import rotary_tables

    a = model.args
    if a.n_heads % a.n_kv_heads:
        raise ValueError(f"{a.name}: {a.n_heads} heads do not group over {a.n_kv_heads} KV heads")
    np_dt = {"fp32": np.float32, "fp16": np.float16}[dtype]
    elem = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}[dtype]
    inits: list = []
    nodes: list = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, ins: list[str], outs: list[str], domain: str = "", **attrs) -> list[str]:
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outs

    def weight_t(linear) -> np.ndarray:  # nn.Linear [out, in] -> MatMul's B [in, out]
        return _np(linear.weight).T.astype(np_dt)

    def skip_norm(x: str, residual: str, name: str, norm) -> tuple[str, str]:
        """(RMSNorm(x + residual), x + residual)"""
        normed, _, _, summed = node("SkipSimplifiedLayerNormalization",
                                    [x, residual, init(name, _np(norm.weight).astype(np_dt))],
                                    [f"{name}.out", "", "", f"{name}.sum"], domain=MS, epsilon=float(norm.eps))
        return normed, summed

    # --- shared inputs of every layer's attention ---
    emb = init("embed.weight", _np(model.tok_embeddings.weight).astype(np_dt))
    x = node("Gather", [emb, INPUT_IDS], ["embedded"], axis=0)[0]
    # GroupQueryAttention's lengths, from the positions (contiguous, as the harness feeds
    # them): seqlens_k[b] = the last new token's position (the row's length - 1), and
    # total_sequence_length = the longest row's length. Taken from position_ids, not the
    # cache's shape, so the same graph runs a concatenating cache or a preallocated one.
    init("last_start", np.array([-1], dtype=np.int64))
    init("last_end", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    init("seq_axis", np.array([1], dtype=np.int64))
    node("Slice", [POSITION_IDS, "last_start", "last_end", "seq_axis"], ["last_pos"])  # [B, 1]
    init("flat", np.array([-1], dtype=np.int64))
    node("Reshape", ["last_pos", "flat"], ["last_pos_1d"])
    node("Cast", ["last_pos_1d"], ["seqlens_k"], to=TensorProto.INT32)
    node("ReduceMax", ["seqlens_k"], ["max_last"], keepdims=0)
    init("one_i32", np.array(1, dtype=np.int32))
    node("Add", ["max_last", "one_i32"], ["total_sequence_length"])
    cos, sin = rotary_tables(a, a.max_seq_len)
    half = a.head_dim // 2
    init("cos_cache", cos[:, :half].numpy().astype(np_dt))
    init("sin_cache", sin[:, :half].numpy().astype(np_dt))

    residual = None
    h = x
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}"
        # attention
        if residual is None:  # the first layer: nothing to add yet
            norm = layer.attention_norm
            normed = node("SimplifiedLayerNormalization", [h, init(f"{p}.attention_norm", _np(norm.weight).astype(np_dt))],
                          [f"{p}.attention_norm.out"], axis=-1, epsilon=float(norm.eps), stash_type=1)[0]
            residual = h
        else:
            normed, residual = skip_norm(h, residual, f"{p}.attention_norm", layer.attention_norm)
        qkv = node("MatMul", [normed, init(f"{p}.wqkv", weight_t(layer.attention.wqkv))], [f"{p}.qkv"])[0]
        attn = node("GroupQueryAttention",
                    [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
                     "total_sequence_length", "cos_cache", "sin_cache", POSITION_IDS],
                    [f"{p}.attn", f"present.{i}.key", f"present.{i}.value"], domain=MS,
                    num_heads=a.n_heads, kv_num_heads=a.n_kv_heads, do_rotary=1, rotary_interleaved=0,
                    scale=float(1.0 / a.head_dim ** 0.5))[0]
        o = node("MatMul", [attn, init(f"{p}.wo", weight_t(layer.attention.wo))], [f"{p}.attn_out"])[0]
        # feed-forward
        normed, residual = skip_norm(o, residual, f"{p}.ffn_norm", layer.ffn_norm)
        gu = node("MatMul", [normed, init(f"{p}.w13", weight_t(layer.feed_forward.w13))], [f"{p}.gate_up"])[0]
        gate, up = node("Split", [gu], [f"{p}.gate", f"{p}.up"], axis=-1, num_outputs=2)
        act = node("QuickGelu", [gate], [f"{p}.silu"], domain=MS, alpha=1.0)[0]
        prod = node("Mul", [act, up], [f"{p}.swiglu"])[0]
        h = node("MatMul", [prod, init(f"{p}.w2", weight_t(layer.feed_forward.w2))], [f"{p}.ffn_out"])[0]

    final, _ = skip_norm(h, residual, "norm", model.norm)
    # the head: its own transposed copy even when tied, so quantization sees a constant B
    head = init("output.weight_t", _np(model.output.weight).T.astype(np_dt))
    logits_raw = node("MatMul", [final, head], ["logits_raw"])[0]
    if dtype == "fp32":
        node("Identity", [logits_raw], [LOGITS])
    else:
        node("Cast", [logits_raw], [LOGITS], to=TensorProto.FLOAT)
    node("Slice", [LOGITS, "last_start", "last_end", "seq_axis"], ["last_logits"])  # [B, 1, V]
    node("ArgMax", ["last_logits"], [NEXT_TOKENS], axis=-1, keepdims=0)  # [B, 1]

    in_names, out_names = io_names(a.n_layers, next_tokens=True)
    kv = lambda n: helper.make_tensor_value_info(n, elem, ["batch", a.n_kv_heads, "past_seq", a.head_dim])
    kv_out = lambda n: helper.make_tensor_value_info(n, elem, ["batch", a.n_kv_heads, "total_seq", a.head_dim])
    inputs = [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT64, ["batch", "seq"])]
    inputs += [kv(n) for n in in_names[2:]]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "seq", a.vocab_size])]
    outputs += [kv_out(n) for n in out_names[1:1 + 2 * a.n_layers]]
    outputs.append(helper.make_tensor_value_info(NEXT_TOKENS, TensorProto.INT64, ["batch", 1]))
    graph = helper.make_graph(nodes, f"{a.name}-fused", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)],
                          producer_name="accel-harness", producer_version=str(FUSED_VERSION))
    m.ir_version = 9
    if external:
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(m, str(path))
    return {"inputs": in_names, "outputs": out_names, "graph": "fused", "fused_version": FUSED_VERSION}
