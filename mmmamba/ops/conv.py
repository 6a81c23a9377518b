"""Depthwise causal conv1d with a rolling state (the last kernel−1 inputs).

x (b, L, d), weight (d, k), bias (d,) or None, state (b, k−1, d). Tap k−1 multiplies the current
token, tap 0 the token k−1 steps back. No activation here: the caller applies it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .packing import sample_positions


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Whole sequence; returns (y (b, L, d), final state (b, k−1, d)).

    ``cu_seqlens`` (n+1,) packs n samples into one row (b = 1, no initial state): the window restarts
    at each sample start, and the final state has one row per sample (n, k−1, d).
    """
    if cu_seqlens is not None:
        return packed_causal_conv1d(x, weight, bias, cu_seqlens)
    b, L, d = x.shape
    k = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(b, k - 1, d)
    xp = torch.cat([initial_state, x], dim=1)  # (b, k−1+L, d)
    if torch.compiler.is_compiling():  # k shifted multiply-adds: Inductor fuses them (and what follows) in one pass
        y = sum(xp[:, j : j + L] * weight[:, j] for j in range(k))
        y = y if bias is None else y + bias
    else:
        y = F.conv1d(xp.transpose(1, 2), weight[:, None, :], bias, groups=d).transpose(1, 2)  # (b, d, L) → (b, L, d)
    return y, xp[:, xp.shape[1] - (k - 1) :]


def packed_causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, cu_seqlens: Tensor) -> tuple[Tensor, Tensor]:
    """``causal_conv1d`` over packed samples, x (1, L, d): tap j of token t reads x[t−j] only when
    t−j is in t's sample, so every sample sees zeros before its start, as it would alone."""
    if x.shape[0] != 1:
        raise ValueError(f"packed sequences (cu_seqlens) need batch 1, got {x.shape[0]}")
    L, k = x.shape[1], weight.shape[-1]
    start = cu_seqlens.to(x.device, torch.long)
    _, since_start = sample_positions(start, L, x.device)  # (L,) tokens before t in its own sample
    y = x * weight[:, k - 1]
    for j in range(1, k):  # tap k−1−j multiplies the token j steps back
        back = F.pad(x, (0, 0, j, 0))[:, :L] * (since_start >= j)[None, :, None].to(x.dtype)
        y = y + back * weight[:, k - 1 - j]
    if bias is not None:
        y = y + bias
    # final state per sample: its last k−1 inputs, zero-filled where the sample is shorter
    ends = start[1:, None] - torch.arange(k - 1, 0, -1, device=x.device)  # (n, k−1) token index
    inside = ends >= start[:-1, None]
    state = x[0][ends.clamp(min=0)] * inside[..., None].to(x.dtype)
    return y, state


def causal_conv1d_step(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token x (b, d); returns (y (b, d), new state (b, k−1, d))."""
    window = torch.cat([state, x[:, None]], dim=1)  # (b, k, d)
    y = torch.einsum("bkd,dk->bd", window, weight)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]
