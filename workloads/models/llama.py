"""Reference decoder-only transformer of the Llama family, in plain torch.

gpt-fast style: one module, a static KV cache, prefill and decode as plain functions.
QKV and gate/up projections are fused (one matmul each) because on a GPU the number
of kernels per layer is what separates 40 % from 80 % of the bandwidth limit.

Rotary embeddings use the Hugging Face "rotate half" convention, so a local Hugging
Face Llama checkpoint loads without permuting q/k weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workloads.zoo import ModelArgs, RopeScaling

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Written out (not F.rms_norm) so every exporter and backend sees plain ops;
        # statistics in fp32 whatever the model dtype, as Llama does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def rope_frequencies(args: ModelArgs) -> Tensor:
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float64) / args.head_dim))
    if args.rope_scaling is not None:
        inv = _llama3_scale(inv, args.rope_scaling)
    return inv


def _llama3_scale(inv_freq: Tensor, s: RopeScaling) -> Tensor:
    """Llama 3.1 frequency scaling: long wavelengths slowed by `factor`, short kept,
    a smooth blend between (Meta's reference `apply_scaling`)."""
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(mid, blended, out)


def rotary_tables(args: ModelArgs, max_seq: int) -> tuple[Tensor, Tensor]:
    inv = rope_frequencies(args)
    angles = torch.outer(torch.arange(max_seq, dtype=torch.float64), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [B, H, T, D]; cos/sin: [T, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class KVCache(nn.Module):
    """Preallocated [B, n_kv, max_seq, head_dim] buffers written in place: shapes never
    change between steps, which is what lets a decode step be captured in a CUDA graph."""

    def __init__(self, batch: int, n_kv_heads: int, max_seq: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.wqkv = nn.Linear(args.dim, args.dim + 2 * args.kv_dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, mask: Tensor | None,
                rows: slice | None = None) -> Tensor:
        a = self.args
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split([a.dim, a.kv_dim, a.kv_dim], dim=-1)
        q = q.view(B, T, a.n_heads, a.head_dim).transpose(1, 2)
        k = k.view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)
        v = v.view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        groups = a.n_heads // a.n_kv_heads
        if rows is not None:
            y = self._rows(q, k, v, pos, mask, rows)
        elif mask is None:
            # Prefill from an empty cache: attend to the prompt itself, causally, so the
            # flash kernel can run; the cache is only written.
            if self.cache is not None:
                self.cache.update(pos, k, v)
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            assert self.cache is not None, "decode needs a KV cache: call setup_cache first"
            k, v = self.cache.update(pos, k, v)
            if T == 1:
                # One query per sequence: fold the query heads that share a KV head into
                # the query-length axis, so the cache is read as is, never repeated.
                qg = q.reshape(B, a.n_kv_heads, groups, a.head_dim)
                y = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask).reshape(B, a.n_heads, 1, a.head_dim)
            else:
                k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, a.dim)
        return self.wo(y)

    def _rows(self, q: Tensor, k: Tensor, v: Tensor, pos: Tensor, mask: Tensor | None, rows: slice) -> Tensor:
        """Sequences held in cache rows `rows` (continuous batching), each at its own
        position. Prefill (mask None): right-padded prompts [B, T] from position 0, causal
        attention over the prompt itself, so a real token never sees padding; the
        padding's cache entries lie past the sequence's length, where decode overwrites
        them before its mask lets them be read. Decode: one step (T == 1), the token of
        row b at pos[b], attending to cache positions <= pos[b] (mask [B, 1, 1, S])."""
        a = self.args
        B, _, T, _ = q.shape
        groups = a.n_heads // a.n_kv_heads
        kc, vc = self.cache.k[rows], self.cache.v[rows]  # views: writes land in the cache
        if mask is None:
            kc[:, :, :T] = k
            vc[:, :, :T] = v
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        b = torch.arange(B, device=q.device)
        kc[b, :, pos] = k[:, :, 0]
        vc[b, :, pos] = v[:, :, 0]
        qg = q.reshape(B, a.n_kv_heads, groups, a.head_dim)  # as in the one-position decode above
        return F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask).reshape(B, a.n_heads, 1, a.head_dim)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ffn_dim = args.ffn_dim
        self.w13 = nn.Linear(args.dim, 2 * args.ffn_dim, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.ffn_dim, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, pos, mask, rows=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, pos, mask, rows)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.max_batch = self.max_seq = self.cache_len = 0

    def setup_cache(self, max_batch: int, max_seq: int) -> None:
        """Size rotary tables and the causal mask for max_seq positions and allocate a KV
        cache for exactly max_batch sequences (decode reads the whole cache, so size
        max_seq tightly)."""
        w = self.tok_embeddings.weight  # never quantized (backends/quant.py may swap the head): dtype and device
        cos, sin = rotary_tables(self.args, max_seq)
        self.register_buffer("rope_cos", cos.to(w.device), persistent=False)
        self.register_buffer("rope_sin", sin.to(w.device), persistent=False)
        causal = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool, device=w.device))
        self.register_buffer("causal", causal, persistent=False)
        self.max_seq = max_seq
        self.set_caches(self.new_caches(max_batch))

    def new_caches(self, batch: int, seq: int | None = None) -> list[KVCache]:
        """A fresh cache per layer for `batch` sequences of up to `seq` positions (default
        and maximum: the size setup_cache chose). Decode reads the whole cache, so a cell
        gets a cache sized to its own prompt + generation, not to the longest cell's."""
        seq = seq or self.max_seq
        if seq > self.max_seq:
            raise ValueError(f"cache of {seq} positions asked for; setup_cache sized tables for {self.max_seq}")
        w, a = self.tok_embeddings.weight, self.args
        return [KVCache(batch, a.n_kv_heads, seq, a.head_dim, w.dtype, w.device) for _ in self.layers]

    def get_caches(self) -> list[KVCache]:
        return [layer.attention.cache for layer in self.layers]

    def set_caches(self, caches: list[KVCache]) -> None:
        """Swap cache sets (one per batch size) without reallocating: a CUDA graph
        captured against a set stays valid when that set comes back."""
        for layer, cache in zip(self.layers, caches):
            layer.attention.cache = cache
        self.max_batch, self.cache_len = caches[0].k.shape[0], caches[0].k.shape[2]

    def forward(self, tokens: Tensor, pos: Tensor, prefill: bool, last_only: bool = False) -> Tensor:
        """tokens [B, T] at absolute positions pos [T]; returns logits [B, T, vocab] fp32
        ([B, 1, vocab] with last_only, which skips the output head for all but the last
        position: at a 2k prompt and a 128k vocabulary that head is 6 % of the flops).
        prefill=True assumes the cache is empty before pos[0] == 0."""
        B = tokens.shape[0]
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        mask = None if prefill else self.causal[pos, : self.cache_len][None, None]  # [1, 1, T, cache_len]
        if B != self.max_batch:
            raise ValueError(f"batch {B} does not match the KV cache's batch {self.max_batch}: call setup_cache")
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, pos, mask)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()

    def forward_rows(self, tokens: Tensor, pos: Tensor, rows: slice, prefill: bool) -> Tensor:
        """Continuous batching: sequences in cache rows `rows`, each at its own position.
        prefill: tokens [B, T] right-padded prompts from position 0, pos [B] their
        lengths; logits [B, vocab] at each prompt's last real token. Otherwise one decode
        step: row b's token tokens[b, 0] at position pos[b]; logits [B, vocab]."""
        B, T = tokens.shape
        if prefill:
            p = torch.arange(T, device=tokens.device)
            cos, sin, mask = self.rope_cos[p], self.rope_sin[p], None
        else:
            cos, sin = self.rope_cos[pos][:, None, None], self.rope_sin[pos][:, None, None]  # [B, 1, 1, D]
            span = torch.arange(self.cache_len, device=tokens.device)
            mask = (span[None] <= pos[:, None])[:, None, None]  # [B, 1, 1, cache_len]
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, pos, mask, rows)
        if prefill:
            x = x[torch.arange(B, device=x.device), pos - 1][:, None]  # each prompt's last token
        return self.output(self.norm(x)).float()[:, -1]

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cache positions of row src into row dst (compacting
        the batch when a sequence leaves, so a step always runs rows 0..n-1)."""
        for cache in self.get_caches():
            cache.k[dst, :, :length] = cache.k[src, :, :length]
            cache.v[dst, :, :length] = cache.v[src, :, :length]


def prefill(model: Transformer, tokens: Tensor) -> Tensor:
    """Run the prompt [B, T] into an empty cache; return the logits of its last position."""
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    return model(tokens, pos, prefill=True, last_only=True)[:, -1]


def decode_step(model: Transformer, token: Tensor, pos: Tensor) -> Tensor:
    """One token per sequence [B, 1] at position pos [1]; returns logits [B, vocab]."""
    return model(token, pos, prefill=False)[:, -1]


def prefill_rows(model: Transformer, tokens: Tensor, lengths: Tensor, rows: slice) -> Tensor:
    """Right-padded prompts [B, T] of these lengths [B] into cache rows `rows`; logits
    [B, vocab] at each one's last token."""
    return model.forward_rows(tokens, lengths, rows, prefill=True)


def decode_rows(model: Transformer, token: Tensor, pos: Tensor, rows: slice) -> Tensor:
    """One token per sequence [B, 1], each at its own position pos [B], in cache rows
    `rows`; returns logits [B, vocab]."""
    return model.forward_rows(token, pos, rows, prefill=False)


def full_forward(model: Transformer, tokens: Tensor) -> Tensor:
    """Logits at every position, no cache: the reference the cached paths must match."""
    saved = [layer.attention.cache for layer in model.layers]
    try:
        for layer in model.layers:
            layer.attention.cache = None
        if model.max_seq < tokens.shape[1]:
            cos, sin = rotary_tables(model.args, tokens.shape[1])
            cos, sin = cos.to(tokens.device), sin.to(tokens.device)
        else:
            cos, sin = model.rope_cos, model.rope_sin
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = model.tok_embeddings(tokens)
        for layer in model.layers:
            x = layer(x, cos[pos], sin[pos], pos, None)
        return model.output(model.norm(x)).float()
    finally:
        for layer, cache in zip(model.layers, saved):
            layer.attention.cache = cache
