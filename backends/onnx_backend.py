"""ONNX Runtime backend: the reference model exported to ONNX, run by any execution
provider (CPU, CUDA, OpenVINO for Intel NPUs, QNN, VitisAI, DirectML, vendor plugins).

Decode runs through IOBinding: each step's present.* outputs are bound on the device
the session keeps them on and fed back as the next step's past_key_values.* inputs, so
the cache is never copied by Python and never crosses to the host. With our exports the
next token is an output too (argmax in the graph), so on a GPU a whole decode is n Run
calls with no host round trip; tokens are read back at the end.

Silent CPU fallback is the classic way an accelerator benchmark lies: the provider
takes what it can and ONNX Runtime quietly runs the rest on the CPU. After the session
is built, the provider of every node is recorded (ORT's graph assignment info, or the
provider field of a one-run profiling trace on older ORT) and put in LoadInfo.details;
a requested non-CPU provider that left compute (MatMul, Gemm, attention, convolution)
on the CPU is refused unless the suite says `allow_cpu_fallback: true`. Shape
bookkeeping that ORT keeps on the CPU on purpose is reported, never refused.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import platform
import re
import tempfile
import time
from typing import Any, Literal, Optional

import numpy as np

from backends.base import BackendError, DecodeResult, LoadInfo, ModelBackend, cpu_model
from harness.schema import regular_file_problem
from workloads.zoo import ModelSpec

CPU_EP = "CPUExecutionProvider"

#: provider -> where it comes from, for the error when it is missing
PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "QNNExecutionProvider": "onnxruntime-qnn",
    "DmlExecutionProvider": "onnxruntime-directml",
    "VitisAIExecutionProvider": "onnxruntime-vitisai (AMD Ryzen AI Software)",
    "ROCMExecutionProvider": "onnxruntime-rocm (AMD's ROCm wheel index)",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx (AMD's ROCm wheel index)",
    "CANNExecutionProvider": "onnxruntime-cann",
    "CoreMLExecutionProvider": "onnxruntime (the macOS wheel)",
}

#: short names accepted in suites, case-insensitive
PROVIDER_ALIASES = {
    "cpu": CPU_EP, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider", "ov": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider", "dml": "DmlExecutionProvider", "directml": "DmlExecutionProvider",
    "vitisai": "VitisAIExecutionProvider", "rocm": "ROCMExecutionProvider", "migraphx": "MIGraphXExecutionProvider",
    "cann": "CANNExecutionProvider", "coreml": "CoreMLExecutionProvider", "xnnpack": "XnnpackExecutionProvider",
    "webgpu": "WebGpuExecutionProvider", "azure": "AzureExecutionProvider",
}

#: the compute a provider must not hand to the CPU (ONNX and ORT contrib op types)
COMPUTE_OPS = frozenset({
    "MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedMatMul", "FusedGemm",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "MatMulBnb4", "GatherBlockQuantized",
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "QAttention", "SparseAttention", "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention",
    "RotaryEmbedding", "Einsum", "Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose",
})
#: ops that only move or compute shapes and indices: ORT keeps these on the CPU on purpose
SHAPE_OPS = frozenset({
    "Shape", "Size", "Gather", "GatherElements", "GatherND", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast",
    "Reshape", "Range", "ConstantOfShape", "Constant", "Expand", "Identity", "Equal", "Less", "LessOrEqual",
    "Greater", "GreaterOrEqual", "Not", "And", "Or", "Where", "Max", "Min", "Flatten", "NonZero",
    "MemcpyToHost", "MemcpyFromHost",
})

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class OnnxOptions:
    #: execution providers in priority order: names (CPUExecutionProvider, or short: cpu,
    #: cuda, openvino, qnn...) or {name, options} mappings; options are the provider's own
    #: (e.g. {device_type: NPU} for OpenVINO, {backend_path: libQnnHtp.so} for QNN)
    providers: list = field(default_factory=lambda: [CPU_EP])
    intra_op_threads: int = field(default=0, metadata={"range": (0, 4096)})  # 0: ONNX Runtime's choice
    inter_op_threads: int = field(default=0, metadata={"range": (0, 4096)})  # (one per physical core)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    allow_spinning: bool = True  # ORT's default; false frees cores between ops (less power, more latency)
    #: plugin EP libraries [{name, path}] registered with register_execution_provider_library
    plugin_libraries: list = field(default_factory=list)
    #: time a cell even if the requested provider left compute on the CPU (tables show the split)
    allow_cpu_fallback: bool = False
    model_path: Optional[str] = None  # a user ONNX file with the decoder I/O convention, instead of our export
    device: Optional[str] = None  # label in tables; default from the first provider (cpu, cuda:0, openvino:npu...)
    session_config: dict = field(default_factory=dict)  # extra SessionOptions config entries, key: value
    cache_dir: Optional[str] = None  # export cache; default $ACCEL_HARNESS_CACHE/onnx or ~/.cache/accel-harness/onnx
    #: weight-only quantization of our fp32 export: int8 (MatMulNBits, symmetric blocks of
    #: 32, int8 compute); the cell's precision is then int8, activations stay fp32
    weight_quant: Optional[Literal["int8"]] = None
    #: which graph of our export runs: "portable" (standard ONNX operators, every provider)
    #: or "fused" (ONNX Runtime's fused operators, 10 nodes a layer instead of ~37, and a
    #: preallocated KV cache written in place: the CPU provider; CUDA has the operators for
    #: fp16, not yet run on a GPU; workloads/onnx_fused.py)
    graph: Literal["portable", "fused"] = "portable"

    def problems(self) -> list[tuple[str, str]]:
        """Checks done at validation that ONNX Runtime would otherwise make inside the worker."""
        out = []
        if self.device is not None and not _DEVICE_LABEL.fullmatch(self.device):
            out.append(("device", f"expected a device label such as cpu, cuda:0 or openvino:npu (letters, "
                                  f"digits, '_', '.', '-', ':'; at most 64), got {self.device[:60]!r}"))
        if self.weight_quant is not None and self.model_path is not None:
            out.append(("weight_quant", "quantizes the harness's own export; a model_path file is run as it is"))
        if self.graph == "fused" and self.model_path is not None:
            out.append(("graph", "fused chooses the harness's own export; a model_path file is run as it is"))
        try:
            parse_providers(self.providers)
        except BackendError as e:
            out.append(("providers", str(e)[:300]))
        for i, lib in enumerate(self.plugin_libraries):
            if not isinstance(lib, dict) or not isinstance(lib.get("name"), str) or not isinstance(lib.get("path"), str):
                out.append((f"plugin_libraries[{i}]", "expected {name: ..., path: ...} with two strings"))
        return out

    def file_problems(self) -> list[tuple[str, str]]:
        """The files named, as they are when the suite is validated (harness.config calls
        this; a worker that finds one gone says so when it loads)."""
        out = []
        if self.model_path is not None and (why := regular_file_problem(self.model_path, "ONNX model",
                                                                        MAX_ONNX_MODEL_BYTES)):
            out.append(("model_path", why))
        for i, lib in enumerate(self.plugin_libraries):
            if isinstance(lib, dict) and isinstance(lib.get("path"), str) and \
                    (why := regular_file_problem(lib["path"], "plugin library", MAX_ONNX_MODEL_BYTES)):
                out.append((f"plugin_libraries[{i}].path", why))
        return out

    def host_problems(self) -> list[tuple[str, str]]:
        """What this machine cannot run, known before any worker starts (issue 20): a provider
        this onnxruntime does not have. harness.config asks only for groups that run here (no
        cluster, no placement); plugin EPs are only known once registered, so not judged here."""
        if self.plugin_libraries:
            return []
        try:
            ort = _ort()
            wanted = parse_providers(self.providers)
        except BackendError:
            return []  # a missing onnxruntime or a bad list is reported elsewhere, once
        available = list(ort.get_available_providers())
        return [("providers", str(_missing_provider_error(name, available, ort.__version__)))
                for name, _ in wanted if name not in available]


#: a device label (it names files); an ONNX file may hold its weights inline: up to 64 GiB
_DEVICE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_ONNX_MODEL_BYTES = 64 << 30


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
                           "(or the wheel of your execution provider, e.g. onnxruntime-openvino)") from None
    return onnxruntime


def _canonical(name: str) -> str:
    s = str(name).strip()
    if s.lower() in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[s.lower()]
    return s if s.endswith("ExecutionProvider") else s + "ExecutionProvider"


def _option_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_providers(providers: list) -> list[tuple[str, dict[str, str]]]:
    """Suite provider entries -> [(canonical name, {option: string value})]."""
    out = []
    if not isinstance(providers, list) or not providers:
        raise BackendError(f"providers: expected a non-empty list, got {providers!r}")
    for i, p in enumerate(providers):
        if isinstance(p, str):
            out.append((_canonical(p), {}))
        elif isinstance(p, dict) and "name" in p:
            extra = set(p) - {"name", "options"}
            if extra:
                raise BackendError(f"providers[{i}]: unknown keys {sorted(extra)} (expected name and options)")
            opts = p.get("options") or {}
            if not isinstance(opts, dict):
                raise BackendError(f"providers[{i}].options: expected a mapping, got {opts!r}")
            out.append((_canonical(p["name"]), {str(k): _option_str(v) for k, v in opts.items()}))
        else:
            raise BackendError(f"providers[{i}]: expected a provider name or {{name, options}}, got {p!r}")
    return out


def _missing_provider_error(name: str, available: list[str], ort_version: str) -> BackendError:
    pkg = PROVIDER_PACKAGES.get(name)
    if pkg:
        how = (f"It comes with the pip package {pkg}, which replaces the plain onnxruntime package: install it in "
               f"its own environment (pip uninstall onnxruntime; pip install {pkg.split()[0]}).")
    else:
        how = ("No pip package is known to provide it: use an onnxruntime build that includes it, or, for a "
               "plugin EP, list its library under plugin_libraries: [{name, path}].")
    return BackendError(f"execution provider {name} is not in this onnxruntime {ort_version} "
                        f"(available: {', '.join(available)}). {how}")


_REGISTERED_PLUGINS: dict[str, str] = {}


def _register_plugins(ort, libs: list) -> None:
    for i, lib in enumerate(libs or []):
        if not isinstance(lib, dict) or not lib.get("name") or not lib.get("path"):
            raise BackendError(f"plugin_libraries[{i}]: expected {{name, path}}, got {lib!r}")
        name, path = str(lib["name"]), str(Path(lib["path"]).expanduser())
        if _REGISTERED_PLUGINS.get(name) == path:
            continue
        if name in _REGISTERED_PLUGINS:
            raise BackendError(f"plugin_libraries[{i}]: {name} is already registered from {_REGISTERED_PLUGINS[name]}")
        if not Path(path).is_file():
            raise BackendError(f"plugin_libraries[{i}]: {path}: no such file (EP plugin library for {name})")
        if not hasattr(ort, "register_execution_provider_library"):
            raise BackendError(f"this onnxruntime {ort.__version__} cannot load plugin EP libraries "
                               "(register_execution_provider_library needs onnxruntime >= 1.22)")
        try:
            ort.register_execution_provider_library(name, path)
        except Exception as e:
            raise BackendError(f"plugin_libraries[{i}]: registering {path} as {name} failed: {e}") from None
        _REGISTERED_PLUGINS[name] = path


def _plugin_devices(ort) -> dict[str, list]:
    out: dict[str, list] = {}
    for d in getattr(ort, "get_ep_devices", lambda: [])():
        out.setdefault(d.ep_name, []).append(d)
    return out


def available_providers() -> list[str]:
    """Execution providers this installation offers (built in, then plugin EPs already
    registered), for `harness list`."""
    try:
        ort = _ort()
    except BackendError:
        return []
    names = list(ort.get_available_providers())
    for n in _plugin_devices(ort):
        if n not in names:
            names.append(n)
    return names


# --- placement -----------------------------------------------------------------------

def summarize_placement(nodes: list[tuple[str, str]], requested: str, method: str) -> dict[str, Any]:
    """nodes: (provider, op_type) of every node. Returns counts per provider and op type,
    the compute that left the requested provider, and what stayed on the CPU."""
    per_provider = Counter(p for p, _ in nodes)
    per_op: dict[str, Counter] = {}
    for p, op in nodes:
        per_op.setdefault(p, Counter())[op] += 1
    compute = [(p, op) for p, op in nodes if op in COMPUTE_OPS]
    off = [(p, op) for p, op in compute if p != requested]
    on_cpu = Counter(op for p, op in nodes if p == CPU_EP) if requested != CPU_EP else Counter()
    compute_cpu = {op: n for op, n in on_cpu.items() if op in COMPUTE_OPS}
    shape_cpu = {op: n for op, n in on_cpu.items() if op in SHAPE_OPS}
    other_cpu = {op: n for op, n in on_cpu.items() if op not in COMPUTE_OPS and op not in SHAPE_OPS}
    if requested == CPU_EP or not on_cpu:
        fallback = "none"
    elif compute_cpu:
        fallback = "compute"
    elif other_cpu:
        fallback = "other"
    else:
        fallback = "shape-only"
    return {
        "method": method,
        "requested_provider": requested,
        "nodes": len(nodes),
        "nodes_per_provider": dict(per_provider),
        "ops_per_provider": {p: dict(sorted(c.items())) for p, c in per_op.items()},
        "compute_nodes": len(compute),
        "compute_nodes_off_requested": len(off),
        # share by node count; MatMul/Gemm/attention/conv nodes
        "compute_share_off_requested": (len(off) / len(compute)) if compute else 0.0,
        "compute_ops_on_cpu": compute_cpu,
        "shape_ops_on_cpu": shape_cpu,
        "other_ops_on_cpu": other_cpu,
        "cpu_fallback": fallback,
        "summary": ", ".join(f"{p.replace('ExecutionProvider', '')}: {n}" for p, n in per_provider.most_common()),
    }


def fallback_refusal(p: dict[str, Any], allow_cpu_fallback: bool) -> Optional[str]:
    """Why a cell with this placement (summarize_placement's dict) must not be timed; None
    when it may be. Any compute node the requested provider left on the CPU refuses it,
    whatever its share: one MatMul on the CPU is enough to credit the CPU's work to the
    provider. A pure function of the recorded placement, so the rule is tested at partial
    fallback even where no second provider can take part of a real graph."""
    if not p["compute_ops_on_cpu"] or allow_cpu_fallback:
        return None
    requested = p["requested_provider"]
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(p["compute_ops_on_cpu"].items()))
    return (f"{requested} left compute on the CPU ({sum(p['compute_ops_on_cpu'].values())} of "
            f"{p['compute_nodes']} compute nodes: {ops}); a cell timed this way would credit the CPU's work "
            f"to {requested}. Set allow_cpu_fallback: true in the backend's options to time it anyway "
            f"(results then show the split). Placement: {p['summary']}.")


def _nodes_from_assignment(sess) -> list[tuple[str, str]]:
    nodes = []
    for sg in sess.get_provider_graph_assignment_info():
        for n in sg.get_nodes():
            nodes.append((sg.ep_name, n.op_type))
    return nodes


def nodes_from_profile(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(provider, op_type) per node that ran, from an ONNX Runtime profiling trace. A
    provider that compiles subgraphs shows each as one node (its op_name is the fused
    subgraph); nodes left to other providers keep their own op types."""
    events = json.loads(Path(path).read_text())
    nodes: dict[str, tuple[str, str]] = {}
    for ev in events:
        if not isinstance(ev, dict) or ev.get("cat") != "Node":
            continue
        args = ev.get("args") or {}
        prov, op = args.get("provider"), args.get("op_name")
        if not prov or not op:
            continue
        name = ev.get("name", "")
        for suffix in ("_kernel_time", "_fence_before", "_fence_after"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        nodes[name] = (prov, op)
    return list(nodes.values())


# --- the backend -----------------------------------------------------------------------

@dataclass
class _State:
    first: np.ndarray  # [B] int64 on the host: the token prefill generated
    next_token: np.ndarray  # [B, 1] int64 on the host: the last token generated
    pos: int  # position next_token goes to
    past: list  # OrtValues past_key_values.0.key, .0.value, ... on the session's device
    token_ov: Any = None  # next_token as an OrtValue on the session's device
    #: the fused graph's preallocated cache: `past` are buffers of this many positions,
    #: written in place (0: a concatenating cache, `past` grows by one position a step)
    cache_len: int = 0


class OnnxBackend(ModelBackend):
    name = "onnxruntime"
    Options = OnnxOptions
    dtypes = ("fp32", "fp16")
    requires = {"onnxruntime": "onnxruntime", "onnx": "onnx", "onnxscript": "onnxscript"}

    def __init__(self, options: OnnxOptions | None = None):
        super().__init__(options or OnnxOptions())
        o = self.options
        if o.graph_optimization_level not in GRAPH_OPT_LEVELS:
            raise BackendError(f"graph_optimization_level: expected one of {', '.join(GRAPH_OPT_LEVELS)}, "
                               f"got {o.graph_optimization_level!r}")
        self.providers = parse_providers(o.providers)
        self.requested = self.providers[0][0]
        self.session = None
        self.io = None  # OnnxIO of the loaded model
        self.model_path: Path | None = None
        self.spec: ModelSpec | None = None
        self.dtype = "fp32"
        self.max_seq = 0
        self._dev = ("cpu", 0)
        self._np_dtype = np.float32
        self._placement: dict[str, Any] = {}
        self._static = False  # the fused graph's preallocated cache (set by load)

    @classmethod
    def device_of(cls, options: Any) -> str:
        if getattr(options, "device", None):
            return options.device
        try:
            name, opts = parse_providers(getattr(options, "providers", [CPU_EP]))[0]
        except BackendError:
            return "cpu"
        short = name.replace("ExecutionProvider", "").lower()
        if name == CPU_EP:
            return "cpu"
        if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            return f"cuda:{opts.get('device_id', 0)}"
        if name == "OpenVINOExecutionProvider":
            return f"openvino:{opts.get('device_type', 'CPU').lower()}"
        return short

    available_providers = staticmethod(available_providers)

    @classmethod
    def installed_here(cls) -> str:
        return f"providers here: {', '.join(available_providers())}"

    # --- inventory ----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        ort = _ort()
        info: dict[str, Any] = {
            "backend": self.name, "onnxruntime": ort.__version__,
            "available_providers": available_providers(),
            "requested_providers": [{"name": n, "options": o} for n, o in self.providers],
            "device": self.device_of(self.options),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "intra_op_threads": self.options.intra_op_threads, "inter_op_threads": self.options.inter_op_threads,
            "graph_optimization_level": self.options.graph_optimization_level,
            "graph": self.options.graph,
        }
        if hasattr(ort, "get_build_info"):
            info["build"] = ort.get_build_info()
        devices = _plugin_devices(ort)
        if devices:
            info["ep_devices"] = {n: [getattr(d, "ep_vendor", "") for d in ds] for n, ds in devices.items()}
        if self.session is not None:
            info["session_providers"] = self.session.get_providers()
            info["provider_options"] = self.session.get_provider_options()
        return info

    def meters(self) -> list[dict[str, Any]]:
        label = self.device_of(self.options)
        if self.requested == CPU_EP or label == "cpu" or label.endswith(":cpu"):
            return [{"type": "rapl"}]
        if self.requested in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            return [{"type": "nvml", "index": int(self.providers[0][1].get("device_id", 0))}]
        return []

    # --- loading -------------------------------------------------------------------

    def _session_options(self, ort, record: bool, profile_dir: str | None):
        o = self.options
        so = ort.SessionOptions()
        if o.intra_op_threads:
            so.intra_op_num_threads = int(o.intra_op_threads)
        if o.inter_op_threads:
            so.inter_op_num_threads = int(o.inter_op_threads)
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[o.graph_optimization_level]
        spin = "1" if o.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if record:
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
        for k, v in (o.session_config or {}).items():
            so.add_session_config_entry(str(k), _option_str(v))
        return so

    def _resolve_providers(self, ort) -> tuple[list, dict[str, list]]:
        _register_plugins(ort, self.options.plugin_libraries)
        available = list(ort.get_available_providers())
        plugins = _plugin_devices(ort) if self.options.plugin_libraries else {}
        for name, _ in self.providers:
            if name not in available and name not in plugins:
                raise _missing_provider_error(name, available + [p for p in plugins if p not in available],
                                              ort.__version__)
        return available, plugins

    def load(self, spec: ModelSpec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        from workloads import export_onnx as ex

        if dtype not in self.dtypes:
            raise BackendError(f"onnxruntime backend runs {', '.join(self.dtypes)}, not {dtype}")
        ort = _ort()
        available, plugins = self._resolve_providers(ort)  # before a minutes-long export
        self.spec, self.dtype, self.max_seq = spec, dtype, max_seq
        self._np_dtype = np.float16 if dtype == "fp16" else np.float32
        details: dict[str, Any] = {"weights": "checkpoint" if spec.checkpoint else f"random(seed={spec.seed})"}

        t0 = time.perf_counter()
        if self.options.model_path:
            path = Path(self.options.model_path).expanduser()
            if not path.is_file():
                raise BackendError(f"model_path {path}: ONNX model file not found")
            details.update(onnx_model=str(path), onnx_source="user")
        else:
            try:
                exp = ex.export_model(spec, dtype, cache_dir=self.options.cache_dir, graph=self.options.graph)
            except ex.ExportError as e:
                raise BackendError(str(e)) from None
            if self.options.weight_quant:
                if dtype != "fp32":
                    raise BackendError(f"weight_quant: {self.options.weight_quant} quantizes an fp32 export; "
                                       f"this cell's dtype is {dtype}")
                try:
                    exp = ex.quantize_export(exp, self.options.weight_quant)
                except ex.ExportError as e:
                    raise BackendError(str(e)) from None
                details.update(precision=self.options.weight_quant, weight_block=exp.meta.get("weight_block"),
                               quantized_matmuls=exp.meta.get("quantized_matmuls"),
                               fp32_matmuls_left=exp.meta.get("fp32_matmuls_left"))
            path = exp.path
            details.update(onnx_model=str(path), onnx_source="export", export_cache_hit=exp.cache_hit,
                           export_s=exp.export_s, graph=self.options.graph,
                           kv_cache="preallocated" if self.options.graph == "fused" else "concatenating")
        self.model_path = path
        compile_s = time.perf_counter() - t0

        record = hasattr(ort.InferenceSession, "get_provider_graph_assignment_info")
        profile_dir = None if record else tempfile.mkdtemp(prefix="ort-placement-")
        so = self._session_options(ort, record, profile_dir)
        t1 = time.perf_counter()
        try:
            self.session = self._create_session(ort, so, path, available, plugins)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"{path}: onnxruntime could not build a session with "
                               f"{', '.join(n for n, _ in self.providers)}: {type(e).__name__}: {e}") from None
        load_s = time.perf_counter() - t1

        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        try:
            self.io = ex.check_io(names_in, names_out, str(path), n_layers=spec.args.n_layers)
        except ex.ExportError as e:
            self.close()
            raise BackendError(str(e)) from None
        self._check_input_types()
        self._dev = self._output_device()
        self._static = self.options.graph == "fused" and not self.options.model_path
        if self._static and (not self.io.has_next_tokens or self.io.has_attention_mask):
            self.close()
            raise BackendError(f"{path}: a fused graph has next_tokens and no attention_mask")

        t2 = time.perf_counter()
        if record:
            try:
                nodes = _nodes_from_assignment(self.session)
                method = "ep_graph_assignment"
            except Exception:  # config not honoured by this build: fall back to a trace
                nodes, method = self._profile_nodes(ort, path, available, plugins), "profiling_trace"
        else:
            nodes, method = self._profile_run(profile_dir), "profiling_trace"
        self._placement = summarize_placement(nodes, self.requested, method)
        compile_s += time.perf_counter() - t2
        details.update(
            session_s=load_s, session_providers=self.session.get_providers(),
            provider_options=self.session.get_provider_options(),
            intra_op_threads=self.session.get_session_options().intra_op_num_threads,
            graph_optimization_level=self.options.graph_optimization_level,
            io={"position_ids": self.io.has_position_ids, "attention_mask": self.io.has_attention_mask,
                "next_tokens": self.io.has_next_tokens},
            output_device=f"{self._dev[0]}:{self._dev[1]}",
            placement=self._placement)
        refusal = fallback_refusal(self._placement, self.options.allow_cpu_fallback)
        if refusal:
            self.close()
            raise BackendError(refusal)
        return LoadInfo(load_s=load_s, compile_s=compile_s, details=details)

    def _create_session(self, ort, so, path: Path, available: list[str], plugins: dict[str, list]):
        if any(n not in available for n, _ in self.providers):
            # plugin EPs are selected through their devices on the session options
            for n, opts in self.providers:
                if n in available:
                    so.add_provider(n, opts)
                else:
                    so.add_provider_for_devices(plugins[n], opts)
            return ort.InferenceSession(str(path), sess_options=so)
        return ort.InferenceSession(str(path), sess_options=so, providers=[n for n, _ in self.providers],
                                    provider_options=[o for _, o in self.providers])

    def _check_input_types(self) -> None:
        want = "tensor(float16)" if self.dtype == "fp16" else "tensor(float)"
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values.") and i.type != want:
                self.close()
                raise BackendError(f"{self.model_path}: {i.name} is {i.type}, but the cell's dtype "
                                   f"{self.dtype} needs {want}")

    def _output_device(self) -> tuple[str, int]:
        """Where the session keeps the cache, as an OrtDevice type for IOBinding: the GPU
        for providers known to run there, else what the session reports for present.0.key."""
        prov = self.session.get_providers()[0]
        dev_id = int(self.providers[0][1].get("device_id", 0)) if prov == self.requested else 0
        known = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda",
                 "DmlExecutionProvider": "dml", "CANNExecutionProvider": "cann"}
        if prov in known:
            return known[prov], dev_id
        try:
            names = [o.name for o in self.session.get_outputs()]
            mi = self.session.get_output_memory_infos()[names.index(self.io.present[0])]
            name, dev_id = mi.name.lower(), int(mi.device_id)
        except Exception:  # older onnxruntime: no memory infos
            return "cpu", 0
        for kind in ("cuda", "dml", "cann"):
            if kind in name:
                return kind, dev_id
        return "cpu", 0

    def _profile_nodes(self, ort, path, available, plugins) -> list[tuple[str, str]]:
        """Placement from a trace, with a second session (when the first cannot report)."""
        d = tempfile.mkdtemp(prefix="ort-placement-")
        so = self._session_options(ort, False, d)
        main, self.session = self.session, self._create_session(ort, so, path, available, plugins)
        try:
            return self._profile_run(d)
        finally:
            self.session = main

    def _profile_run(self, profile_dir: str) -> list[tuple[str, str]]:
        try:
            self._run_logits(np.zeros((1, 2), dtype=np.int64), 2)
            trace = self.session.end_profiling()
            return nodes_from_profile(trace)
        finally:
            import shutil
            shutil.rmtree(profile_dir, ignore_errors=True)

    def prepare(self, batch: int, seq_len: int = 0) -> float:
        """Warm the session for this batch size (kernels, shape-specialised compilation on
        providers that do it, the memory arena) outside timed windows. The concatenating
        cache has no buffer to size, so seq_len is only checked."""
        if seq_len:
            self._check_room(seq_len)
        t0 = time.perf_counter()
        st = self.prefill(np.zeros((batch, 4), dtype=np.int64))
        self.decode(st, 2)
        return time.perf_counter() - t0

    # --- running ------------------------------------------------------------------

    def _ov(self, arr: np.ndarray):
        ort = _ort()
        dev, idx = self._dev
        if dev == "cpu":
            return ort.OrtValue.ortvalue_from_numpy(arr)
        return ort.OrtValue.ortvalue_from_numpy(arr, dev, idx)

    def _empty_past(self, batch: int) -> list:
        a = self.spec.args
        z = np.zeros((batch, a.n_kv_heads, 0, a.head_dim), dtype=self._np_dtype)
        return [self._ov(z) for _ in self.io.past]

    def _aux(self, B: int, T: int, pos: int) -> tuple[Any, Any]:
        """position_ids and attention_mask OrtValues (None where the model has no such input)."""
        pos_ov = mask_ov = None
        if self.io.has_position_ids:
            pos_ov = self._ov(np.broadcast_to(np.arange(pos, pos + T, dtype=np.int64), (B, T)).copy())
        if self.io.has_attention_mask:
            mask_ov = self._ov(np.ones((B, pos + T), dtype=np.int64))
        return pos_ov, mask_ov

    def _run(self, binding: "_Binding", ids_ov, aux: tuple[Any, Any], past: list,
             logits_to_host: bool) -> tuple[Any, list, Any]:
        """One Run: returns (logits, present list, next_tokens or None) as OrtValues."""
        io = self.io
        binding.bind_input("input_ids", ids_ov)
        if aux[0] is not None:
            binding.bind_input("position_ids", aux[0])
        if aux[1] is not None:
            binding.bind_input("attention_mask", aux[1])
        for name, v in zip(io.past, past):
            binding.bind_input(name, v)
        binding.clear_outputs()
        binding.bind_output("logits", binding.host if logits_to_host else binding.device)
        for name in io.present:
            binding.bind_output(name, binding.device)
        if io.has_next_tokens:
            binding.bind_output("next_tokens", binding.device)
        outs = binding.run()
        n = len(io.present)
        return outs[0], outs[1:1 + n], (outs[1 + n] if io.has_next_tokens else None)

    def _binding(self) -> "_Binding":
        return _Binding(self.session, self._dev)

    def _check_room(self, end: int) -> None:
        limit = self.spec.args.max_seq_len
        if end > limit:
            raise BackendError(f"position {end} exceeds the model's {limit} positions")

    def prefill(self, token_ids: np.ndarray) -> _State:
        if self.session is None:
            raise BackendError("prefill before load")
        ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        B, T = ids.shape
        self._check_room(T)
        if self._static:
            state, _ = self._static_prefill(ids, max(self.max_seq, T), logits_to_host=False)
            return state
        binding = self._binding()
        need_host = not self.io.has_next_tokens
        logits, present, nxt = self._run(binding, self._ov(ids), self._aux(B, T, 0), self._empty_past(B), need_host)
        if nxt is None:
            tok = logits.numpy()[:, -1].argmax(-1).astype(np.int64)[:, None]
            return _State(tok[:, 0], tok, T, present, self._ov(tok))
        tok = nxt.numpy()
        return _State(tok[:, 0], tok, T, present, nxt)

    def first_tokens(self, state: _State) -> np.ndarray:
        return state.first

    def decode(self, state: _State, n: int) -> DecodeResult:
        if self.max_seq and state.pos + n > self.max_seq:
            raise BackendError(f"decode to position {state.pos + n} exceeds max_seq {self.max_seq} given to load()")
        self._check_room(state.pos + n)
        if state.cache_len:
            return self._static_decode(state, n)
        binding = self._binding()
        host_argmax = not self.io.has_next_tokens
        tok, past, pos = state.token_ov, state.past, state.pos
        B = state.next_token.shape[0]
        aux = [self._aux(B, 1, pos + i) for i in range(n)]  # on the device before the loop
        toks, times = [], []
        t0 = time.perf_counter()
        for i in range(n):
            logits, past, nxt = self._run(binding, tok, aux[i], past, host_argmax)
            if host_argmax:
                t = logits.numpy()[:, -1].argmax(-1).astype(np.int64)[:, None]
                toks.append(t)
                tok = self._ov(t)
            else:
                toks.append(nxt)
                tok = nxt
            times.append(time.perf_counter() - t0)  # Run returns when its outputs are ready
        out = np.concatenate([t if isinstance(t, np.ndarray) else t.numpy() for t in toks], axis=1) if n else \
            np.zeros((state.next_token.shape[0], 0), dtype=np.int64)
        state.past, state.pos, state.token_ov = past, pos + n, tok
        if n:
            state.next_token = out[:, -1:]
        return DecodeResult(out, times or None)

    def _run_logits(self, ids: np.ndarray, n_prefill: int) -> np.ndarray:
        B, T = ids.shape
        if self._static:
            return self._static_logits(ids, n_prefill)
        binding = self._binding()
        logits, past, _ = self._run(binding, self._ov(np.ascontiguousarray(ids[:, :n_prefill])),
                                    self._aux(B, n_prefill, 0), self._empty_past(B), True)
        out = [logits.numpy().astype(np.float32, copy=False)]
        for t in range(n_prefill, T):
            logits, past, _ = self._run(binding, self._ov(np.ascontiguousarray(ids[:, t:t + 1])),
                                        self._aux(B, 1, t), past, True)
            out.append(logits.numpy().astype(np.float32, copy=False))
        return np.concatenate(out, axis=1)

    # --- the fused graph's preallocated cache --------------------------------------------
    # GroupQueryAttention writes the new positions into the cache in place when a past and
    # its present are bound to the same buffer, and reads only the positions before each
    # row's length: nothing is copied per step (the concatenating cache copies the whole
    # past every step), and between steps only input_ids, position_ids and next_tokens are
    # bound again. Output order is binding order: presents, logits, next_tokens.

    def _kv_buffers(self, batch: int, length: int) -> list:
        """Zeroed [batch, kv_heads, length, head_dim] buffers, one per cache input."""
        ort = _ort()
        a = self.spec.args
        shape = (batch, a.n_kv_heads, length, a.head_dim)
        dev, idx = self._dev
        if dev == "cpu":  # an OrtValue made from a host array shares its memory: one array each
            return [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self._np_dtype)) for _ in self.io.past]
        z = np.zeros(shape, self._np_dtype)  # copied to the device, once per buffer
        return [ort.OrtValue.ortvalue_from_numpy(z, dev, idx) for _ in self.io.past]

    def _bind_cache(self, binding: "_Binding", bufs: list) -> None:
        for name_in, name_out, buf in zip(self.io.past, self.io.present, bufs):
            binding.bind_input(name_in, buf)
            binding.bind_output_value(name_out, buf)

    def _static_prefill(self, ids: np.ndarray, cache_len: int, logits_to_host: bool) -> tuple[_State, Any]:
        B, T = ids.shape
        bufs = self._kv_buffers(B, cache_len)
        binding = self._binding()
        self._bind_cache(binding, bufs)
        # bound OrtValues made from host arrays share their memory: held until the run is done
        ids_ov, pos_ov = self._ov(ids), self._aux(B, T, 0)[0]
        binding.bind_input("input_ids", ids_ov)
        binding.bind_input("position_ids", pos_ov)
        binding.bind_output("logits", binding.host if logits_to_host else binding.device)
        binding.bind_output("next_tokens", binding.device)
        binding.run_only()
        n = len(bufs)
        logits, nxt = binding.output(n), binding.output(n + 1)
        tok = nxt.numpy()
        return _State(tok[:, 0], tok, T, bufs, nxt, cache_len), logits

    def _static_decode(self, state: _State, n: int) -> DecodeResult:
        if state.pos + n > state.cache_len:
            raise BackendError(f"decode to position {state.pos + n} exceeds the preallocated cache of "
                               f"{state.cache_len} positions (max_seq given to load())")
        B = state.next_token.shape[0]
        binding = self._binding()
        self._bind_cache(binding, state.past)
        # this call's logits are never read (next_tokens is): one buffer, written every step
        binding.bind_output_value("logits", _ort().OrtValue.ortvalue_from_shape_and_type(
            [B, 1, self.spec.args.vocab_size], np.float32, self._dev[0], self._dev[1]))
        aux = [self._aux(B, 1, state.pos + i)[0] for i in range(n)]  # on the device before the loop
        k_next = len(state.past) + 1
        tok, toks, times = state.token_ov, [], []
        t0 = time.perf_counter()
        for i in range(n):
            binding.bind_input("input_ids", tok)
            binding.bind_input("position_ids", aux[i])
            binding.bind_output("next_tokens", binding.device)  # a new tensor each step: toks keeps them
            binding.run_only()
            tok = binding.output(k_next)
            toks.append(tok)
            times.append(time.perf_counter() - t0)  # Run returns when its outputs are ready
        out = np.concatenate([t.numpy() for t in toks], axis=1) if n else np.zeros((B, 0), dtype=np.int64)
        state.pos, state.token_ov = state.pos + n, tok
        if n:
            state.next_token = out[:, -1:]
        return DecodeResult(out, times or None)

    def _static_logits(self, ids: np.ndarray, n_prefill: int) -> np.ndarray:
        B, T = ids.shape
        state, logits = self._static_prefill(np.ascontiguousarray(ids[:, :n_prefill]), T, logits_to_host=True)
        out = [logits.numpy().astype(np.float32, copy=False)]
        binding = self._binding()
        self._bind_cache(binding, state.past)
        for t in range(n_prefill, T):
            ids_ov, pos_ov = self._ov(np.ascontiguousarray(ids[:, t:t + 1])), self._aux(B, 1, t)[0]
            binding.bind_input("input_ids", ids_ov)
            binding.bind_input("position_ids", pos_ov)
            binding.bind_output("logits", binding.host)
            binding.bind_output("next_tokens", binding.device)
            binding.run_only()
            out.append(binding.output(len(state.past)).numpy().astype(np.float32, copy=False))
        return np.concatenate(out, axis=1)

    def logits(self, token_ids: np.ndarray, n_prefill: int) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        if not 1 <= n_prefill <= ids.shape[1]:
            raise ValueError(f"n_prefill {n_prefill} outside 1..{ids.shape[1]}")
        self._check_room(ids.shape[1])
        return self._run_logits(ids, n_prefill)

    def close(self) -> None:
        self.session = None


class _Binding:
    """IOBinding through the pybind objects underneath onnxruntime's Python wrappers: the
    wrappers re-validate every value on every call, which costs more per decode step of a
    small model than the step itself (0.45 ms for 10 bindings). Falls back to the public
    API where an onnxruntime build lacks those attributes."""

    def __init__(self, session, dev: tuple[str, int]):
        ort = _ort()
        self.py = session.io_binding()
        self.c = getattr(self.py, "_iobinding", None)
        self.sess_c = getattr(session, "_sess", None)
        self.session = session
        self.fast = self.c is not None and self.sess_c is not None and hasattr(ort.OrtDevice, "make")
        self.dev = dev
        if self.fast:
            self.device = ort.OrtDevice.make(dev[0], dev[1])._get_c_device()
            self.host = ort.OrtDevice.make("cpu", 0)._get_c_device()
        else:
            self.device, self.host = dev, ("cpu", 0)

    def bind_input(self, name: str, v) -> None:
        if self.fast:
            self.c.bind_ortvalue_input(name, getattr(v, "_ortvalue", v))
        else:
            self.py.bind_ortvalue_input(name, v if hasattr(v, "_ortvalue") else _ort().OrtValue(v))

    def clear_outputs(self) -> None:
        (self.c if self.fast else self.py).clear_binding_outputs()

    def bind_output(self, name: str, device) -> None:
        if self.fast:
            self.c.bind_output(name, device)
        else:
            self.py.bind_output(name, device[0], device[1])

    def bind_output_value(self, name: str, v) -> None:
        """Bind an output to an existing OrtValue (written in place by the run)."""
        if self.fast:
            self.c.bind_ortvalue_output(name, getattr(v, "_ortvalue", v))
        else:
            self.py.bind_ortvalue_output(name, v)

    def run_only(self) -> None:
        if self.fast:
            self.sess_c.run_with_iobinding(self.c, None)
        else:
            self.session.run_with_iobinding(self.py)

    def output(self, i: int):
        """Output i (binding order) of the last run, as an OrtValue that owns its tensor."""
        if self.fast:
            return self.c.get_outputs()[i]
        if hasattr(self.py, "get_outputs_as_ortvaluevector"):
            return self.py.get_outputs_as_ortvaluevector()[i]
        return self.py.get_outputs()[i]

    def run(self) -> list:
        self.run_only()
        if self.fast:
            vec = self.c.get_outputs()
            return [vec[i] for i in range(len(vec))]  # copies that own their tensors
        if hasattr(self.py, "get_outputs_as_ortvaluevector"):
            # indexed, not iterated: onnxruntime 1.24's get_outputs() iterates the binding's
            # vector, and its OrtValues then follow the slots into the next Run
            vec = self.py.get_outputs_as_ortvaluevector()
            return [vec[i] for i in range(len(vec))]
        return self.py.get_outputs()


