"""Measure a device's ceilings once: memory bandwidth (large copy) and matmul rate per dtype.

Stored as JSON beside the results (<output>/calibration/<host>_<device>.json) with the
machine's inventory; every run on that host and device then carries it in run.json, and
tables show roofline %: how close each cell came to what the hardware can physically do.
A figure above 100 % means the measurement or the model of the work is wrong, and is
flagged as suspect, never shown as a win.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from harness.results import write_json_atomic


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device, min_s: float, max_iters: int = 1000) -> float:
    """Best single-iteration time over repeated calls filling at least min_s."""
    fn()
    _sync(device)
    best, total, n = float("inf"), 0.0, 0
    while (total < min_s or n < 3) and n < max_iters:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def copy_bandwidth(device: torch.device, nbytes: int, min_s: float = 1.0) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus written."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src), device, min_s)
    return 2 * n * 4 / t


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, min_s: float = 1.0) -> float:
    """FLOP/s of a square matmul (2 n^3 per product), best iteration."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    t = _best_time(lambda: torch.mm(a, b), device, min_s)
    return 2 * size**3 / t


def calibrate(device: str = "cpu", quick: bool = False) -> dict:
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    copy_bytes = (1 << 30) if cuda else (256 << 20)
    sizes = {"fp32": 8192 if cuda else 1024, "bf16": 8192 if cuda else 1024, "fp16": 8192 if cuda else 1024}
    if quick:
        copy_bytes //= 4
        sizes = {k: v // 2 for k, v in sizes.items()}
    min_s = 0.3 if quick else 1.0
    out = {"device": device, "host": platform.node(), "measured_at": time.time(), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           "memory_bandwidth_Bps": copy_bandwidth(dev, copy_bytes, min_s), "copy_bytes": copy_bytes,
           "matmul_flops": {}}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(dev)
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            out["matmul_flops"][name] = matmul_rate(dev, dt, sizes[name], min_s)
        except RuntimeError as e:  # a dtype the device cannot multiply
            out["matmul_flops"][name] = None
            out.setdefault("notes", []).append(f"{name} matmul failed: {e}")
    return out


def calibration_path(output: str | Path, device: str, host: str | None = None) -> Path:
    host = host or platform.node() or "host"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{host}_{device}")
    return Path(output) / "calibration" / f"{safe}.json"


def save(cal: dict, output: str | Path) -> Path:
    path = calibration_path(output, cal["device"], cal["host"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, cal)
    return path


def load_for(output: str | Path, device: str) -> dict | None:
    path = calibration_path(output, device)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
