"""SSD scan as one Triton kernel: the chunked algorithm of ``ssd_chunked_scan``, fused.

One program per (batch, head, block of head_dim) walks the sequence chunk by chunk, holding its
slice of the state (BLOCK_P × n) in registers. Per chunk: output from the chunk itself (C·Bᵀ masked
by the decay matrix, times Δ·x), output from the incoming state (C·stateᵀ scaled by the decay so
far), then the state hand-off. Nothing of size L × L or chunks × state is written to memory:
reads are x, Δ, B, C once and writes are y once, which is the floor this kernel is measured
against. Forward only (inference); training uses the PyTorch chunked scan, which autograd sees.
Under ``TRITON_INTERPRET=1`` it runs on the CPU, which is how CI tests it.

Measured on an H100 (BENCHMARKS.md §1b): with TF32 matmuls it beats the PyTorch chunked scan
2.8–4.3× but stays ~17× above its memory floor, because one program per (batch, head, head_dim
block) walks all chunks in order: 32 programs for 132 SMs at batch 1. Exact fp32 (``ieee``) dots
run without tensor cores and are 5–8× slower than PyTorch. The known next step is mamba_ssm /
fla's split into chunk-parallel kernels (chunk states, a short state pass, chunk outputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _ssd_scan_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, s0_ptr, y_ptr, sT_ptr,
    L, H, P, N,
    sxb, sxl, sxh,
    sdb, sdl, sdh,
    sbb, sbl, sbh,
    scb, scl, sch,
    ssb, ssh, ssp,
    HAS_D: tl.constexpr, HAS_S0: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh, pid_p = tl.program_id(0), tl.program_id(1)
    bi, hi = pid_bh // H, pid_bh % H
    rows = tl.arange(0, CHUNK)
    cols_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cols_n = tl.arange(0, BLOCK_N)
    p_ok, n_ok = cols_p < P, cols_n < N
    A = tl.load(A_ptr + hi).to(tl.float32)
    s_off = bi * ssb + hi * ssh + cols_p[:, None] * ssp + cols_n[None, :]
    if HAS_S0:
        state = tl.load(s0_ptr + s_off, mask=p_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    causal = rows[:, None] >= rows[None, :]
    for start in range(0, L, CHUNK):
        t = start + rows
        t_ok = t < L
        dt = tl.load(dt_ptr + bi * sdb + t * sdl + hi * sdh, mask=t_ok, other=0.0).to(tl.float32)  # (Q,)
        a_cum = tl.cumsum(dt * A, axis=0)  # decay exponent from the chunk start, inclusive
        x = tl.load(
            x_ptr + bi * sxb + t[:, None] * sxl + hi * sxh + cols_p[None, :],
            mask=t_ok[:, None] & p_ok[None, :],
            other=0.0,
        ).to(tl.float32)  # (Q, BLOCK_P)
        bn_mask = t_ok[:, None] & n_ok[None, :]
        Bm = tl.load(B_ptr + bi * sbb + t[:, None] * sbl + hi * sbh + cols_n[None, :], mask=bn_mask, other=0.0)
        Cm = tl.load(C_ptr + bi * scb + t[:, None] * scl + hi * sch + cols_n[None, :], mask=bn_mask, other=0.0)
        Bm, Cm = Bm.to(tl.float32), Cm.to(tl.float32)
        xdt = x * dt[:, None]
        # within the chunk: y_i = Σ_{j≤i} (C_i·B_j) exp(a_cum_i − a_cum_j) Δ_j x_j
        decay = tl.where(causal, tl.exp(a_cum[:, None] - a_cum[None, :]), 0.0)
        scores = tl.dot(Cm, tl.trans(Bm), input_precision=PRECISION) * decay  # (Q, Q)
        y = tl.dot(scores, xdt, input_precision=PRECISION)
        # from the state entering the chunk
        y += tl.exp(a_cum)[:, None] * tl.dot(Cm, tl.trans(state), input_precision=PRECISION)
        if HAS_D:
            y += tl.load(D_ptr + hi).to(tl.float32) * x
        tl.store(
            y_ptr + bi * sxb + t[:, None] * sxl + hi * sxh + cols_p[None, :],
            y.to(y_ptr.dtype.element_ty),
            mask=t_ok[:, None] & p_ok[None, :],
        )
        # hand-off: state ← exp(total)·state + Σ_j exp(total − a_cum_j) Δ_j x_j B_jᵀ
        total = tl.sum(dt * A, axis=0)
        carried = xdt * tl.exp(total - a_cum)[:, None]
        state = state * tl.exp(total) + tl.dot(tl.trans(carried), Bm, input_precision=PRECISION)
    tl.store(sT_ptr + s_off, state, mask=p_ok[:, None] & n_ok[None, :])


def ssd_triton_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    block_p: int = 64,
    precision: str = "ieee",
    num_warps: int = 8,
) -> tuple[Tensor, Tensor]:
    """Same result as ``ssd_chunked_scan``: (y (b, L, h, p), final state (b, h, p, n)) in float32.

    The chunk length is an internal tile size here (capped at 64); the result does not depend on it.

    ``precision`` "ieee" matches the PyTorch scan; "tf32" is faster on tensor cores, less exact.
    """
    b, L, h, p = x.shape
    n = B.shape[-1]
    x, B, C = (t.contiguous() for t in (x, B, C))
    dt = dt.contiguous()
    y = torch.empty(b, L, h, p, device=x.device, dtype=torch.float32)
    final = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    s0 = initial_state.contiguous().float() if initial_state is not None else final
    block_p = min(block_p, triton.next_power_of_2(p))
    chunk = min(64, max(16, triton.next_power_of_2(chunk_size)))  # 128 overflows shared memory on an H100
    grid = (b * h, triton.cdiv(p, block_p))
    _ssd_scan_kernel[grid](
        x, dt, A, B, C, D if D is not None else A, s0, y, final,
        L, h, p, n,
        *x.stride()[:3], *dt.stride(), *B.stride()[:3], *C.stride()[:3], *final.stride()[:3],
        HAS_D=D is not None, HAS_S0=initial_state is not None,
        CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=max(16, triton.next_power_of_2(n)), PRECISION=precision,
        num_warps=num_warps,
    )  # fmt: skip
    return y, final
