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

    _last: tuple[Tensor, int, int, str, Unpacker] | None = None  # the latest packed batch's Unpacker

    @classmethod
    def of(cls, cu_seqlens: Tensor, length: int, device) -> Unpacker:
        """The Unpacker of this packed batch, built once: every layer of a forward (and of its backward's
        recomputation) passes the same ``cu_seqlens`` tensor, and building one reads the longest sample
        length back from the GPU, a host sync per layer otherwise. Keyed by the tensor's identity and
        version (an in-place change rebuilds it), the row length and the device, like fla's tensor_cache."""
        last = cls._last
        key = (cu_seqlens._version, length, str(device))
        if last is not None and last[0] is cu_seqlens and last[1:4] == key:
            return last[4]
        rows = cls(cu_seqlens, length, device)
        cls._last = (cu_seqlens, *key, rows)
        return rows

    def unpack(self, t: Tensor) -> Tensor:
        """(1, L, ...) → (n, width, ...), zeros after each sample."""
        return t.new_zeros(self.n, self.width, *t.shape[2:]).index_put((self.sample, self.pos), t[0])

    def repack(self, t: Tensor) -> Tensor:
        """(n, width, ...) → (1, L, ...)."""
        return t[self.sample, self.pos][None]
