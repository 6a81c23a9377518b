"""Attention of a prefill chunk against the cached past and itself, without an (L × S) mask.

A chunk of L new queries attends to P cached keys (all of them: they are earlier) and causally to its
own L keys. Handing SDPA one (L × (P+L)) boolean mask rules out the flash kernel and materialises the
mask; instead the two parts run separately and are merged by their log-sum-exps:

    out = (o_past · e^lse_past + o_chunk · e^lse_chunk) / (e^lse_past + e^lse_chunk)

- the past part has no causal structure, so a KV group's query heads fold into the query axis
  (b, kvh, g·L, d) and the keys are never repeated; padding is a (b, 1, 1, P) key mask, broadcast;
- the chunk part is a square causal attention, padding again a broadcast key mask.

``flash`` runs PyTorch's fused kernels that also return the log-sum-exp: flash attention (CUDA, fp16 or
bf16, head_dim ≤ 256 and a multiple of 8), memory-efficient attention where a key mask is needed, and
the tiled CPU kernel. ``cudnn`` is ``flash`` with cuDNN's attention for the unmasked parts (on Hopper
about twice flash attention's rate; what SDPA itself picks there). ``torch`` is the plain reference:
explicit scores in at least float32. ``auto`` picks ``cudnn`` on Hopper and newer, else ``flash``, where
they apply.

Shapes: q (b, h, L, d); k_past, v_past (b, kvh, P, d); k, v (b, kvh, L, d); valid (b, P+L) bool or
None (every key real). Returns (b, h, L, d) in q's dtype; a query that sees no real key (padding)
gets 0, never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "flash", "cudnn")


def attention_lse_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Plain softmax attention with its log-sum-exp: q (b, h, L, d), k, v (b, h, S, d), mask broadcast to
    (b, h, L, S) (True = attend). Returns out (b, h, L, d) in ≥ float32 and lse (b, h, L)."""
    wide = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bhld,bhsd->bhls", q.to(wide), k.to(wide)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = scores.logsumexp(-1)
    weights = torch.exp(scores - torch.where(lse.isfinite(), lse, 0.0)[..., None])
    return torch.einsum("bhls,bhsd->bhld", weights, v.to(wide)), lse


def _flash_applies(q: Tensor) -> bool:
    if q.device.type == "cpu":
        return q.dtype in (torch.float32, torch.float64, torch.bfloat16)
    d = q.shape[-1]
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and d % 8 == 0 and d <= 256


def _key_bias(key_mask: Tensor, q: Tensor, S: int) -> Tensor:
    """key_mask (b, 1, 1, S) → an additive bias; on CUDA broadcast to (b, h, L, S) by stride-0 views."""
    padded = -(-S // 16) * 16  # the CUDA kernel wants the bias rows 16-aligned
    bias = torch.zeros(*key_mask.shape[:-1], padded, dtype=q.dtype, device=q.device)
    bias[..., :S].masked_fill_(~key_mask, float("-inf"))
    if q.device.type == "cpu":  # the CPU kernel broadcasts size-1 dims itself
        return bias[..., :S].contiguous()
    return bias[..., :S].expand(q.shape[0], q.shape[1], q.shape[2], S)


def _auto_backend(q: Tensor) -> str:
    if not _flash_applies(q):
        return "torch"
    if q.is_cuda and torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(q.device)[0] >= 9:
        return "cudnn"
    return "flash"


def _attention_lse(q: Tensor, k: Tensor, v: Tensor, causal: bool, key_mask: Tensor | None, backend: str):
    """One part: (out, lse). key_mask (b, 1, 1, S) bool, True = attend; causal = square, upper-left."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if backend == "cudnn" and key_mask is None:
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, scale=scale)[:2]
        return out, lse.reshape(q.shape[:3])  # cuDNN's lse is (b, h, L, 1)
    if backend == "torch":
        mask = key_mask
        if causal:
            L, S = q.shape[2], k.shape[2]
            tri = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
            mask = tri if mask is None else mask & tri
        return attention_lse_reference(q, k, v, mask)
    bias = None if key_mask is None else _key_bias(key_mask, q, k.shape[2])
    if q.device.type == "cpu":  # the CPU kernel reads batch and head strides wrongly: cache slices are copied
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=bias, scale=scale
        )
    elif bias is None:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, 0.0, causal, scale=scale
        )[:2]
        lse = lse[..., : q.shape[2]]  # the kernel pads lse's length to its block size
    if key_mask is None:
        return out, lse
    # a query that sees no key: the kernels disagree on its lse (0, −inf); make it −inf
    seen = key_mask[:, :, 0, :]  # (b, 1, S)
    seen = seen.cumsum(-1)[..., : q.shape[2]] > 0 if causal else seen.any(-1, keepdim=True)
    return out, lse.masked_fill(~seen, float("-inf"))


def merge_by_lse(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> Tensor:
    """Softmax over the union of two disjoint key sets, from each set's output and log-sum-exp.

    A set with no visible key (lse −inf) weighs 0 whatever its output holds; a query that sees no key
    at all (a padded one) gets 0."""
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(m.isfinite(), m, 0.0)
    w_a = torch.where(lse_a.isfinite(), torch.exp(lse_a - m), 0.0)[..., None]  # (b, h, L, 1)
    w_b = torch.where(lse_b.isfinite(), torch.exp(lse_b - m), 0.0)[..., None]
    wide = torch.promote_types(out_a.dtype, torch.float32)
    out_a, out_b = out_a.to(wide), out_b.to(wide)
    mixed = torch.where(w_a > 0, out_a * w_a, 0.0) + torch.where(w_b > 0, out_b * w_b, 0.0)
    total = w_a + w_b
    return torch.where(total > 0, mixed / total.clamp(min=1e-30), 0.0)


def prefill_attention(
    q: Tensor, k_past: Tensor, v_past: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:  # fmt: skip
    """Softmax attention of the chunk's queries over [past keys; chunk keys], causal inside the chunk."""
    if backend not in BACKENDS:
        raise ValueError(f"prefill attention backend {backend!r}: use one of {list(BACKENDS)}")
    backend = _auto_backend(q) if backend == "auto" else backend
    b, h, L, d = q.shape
    kvh, P = k_past.shape[1], k_past.shape[2]
    g = h // kvh
    past_mask = chunk_mask = None
    if valid is not None:  # key masks only, broadcast over queries: nothing of size L × S
        valid = valid.bool()
        past_mask = valid[:, None, None, :P]  # (b, 1, 1, P)
        chunk_mask = valid[:, None, None, P:]  # (b, 1, 1, L), causal on top
    # chunk: square causal, the L keys repeated to the query heads (chunk-sized, cheap)
    k_rep, v_rep = (t.repeat_interleave(g, dim=1) if g > 1 else t for t in (k, v))
    out_chunk, lse_chunk = _attention_lse(q, k_rep, v_rep, True, chunk_mask, backend)
    if P == 0:
        no_past = torch.full_like(lse_chunk, float("-inf"))
        return merge_by_lse(out_chunk, no_past, out_chunk, lse_chunk).to(q.dtype)  # zeroes unseeing rows
    # past: a KV group's g query heads fold into the query axis, (b, kvh, g·L, d)
    q_folded = q.reshape(b, kvh, g * L, d)
    out_past, lse_past = _attention_lse(q_folded, k_past, v_past, False, past_mask, backend)
    out_past, lse_past = out_past.reshape(b, h, L, d), lse_past.reshape(b, h, L)
    return merge_by_lse(out_past, lse_past, out_chunk, lse_chunk).to(q.dtype)
