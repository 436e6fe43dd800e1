"""Measure a device's ceilings once: read bandwidth, copy bandwidth and matmul rate per dtype
(fp32, bf16, fp16, and the int8 and FP8 rates quantized cells compute at).

Decode reads every weight once per step and writes almost nothing, so its ceiling is the
*read* bandwidth, measured the way decode uses memory: a matrix-vector product over a
matrix far larger than any cache (and a read-only reduction), all threads, best of
several trials. Copy bandwidth (read + write) is kept as information only: on the
development machine it was 21.2 GB/s against 28.5 GB/s read, and as the ceiling it
flagged honest llama.cpp cells "101 % SUSPECT" (issue 18).

The trials' spread is recorded as the calibration's own noise margin: a cell is SUSPECT
only above 100 % plus that margin (harness/roofline.py).

Stored as JSON beside the results (<output>/calibration/<host>_<device>.json) and in the
user's cache (~/.cache/accel-harness/calibration/, or $XDG_CACHE_HOME), so every run on
that host and device carries it in run.json wherever its results are written.
"""
from __future__ import annotations

import json
import os
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


def _trial_rates(fn, nbytes: int, device, trials: int, min_s: float) -> list[float]:
    """Bytes per second of the best iteration in each of `trials` separate trials."""
    return [nbytes / _best_time(fn, device, min_s / trials) for _ in range(trials)]


def read_bandwidth(device: torch.device, nbytes: int, min_s: float = 1.0, trials: int = 5) -> dict:
    """Bytes per second read by the two read-only kernels decode looks like.

    matvec: y = W x over an fp32 matrix of `nbytes` (a decode step's matmuls at batch 1);
    reduce: sum over a buffer of `nbytes`. The ceiling is the better of the two, best trial;
    the noise margin is the relative gap between the best and the median trial of that kernel.
    """
    cols = 4096
    rows = max(1, nbytes // (4 * cols))
    w = torch.ones(rows, cols, dtype=torch.float32, device=device)
    x = torch.ones(cols, dtype=torch.float32, device=device)
    read = rows * cols * 4
    kernels = {"matvec": _trial_rates(lambda: torch.mv(w, x), read, device, trials, min_s),
               "reduce": _trial_rates(lambda: w.sum(), read, device, trials, min_s)}
    best_kernel = max(kernels, key=lambda k: max(kernels[k]))
    rates = sorted(kernels[best_kernel])
    best, median = rates[-1], rates[len(rates) // 2]
    return {"read_bandwidth_Bps": best, "read_kernel": best_kernel, "read_bytes": read,
            "read_noise": (best - median) / median if median else 0.0,
            "read_trials_Bps": {k: v for k, v in kernels.items()}}


def last_level_cache_bytes() -> int | None:
    """The CPU's largest cache, from sysfs (a model this small never leaves the cache)."""
    best = None
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size_file.read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KMGkmg")
        if digits.isdigit():
            best = max(best or 0, int(digits) * unit)
    return best


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, min_s: float = 1.0) -> float:
    """FLOP/s of a square matmul (2 n^3 per product), best iteration."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    t = _best_time(lambda: torch.mm(a, b), device, min_s)
    return 2 * size**3 / t


def _int8_operands(device: torch.device, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=g)
    return a.to(device), b.to(device)


def _ort_int8_rate(size: int, min_s: float, threads: int) -> float:
    """onnxruntime's MatMulInteger (uint8 x int8 -> int32): MLAS's integer GEMM, the kernel
    family behind its quantized operators and, like llama.cpp's q8_0 dot products, built on
    the CPU's integer multiply-add (VNNI where present, else AVX2 maddubs)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime of the last years reads
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8),
             "b": rng.integers(-128, 128, (size, size), dtype=np.int8)}
    t = _best_time(lambda: sess.run(None, feeds), torch.device("cpu"), min_s)
    return 2 * size**3 / t


def int8_matmul_rate(device: torch.device, size: int, min_s: float = 1.0) -> tuple[float | None, str, list[str]]:
    """(ops/s, kernel, notes) of the fastest int8 x int8 -> int32 matmul this device offers us.

    The prefill ceiling of an integer-quantized cell (int8, q8_0, q4_0 weights with int8
    activations). It must bound every engine's integer kernels, so it is the best of those
    we can reach: torch._int_mm (cuBLASLt's int8 tensor cores on CUDA; a slow reference loop
    on CPU, 2 GOP/s on the development machine) and, on CPU, onnxruntime's MLAS integer
    GEMM (363 GOP/s there, twice its fp32 SGEMM). A kernel that fails is a note, not a crash."""
    rates: dict[str, float] = {}
    notes: list[str] = []
    try:
        a, b = _int8_operands(device, size)
        rates["torch._int_mm"] = 2 * size**3 / _best_time(lambda: torch._int_mm(a, b), device, min_s)
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        notes.append(f"int8 torch._int_mm failed: {str(e).splitlines()[0][:200]}")
    if device.type == "cpu":
        try:
            rates["onnxruntime MatMulInteger"] = _ort_int8_rate(size, min_s, torch.get_num_threads())
        except Exception as e:  # noqa: BLE001 - an absent or broken onnxruntime leaves torch's figure
            notes.append(f"int8 onnxruntime MatMulInteger failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if not rates:
        return None, "", notes
    kernel = max(rates, key=rates.__getitem__)
    return rates[kernel], kernel, notes


#: FP8 tensor cores: Ada (8.9) and Hopper (9.0) and later
FP8_MIN_CAPABILITY = (8, 9)


def fp8_supported(device: torch.device) -> tuple[bool, str]:
    """(can this device multiply FP8 e4m3 natively, why not). CPU: no FP8 units; CUDA: capability 8.9+."""
    if device.type != "cuda":
        return False, "fp8 matmul: no FP8 units on a CPU (an FP8 cell there dequantizes to a float type)"
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return False, f"fp8 matmul: torch {torch.__version__} has no float8_e4m3fn / _scaled_mm"
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_MIN_CAPABILITY:
        return False, f"fp8 matmul: capability {cap[0]}.{cap[1]} is below {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}"
    return True, ""


def fp8_matmul_rate(device: torch.device, size: int, min_s: float = 1.0) -> float:
    """FLOP/s of an e4m3 x e4m3 -> bf16 matmul through torch._scaled_mm (per-tensor scales; the
    second operand column-major, as cuBLASLt's FP8 GEMM requires)."""
    a = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(size, size, device=device).to(torch.float8_e4m3fn).t().contiguous().t()
    one = torch.ones((), device=device, dtype=torch.float32)
    t = _best_time(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), device, min_s)
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
    read_bytes = (2 << 30) if cuda else (512 << 20)  # far beyond any cache: 50 MB L2 on H100, ~32 MB L3 here
    if quick:
        read_bytes //= 4
    out = {"device": device, "host": platform.node(), "measured_at": time.time(), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           # copy: read + write bytes; information only since calibrations gained read_bandwidth_Bps
           "memory_bandwidth_Bps": copy_bandwidth(dev, copy_bytes, min_s), "copy_bytes": copy_bytes,
           **read_bandwidth(dev, read_bytes, min_s),
           "matmul_flops": {}}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["llc_bytes"] = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", None)
    else:
        out["llc_bytes"] = last_level_cache_bytes()
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            out["matmul_flops"][name] = matmul_rate(dev, dt, sizes[name], min_s)
        except RuntimeError as e:  # a dtype the device cannot multiply
            out["matmul_flops"][name] = None
            out.setdefault("notes", []).append(f"{name} matmul failed: {e}")
    # integer and FP8 peaks: the prefill ceilings of quantized cells (harness/roofline.py);
    # "matmul_flops" holds them as ops/s, and "matmul_kernels" says which kernel was fastest
    rate, kernel, notes = int8_matmul_rate(dev, sizes["fp32"], min_s)
    out["matmul_flops"]["int8"] = rate
    out["matmul_kernels"] = {"int8": kernel} if rate else {}
    out.setdefault("notes", []).extend(notes)
    ok, why = fp8_supported(dev)
    if ok:
        try:
            out["matmul_flops"]["fp8"] = fp8_matmul_rate(dev, sizes["bf16"], min_s)
            out["matmul_kernels"]["fp8"] = "torch._scaled_mm e4m3"
        except RuntimeError as e:
            out["matmul_flops"]["fp8"] = None
            out["notes"].append(f"fp8 matmul failed: {str(e).splitlines()[0][:200]}")
    else:
        out["notes"].append(why)
    if not out["notes"]:
        del out["notes"]
    return out


def calibration_path(output: str | Path, device: str, host: str | None = None) -> Path:
    host = host or platform.node() or "host"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{host}_{device}")
    return Path(output) / "calibration" / f"{safe}.json"


def user_cache_dir() -> Path:
    """Per-user store of this host's calibrations: found by runs written to any folder."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "accel-harness"


def save(cal: dict, output: str | Path) -> list[Path]:
    """Written to the output folder and the user's cache; returns the paths written."""
    written = []
    for root in (Path(output), user_cache_dir()):
        path = calibration_path(root, cal["device"], cal["host"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, cal)
        except OSError:
            if root != Path(output):  # an unwritable cache must not lose the calibration itself
                continue
            raise
        written.append(path)
    return written


def load_for(output: str | Path, device: str) -> dict | None:
    """The calibration of this host and device: the output folder's, else the user cache's."""
    for root in (Path(output), user_cache_dir()):
        path = calibration_path(root, device)
        try:
            if path.is_file() and path.stat().st_size < (1 << 20):
                cal = json.loads(path.read_text())
                if isinstance(cal, dict):
                    return cal
        except (OSError, ValueError):
            continue
    return None
