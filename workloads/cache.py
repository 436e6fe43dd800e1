"""Where exported model files (ONNX, GGUF) are cached, and what names them.

One folder per format under $ACCEL_HARNESS_CACHE (default ~/.cache/accel-harness), so a
second run skips an export that took minutes.
"""
from __future__ import annotations

import os
from pathlib import Path

from workloads.zoo import ModelSpec


def cache_root(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The given folder, else $ACCEL_HARNESS_CACHE/<kind>, else ~/.cache/accel-harness/<kind>."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ACCEL_HARNESS_CACHE")
    if env:
        return Path(env).expanduser() / kind
    return Path.home() / ".cache" / "accel-harness" / kind


def checkpoint_stamp(spec: ModelSpec) -> str:
    """A checkpoint is named by its path in spec.key(); its files' sizes and mtimes are
    added so that new weights in the same folder are exported again."""
    if not spec.checkpoint:
        return ""
    folder = Path(spec.checkpoint)
    parts = []
    for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        try:
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{f.name}:missing")
    return "|".join(parts)
