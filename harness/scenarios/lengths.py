"""Prompt and output lengths of the requests a request scenario issues.

A suite gives them as ``lengths:`` (fixed, uniform, or pairs from a file); without it a
request scenario uses each cell's own prompt_len / gen_len.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import math
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from harness.schema import regular_file_problem, short

LENGTHS_DIR = Path(__file__).resolve().parents[2] / "workloads" / "lengths"
#: Bounds on what a lengths setting or file may hold. A token count above 2^20 is past every
#: model's context; the shipped file is 400 pairs in 6 kB, so 16 MiB / a million pairs
#: leaves room for any real trace while keeping a hostile file to about a second.
MAX_LEN = 1 << 20
MAX_LENGTHS_FILE_BYTES = 16 << 20
MAX_PAIRS = 1_000_000


@dataclass
class LengthsConfig:
    """Prompt and output lengths, in tokens.

    fixed:   ``{type: fixed, prompt_len: 64, output_len: 32}``
    uniform: ``{type: uniform, prompt_len: [16, 256], output_len: [8, 128]}`` (inclusive)
    file:    ``{type: file, path: sharegpt_like}``: a JSON list of [prompt_len,
             output_len] pairs (or ``{"pairs": [...]}``), sampled with replacement;
             a bare name is looked up in workloads/lengths/.
    ``max_prompt_len`` / ``max_output_len`` clip what is drawn (a small model's
    context); ``min_output_len`` keeps TPOT defined.
    """

    type: Literal["fixed", "uniform", "file"] = "fixed"
    prompt_len: Any = None  # int (fixed) or [lo, hi] (uniform)
    output_len: Any = None
    path: Optional[str] = None
    max_prompt_len: Optional[int] = field(default=None, metadata={"range": (1, MAX_LEN)})
    max_output_len: Optional[int] = field(default=None, metadata={"range": (1, MAX_LEN)})
    min_output_len: int = field(default=2, metadata={"range": (1, MAX_LEN)})

    def problems(self) -> list[tuple[str, str]]:
        try:
            LengthSampler(self)
        except ValueError as e:  # a file's trouble is the path key's, for its line
            return [("path" if self.type == "file" and "lengths file" in str(e) else "", str(e))]
        return []


def fixed_lengths(prompt_len: int, output_len: int) -> LengthsConfig:
    """Every request with a cell's own lengths."""
    return LengthsConfig(type="fixed", prompt_len=prompt_len, output_len=output_len)




def _is_len(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_LEN


def _pair(v: Any, key: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_len(x) for x in v) and v[0] <= v[1]:
        return int(v[0]), int(v[1])
    raise ValueError(f"uniform lengths: {key} must be [lo, hi] with 1 <= lo <= hi <= {MAX_LEN}, got {short(v)}")


def resolve_lengths_path(path: str) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if "/" not in path and path not in ("", ".", ".."):  # a bare name: a shipped file
        for cand in (LENGTHS_DIR / path, LENGTHS_DIR / f"{path}.json"):
            if cand.exists():
                return cand
    shipped = ", ".join(sorted(f.stem for f in LENGTHS_DIR.glob("*.json"))) or "none"
    raise ValueError(f"lengths file {short(path)} not found (shipped in workloads/lengths: {shipped})")


def load_length_pairs(path: str) -> np.ndarray:
    """The [prompt_len, output_len] pairs of a lengths file, as an [n, 2] int64 array.
    Only ValueError escapes, naming the file and what is wrong: a directory, a FIFO, a
    file over MAX_LENGTHS_FILE_BYTES, text that is not JSON, JSON that is not a list of
    pairs (a dict without "pairs", null, a number), or an entry that is not two integers
    from 1 to MAX_LEN."""
    p = resolve_lengths_path(path)
    why = regular_file_problem(str(p), "lengths file", MAX_LENGTHS_FILE_BYTES)
    if why:
        raise ValueError(why)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_LENGTHS_FILE_BYTES + 1)
        if len(raw) > MAX_LENGTHS_FILE_BYTES:
            raise ValueError(f"lengths file {short(path)} is larger than {MAX_LENGTHS_FILE_BYTES:,} bytes")
        data = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read lengths file {short(path)}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"lengths file {short(path)}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"lengths file {short(path)}: not JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise ValueError(f"lengths file {short(path)}: JSON nested too deeply") from None
    want = "a JSON list of [prompt_len, output_len] pairs, or {\"pairs\": [...]}"
    if isinstance(data, dict):
        if "pairs" not in data:
            raise ValueError(f"lengths file {short(path)}: expected {want}; the mapping has no \"pairs\" key")
        data = data["pairs"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"lengths file {short(path)}: expected {want} (non-empty), got {short(data)}")
    if len(data) > MAX_PAIRS:
        raise ValueError(f"lengths file {short(path)}: {len(data):,} pairs; the limit is {MAX_PAIRS:,}")
    for i, pair in enumerate(data):
        if not (isinstance(pair, list) and len(pair) == 2 and _is_len(pair[0]) and _is_len(pair[1])):
            raise ValueError(f"lengths file {short(path)}: entry {i}: expected [prompt_len, output_len], two "
                             f"integers from 1 to {MAX_LEN}, got {short(pair)}")
    return np.asarray(data, dtype=np.int64).reshape(-1, 2)


class LengthSampler:
    """Draws (prompt_len, output_len) pairs from a LengthsConfig with a seeded rng.
    ValueError says what is wrong with the config."""

    def __init__(self, cfg: LengthsConfig):
        self.cfg = cfg
        self.pairs = None
        if cfg.type == "fixed":
            for k in ("prompt_len", "output_len"):
                v = getattr(cfg, k)
                if not _is_len(v):
                    raise ValueError(f"fixed lengths: {k} must be an integer from 1 to {MAX_LEN}, got {short(v)}")
        elif cfg.type == "uniform":
            _pair(cfg.prompt_len, "prompt_len")
            _pair(cfg.output_len, "output_len")
        elif cfg.type == "file":
            if not cfg.path:
                raise ValueError("file lengths: give a path (or a name shipped in workloads/lengths)")
            self.pairs = load_length_pairs(cfg.path)
        else:
            raise ValueError(f"lengths type must be fixed, uniform or file, got {cfg.type!r}")
        if cfg.min_output_len < 1:
            raise ValueError(f"min_output_len must be >= 1, got {cfg.min_output_len}")

    def sample(self, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        c = self.cfg
        if c.type == "fixed":
            p = np.full(n, c.prompt_len)
            o = np.full(n, c.output_len)
        elif c.type == "uniform":
            (pl, ph), (ol, oh) = _pair(c.prompt_len, "prompt_len"), _pair(c.output_len, "output_len")
            p = rng.integers(pl, ph + 1, size=n)
            o = rng.integers(ol, oh + 1, size=n)
        else:
            idx = rng.integers(0, len(self.pairs), size=n)
            p, o = self.pairs[idx, 0], self.pairs[idx, 1]
        if c.max_prompt_len:
            p = np.minimum(p, c.max_prompt_len)
        if c.max_output_len:
            o = np.minimum(o, c.max_output_len)
        o = np.maximum(o, c.min_output_len)
        return [(int(a), int(b)) for a, b in zip(p, o)]

    def max_total(self) -> int:
        """Longest prompt + output this sampler can draw (to size a KV cache)."""
        c = self.cfg
        if c.type == "fixed":
            p, o = c.prompt_len, c.output_len
        elif c.type == "uniform":
            p, o = c.prompt_len[1], c.output_len[1]
        else:
            p, o = int(self.pairs[:, 0].max()), int(self.pairs[:, 1].max())
        if c.max_prompt_len:
            p = min(p, c.max_prompt_len)
        if c.max_output_len:
            o = min(o, c.max_output_len)
        return int(p + max(o, c.min_output_len))


# --- the shipped lengths file ---------------------------------------------------------------

def make_sharegpt_like(n: int = 400, seed: int = 20240601) -> dict:
    """The synthetic lengths list shipped as workloads/lengths/sharegpt_like.json.

    Log-normal prompt and output lengths, parameters chosen to resemble the
    right-skewed shape commonly reported for ShareGPT conversations (median
    prompt ~100 tokens with a long tail, median output ~200 tokens). No
    dataset was fitted: none is available offline. Regenerate with
    ``python -c "from harness.scenarios.lengths import write_sharegpt_like; write_sharegpt_like()"``.
    """
    p_mu, p_sigma, o_mu, o_sigma, lo, hi = math.log(100.0), 1.0, math.log(200.0), 0.8, 4, 1024
    rng = np.random.default_rng(seed)
    p = np.clip(np.round(rng.lognormal(p_mu, p_sigma, n)), lo, hi).astype(int)
    o = np.clip(np.round(rng.lognormal(o_mu, o_sigma, n)), lo, hi).astype(int)
    return {
        "description": "SYNTHETIC (prompt_len, output_len) pairs in tokens, ShareGPT-like shape. "
                       "Not taken from any dataset: drawn from log-normal distributions whose parameters "
                       "were chosen by hand to resemble published ShareGPT length statistics.",
        "generator": {"function": "harness.scenarios.lengths.make_sharegpt_like", "n": n, "seed": seed,
                      "rng": "numpy.random.default_rng(seed).lognormal, prompts drawn first then outputs",
                      "prompt": {"mu": p_mu, "sigma": p_sigma, "median": math.exp(p_mu)},
                      "output": {"mu": o_mu, "sigma": o_sigma, "median": math.exp(o_mu)},
                      "rounded_and_clipped_to": [lo, hi]},
        "pairs": [[int(a), int(b)] for a, b in zip(p, o)],
    }


def write_sharegpt_like(path: str | Path = LENGTHS_DIR / "sharegpt_like.json") -> None:
    d = make_sharegpt_like()
    text = json.dumps({k: v for k, v in d.items() if k != "pairs"}, indent=1)[:-2]
    text += ',\n "pairs": [\n' + ",\n".join(f"  [{a}, {b}]" for a, b in d["pairs"]) + "\n ]\n}\n"
    Path(path).write_text(text)
