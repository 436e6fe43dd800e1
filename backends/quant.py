"""Weight-only quantization for the torch backend: int8 and FP8 (e4m3) weights with one
scale per output channel, activations kept at the model's dtype.

Per output channel (one scale per row of a Linear's [out, in] weight) because each output
is then one dot product times one scale: the scale leaves the inner loop, and a fused
dequant-matmul (`F.linear(x, q.to(x.dtype)) * scale`, the gpt-fast formulation that
inductor fuses into one kernel) reads one byte per weight. Scales are symmetric
(absmax / qmax): random and trained Llama weights are centred on zero.

Everything here runs on CPU; only the capability guard asks CUDA, and only when told
the device is CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INT8_MAX = 127  # symmetric: -128 is never produced, so negation cannot overflow
E4M3_MAX = 448.0  # largest finite float8_e4m3fn; values are clamped to it before the cast
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with FP8 tensor cores

#: scheme -> (storage dtype name, largest representable magnitude)
SCHEMES = {"int8": ("int8", float(INT8_MAX)), "fp8": ("float8_e4m3fn", E4M3_MAX)}
#: where each scheme may run: int8 is plain integer storage (any device); FP8 needs CUDA
#: at capability 8.9 or later (on older cards and on CPU it would be emulated, measuring
#: the emulation, not the precision)
SCHEME_DEVICES = {"int8": ("cpu", "cuda"), "fp8": ("cuda",)}


@dataclass(frozen=True)
class QuantizedWeight:
    data: Tensor  # [out, in] int8 or float8_e4m3fn
    scale: Tensor  # [out] fp32: weight ~= data * scale[:, None]
    scheme: str


def channel_scales(w: Tensor, qmax: float) -> Tensor:
    """absmax(row) / qmax per output row, fp32. A row of zeros gets scale 1 (its codes are
    0, so it dequantizes to exact zeros) instead of 0, which would divide by zero."""
    amax = w.detach().float().abs().amax(dim=1)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize(w: Tensor, scheme: str) -> QuantizedWeight:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weight quantization {scheme!r}; known: {', '.join(SCHEMES)}")
    storage, qmax = SCHEMES[scheme]
    scale = channel_scales(w, qmax)
    scaled = w.detach().float() / scale[:, None]
    if scheme == "int8":
        data = scaled.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        data = to_e4m3(scaled)
    return QuantizedWeight(data.contiguous(), scale.contiguous(), scheme)


def to_e4m3(x: Tensor) -> Tensor:
    """Saturating cast to float8_e4m3fn. torch 2.13's CPU cast saturates by itself; the
    clamp makes the result not depend on which kernel (CPU, CUDA, a compiled one) casts,
    since e4m3fn has NaN but no infinity to overflow into."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def dequantize(q: QuantizedWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """The reference: data * scale in fp32, then cast."""
    return (q.data.float() * q.scale[:, None]).to(dtype)


class QuantLinear(nn.Module):
    """A bias-free Linear over a QuantizedWeight. The forward is plain tensor ops with
    static shapes (cast, matmul, scale), so it is captured in the decode step's CUDA
    graph like any Linear, and `compile: true` fuses the cast into the matmul."""

    def __init__(self, q: QuantizedWeight, compute_dtype: torch.dtype):
        super().__init__()
        self.scheme = q.scheme
        self.in_features, self.out_features = q.data.shape[1], q.data.shape[0]
        self.register_buffer("weight_q", q.data)
        # the scale in the activations' dtype: one multiply per output, no upcast kernel
        self.register_buffer("scale", q.scale.to(compute_dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_q.to(x.dtype)) * self.scale

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scheme={self.scheme}"


def quantize_linears(model: nn.Module, scheme: str, names: tuple[str, ...]) -> list[str]:
    """Replace each nn.Linear whose attribute name is in `names` by a QuantLinear, in place;
    returns the qualified names replaced. An embedding table tied to the output head stays
    a float table for the token gather (one row a step), and the head reads the int8 copy."""
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            if attr in names and isinstance(child, nn.Linear) and child.bias is None:
                w = child.weight
                setattr(parent, attr, QuantLinear(quantize(w, scheme), w.dtype).to(w.device))
                replaced.append(f"{parent_name}.{attr}" if parent_name else attr)
    return replaced


def device_type_problem(scheme: str, device_type: str) -> str | None:
    """Why `scheme` cannot run on this kind of device, or None (checked at validation,
    before any GPU is asked)."""
    if scheme not in SCHEMES:
        return f"unknown weight quantization {scheme!r}; known: {', '.join(SCHEMES)}"
    if device_type not in SCHEME_DEVICES[scheme]:
        return f"{scheme} weights need a device of type {' or '.join(SCHEME_DEVICES[scheme])}, not {device_type}"
    return None


def capability_problem(scheme: str, device_type: str, capability: tuple[int, int] | None) -> str | None:
    """Why `scheme` cannot run on this device, or None. capability: the CUDA device's
    (major, minor), None where there is none (CPU, or no GPU visible)."""
    why = device_type_problem(scheme, device_type)
    if why:
        return why
    if scheme == "fp8" and (capability is None or tuple(capability) < FP8_MIN_CAPABILITY):
        have = "none" if capability is None else f"{capability[0]}.{capability[1]}"
        return f"fp8 weights need CUDA capability >= 8.9 (Ada, Hopper or later); this device has {have}"
    return None


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None for any other device or when CUDA is absent."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


def use_cuda_graph(device: torch.device, cuda_graphs: bool) -> bool:
    """Capture the decode step in a CUDA graph only on a CUDA device that exists: on CPU,
    or where torch sees no GPU, decode runs the eager loop."""
    return bool(cuda_graphs) and device.type == "cuda" and torch.cuda.is_available()
