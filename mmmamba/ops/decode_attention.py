"""Attention of one new query per row against a preallocated KV cache (the decode step).

Static shapes for CUDA graphs: the cache holds ``S`` slots, of which slots ``< length`` (a device
scalar, so no host sync) and marked in ``key_valid`` are attended to. ``triton`` is a split-K
("flash-decoding") kernel: the keys are cut into splits processed in parallel, each split stops at
``length`` (so a short context in a long cache costs only what it uses), and a second kernel merges
the splits' partial softmaxes. The query heads of one KV group share each loaded key (GQA).
``torch`` is the plain reference: masked softmax over the whole cache.

Shapes: q (b, h, d) already rotated; k_cache, v_cache (b, kvh, S, d); key_valid (b, S) bool;
length () int64. Returns (b, h, d) in q's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs run the torch reference
    triton = None

BACKENDS = ("auto", "torch", "triton")


def decode_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, key_valid: Tensor, length: Tensor
) -> Tensor:
    b, h, d = q.shape
    kvh, S = k_cache.shape[1], k_cache.shape[2]
    group = h // kvh
    wide = torch.promote_types(q.dtype, torch.float32)
    qg = q.view(b, kvh, group, d).to(wide)  # (b, kvh, g, d): a KV head's query heads side by side
    scores = torch.einsum("bkgd,bksd->bkgs", qg, k_cache.to(wide)) / math.sqrt(d)
    usable = key_valid & (torch.arange(S, device=q.device) < length)  # (b, S)
    scores = scores.masked_fill(~usable[:, None, None, :], float("-inf"))
    out = torch.einsum("bkgs,bksd->bkgd", scores.softmax(-1), v_cache.to(wide))
    return out.reshape(b, h, d).to(q.dtype)


if triton is not None:

    @triton.jit
    def _split_kernel(
        Q, K, V, VALID, LENGTH, ACC, M, L,
        stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, stride_validb,
        S, split_len,
        SCALE: tl.constexpr, H: tl.constexpr, KVH: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr,
        D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        pid_bk = tl.program_id(0)  # one (row, KV head)
        split = tl.program_id(1)
        b = (pid_bk // KVH).to(tl.int64)  # 64-bit: b * stride_kb passes 2^31 at large batch × long context
        kv = (pid_bk % KVH).to(tl.int64)
        g = tl.arange(0, G_PAD)  # the KV head's query heads, padded to a tensor-core tile
        dd = tl.arange(0, D)
        g_ok = g < GROUP
        heads = kv * GROUP + g
        q = tl.load(Q + (b * H + heads)[:, None] * D + dd[None, :], mask=g_ok[:, None], other=0.0)
        length = tl.load(LENGTH)
        start = split * split_len
        end = tl.minimum(start + split_len, tl.minimum(length, S))
        m_i = tl.full((G_PAD,), float("-inf"), tl.float32)
        l_i = tl.zeros((G_PAD,), tl.float32)
        acc = tl.zeros((G_PAD, D), tl.float32)
        k_base = K + b * stride_kb + kv * stride_kh
        v_base = V + b * stride_vb + kv * stride_vh
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            in_range = n < end
            ok = in_range & (tl.load(VALID + b * stride_validb + n, mask=in_range, other=0) != 0)
            k = tl.load(k_base + n[:, None] * stride_ks + dd[None, :], mask=in_range[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * SCALE  # (G_PAD, BLOCK_N)
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            v = tl.load(v_base + n[:, None] * stride_vs + dd[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        row = (b * H + heads) * SPLITS + split  # (G_PAD,)
        tl.store(M + row, m_i, mask=g_ok)
        tl.store(L + row, l_i, mask=g_ok)
        tl.store(ACC + row[:, None] * D + dd[None, :], acc, mask=g_ok[:, None])

    @triton.jit
    def _merge_kernel(ACC, M, L, OUT, D: tl.constexpr, SPLITS: tl.constexpr):
        head = tl.program_id(0).to(tl.int64)  # one (row, query head); 64-bit offsets
        sp = tl.arange(0, SPLITS)
        dd = tl.arange(0, D)
        m = tl.load(M + head * SPLITS + sp)
        l = tl.load(L + head * SPLITS + sp)
        m_max = tl.max(m, axis=0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_max))
        acc = tl.load(ACC + (head * SPLITS + sp)[:, None] * D + dd[None, :])
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
        tl.store(OUT + head * D + dd, out.to(OUT.dtype.element_ty))


def _num_splits(batch_kv: int, S: int, block_n: int, target_programs: int) -> int:
    splits = max(1, min(triton.cdiv(S, block_n), target_programs // max(batch_kv, 1)))
    return 1 << (splits - 1).bit_length() if splits > 1 else 1  # a power of two for the merge kernel


def decode_attention_triton(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, key_valid: Tensor, length: Tensor, block_n: int = 64,
    target_programs: int = 528, num_warps: int = 4, num_stages: int = 3,
) -> Tensor:  # fmt: skip
    b, h, d = q.shape
    kvh, S = k_cache.shape[1], k_cache.shape[2]
    group = h // kvh
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or d & (d - 1):
        raise ValueError("decode attention needs contiguous head_dim, a power of two")
    splits = _num_splits(b * kvh, S, block_n, target_programs)
    split_len = triton.cdiv(triton.cdiv(S, splits), block_n) * block_n
    q = q.contiguous()
    acc = torch.empty(b * h * splits, d, dtype=torch.float32, device=q.device)
    m = torch.empty(b * h * splits, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    valid = key_valid  # bool: Triton loads it as int1
    _split_kernel[(b * kvh, splits)](
        q, k_cache, v_cache, valid, length, acc, m, l,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), valid.stride(0),
        S, split_len,
        SCALE=1.0 / math.sqrt(d), H=h, KVH=kvh, GROUP=group, G_PAD=max(triton.next_power_of_2(group), 16), D=d,
        BLOCK_N=block_n,
        SPLITS=splits, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    out = torch.empty_like(q)
    _merge_kernel[(b * h,)](acc, m, l, out, D=d, SPLITS=splits)
    return out


def decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, key_valid: Tensor, length: Tensor, backend: str = "auto"
) -> Tensor:
    """One query per row against the cache; ``auto`` = the Triton kernel on CUDA, the reference elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"decode attention backend {backend!r}: use one of {list(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if q.is_cuda and triton is not None else "torch"
    if backend == "torch":
        return decode_attention_reference(q, k_cache, v_cache, key_valid, length)
    return decode_attention_triton(q, k_cache, v_cache, key_valid, length)
