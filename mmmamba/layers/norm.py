"""RMSNorm, and the two gated per-head RMSNorms that close the Mamba-2 mixer (one per gate order)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / rms(x) · weight over the last dimension, computed in float32 or wider."""
    dtype = x.dtype
    x = x.to(torch.promote_types(dtype, torch.float32))
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


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
        return rms_norm(y, self.weight, self.eps) * F.silu(gate)


class GateFirstHeadNorm(GatedHeadNorm):
    """Gate first (Mamba-2's own, transformers' ``GraniteMoeHybridRMSNormGated`` with one group per head):
    y · SiLU(gate), then RMSNorm of each head (one head_dim-wide weight shared by heads), in float32."""

    def forward(self, y: Tensor, gate: Tensor) -> Tensor:
        """y and gate (..., h, head_dim)."""
        wide = torch.promote_types(y.dtype, torch.float32)
        z = y.to(wide) * F.silu(gate.to(wide))
        z = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * z.to(y.dtype)


GATE_ORDERS = {"norm-first": GatedHeadNorm, "gate-first": GateFirstHeadNorm}
