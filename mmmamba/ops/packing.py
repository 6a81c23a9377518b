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


class Unpacker:
    """Moves a packed row (1, L, ...) to a zero-padded batch of one sample a row (n, width, ...) and back.

    Ops with no varlen form (PyTorch's SDPA, the chunked scan) then run on the batch: attention costs
    Σ width² instead of L², and padding sits after each sample, where causal ops never look back at it.
    """

    def __init__(self, cu_seqlens: Tensor, length: int, device):
        self.sample, self.pos = sample_positions(cu_seqlens, length, device)  # (L,) each
        self.n = cu_seqlens.numel() - 1
        self.width = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if self.n else 0  # one host read

    def unpack(self, t: Tensor) -> Tensor:
        """(1, L, ...) → (n, width, ...), zeros after each sample."""
        return t.new_zeros(self.n, self.width, *t.shape[2:]).index_put((self.sample, self.pos), t[0])

    def repack(self, t: Tensor) -> Tensor:
        """(n, width, ...) → (1, L, ...)."""
        return t[self.sample, self.pos][None]
