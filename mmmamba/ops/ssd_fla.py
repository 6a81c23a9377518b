"""The SSD scan through flash-linear-attention's ``chunk_simple_gla`` (Triton, forward and backward, CUDA).

Our recurrence S_t = exp(Δ_t·A)·S_{t−1} + Δ_t·x_t·B_tᵀ, y_t = S_t·C_t is simple GLA with
q = C, k = B·Δ, v = x, log-decay g = Δ·A and no 1/√d scale. fla keeps the state as (V, K) with
``state_v_first=True``, which is our (p, n) layout. ``cu_seqlens`` packs variable-length samples
into one row: the state resets at every boundary.

When gradients are needed the scan runs through fla's ``chunk_gla`` with the head's decay repeated
over the key dim (the same recurrence): fla refuses ``chunk_simple_gla``'s backward on Hopper with
Triton 3.4–3.7.0 (wrong gated dq/dk/dg, fla issue #640), and GLA's backward uses other kernels,
checked against float64 by ``tests/gpu/check_kernels.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fla_available() -> bool:
    try:
        import fla.ops.simple_gla  # noqa: F401
    except Exception:  # ImportError, or a Triton without a GPU driver
        return False
    return True


def ssd_fla_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    cu_seqlens: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Same shapes as ``ssd_naive_scan``; returns (y (b, L, h, p), final state (b or n_seqs, h, p, n), fp32).

    q/k/v enter fla in ``compute_dtype`` (default: x's dtype; bf16 doubles the speed, TF32 is used
    inside either way); the decay and the state stay in float32. ``chunk_size`` is fla's own (64).
    """
    from fla.ops.gla import chunk_gla
    from fla.ops.simple_gla import chunk_simple_gla

    dtype = compute_dtype or x.dtype
    g = (dt * A).float()  # (b, L, h) log-decay
    k = (B * dt[..., None]).to(dtype)
    state = None if initial_state is None else initial_state.float()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C))
    if needs_grad:  # (b, L, h) → (b, L, h, n): one decay per key channel, all equal
        kernel, g = chunk_gla, g[..., None].expand(*g.shape, B.shape[-1]).contiguous()
    else:
        kernel = chunk_simple_gla
    y, final = kernel(
        C.to(dtype),
        k,
        x.to(dtype),
        g=g,
        scale=1.0,
        initial_state=state,
        output_final_state=True,
        state_v_first=True,
        cu_seqlens=cu_seqlens,
    )
    y = y.to(x.dtype)
    if D is not None:
        y = y + D[:, None] * x
    return y, final
