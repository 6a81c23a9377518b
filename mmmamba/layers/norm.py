"""RMSNorm, and the two gated per-head RMSNorms that close the Mamba-2 mixer (one per gate order)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.norm import gated_rms_norm, rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedHeadNorm(nn.Module):
    """Norm first (the paper's, the released mmMamba's): RMSNorm of each head's output (one
    head_dim-wide weight shared by heads), times SiLU(gate)."""

    def __init__(self, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, y: Tensor, gate: Tensor) -> Tensor:
        """y and gate (..., h, head_dim)."""
        return gated_rms_norm(y, gate, self.weight, self.eps, "norm-first")


class GateFirstHeadNorm(GatedHeadNorm):
    """Gate first (Mamba-2's own, transformers' ``GraniteMoeHybridRMSNormGated`` with one group per head):
    y · SiLU(gate), then RMSNorm of each head (one head_dim-wide weight shared by heads), in float32."""

    def forward(self, y: Tensor, gate: Tensor) -> Tensor:
        """y and gate (..., h, head_dim)."""
        return gated_rms_norm(y, gate, self.weight, self.eps, "gate-first")


GATE_ORDERS = {"norm-first": GatedHeadNorm, "gate-first": GateFirstHeadNorm}
