"""Plain sequential reference for the SSD (Mamba-2) recurrence: the executable specification.

Shapes used throughout ``mmmamba.ops``:
    x  (b, L, h, p)   inputs (Mamba "x", attention "v")
    dt (b, L, h)      step sizes Δ, already positive (after softplus)
    A  (h,)           negative decay rates, one scalar per head
    B  (b, L, h, n)   input projections (attention "k")
    C  (b, L, h, n)   output projections (attention "q")
    D  (h,)           optional skip
    state (b, h, p, n)
Recurrence, per head:  S_t = exp(Δ_t·A)·S_{t−1} + Δ_t·x_t·B_tᵀ ;  y_t = S_t·C_t (+ D·x_t).
"""

from __future__ import annotations

import torch
from torch import Tensor


def ssd_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token of the recurrence; returns (y (b, h, p), new state (b, h, p, n)).

    x (b, h, p), dt (b, h), B and C (b, h, n), state (b, h, p, n). Used for decoding.
    """
    decay = torch.exp(dt * A)[..., None, None]  # (b, h, 1, 1)
    state = decay * state + (dt[..., None] * x)[..., :, None] * B[..., None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    if D is not None:
        y = y + D[:, None] * x
    return y, state


def ssd_naive_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token scan; returns (y (b, L, h, p), final state (b, h, p, n))."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y, state
