"""Depthwise causal conv1d with a rolling state (the last kernel−1 inputs).

x (b, L, d), weight (d, k), bias (d,) or None, state (b, k−1, d). Tap k−1 multiplies the current
token, tap 0 the token k−1 steps back. No activation here: the caller applies it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Whole sequence; returns (y (b, L, d), final state (b, k−1, d))."""
    b, L, d = x.shape
    k = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(b, k - 1, d)
    xp = torch.cat([initial_state, x], dim=1)  # (b, k−1+L, d)
    y = F.conv1d(xp.transpose(1, 2), weight[:, None, :], bias, groups=d)  # (b, d, L)
    return y.transpose(1, 2), xp[:, xp.shape[1] - (k - 1) :]


def causal_conv1d_step(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token x (b, d); returns (y (b, d), new state (b, k−1, d))."""
    window = torch.cat([state, x[:, None]], dim=1)  # (b, k, d)
    y = torch.einsum("bkd,dk->bd", window, weight)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]
