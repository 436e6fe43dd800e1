"""Named architecture configs with the real shapes of public Llama-family models.

Performance depends on shapes, not on weight values, so a name here plus a seed is a
complete, reproducible workload. Shapes follow each model's published config.json.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import json

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # dtypes a suite can ask for
# Bytes per weight of every precision a backend may report, quantized formats included
# (GGML blocks of 32 weights: q8_0 = 32 int8 + one fp16 scale, q4_0 = 16 bytes + scale).
# int8: weight-only, one byte per weight plus one fp32 scale per block of 32 (onnxruntime's
# MatMulNBits, workloads/export_onnx.py WEIGHT_SCHEMES). torch's int8 (backends/quant.py) has
# one scale per output row, ~1.0 byte a weight: the shared "int8" keeps the larger figure, so
# a torch int8 cell's roofline share reads up to 12.5 % high (docs/decisions.md, issue 18).
# fp8: torch's e4m3 weights, one byte each plus one scale per output row (negligible).
PRECISION_BYTES = {**DTYPE_BYTES, "q8_0": 34 / 32, "q4_0": 18 / 32, "int8": 36 / 32, "fp8": 1.0}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency scaling (rope_type "llama3" in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    name: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    tie_embeddings: bool
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    max_seq_len: int = 4096

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def param_count(self) -> int:
        """Exact count of the reference model's parameters (tied embeddings counted once)."""
        attn = self.dim * (self.dim + 2 * self.kv_dim) + self.dim * self.dim
        mlp = 3 * self.dim * self.ffn_dim
        norms = 2 * self.dim
        per_layer = attn + mlp + norms
        emb = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return emb + head + self.n_layers * per_layer + self.dim

    def weight_bytes(self, dtype: str) -> int:
        return int(self.param_count() * PRECISION_BYTES[dtype])

    def decode_bytes_per_step(self, dtype: str) -> int:
        """Weight bytes one decode step must read: everything except the embedding
        table (only one row per token is gathered), unless the table is also the
        output head."""
        skipped = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return int((self.param_count() - skipped) * PRECISION_BYTES[dtype])

    def kv_bytes_per_token(self, dtype: str) -> int:
        """KV cache bytes per position (quantized weights keep a 16-bit cache)."""
        return 2 * self.n_layers * self.kv_dim * DTYPE_BYTES.get(dtype, 2)

    def matmul_flops_per_token(self, context: int = 0) -> int:
        """FLOPs (2 per multiply-add) for one token: every weight matrix, the output
        head (the embedding gather is no matmul), plus attention over `context` keys."""
        per_layer = self.dim * (self.dim + 2 * self.kv_dim) + self.dim * self.dim + 3 * self.dim * self.ffn_dim
        matmul_params = self.n_layers * per_layer + self.vocab_size * self.dim
        attention = 2 * self.n_layers * self.dim * context  # q.k and p.v, per key
        return 2 * (matmul_params + attention)

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


_L3_1 = RopeScaling(factor=8.0)
_L3_2 = RopeScaling(factor=32.0)

ZOO: dict[str, ModelArgs] = {
    m.name: m
    for m in [
        # CI model: a few MB, every code path of the real ones (GQA, tied head, scaling).
        ModelArgs("tiny", vocab_size=2048, dim=256, n_layers=4, n_heads=8, n_kv_heads=4,
                  ffn_dim=512, tie_embeddings=True, rope_theta=10000.0, max_seq_len=2048),
        ModelArgs("smollm2-135m", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
                  ffn_dim=1536, tie_embeddings=True, rope_theta=100000.0, max_seq_len=8192),
        ModelArgs("llama-3.2-1b", vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                  ffn_dim=8192, tie_embeddings=True, rope_theta=500000.0, rope_scaling=_L3_2,
                  max_seq_len=131072),
        ModelArgs("llama-3.2-3b", vocab_size=128256, dim=3072, n_layers=28, n_heads=24, n_kv_heads=8,
                  ffn_dim=8192, tie_embeddings=True, rope_theta=500000.0, rope_scaling=_L3_2,
                  max_seq_len=131072),
        ModelArgs("llama-3.1-8b", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                  ffn_dim=14336, tie_embeddings=False, rope_theta=500000.0, rope_scaling=_L3_1,
                  max_seq_len=131072),
        ModelArgs("llama-3.1-70b", vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                  ffn_dim=28672, tie_embeddings=False, rope_theta=500000.0, rope_scaling=_L3_1,
                  max_seq_len=131072),
    ]
}


@dataclass(frozen=True)
class ModelSpec:
    """What a backend is asked to load: an architecture, and where weights come from."""

    args: ModelArgs
    seed: int = 0
    checkpoint: str | None = None  # local Hugging Face folder; None = seeded random weights

    def key(self, dtype: str) -> str:
        """Stable cache key for exported artefacts (ONNX, GGUF)."""
        src = f"ckpt:{self.checkpoint}" if self.checkpoint else f"seed:{self.seed}"
        h = hashlib.sha256(f"{self.args.fingerprint()}|{src}|{dtype}".encode()).hexdigest()[:16]
        return f"{self.args.name}-{dtype}-{h}"


def get_model(name: str) -> ModelArgs:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(ZOO)}") from None
