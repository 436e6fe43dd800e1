"""Export the reference model to ONNX, with the KV cache as explicit inputs and outputs.

The graph follows the convention of Hugging Face Optimum's decoder exports, so a file
made elsewhere with the same names can be run too:

    inputs   input_ids             int64  [batch, seq]
             position_ids          int64  [batch, seq]      (absolute positions)
             past_key_values.{i}.key / .value  [batch, n_kv_heads, past_seq, head_dim]
    outputs  logits                float32 [batch, seq, vocab]
             present.{i}.key / .value  [batch, n_kv_heads, past_seq + seq, head_dim]
             next_tokens           int64  [batch, 1]         (argmax of the last position)

`next_tokens` is ours (optional in a user file): with it a decode loop feeds each step's
token to the next one without the logits ever leaving the device. `attention_mask`
[batch, past_seq + seq] is accepted in a user file (Optimum exports have it) and is
fed with ones; ours masks causally from position_ids and the cache length.

The reference Transformer writes a static cache in place (index_copy_), which ONNX
cannot express with dynamic shapes, so export goes through `ConcatCacheLlama`: the
same submodules and weights, with a concatenating cache (present = past ++ new).
The dynamo exporter (torch.export) is used: the TorchScript one refuses aten::rms_norm.

Exports are cached on disk (default ~/.cache/accel-harness/onnx, or $ACCEL_HARNESS_CACHE/onnx)
under a folder named from ModelSpec.key(dtype) and the exporter version, written to a
temporary folder first and renamed, so a killed export never leaves half a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import json
import os
from pathlib import Path
import re
import shutil
import tempfile
import time
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from workloads.zoo import ModelSpec
from workloads.cache import cache_root as _cache_root, checkpoint_stamp

#: bump when the exported graph changes (wrapper code, I/O names, opset...): old cache
#: entries are then ignored, never reused.
EXPORT_VERSION = 3
OPSET = 18  # wide provider support (OpenVINO, QNN, DirectML...) matters more than new ops
DTYPES = ("fp32", "fp16")
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
#: above this many weight bytes the weights go to an external data file (protobuf's 2 GB limit)
EXTERNAL_DATA_BYTES = 1_800_000_000

INPUT_IDS, POSITION_IDS, ATTENTION_MASK = "input_ids", "position_ids", "attention_mask"
LOGITS, NEXT_TOKENS = "logits", "next_tokens"


def past_names(i: int) -> tuple[str, str]:
    return f"past_key_values.{i}.key", f"past_key_values.{i}.value"


def present_names(i: int) -> tuple[str, str]:
    return f"present.{i}.key", f"present.{i}.value"


class ExportError(ValueError):
    """An export failed, or an ONNX file does not follow the I/O convention."""


# --- the exportable wrapper -----------------------------------------------------------

class ConcatCacheLlama(nn.Module):
    """The reference Transformer's weights and submodules, run with a concatenating KV
    cache passed in and out explicitly: exportable, and shape-polymorphic in batch,
    sequence and cache length.

    forward(input_ids [B,T], position_ids [B,T], past [k0, v0, k1, v1, ...]) ->
    (logits [B,T,V] fp32, present k0, v0, ..., next_tokens [B,1])
    """

    def __init__(self, model: nn.Module, next_tokens: bool = True):
        super().__init__()
        from workloads.models.llama import rotary_tables

        self.model = model
        self.args = model.args
        self.next_tokens = next_tokens
        # Tables for every position the architecture allows, computed exactly as the
        # reference does (float64 angles, float32 tables): positions are gathered, not
        # recomputed in the graph, so rotary matches torch bit for bit.
        cos, sin = rotary_tables(self.args, self.args.max_seq_len)
        dev = model.output.weight.device
        self.register_buffer("rope_cos", cos.to(dev), persistent=False)
        self.register_buffer("rope_sin", sin.to(dev), persistent=False)

    @staticmethod
    def _norm(norm: nn.Module, x: Tensor) -> Tensor:
        """The reference RMSNorm with its weight and eps, as x / sqrt(mean(x^2) + eps): the
        pattern ONNX Runtime fuses into one SimplifiedLayerNormalization (the reference's
        x * rsqrt(...) exports as Sqrt + Reciprocal and stays 7 nodes)."""
        xf = x.float()
        xf = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)
        return xf.to(x.dtype) * norm.weight

    def _attention(self, attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor,
                   past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from workloads.models.llama import apply_rotary

        a = self.args
        B, T, _ = x.shape
        qk, v = attn.wqkv(x).split([a.dim + a.kv_dim, a.kv_dim], dim=-1)
        # q and k heads rotated together: the same arithmetic, half the graph nodes
        qk = apply_rotary(qk.view(B, T, a.n_heads + a.n_kv_heads, a.head_dim).transpose(1, 2), cos, sin)
        q, k = qk.split([a.n_heads, a.n_kv_heads], dim=1)
        v = v.view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)
        k = torch.cat([past_k, k], dim=2)  # [B, KV, S, D]
        v = torch.cat([past_v, v], dim=2)
        groups = a.n_heads // a.n_kv_heads
        # Grouped-query attention without repeating the cache: the query heads that
        # share a KV head form one axis, and MatMul broadcasts the cache over it.
        qg = q.reshape(B, a.n_kv_heads, groups, T, a.head_dim) * (1.0 / a.head_dim ** 0.5)
        scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).float()  # [B, KV, G, T, S]
        scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        y = torch.matmul(probs, v.unsqueeze(2))  # [B, KV, G, T, D]
        y = y.reshape(B, a.n_heads, T, a.head_dim).transpose(1, 2).reshape(B, T, a.dim)
        return attn.wo(y), k, v

    def forward(self, input_ids: Tensor, position_ids: Tensor, past: list[Tensor]):
        m = self.model
        x = m.tok_embeddings(input_ids)
        cos = self.rope_cos[position_ids].unsqueeze(1)  # [B, 1, T, D]
        sin = self.rope_sin[position_ids].unsqueeze(1)
        S = past[0].shape[2] + input_ids.shape[1]
        # key j is visible to a query at absolute position p when j <= p: the cache holds
        # positions 0..S-1 in order.
        kpos = torch.arange(S, device=input_ids.device)
        allowed = (kpos[None, None, :] <= position_ids[:, :, None])[:, None, None]  # [B,1,1,T,S]
        presents = []
        for i, layer in enumerate(m.layers):
            h, k, v = self._attention(layer.attention, self._norm(layer.attention_norm, x), cos, sin, allowed,
                                      past[2 * i], past[2 * i + 1])
            h = x + h
            x = h + layer.feed_forward(self._norm(layer.ffn_norm, h))
            presents += [k, v]
        logits = m.output(self._norm(m.norm, x)).float()
        out = (logits, *presents)
        if self.next_tokens:
            out = out + (logits[:, -1].argmax(-1, keepdim=True),)
        return out


def io_names(n_layers: int, next_tokens: bool = True) -> tuple[list[str], list[str]]:
    inputs = [INPUT_IDS, POSITION_IDS] + [n for i in range(n_layers) for n in past_names(i)]
    outputs = [LOGITS] + [n for i in range(n_layers) for n in present_names(i)]
    return inputs, outputs + ([NEXT_TOKENS] if next_tokens else [])


# --- the on-disk cache ------------------------------------------------------------------

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ONNX files live (workloads.cache)."""
    return _cache_root("onnx", cache_dir)


def exporter_version() -> dict[str, Any]:
    from importlib import metadata

    try:  # the version, without the second it takes to import onnxscript
        osv = metadata.version("onnxscript")
    except metadata.PackageNotFoundError:  # pragma: no cover - the dynamo exporter needs it
        osv = None
    return {"export_version": EXPORT_VERSION, "torch": torch.__version__, "onnxscript": osv, "opset": OPSET}


def cache_name(spec: ModelSpec, dtype: str) -> str:
    ver = json.dumps(exporter_version(), sort_keys=True) + checkpoint_stamp(spec)
    h = hashlib.sha256(ver.encode()).hexdigest()[:8]
    torch_tag = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    return f"{spec.key(dtype)}-e{EXPORT_VERSION}-t{torch_tag}-{h}"


def export_path(spec: ModelSpec, dtype: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The model file an export of (spec, dtype) is (or would be) cached at."""
    return cache_root(cache_dir) / cache_name(spec, dtype) / MODEL_FILE


@dataclass
class ExportedModel:
    path: Path  # the .onnx file (external data, if any, next to it)
    cache_hit: bool
    export_s: float  # 0.0 on a cache hit
    meta: dict[str, Any] = field(default_factory=dict)


def _cached(final: Path) -> ExportedModel | None:
    """The finished export in `final`, if one is there (its meta may be unreadable)."""
    model_file = final / MODEL_FILE
    if not model_file.exists():
        return None
    try:
        meta = json.loads((final / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    return ExportedModel(model_file, True, 0.0, meta)


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temp folder into place: atomic, so the folder appears complete or
    not at all; a concurrent writer that got there first wins and ours is dropped."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / MODEL_FILE).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


#: the graphs an export can be: "portable" (torch.export, standard ONNX operators, every
#: provider) or "fused" (workloads/onnx_fused.py: ONNX Runtime's contrib operators, a
#: preallocated KV cache; the CPU provider, not yet run on CUDA)
GRAPHS = ("portable", "fused")


def export_model(spec: ModelSpec, dtype: str, cache_dir: str | os.PathLike | None = None,
                 force: bool = False, next_tokens: bool = True, graph: str = "portable") -> ExportedModel:
    """The cached ONNX export of (spec, dtype); exported first if not on disk yet."""
    if dtype not in DTYPES:
        raise ExportError(f"ONNX export supports dtypes {', '.join(DTYPES)}, not {dtype!r}")
    if graph not in GRAPHS:
        raise ExportError(f"ONNX graph {graph!r} unknown; known: {', '.join(GRAPHS)}")
    if graph == "fused" and not next_tokens:
        raise ExportError("the fused graph always has next_tokens")
    final = export_path(spec, dtype, cache_dir).parent
    if graph == "fused":
        from workloads.onnx_fused import FUSED_VERSION

        final = final.with_name(final.name + f"-fused{FUSED_VERSION}")
    if not next_tokens:
        final = final.with_name(final.name + "-nonext")
    model_file = final / MODEL_FILE
    if not force and (hit := _cached(final)) is not None:
        return hit

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        t0 = time.perf_counter()
        if graph == "fused":
            meta = _build_fused(spec, dtype, tmp / MODEL_FILE)
        else:
            meta = _export_to(spec, dtype, tmp / MODEL_FILE, next_tokens)
        meta["export_s"] = time.perf_counter() - t0
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if force and final.exists():
            shutil.rmtree(final, ignore_errors=True)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportedModel(model_file, False, meta["export_s"], meta)


def _build_fused(spec: ModelSpec, dtype: str, path: Path) -> dict[str, Any]:
    from workloads.models.weights import build_model
    from workloads.onnx_fused import build_fused

    model = build_model(spec, dtype, "cpu")
    external = spec.args.weight_bytes(dtype) > EXTERNAL_DATA_BYTES
    try:
        names = build_fused(model, dtype, path, external=external)
    except ValueError as e:
        raise ExportError(f"fused ONNX graph of {spec.args.name} ({dtype}): {e}") from None
    return _meta(spec, dtype, external, **names)


def _meta(spec: ModelSpec, dtype: str, external: bool, **graph: Any) -> dict[str, Any]:
    """meta.json of an export: what it was made from, by which exporter, and its graph."""
    return {"model": spec.args.to_dict(), "key": spec.key(dtype), "dtype": dtype, "seed": spec.seed,
            "checkpoint": spec.checkpoint, "exporter": exporter_version(), "external_data": external,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **graph}


def _export_to(spec: ModelSpec, dtype: str, path: Path, next_tokens: bool) -> dict[str, Any]:
    import warnings

    from workloads.models.weights import build_model

    a = spec.args
    model = build_model(spec, dtype, "cpu")
    wrapper = ConcatCacheLlama(model, next_tokens=next_tokens).eval()
    tdtype = model.output.weight.dtype
    B, T, P = 2, 3, 4  # examples >= 2: torch.export specialises sizes 0 and 1
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.arange(P, P + T).expand(B, T).contiguous()
    past = [torch.zeros(B, a.n_kv_heads, P, a.head_dim, dtype=tdtype) for _ in range(2 * a.n_layers)]
    batch, seq, past_seq = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past_seq")
    dynamic = {"input_ids": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq},
               "past": [{0: batch, 2: past_seq} for _ in past]}
    inputs, outputs = io_names(a.n_layers, next_tokens)
    external = a.weight_bytes(dtype) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(wrapper, (ids, pos, past), None, dynamo=True, dynamic_shapes=dynamic,
                                     input_names=inputs, output_names=outputs, opset_version=OPSET,
                                     external_data=external, verbose=False)
        except Exception as e:  # the exporter's errors are long; keep the first lines
            raise ExportError(f"ONNX export of {spec.args.name} ({dtype}) failed: "
                              f"{type(e).__name__}: {str(e)[:2000]}") from e
        prog.save(str(path), external_data=external)
    got_in = [i.name for i in prog.model.graph.inputs]
    got_out = [o.name for o in prog.model.graph.outputs]
    if got_in != inputs or got_out != outputs:
        raise ExportError(f"exported graph has inputs {got_in} and outputs {got_out}, expected {inputs}, {outputs}")
    return _meta(spec, dtype, external, graph="portable", inputs=inputs, outputs=outputs)


# --- the I/O convention, for our files and users' ----------------------------------------

@dataclass
class OnnxIO:
    """What a decoder ONNX file offers, read from its input and output names."""

    n_layers: int
    has_position_ids: bool
    has_attention_mask: bool
    has_next_tokens: bool
    past: list[str]  # past_key_values.0.key, .0.value, .1.key, ...
    present: list[str]


_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")


def check_io(inputs: Iterable[str], outputs: Iterable[str], source: str,
             n_layers: int | None = None) -> OnnxIO:
    """Validate names against the convention; raise ExportError naming `source` and
    everything that is missing or unexpected."""
    inputs, outputs = list(inputs), list(outputs)
    layers_in = {int(m.group(1)) for m in map(_PAST.match, inputs) if m}
    layers_out = {int(m.group(1)) for m in map(_PRESENT.match, outputs) if m}
    n = n_layers if n_layers is not None else max(layers_in | layers_out, default=-1) + 1
    problems = []
    want_in = [INPUT_IDS] + [x for i in range(n) for x in past_names(i)]
    want_out = [LOGITS] + [x for i in range(n) for x in present_names(i)]
    missing_in = [x for x in want_in if x not in inputs]
    missing_out = [x for x in want_out if x not in outputs]
    if n == 0:
        problems.append("no past_key_values.{i}.key/value inputs (the KV cache must be explicit)")
    if missing_in:
        problems.append(f"missing inputs {_short(missing_in)}")
    if missing_out:
        problems.append(f"missing outputs {_short(missing_out)}")
    known_in = set(want_in) | {POSITION_IDS, ATTENTION_MASK}
    extra_in = [x for x in inputs if x not in known_in]
    if extra_in:
        problems.append(f"unexpected inputs {_short(extra_in)} (this runner feeds only input_ids, position_ids, "
                        "attention_mask and past_key_values.*)")
    if n_layers is not None and (max(layers_in, default=-1) + 1 > n_layers):
        problems.append(f"it has {max(layers_in) + 1} layers' cache inputs, the model spec has {n_layers} layers")
    if problems:
        raise ExportError(
            f"{source}: does not follow the decoder I/O convention: " + "; ".join(problems) + ". "
            f"Expected inputs input_ids [batch, seq] (int64), optional position_ids / attention_mask, "
            f"past_key_values.{{i}}.key/value [batch, kv_heads, past_seq, head_dim] for i in 0..{max(n, 1) - 1}; "
            f"outputs logits [batch, seq, vocab], present.{{i}}.key/value, optional next_tokens. "
            f"Found inputs {_short(inputs)}, outputs {_short(outputs)}.")
    return OnnxIO(n, POSITION_IDS in inputs, ATTENTION_MASK in inputs, NEXT_TOKENS in outputs,
                  [x for i in range(n) for x in past_names(i)], [x for i in range(n) for x in present_names(i)])


def _short(names: list[str], k: int = 8) -> str:
    return "[" + ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "") + "]"


def check_onnx_file(path: str | os.PathLike, n_layers: int | None = None) -> OnnxIO:
    """Validate a user-supplied ONNX file's I/O names (weights are not read)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: ONNX model file not found")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inits = {i.name for i in m.graph.initializer}
    return check_io([i.name for i in m.graph.input if i.name not in inits], [o.name for o in m.graph.output],
                    str(p), n_layers)


# --- weight-only quantization of an export ------------------------------------------------

#: weight schemes an fp32 export can be turned into: name -> (bits, block size). int8 is
#: symmetric blocks of 32 weights with one fp32 scale each (1.125 bytes per weight), run
#: by onnxruntime's MatMulNBits kernel with int8 compute (accuracy_level 4). Weight-only:
#: activations stay fp32, as in llama.cpp's q8_0 path, so the two stand side by side.
# Blocks of 128 (1.03 bytes) were tried first: smollm2-135m's logits then erred by 0.061 at
# seed 0, over the 6e-2 tolerance 8-bit formats share; blocks of 32 gave 0.037.
WEIGHT_SCHEMES = {"int8": (8, 32)}


def quantize_export(exp: ExportedModel, scheme: str) -> ExportedModel:
    """The cached weight-only quantized variant of an fp32 export (made once, beside it).

    The export is first constant-folded (ORT basic level, provider independent) so that a
    tied output head, a Transpose of the embedding table in the graph, becomes a constant
    the quantizer sees; otherwise the largest matrix of a small model stays fp32."""
    if scheme not in WEIGHT_SCHEMES:
        raise ExportError(f"weight quantization {scheme!r} unknown; known: {', '.join(WEIGHT_SCHEMES)}")
    bits, block = WEIGHT_SCHEMES[scheme]
    final = exp.path.parent.with_name(exp.path.parent.name + f"-w{scheme}b{block}")
    model_file = final / MODEL_FILE
    if (hit := _cached(final)) is not None:
        return hit
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import matmul_nbits_quantizer as mnb

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        t0 = time.perf_counter()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(tmp / "folded.onnx")
        ort.InferenceSession(str(exp.path), so, providers=["CPUExecutionProvider"])
        folded = onnx.load(str(tmp / "folded.onnx"))
        import logging

        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.WARNING)  # the quantizer logs one INFO line per node
        try:
            q = mnb.MatMulNBitsQuantizer(folded, bits=bits, block_size=block, is_symmetric=True, accuracy_level=4)
            q.process()
        finally:
            logging.getLogger().setLevel(quiet)
        quantized = sum(n.op_type == "MatMulNBits" for n in q.model.model.graph.node)
        left = sum(n.op_type == "MatMul" for n in q.model.model.graph.node)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in folded.graph.initializer) \
            or folded.ByteSize() > EXTERNAL_DATA_BYTES
        q.model.save_model_to_file(str(tmp / MODEL_FILE), use_external_data_format=external)
        for folded_file in tmp.glob("folded.onnx*"):  # the model and any external data beside it
            folded_file.unlink()
        meta = dict(exp.meta, weight_scheme=scheme, weight_bits=bits, weight_block=block,
                    quantized_matmuls=quantized, fp32_matmuls_left=left, source_export=str(exp.path),
                    quantize_s=time.perf_counter() - t0)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportedModel(model_file, False, meta["quantize_s"], meta)
