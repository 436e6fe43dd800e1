"""Hugging Face transformers backend: the same architecture and weights run through
`LlamaForCausalLM.generate`, eager, as most users first run a model.

It exists to be measured beside the tuned torch backend on the same card: on an H100
80GB HBM3, transformers 5.17 `generate` (eager, dynamic cache) decoded the llama-3.2-1b
shape at batch 1 at 1.3 % of the bandwidth limit (15.4 tok/s, 8.2 J/token) where a
static-cache loop replaying one CUDA graph per token reached 39 % (474 tok/s, 0.61
J/token), and 63-69 % on the 8B shape. That gap is what a procurement team must see
before believing "N x more efficient than a GPU".
"""
from __future__ import annotations

from dataclasses import dataclass
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import BackendError, DecodeResult, LoadInfo, ModelBackend
from harness.schema import TORCH_DEVICE_TYPES, device_problem
from workloads.zoo import ModelSpec


@dataclass
class HFOptions:
    device: str = "cpu"
    attn_implementation: str = "sdpa"  # sdpa | eager
    cache_implementation: str | None = None  # None (dynamic) | static

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if why := device_problem(self.device, TORCH_DEVICE_TYPES):
            out.append(("device", why))
        if self.attn_implementation not in ("sdpa", "eager"):
            out.append(("attn_implementation", f"expected sdpa or eager, got {self.attn_implementation[:60]!r}"))
        if self.cache_implementation not in (None, "static"):
            out.append(("cache_implementation", f"expected static (or no value: dynamic), "
                                                f"got {self.cache_implementation[:60]!r}"))
        return out


def _import():
    try:
        import torch
        import transformers
    except ImportError:
        raise BackendError("the transformers backend needs Hugging Face transformers: "
                           "pip install 'accel-harness[hf]'") from None
    return torch, transformers


@dataclass
class _State:
    first: Any  # [B] the token prefill generated
    sequences: Any  # [B, P + 1 + tokens decoded so far]: prompt and generated tokens
    past: Any  # the cache of every position of sequences but the last


class _StepClock:
    """A generate() streamer that timestamps each new token (after a device sync)."""

    def __init__(self, torch, device):
        self.torch, self.device, self.t0, self.times, self.calls = torch, device, 0.0, [], 0

    def put(self, value):
        self.calls += 1
        if self.calls == 1:  # generate() first hands over the prompt
            return
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - self.t0)

    def end(self):
        pass


class HFBackend(ModelBackend):
    name = "transformers"
    Options = HFOptions
    dtypes = ("fp32", "bf16", "fp16")

    def __init__(self, options: HFOptions):
        super().__init__(options)
        self.torch, self.transformers = _import()
        self.device = self.torch.device(options.device)
        if self.device.type == "cuda" and not self.torch.cuda.is_available():
            raise BackendError(f"device {options.device!r} asked for, but torch sees no CUDA device")
        self.model = None

    def weights_device(self) -> str:
        return str(self.device)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "transformers": self.transformers.__version__, "torch": self.torch.__version__,
                "device": str(self.device), "attn_implementation": self.options.attn_implementation,
                "cache_implementation": self.options.cache_implementation or "dynamic"}

    def load(self, spec: ModelSpec, dtype: str, max_batch: int, max_seq: int) -> LoadInfo:
        from workloads.models import TORCH_DTYPES, build_model
        from workloads.models.weights import save_hf_checkpoint

        t0 = time.perf_counter()
        folder = spec.checkpoint
        tmp = None
        if not folder:  # the same seeded weights, written once in the HF layout
            tmp = tempfile.TemporaryDirectory(prefix="harness-hf-")
            save_hf_checkpoint(build_model(spec, "fp32", self.device), Path(tmp.name))
            folder = tmp.name
        self.model = self.transformers.LlamaForCausalLM.from_pretrained(
            folder, dtype=TORCH_DTYPES[dtype], attn_implementation=self.options.attn_implementation
        ).to(self.device).eval()
        if tmp:
            tmp.cleanup()
        self.model.generation_config.pad_token_id = 0
        self.model.generation_config.eos_token_id = None  # fixed lengths: never stop early
        self.max_seq = max_seq
        return LoadInfo(load_s=time.perf_counter() - t0, details={"stack": "transformers generate"})

    def _generate(self, input_ids, n: int, past=None, streamer=None):
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                  use_cache=True, streamer=streamer)
        if self.options.cache_implementation == "static" and past is None:
            # generate() would size a static cache it makes itself to this call (prompt + n),
            # and the decode calls that continue it would write past its end ("index_copy_():
            # index 32 is out of bounds"). One cache sized to the cell's longest sequence,
            # made here, serves prefill and every decode after it.
            past = self.transformers.StaticCache(config=self.model.config, max_cache_len=self.max_seq)
        if past is not None:
            kw["past_key_values"] = past
        return self.model.generate(input_ids, attention_mask=self.torch.ones_like(input_ids), **kw)

    def prefill(self, token_ids: np.ndarray) -> _State:
        with self.torch.inference_mode():
            ids = self.torch.from_numpy(np.ascontiguousarray(token_ids)).to(self.device)
            out = self._generate(ids, 1)
        return _State(out.sequences[:, -1], out.sequences, out.past_key_values)

    def first_tokens(self, state: _State) -> np.ndarray:
        return state.first.cpu().numpy()

    def decode(self, state: _State, n: int) -> DecodeResult:
        clock = _StepClock(self.torch, self.device)
        with self.torch.inference_mode():
            clock.t0 = time.perf_counter()
            out = self._generate(state.sequences, n, past=state.past, streamer=clock)
        new = out.sequences[:, state.sequences.shape[1]:]
        # generate() extended the cache in place; the sequences must follow it, so that a
        # later decode(state, ...) carries on
        state.sequences, state.past = out.sequences, out.past_key_values
        return DecodeResult(new.cpu().numpy(), clock.times[:n] if len(clock.times) >= n else None)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def meters(self) -> list[dict[str, Any]]:
        return [{"type": "nvml", "index": self.device.index or 0}] if self.device.type == "cuda" else [{"type": "rapl"}]

    def logits(self, token_ids: np.ndarray, n_prefill: int) -> np.ndarray:
        torch = self.torch
        ids = torch.from_numpy(np.ascontiguousarray(token_ids)).to(self.device)
        with torch.inference_mode():
            out = self.model(ids[:, :n_prefill], use_cache=True)
            logits, past = [out.logits.float()], out.past_key_values
            for t in range(n_prefill, ids.shape[1]):
                out = self.model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
                logits.append(out.logits.float())
                past = out.past_key_values
        return torch.cat(logits, dim=1).cpu().numpy()

    def close(self) -> None:
        self.model = None
