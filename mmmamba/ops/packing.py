"""Packed rows: several samples in one row, their starts in ``cu_seqlens`` (n+1,), FlashAttention-style."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_positions(cu_seqlens: Tensor, length: int, device) -> tuple[Tensor, Tensor]:
    """For each of ``length`` tokens: the sample it belongs to, and its position inside that sample; both (L,)."""
    t = torch.arange(length, device=device)
    starts = cu_seqlens.to(device, torch.long)
    sample = torch.searchsorted(starts[1:], t, right=True)
    return sample, t - starts[sample]
