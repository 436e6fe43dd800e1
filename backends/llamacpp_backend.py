"""llama.cpp backend (llama-cpp-python, low-level API): the stack CPU users reach for first.

The reference model of `workloads.models` (same architecture, same seeded weights or
local checkpoint) is written to GGUF by `workloads.export_gguf` (cached on disk) and run
by llama.cpp through its C API as wrapped by llama-cpp-python -- no `Llama` class, no
sampler chain, no tokenizer:

- one context holds a KV cache for max_batch sequences (one sequence id per batch row,
  a stream of ceil256(max_seq) cells each, kv_unified off);
- prefill submits all prompts in one `llama_batch` (split at n_batch tokens), asking for
  logits at each prompt's last position only;
- a decode step submits one token per sequence in one `llama_batch`, so the batch is
  decoded together (one weight read per step), then takes the argmax of each row of
  the logits in numpy (greedy). Per-step timestamps are host-side (llama_decode returns
  once the step is computed, CPU or GPU).

Precision. A cell's dtype picks the GGUF precision (fp32 -> f32, fp16 -> f16); the
`precision` option overrides it (f32 | f16 | q8_0 | q4_0). The precision actually run is
reported in LoadInfo.details["precision"] in the harness's vocabulary -- "fp32", "fp16",
"q8_0", "q4_0", the keys of harness.accuracy.TOLERANCE -- so a q8_0 cell never stands in
the same row as an fp32 one. details["gguf_precision"] keeps llama.cpp's spelling.

f32 is f32 end to end: KV cache in f32 and flash attention off (llama.cpp's CPU flash
attention rounds through f16: 1.3e-3 relative logit error on `tiny`, against 1.3e-6
without it and a 1e-4 fp32 gate). Other precisions get llama.cpp's defaults (f16 KV
cache, flash attention "auto"). The `kv_type` and `flash_attn` options override.

GPU offload: `n_gpu_layers` (-1 = all) works where the installed build has a GPU backend
(CUDA, Vulkan, Metal, CANN...; reinstall with CMAKE_ARGS, e.g. -DGGML_CUDA=on);
`describe()` records `llama_print_system_info()` (compiled backends, SIMD flags).

Intel AMX: a build made on an AMX CPU (GGML_NATIVE) moves q8_0/q4_0 weights into AMX
buffers. In some VMs the CPU advertises AMX and the kernel grants it, yet the first tile
instruction raises SIGILL (seen in a Firecracker guest on a Sapphire Rapids host), which
would kill the whole process. So before loading quantized weights from such a build the
backend runs the AMX path once in a child process on a throwaway 1-layer model, caches
the verdict (per llama.cpp build, CPU and kernel) next to the GGUF files, and turns the
extra buffer types off where it crashed (details["extra_bufts"], ["extra_bufts_reason"]).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import ctypes
import hashlib
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Literal

import numpy as np

from backends.base import BackendError, DecodeResult, LoadInfo, ModelBackend, cpu_model
from harness.schema import device_problem
from workloads.zoo import ModelSpec

INSTALL_HINT = "pip install 'accel-harness[llamacpp]'"

#: option spellings -> GGUF precision
_PRECISION_ALIASES = {"f32": "f32", "fp32": "f32", "f16": "f16", "fp16": "f16", "q8_0": "q8_0", "q4_0": "q4_0"}
#: GGUF precision -> the harness's precision name (record field; accuracy tolerance key)
HARNESS_PRECISION = {"f32": "fp32", "f16": "fp16", "q8_0": "q8_0", "q4_0": "q4_0"}
#: ggml_type values for the KV cache
_GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


@dataclass
class LlamaCppOptions:
    device: str = "cpu"  # label for tables; name the GPU (cuda:0, vulkan0, metal...) when layers are offloaded
    threads: int | None = field(default=None, metadata={"range": (1, 4096)})  # decode; default: the CPUs we may use
    threads_batch: int | None = field(default=None, metadata={"range": (1, 4096)})  # prefill; default: threads
    n_gpu_layers: int = field(default=0, metadata={"range": (-1, 100_000)})  # offloaded to the GPU backend; -1 = all
    precision: Literal["f32", "f16", "q8_0", "q4_0", "fp32", "fp16"] | None = None  # default: from dtype
    n_batch: int = field(default=2048, metadata={"range": (1, 1 << 20)})  # most tokens one llama_decode takes
    n_ubatch: int = field(default=512, metadata={"range": (1, 1 << 20)})  # physical micro-batch
    kv_type: Literal["f32", "f16", "q8_0"] | None = None  # default: f32 for f32 weights, else f16
    flash_attn: Literal["auto", "on", "off"] | None = None  # default: off for f32 weights, else llama.cpp's auto
    kv_unified: bool = False  # one KV buffer shared by all sequences (llama.cpp's default: a stream each)
    cache_dir: str | None = None  # GGUF cache folder; default $ACCEL_HARNESS_CACHE/gguf
    # llama.cpp's extra weight buffers (CPU repacking, Intel AMX) for quantized weights;
    # None = on, unless a one-off probe in a child process sees the AMX kernels crash
    extra_bufts: bool | None = None
    verbose: bool = False  # pass llama.cpp's own log through to stderr

    def problems(self) -> list[tuple[str, str]]:
        # a label only (llama.cpp picks its GPU itself), but it names files: bounded syntax
        why = device_problem(self.device, label=True)
        return [("device", why)] if why else []


# --- llama-cpp-python import and logging ------------------------------------------------

_LOG_TAIL: deque[str] = deque(maxlen=40)  # llama.cpp's last warnings/errors, for messages
_LOG_STATE: dict[str, Any] = {"verbose": False, "callback": None, "initialised": False}


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise BackendError(f"the llama.cpp backend needs llama-cpp-python, which is not installed ({e}): "
                           f"{INSTALL_HINT} (builds llama.cpp from source, about 6 minutes; for a GPU build "
                           "set CMAKE_ARGS first, e.g. CMAKE_ARGS='-DGGML_CUDA=on')") from None
    except (OSError, RuntimeError) as e:  # the shared library did not load
        raise BackendError(f"llama-cpp-python is installed but its llama.cpp library does not load: {e}; "
                           "reinstall it: pip install --force-reinstall --no-cache-dir "
                           "'accel-harness[llamacpp]'") from None
    if not _LOG_STATE["initialised"]:
        @llama_cpp.llama_log_callback
        def _log(level, text, user_data):  # noqa: ARG001
            msg = text.decode("utf-8", "replace") if text else ""
            if _LOG_STATE["verbose"]:
                import sys

                sys.stderr.write(msg)
            elif level in (3, 4) and msg.strip():  # GGML_LOG_LEVEL_WARN, _ERROR
                _LOG_TAIL.append(msg.rstrip())

        _LOG_STATE["callback"] = _log  # keep a reference: the C side holds a raw pointer
        llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _LOG_STATE["initialised"] = True
    return llama_cpp


def _log_tail(n: int = 6) -> str:
    lines = list(_LOG_TAIL)[-n:]
    return ("; llama.cpp said: " + " | ".join(lines)) if lines else ""


def system_info() -> dict[str, Any]:
    """llama.cpp's build: the raw llama_print_system_info() string, and it parsed into
    the compiled backends with their feature flags (e.g. {"CPU": {"AVX2": "1", ...}})."""
    lc = _import_llama_cpp()
    raw = lc.llama_print_system_info().decode("utf-8", "replace").strip()
    parsed: dict[str, dict[str, str]] = {}
    current = "general"
    for part in raw.split("|"):
        part = part.strip()
        if not part:
            continue
        if ":" in part and "=" not in part.split(":", 1)[0]:
            current, part = (s.strip() for s in part.split(":", 1))
        if "=" in part:
            k, v = (s.strip() for s in part.split("=", 1))
            parsed.setdefault(current, {})[k] = v
    return {"raw": raw, "backends": parsed}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


# --- can this build's AMX kernels run here? -------------------------------------------

_PROBE_SCRIPT = r"""
import ctypes, sys
import llama_cpp as lc
quiet = lc.llama_log_callback(lambda level, text, data: None)
lc.llama_log_set(quiet, ctypes.c_void_p(0))
lc.llama_backend_init()
mp = lc.llama_model_default_params()
mp.use_extra_bufts = True
mp.n_gpu_layers = 0
model = lc.llama_model_load_from_file(sys.argv[1].encode(), mp)
cp = lc.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 256, 64, 64, 1
cp.n_threads = cp.n_threads_batch = 2
ctx = lc.llama_init_from_model(model, cp)
b = lc.llama_batch_init(64, 0, 1)
rcs = []
for n, start in ((64, 0), (1, 64)):  # a prefill and a decode step: both matmul paths
    for i in range(n):
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = (7 * i) % 200, start + i, 1, int(i == n - 1)
        b.seq_id[i][0] = 0
    b.n_tokens = n
    rcs.append(lc.llama_decode(ctx, b))
print("probe-ok" if rcs == [0, 0] else f"probe-rc {rcs}")
"""
_PROBED: dict[str, tuple[bool, str]] = {}




def extra_bufts_usable(lc, cache_dir: str | None = None) -> tuple[bool, str]:
    """Whether llama.cpp's extra buffer types may be used for quantized weights here:
    (verdict, reason). Only builds with AMX need the child-process probe."""
    info = lc.llama_print_system_info().decode("utf-8", "replace")
    if "AMX_INT8 = 1" not in info:
        return True, "no AMX kernels in this build"
    key = hashlib.sha256("|".join([getattr(lc, "__version__", "?"), info, cpu_model(), platform.release()])
                         .encode()).hexdigest()[:16]
    if key in _PROBED:
        return _PROBED[key]
    from workloads.export_gguf import cache_root, random_tensors, write_tensors
    from workloads.zoo import ModelArgs

    verdict_file = cache_root(cache_dir) / f"probe-amx-{key}.json"
    try:
        v = json.loads(verdict_file.read_text())
        _PROBED[key] = (bool(v["ok"]), str(v["reason"]))
        return _PROBED[key]
    except (OSError, ValueError, KeyError):
        pass
    args = ModelArgs("amx-probe", vocab_size=256, dim=256, n_layers=1, n_heads=4, n_kv_heads=4, ffn_dim=512,
                     tie_embeddings=True, max_seq_len=256)
    with tempfile.TemporaryDirectory(prefix="accel-harness-amx-probe-") as tmp:
        path = Path(tmp) / "probe.gguf"
        write_tensors(args, random_tensors(args), path, "q8_0")
        try:
            r = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT, str(path)], capture_output=True, text=True,
                               timeout=300)
            out, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired:
            out, rc = "timed out", None
    if rc == 0 and "probe-ok" in out:
        result = (True, "AMX kernels ran in a probe")
    elif rc is not None and rc < 0:
        import signal

        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = str(-rc)
        result = (False, f"AMX kernels died with {sig} in a probe: extra buffer types (AMX, repacking) off")
    else:
        result = (False, f"AMX probe failed ({out.strip()[-200:]}): extra buffer types (AMX, repacking) off")
    _PROBED[key] = result
    try:
        verdict_file.parent.mkdir(parents=True, exist_ok=True)
        verdict_file.write_text(json.dumps({"ok": result[0], "reason": result[1], "system_info": info.strip(),
                                            "cpu": cpu_model(), "kernel": platform.release()}))
    except OSError:
        pass
    return result


# --- the backend ------------------------------------------------------------------------

@dataclass
class _State:
    first: np.ndarray  # [B] int32, the token prefill generated
    next_token: np.ndarray  # [B] int32, the token each sequence feeds next
    pos: int  # position of next_token


class _Context:
    """A llama_context with its own batch buffer, sized for n_seq sequences of n_ctx_seq."""

    def __init__(self, lc, model, n_seq: int, max_seq: int, opts: LlamaCppOptions, threads: int,
                 threads_batch: int, kv_type: str, flash_attn: str):
        self.lc = lc
        p = lc.llama_context_default_params()
        p.n_seq_max = n_seq
        p.n_ctx = n_seq * max_seq  # llama.cpp pads each sequence's share to a multiple of 256
        p.n_batch = opts.n_batch
        p.n_ubatch = min(opts.n_ubatch, opts.n_batch)
        p.n_threads = threads
        p.n_threads_batch = threads_batch
        p.type_k = p.type_v = _GGML_TYPES[kv_type]
        p.flash_attn_type = _FLASH_ATTN[flash_attn]
        p.kv_unified = bool(opts.kv_unified)
        p.no_perf = True
        p.embeddings = False
        self.ctx = lc.llama_init_from_model(model, p)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not create a context for {n_seq} sequences of {max_seq} "
                               f"tokens (KV {kv_type}){_log_tail()}")
        self.n_seq = n_seq
        self.n_ctx_seq = int(lc.llama_n_ctx_seq(self.ctx))
        self.n_batch = int(lc.llama_n_batch(self.ctx))
        self.n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model)))
        self.mem = lc.llama_get_memory(self.ctx)
        cap = max(self.n_batch, n_seq)
        self.batch = lc.llama_batch_init(cap, 0, 1)
        self.cap = cap
        # numpy views of the batch's arrays: filling them is a vector copy, not a Python loop
        self.tok = np.ctypeslib.as_array(self.batch.token, shape=(cap,))
        self.pos = np.ctypeslib.as_array(self.batch.pos, shape=(cap,))
        self.n_seq_id = np.ctypeslib.as_array(self.batch.n_seq_id, shape=(cap,))
        self.out = np.ctypeslib.as_array(self.batch.logits, shape=(cap,))
        self.n_seq_id[:] = 1
        self._seq_rows = np.full(cap, -1, dtype=np.int64)  # seq id currently written in each row

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.mem, True)

    def _set_seq(self, seq: np.ndarray) -> None:
        n = len(seq)
        changed = np.nonzero(self._seq_rows[:n] != seq)[0]
        for i in changed:  # rows keep their seq id between decode steps: usually nothing to do
            self.batch.seq_id[int(i)][0] = int(seq[i])
        self._seq_rows[:n] = seq

    def run(self, tokens: np.ndarray, pos: np.ndarray, seq: np.ndarray, want: np.ndarray) -> np.ndarray | None:
        """One llama_decode of len(tokens) <= n_batch tokens; returns the logits of the
        rows flagged in `want`, in batch order, as a view valid until the next call."""
        n = len(tokens)
        self.tok[:n] = tokens
        self.pos[:n] = pos
        self.out[:n] = want
        self._set_seq(seq)
        self.batch.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            what = {1: "no room left in the KV cache", 2: "aborted", -1: "invalid batch"}.get(rc, "fatal error")
            raise BackendError(f"llama_decode returned {rc} ({what}) for {n} tokens{_log_tail()}")
        n_out = int(np.count_nonzero(want))
        if not n_out:
            return None
        first = int(np.argmax(want != 0))
        # the outputs of a batch are stored contiguously in batch order (llama.h), so the
        # first wanted row's pointer starts an [n_out, n_vocab] block
        ptr = self.lc.llama_get_logits_ith(self.ctx, first)
        if not ptr:
            raise BackendError(f"llama.cpp returned no logits for batch row {first}{_log_tail()}")
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))

    def close(self) -> None:
        if self.ctx:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None


class LlamaCppBackend(ModelBackend):
    name = "llama.cpp"
    Options = LlamaCppOptions
    dtypes = ("fp32", "fp16")
    requires = {"llama_cpp": "llama-cpp-python>=0.3", "gguf": "gguf>=0.10"}

    def __init__(self, options: LlamaCppOptions):
        super().__init__(options)
        self.lc = _import_llama_cpp()
        _LOG_STATE["verbose"] = bool(options.verbose)
        try:
            import gguf  # noqa: F401 - needed to write the model
        except ImportError:
            raise BackendError(f"the llama.cpp backend needs the `gguf` package to write models: "
                               f"{INSTALL_HINT}") from None
        if options.n_gpu_layers and not self.lc.llama_supports_gpu_offload():
            raise BackendError(f"n_gpu_layers={options.n_gpu_layers} asked for, but this llama.cpp build has no GPU "
                               "backend (llama_supports_gpu_offload() is false); reinstall llama-cpp-python with "
                               "CMAKE_ARGS naming one, e.g. CMAKE_ARGS='-DGGML_CUDA=on' or '-DGGML_VULKAN=on'")
        self.threads = options.threads or _cpus()
        self.threads_batch = options.threads_batch or self.threads
        self.model = None
        self.ctx: _Context | None = None
        self.precision: str | None = None
        self.kv_type: str | None = None
        self.flash_attn: str | None = None
        self.max_seq = 0

    # -- inventory ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        lc = self.lc
        info: dict[str, Any] = {
            "backend": self.name, "device": self.options.device,
            "llama_cpp_python": getattr(lc, "__version__", None),
            "system_info": system_info(),
            "gpu_offload_supported": bool(lc.llama_supports_gpu_offload()),
            "n_gpu_layers": self.options.n_gpu_layers,
            "threads": self.threads, "threads_batch": self.threads_batch,
            "cpu": platform.processor() or platform.machine(),
        }
        if self.precision:
            info["precision"] = HARNESS_PRECISION[self.precision]
        if self.model:
            buf = ctypes.create_string_buffer(256)
            lc.llama_model_desc(self.model, buf, len(buf))
            info["model_desc"] = buf.value.decode("utf-8", "replace")
            info["model_bytes"] = int(lc.llama_model_size(self.model))
        return info

    # -- loading -----------------------------------------------------------------------

    def _gguf_precision(self, dtype: str) -> str:
        if self.options.precision:
            return _PRECISION_ALIASES[self.options.precision]
        try:
            return _PRECISION_ALIASES[dtype]
        except KeyError:
            raise BackendError(f"llama.cpp backend runs dtypes {', '.join(self.dtypes)} (or a `precision` "
                               f"option: f32, f16, q8_0, q4_0), not {dtype!r}") from None

    def load(self, spec: ModelSpec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        from workloads.export_gguf import GGUFExportError, export_gguf

        lc = self.lc
        self.close()
        precision = self._gguf_precision(dtype)
        max_par = int(lc.llama_max_parallel_sequences())
        if max_batch > max_par:
            raise BackendError(f"batch {max_batch} exceeds llama.cpp's limit of {max_par} parallel sequences")
        try:
            exported = export_gguf(spec, precision, self.options.cache_dir)
        except GGUFExportError as e:
            raise BackendError(str(e)) from None

        t0 = time.perf_counter()
        extra, extra_reason = True, "default"
        if self.options.extra_bufts is not None:
            extra, extra_reason = self.options.extra_bufts, "option"
        elif precision in ("q8_0", "q4_0"):
            extra, extra_reason = extra_bufts_usable(lc, self.options.cache_dir)
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = self.options.n_gpu_layers
        mp.use_extra_bufts = extra
        self.model = lc.llama_model_load_from_file(str(exported.path).encode(), mp)
        if not self.model:
            raise BackendError(f"llama.cpp could not load {exported.path}{_log_tail()}")
        self.precision = precision
        self.kv_type = self.options.kv_type or ("f32" if precision == "f32" else "f16")
        self.flash_attn = self.options.flash_attn or ("off" if precision == "f32" else "auto")
        self.max_seq = max_seq
        self.ctx = self._new_context(max_batch, max_seq)
        load_s = time.perf_counter() - t0
        details = {
            "precision": HARNESS_PRECISION[precision], "gguf_precision": precision,
            "weights": "checkpoint" if spec.checkpoint else f"random(seed={spec.seed})",
            "gguf": str(exported.path), "gguf_bytes": exported.path.stat().st_size,
            "gguf_cache_hit": exported.cache_hit, "kv_type": self.kv_type,
            "extra_bufts": extra, "extra_bufts_reason": extra_reason,
            "flash_attn": self.flash_attn, "kv_unified": bool(self.options.kv_unified),
            "n_ctx_seq": self.ctx.n_ctx_seq, "n_seq_max": max_batch,
            "n_batch": self.ctx.n_batch, "n_ubatch": int(lc.llama_n_ubatch(self.ctx.ctx)),
            "threads": self.threads, "threads_batch": self.threads_batch,
            "n_gpu_layers": self.options.n_gpu_layers, "llama_cpp_python": getattr(lc, "__version__", None),
        }
        return LoadInfo(load_s=load_s, compile_s=exported.export_s, details=details)

    def _new_context(self, n_seq: int, max_seq: int) -> _Context:
        return _Context(self.lc, self.model, n_seq, max_seq, self.options, self.threads, self.threads_batch,
                        self.kv_type, self.flash_attn)

    def _need(self) -> _Context:
        if self.ctx is None:
            raise BackendError("llama.cpp backend: load() first")
        return self.ctx

    # -- running -----------------------------------------------------------------------

    def _prefill_on(self, ctx: _Context, token_ids: np.ndarray, all_logits: bool) -> np.ndarray:
        """Prompts [B, T] into an empty cache, sequence i as seq id i; returns the logits
        [B, vocab] of each last position, or [B, T, vocab] with all_logits."""
        B, T = token_ids.shape
        if B > ctx.n_seq:
            raise BackendError(f"batch {B} exceeds the context's {ctx.n_seq} sequences: load with max_batch >= {B}")
        if T > ctx.n_ctx_seq:
            raise BackendError(f"prompt of {T} tokens exceeds the KV cache ({ctx.n_ctx_seq} per sequence)")
        ctx.clear()
        toks = np.ascontiguousarray(token_ids, dtype=np.int32).reshape(-1)
        pos = np.tile(np.arange(T, dtype=np.int32), B)
        seq = np.repeat(np.arange(B, dtype=np.int64), T)
        want = np.ones(B * T, dtype=np.int8) if all_logits else np.tile(
            np.r_[np.zeros(T - 1, dtype=np.int8), np.ones(1, dtype=np.int8)], B)
        outs = []
        for s in range(0, B * T, ctx.n_batch):
            e = min(s + ctx.n_batch, B * T)
            got = ctx.run(toks[s:e], pos[s:e], seq[s:e], want[s:e])
            if got is not None:
                outs.append(got.copy())  # the buffer is reused by the next llama_decode
        logits = np.concatenate(outs, axis=0)
        return logits.reshape(B, T, -1) if all_logits else logits

    def prefill(self, token_ids: np.ndarray) -> _State:
        ctx = self._need()
        last = self._prefill_on(ctx, np.asarray(token_ids), all_logits=False)
        first = last.argmax(-1).astype(np.int32)
        return _State(first, first, int(token_ids.shape[1]))

    def first_tokens(self, state: _State) -> np.ndarray:
        return state.first.astype(np.int64)

    def decode(self, state: _State, n: int) -> DecodeResult:
        ctx = self._need()
        B = len(state.next_token)
        if state.pos + n > ctx.n_ctx_seq:
            raise BackendError(f"decode to position {state.pos + n} exceeds the KV cache "
                               f"({ctx.n_ctx_seq} per sequence)")
        out = np.empty((B, n), dtype=np.int64)
        seq = np.arange(B, dtype=np.int64)
        want = np.ones(B, dtype=np.int8)
        posv = np.empty(B, dtype=np.int32)
        tok = state.next_token
        times = []
        t0 = time.perf_counter()
        for i in range(n):
            posv.fill(state.pos + i)
            tok = ctx.run(tok, posv, seq, want).argmax(-1).astype(np.int32)
            out[:, i] = tok
            times.append(time.perf_counter() - t0)
        state.next_token, state.pos = tok, state.pos + n  # a later decode(state, ...) carries on
        return DecodeResult(out, times)

    def logits(self, token_ids: np.ndarray, n_prefill: int) -> np.ndarray:
        self._need()
        token_ids = np.asarray(token_ids)
        B, T = token_ids.shape
        ctx, own = self.ctx, False
        if B > ctx.n_seq or T > ctx.n_ctx_seq:  # the gate's shape is not the cells': a context of its own
            ctx, own = self._new_context(B, T), True
        try:
            out = np.empty((B, T, ctx.n_vocab), dtype=np.float32)
            out[:, :n_prefill] = self._prefill_on(ctx, token_ids[:, :n_prefill], all_logits=True)
            seq = np.arange(B, dtype=np.int64)
            want = np.ones(B, dtype=np.int8)
            for t in range(n_prefill, T):
                out[:, t] = ctx.run(token_ids[:, t].astype(np.int32), np.full(B, t, dtype=np.int32), seq, want)
            return out
        finally:
            if own:
                ctx.close()
            else:
                ctx.clear()

    def synchronize(self) -> None:
        # run() reads the logits of every llama_decode, which already waits for the device
        if self.ctx is not None:
            self.lc.llama_synchronize(self.ctx.ctx)

    def meters(self) -> list[dict[str, Any]]:
        dev = str(self.options.device)
        if self.options.n_gpu_layers and dev.startswith("cuda"):
            index = int(dev.split(":", 1)[1]) if ":" in dev else 0
            return [{"type": "nvml", "index": index}]
        return [{"type": "rapl"}]

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None
        if self.model:
            self.lc.llama_model_free(self.model)
            self.model = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
