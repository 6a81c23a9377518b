"""Chunked SSD scan in plain PyTorch: quadratic inside a chunk, linear across chunks.

Same signature and result as ``ssd_naive_scan`` (see its module for shapes), but the work inside
a chunk is a few batched matmuls and only the chunk-to-chunk state hand-off is sequential, so a
prompt of L tokens costs O(L·chunk) instead of L Python steps. Follows the four steps of the SSD
"minimal" formulation (Dao & Gu, 2024): diagonal blocks, chunk states, inter-chunk recurrence,
state → output. Any length works: the tail is padded with Δ = 0 (no decay, no input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_sum(a: Tensor) -> Tensor:
    """(..., T) → (..., T, T) with out[i, j] = a[j+1] + … + a[i] for j ≤ i, −inf above the diagonal."""
    T = a.shape[-1]
    a = a[..., None, :].expand(*a.shape, T).transpose(-1, -2)  # a[..., i, j] = a_i
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(a.masked_fill(~strict, 0), dim=-2)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~causal, float("-inf"))


def ssd_chunked_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunked scan; returns (y (b, L, h, p), final state (b, h, p, n))."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    pad = (-L) % chunk_size
    if pad:  # Δ = 0 on the padding: decay exp(0) = 1 and zero input, so the state passes through
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c, l = (L + pad) // chunk_size, chunk_size
    # (b, L, h, ·) → (b, c, l, h, ·)
    xs, Bs, Cs = (t.reshape(b, c, l, h, -1) for t in (x * dt[..., None], B, C))
    a = (dt * A).reshape(b, c, l, h).permute(0, 3, 1, 2)  # (b, h, c, l)
    a_cum = torch.cumsum(a, dim=-1)

    # 1. outputs from inputs of the same chunk
    decay_within = torch.exp(segment_sum(a))  # (b, h, c, l, l)
    y = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cs, Bs, decay_within, xs)

    # 2. each chunk's own contribution to the state at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, h, c, l)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bs, decay_to_end, xs)

    # 3. hand the state across chunks (sequential in c, linear in L)
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, h, c)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state
    states_in = []
    for i in range(c):
        states_in.append(state)
        state = chunk_decay[:, :, i, None, None] * state + chunk_states[:, i]
    states_in = torch.stack(states_in, dim=1)  # (b, c, h, p, n)

    # 4. outputs from the state entering each chunk
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cs, states_in, torch.exp(a_cum))
    y = y.reshape(b, c * l, h, p)[:, :L]
    if D is not None:
        y = y + D[:, None] * x[:, :L]
    return y, state
