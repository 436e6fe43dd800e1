"""Torch backend on cpu and cuda: the reference model, run as fast as torch allows.

On CUDA one eager decode step of a 1B model costs ~13 ms of kernel-launch overhead
against 0.83 ms of memory traffic (llama-3.2-1b shape, bf16, H100 80GB HBM3, torch
2.11): without a CUDA graph the number measures Python. So each decode step -- forward, argmax, cache write, position
and output bookkeeping -- is captured once per batch size in one CUDA graph, and decode
is n graph replays with no host synchronisation in between.
"""
from __future__ import annotations

from dataclasses import dataclass
import functools
import platform
import time
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np

from backends.base import BackendError, DecodeResult, LoadInfo, ModelBackend
from harness.schema import TORCH_DEVICE_TYPES, device_problem
from workloads.zoo import ModelSpec

if TYPE_CHECKING:
    import torch

    from workloads.models.llama import KVCache, Transformer

# torch (and the model code, which needs it) is imported when a backend is made, not when
# this module is: validating a suite (`harness run --dry-run`) reads TorchOptions and the
# class attributes only, and torch's import is ~2 s of a 2.5 s check.
torch = build_model = decode_step = quant = None

#: the Linear layers weight_quant replaces: every matmul of a decode step, the output head
#: included (it is a fifth of smollm2-135m's bytes); the embedding gather stays float
QUANTIZED_LINEARS = ("wqkv", "wo", "w13", "w2", "output")


def _import_torch() -> None:
    global torch, build_model, decode_step, quant
    if torch is None:
        import torch as _torch

        from backends import quant as _quant
        from workloads.models import build_model as _build, decode_step as _step

        torch, build_model, decode_step, quant = _torch, _build, _step, _quant


def _inference_mode(fn):
    """torch.inference_mode() as a decorator, without torch at class definition."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode():
            return fn(*args, **kwargs)
    return wrapper


@dataclass
class TorchOptions:
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int | None = None  # CPU intra-op threads; default: torch's choice (range: schema.RANGES)
    cuda_graphs: bool = True  # capture the decode step (cuda only)
    compile: bool = False  # torch.compile (inductor, default mode) the decode step first;
    # check each batch size against the uncompiled path: on an H100 inductor made
    # batch 64 fourteen times slower.
    #: weight-only quantization (backends/quant.py): int8 (cpu, cuda) or fp8 e4m3 (cuda,
    #: capability >= 8.9), one scale per output channel; activations stay at the cell's
    #: dtype and the cell's precision becomes this
    weight_quant: Optional[Literal["int8", "fp8"]] = None

    def problems(self) -> list[tuple[str, str]]:
        # checked at validation: torch.device() would refuse it only in the worker, and a
        # 200 kB one becomes a file name first
        why = device_problem(self.device, TORCH_DEVICE_TYPES)
        if why:
            return [("device", why)]
        if self.weight_quant:
            # imports torch (~2 s), paid only by suites that quantize. The device type is
            # known now; the GPU's capability only in the worker (TorchBackend.__init__).
            from backends.quant import device_type_problem

            why = device_type_problem(self.weight_quant, self.device.split(":")[0])
            if why:
                return [("weight_quant", why)]
        return []


@dataclass
class _State:
    first: torch.Tensor  # [B, 1] on device: the token prefill generated
    next_token: torch.Tensor  # [B, 1] on device: the token the next decode step feeds
    pos: int  # position of next_token


class _CapturedDecode:
    """One decode step in a CUDA graph over static buffers: reads tok/pos, writes the
    argmax into out[:, step] and advances tok, pos and step, all on the device."""

    def __init__(self, model: Transformer, step_fn, batch: int, max_new: int, device):
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.out = torch.zeros(batch, max_new, dtype=torch.long, device=device)

        def body():
            nxt = step_fn(model, self.tok, self.pos).argmax(-1, keepdim=True)
            self.out.index_copy_(1, self.step, nxt)
            self.tok.copy_(nxt)
            self.pos.add_(1)
            self.step.add_(1)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture, as CUDA graphs require
            for _ in range(3):
                self.step.zero_()
                body()
        torch.cuda.current_stream().wait_stream(side)
        self.step.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            body()


class TorchBackend(ModelBackend):
    name = "torch"
    Options = TorchOptions
    dtypes = ("fp32", "bf16", "fp16")

    def __init__(self, options: TorchOptions):
        super().__init__(options)
        _import_torch()
        self.device = torch.device(options.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device {options.device!r} asked for, but this torch ({torch.__version__}) "
                               "sees no CUDA device")
        if self.device.type not in ("cpu", "cuda"):
            raise BackendError(f"torch backend runs on cpu or cuda, not {options.device!r}")
        if options.weight_quant:  # an fp8 request on a pre-Ada GPU is refused here, naming the key
            why = quant.capability_problem(options.weight_quant, self.device.type, quant.device_capability(self.device))
            if why:
                raise BackendError(f"weight_quant: {why}")
        if options.threads:
            torch.set_num_threads(options.threads)
        self.model: Transformer | None = None
        self._caches: dict[tuple[int, int], list[KVCache]] = {}  # (batch, positions) -> cache set
        self._graphs: dict[tuple[int, int], _CapturedDecode] = {}
        self._seq_for_batch: dict[int, int] = {}
        self._step_fn = decode_step

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def weights_device(self) -> str:
        return str(self.device)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "torch": torch.__version__, "device": str(self.device),
                                "threads": torch.get_num_threads(), "weight_quant": self.options.weight_quant}
        if self.is_cuda:
            p = torch.cuda.get_device_properties(self.device)
            info.update(gpu=p.name, gpu_memory_bytes=p.total_memory, cuda=torch.version.cuda,
                        capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count)
        else:
            info.update(cpu=platform.processor() or platform.machine(), mkldnn=torch.backends.mkldnn.is_available())
        return info

    def load(self, spec: ModelSpec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        t0 = time.perf_counter()
        self.model = build_model(spec, dtype, self.device)
        details = {"weights": "checkpoint" if spec.checkpoint else f"random(seed={spec.seed})"}
        if self.options.weight_quant:
            done = quant.quantize_linears(self.model, self.options.weight_quant, QUANTIZED_LINEARS)
            details.update(precision=self.options.weight_quant, weight_scales="per output channel",
                           activations=dtype, quantized_linears=len(done))
        self.model.setup_cache(max_batch, max_seq)
        self._caches = {(max_batch, max_seq): self.model.get_caches()}
        self.synchronize()
        load_s = time.perf_counter() - t0
        compile_s = 0.0
        if self.options.compile:
            t1 = time.perf_counter()
            self._step_fn = torch.compile(decode_step, mode="default", fullgraph=True, dynamic=False)
            compile_s = time.perf_counter() - t1  # lazy: the real cost lands in prepare()
        return LoadInfo(load_s=load_s, compile_s=compile_s, details=details)

    def prepare(self, batch: int, seq_len: int) -> float:
        t0 = time.perf_counter()
        self._seq_for_batch[batch] = seq_len
        self._use_batch(batch)
        key = (batch, seq_len)
        if quant.use_cuda_graph(self.device, self.options.cuda_graphs) and key not in self._graphs:
            with torch.inference_mode():
                self._graphs[key] = _CapturedDecode(self.model, self._step_fn, batch, seq_len, self.device)
        elif self.options.compile and not self.is_cuda:
            with torch.inference_mode():  # trigger compilation outside the timed window
                tok = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
                self._step_fn(self.model, tok, torch.zeros(1, dtype=torch.long, device=self.device))
        self.synchronize()
        return time.perf_counter() - t0

    def _use_batch(self, batch: int) -> tuple[int, int]:
        """Switch the model to the cache set of this batch (and its prepared length)."""
        key = (batch, self._seq_for_batch.get(batch, self.model.max_seq))
        if key not in self._caches:
            self._caches[key] = self.model.new_caches(*key)
        if (self.model.max_batch, self.model.cache_len) != key:
            self.model.set_caches(self._caches[key])
        return key

    @_inference_mode
    def prefill(self, token_ids: np.ndarray) -> _State:
        tokens = torch.from_numpy(np.ascontiguousarray(token_ids)).to(self.device, non_blocking=True)
        self._use_batch(tokens.shape[0])
        pos = torch.arange(tokens.shape[1], device=self.device)
        logits = self.model(tokens, pos, prefill=True, last_only=True)
        first = logits[:, -1].argmax(-1, keepdim=True)
        return _State(first, first, tokens.shape[1])

    def first_tokens(self, state: _State) -> np.ndarray:
        return state.first[:, 0].cpu().numpy()

    @_inference_mode
    def decode(self, state: _State, n: int) -> DecodeResult:
        batch = state.next_token.shape[0]
        if state.pos + n > self.model.cache_len:
            raise BackendError(f"decode to position {state.pos + n} exceeds the cache ({self.model.cache_len})")
        graph = self._graphs.get((batch, self.model.cache_len)) if self.is_cuda else None
        if graph is not None:
            return self._decode_graph(graph, state, n)
        out = torch.empty(batch, n, dtype=torch.long, device=self.device)
        tok, pos = state.next_token, torch.tensor([state.pos], device=self.device)
        times = []
        t0 = time.perf_counter()
        for i in range(n):
            tok = self._step_fn(self.model, tok, pos).argmax(-1, keepdim=True)
            out[:, i : i + 1] = tok
            pos += 1
            if not self.is_cuda:  # on cpu a step is done when it returns
                times.append(time.perf_counter() - t0)
        state.next_token, state.pos = tok, state.pos + n  # a later decode(state, ...) carries on
        return DecodeResult(out.cpu().numpy(), times or None)

    def _decode_graph(self, g: _CapturedDecode, state: _State, n: int) -> DecodeResult:
        g.tok.copy_(state.next_token)
        g.pos.fill_(state.pos)
        g.step.zero_()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        events[0].record()
        for i in range(n):
            g.graph.replay()
            events[i + 1].record()
        # the next replay overwrites g.tok: the state keeps its own copy. Queued after the
        # last event, so the step times do not include it, and launched while the device
        # is still replaying, so it adds no host wait.
        state.next_token, state.pos = g.tok.clone(), state.pos + n
        events[-1].synchronize()
        times = [events[0].elapsed_time(e) / 1e3 for e in events[1:]]
        return DecodeResult(g.out[:, :n].cpu().numpy(), times)

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def meters(self) -> list[dict[str, Any]]:
        if self.is_cuda:
            return [{"type": "nvml", "index": self.device.index or 0}]
        return [{"type": "rapl"}]

    def slot_decoder(self, n_slots: int, max_seq: int):
        """Continuous batching (backends/torch_slots.py): per-sequence positions in one
        cache of n_slots rows (the static path's cache set of that shape, reused)."""
        from backends.torch_slots import TorchSlotDecoder

        if (n_slots, max_seq) not in self._caches:
            self._caches[(n_slots, max_seq)] = self.model.new_caches(n_slots, max_seq)
        return TorchSlotDecoder(self.model, self._caches[(n_slots, max_seq)], n_slots, max_seq, self.device,
                                cuda_graphs=self.options.cuda_graphs)

    def memory(self) -> dict[str, int]:
        """Peak device memory since the last call (cuda), for the cell's record."""
        if not self.is_cuda:
            return {}
        peak = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return {"device_peak_bytes": int(peak)}

    @_inference_mode
    def logits(self, token_ids: np.ndarray, n_prefill: int) -> np.ndarray:
        tokens = torch.from_numpy(np.ascontiguousarray(token_ids)).to(self.device)
        B, T = tokens.shape
        saved = self.model.get_caches()
        self.model.set_caches(self.model.new_caches(B))
        try:
            pos = torch.arange(n_prefill, device=self.device)
            out = [self.model(tokens[:, :n_prefill], pos, prefill=True)]
            for t in range(n_prefill, T):
                out.append(self.model(tokens[:, t : t + 1], torch.tensor([t], device=self.device), prefill=False))
            return torch.cat(out, dim=1).float().cpu().numpy()
        finally:
            self.model.set_caches(saved)

    def close(self) -> None:
        self.model = None
        self._caches.clear()
        self._graphs.clear()
        if self.is_cuda:
            torch.cuda.empty_cache()

