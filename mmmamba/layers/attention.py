"""Grouped-query softmax attention with RoPE and an optional preallocated KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.decode_attention import decode_attention
from ..ops.packing import Unpacker, sample_positions
from ..ops.prefill_attention import prefill_attention
from ..ops.regions import PREFILL_MODES
from .projections import add_qkvo_projections, fuse_linears
from .rope import apply_rope, rope_cos_sin


@dataclass
class AttentionConfig:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    rope_theta: float = 10000.0
    decode_backend: str = "auto"  # decode attention kernel: auto | torch | triton (ops.decode_attention)
    prefill_backend: str = "auto"  # prefill with a cache: auto | torch | flash | cudnn (ops.prefill_attention)
    prefill_mode: str = "eager"  # eager | compile: the MLP block's elementwise work fused (ops.regions); runtime

    def __post_init__(self):
        if self.prefill_mode not in PREFILL_MODES:
            raise ValueError(f"prefill_mode must be one of {list(PREFILL_MODES)}, got {self.prefill_mode!r}")


@dataclass
class DecodeContext:
    """What one static decode step tells every layer, all device tensors (no host sync, graph-safe).

    cos, sin (b, head_dim): RoPE of the new token, gathered from a table precomputed once per
    (theta, head_dim) — layers may differ in both;
    slot () the cache slot it is written to; key_valid (b, slots) real tokens, the new one included.
    """

    cos: dict[tuple[float, int], Tensor]
    sin: dict[tuple[float, int], Tensor]
    slot: Tensor
    key_valid: Tensor


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, in buffers preallocated for ``max_length``."""

    def __init__(self, batch: int, num_kv_heads: int, max_length: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch, num_kv_heads, max_length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (b, kv_heads, L, head_dim); return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} tokens; {end} requested")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def write(self, k: Tensor, v: Tensor, slot: Tensor) -> None:
        """Store one token's k, v (b, kv_heads, head_dim) at ``slot`` (a device scalar): graph-safe."""
        index = slot.view(1)
        self.k.index_copy_(2, index, k[:, :, None])
        self.v.index_copy_(2, index, v[:, :, None])


def attention_mask_for(valid: Tensor | None, q_len: int, device) -> Tensor | None:
    """Boolean (b, 1, q_len, q_len) training mask: causal, minus invalid (padded) keys.

    valid (b, q_len) marks real tokens. A query always sees itself, so padded rows stay finite.
    Returns None when plain causal attention suffices (no padding).
    """
    if valid is None:
        return None
    pos = torch.arange(q_len, device=device)
    causal = pos[None, :] <= pos[:, None]  # (q_len, q_len)
    mask = causal[None, None] & valid[:, None, None, :].bool()
    return mask | torch.eye(q_len, dtype=torch.bool, device=device)[None, None]


def packed_mask(cu_seqlens: Tensor, length: int, device) -> Tensor:
    """Boolean (1, 1, L, L) block-diagonal causal mask: a token sees the earlier tokens of its own sample."""
    t = torch.arange(length, device=device)
    sample, _ = sample_positions(cu_seqlens, length, device)  # (L,)
    return ((t[None, :] <= t[:, None]) & (sample[None, :] == sample[:, None]))[None, None]


class Attention(nn.Module):
    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        h, kvh, hd, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        add_qkvo_projections(self, d, h, kvh, hd, cfg.qkv_bias)

    def make_cache(self, batch: int, max_length: int, dtype, device=None) -> KVCache:
        return KVCache(batch, self.cfg.num_kv_heads, max_length, self.cfg.head_dim, dtype, device)

    def mix(
        self,
        u: Tensor,
        positions: Tensor,
        valid: Tensor | None = None,
        cache: KVCache | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> Tensor:
        """Attention output before the output projection, (b, L, h·head_dim).

        u (b, L, d) normed input; positions (b, L) RoPE positions; valid (b, past+L) real-token mask;
        cu_seqlens (n+1,) sample starts of a packed row (b = 1): attention stays inside each sample.
        """
        b, L, _ = u.shape
        h, kvh, hd = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
        q, k, v = self._qkv(u)
        q = q.view(b, L, h, hd).transpose(1, 2)  # (b, h, L, hd)
        k = k.view(b, L, kvh, hd).transpose(1, 2)
        v = v.view(b, L, kvh, hd).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, hd, self.cfg.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cu_seqlens is not None and cache is not None:  # before the cache is written
            raise ValueError("packed sequences (cu_seqlens) are for training; decode one sample per row")
        if cache is not None:  # prefill: the cached past and the chunk, merged by LSE; no (L × S) mask
            past = cache.length
            k_all, v_all = cache.update(k, v)
            y = prefill_attention(q, k_all[:, :, :past], v_all[:, :, :past], k, v, valid, self.cfg.prefill_backend)
            return y.transpose(1, 2).reshape(b, L, h * hd)
        if cu_seqlens is not None and valid is None:  # one sample a row: causal SDPA over Σ width², not L²
            rows = Unpacker.of(cu_seqlens, L, u.device)
            q, k, v = (rows.unpack(t.transpose(1, 2)).transpose(1, 2) for t in (q, k, v))  # (n, ·, width, hd)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=rows.width > 1, enable_gqa=kvh != h)
            return rows.repack(y.transpose(1, 2)).reshape(b, L, h * hd)
        mask = attention_mask_for(valid, L, u.device)
        if cu_seqlens is not None:  # padding inside a packed row: the block-diagonal mask, L × L
            mask = mask & packed_mask(cu_seqlens, L, u.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and L > 1, enable_gqa=kvh != h
        )
        return y.transpose(1, 2).reshape(b, L, h * hd)

    def _qkv(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (..., d) → q (..., h·hd), k, v (..., kvh·hd)."""
        if hasattr(self, "qkv_weight"):  # fused by ``fuse_projections``: one read of the weights
            h, kvh, hd = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
            return F.linear(u, self.qkv_weight, self.qkv_bias).split([h * hd, kvh * hd, kvh * hd], dim=-1)
        return self.q_proj(u), self.k_proj(u), self.v_proj(u)

    def step(self, u: Tensor, cache: KVCache, ctx: DecodeContext) -> Tensor:
        """One token per row: u (b, d) normed input → attention output before o_proj (b, h·head_dim).

        Static shapes throughout: the key/value go to ``ctx.slot`` of the preallocated cache and the
        kernel attends to the valid slots up to it, so the step can be captured in a CUDA graph.
        """
        b = u.shape[0]
        h, kvh, hd = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
        q, k, v = self._qkv(u)
        table = (self.cfg.rope_theta, hd)
        cos, sin = ctx.cos[table][:, None], ctx.sin[table][:, None]  # (b, 1, hd) broadcast over heads
        q = apply_rope(q.view(b, h, hd), cos, sin)
        k = apply_rope(k.view(b, kvh, hd), cos, sin)
        cache.write(k, v.view(b, kvh, hd), ctx.slot)
        y = decode_attention(q, cache.k, cache.v, ctx.key_valid, ctx.slot + 1, self.cfg.decode_backend)
        return y.reshape(b, h * hd)

    def fuse_projections(self) -> None:
        """Decode reads q/k/v in one matmul; the separate weights become views of the fused one."""
        if not hasattr(self, "qkv_weight"):
            fuse_linears(self, "qkv", [self.q_proj, self.k_proj, self.v_proj])

    def forward(self, u: Tensor, positions: Tensor, valid: Tensor | None = None, cache: KVCache | None = None):
        return self.o_proj(self.mix(u, positions, valid, cache))
