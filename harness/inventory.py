"""What machine and software a run measured: written into run.json, shown by `harness env`."""
from __future__ import annotations

from importlib import metadata
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import psutil

from backends.base import cpu_model

PACKAGES = ("accel-harness", "torch", "numpy", "pandas", "onnxruntime", "onnxruntime-openvino", "onnxruntime-gpu",
            "onnx", "llama_cpp_python", "nvidia-ml-py", "transformers", "scipy")
# Environment variables that steer performance; everything else (tokens, keys) stays out.
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE",
            "OPENBLAS_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF", "TORCHINDUCTOR_CACHE_DIR")




def gpus() -> list[dict]:
    """NVIDIA GPUs through NVML where present; nothing (not an error) elsewhere."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        out = []
        driver = pynvml.nvmlSystemGetDriverVersion()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            entry = {"index": i, "name": _s(pynvml.nvmlDeviceGetName(h)), "driver": _s(driver),
                     "memory_bytes": int(mem.total)}
            try:
                entry["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
            except Exception:
                pass
            out.append(entry)
        return out
    finally:
        pynvml.nvmlShutdown()


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not shutil.which("git"):
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"{sha}{'-dirty' if dirty else ''}" if re.fullmatch(r"[0-9a-f]{40}", sha) else None


def inventory() -> dict:
    vm = psutil.virtual_memory()
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": {"model": cpu_model(), "logical_cores": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
                "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "memory_bytes": vm.total,
        "gpus": gpus(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }
