"""RMSNorm and the two gated per-head RMSNorms that close the Mamba-2 mixer, as functions of their weights
(``layers.norm`` holds the weights; ``ops.mamba_step``'s reference reuses the same math)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GATE_ORDERS = ("norm-first", "gate-first")


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / rms(x) · weight over the last dimension, computed in float32 or wider."""
    dtype = x.dtype
    x = x.to(torch.promote_types(dtype, torch.float32))
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def gated_rms_norm(y: Tensor, gate: Tensor, weight: Tensor, eps: float, gate_order: str) -> Tensor:
    """y and gate (..., h, head_dim), weight (head_dim,) shared by the heads. ``norm-first`` (the paper's, the
    released mmMamba's): RMSNorm(y)·SiLU(gate). ``gate-first`` (Mamba-2's, transformers'
    ``GraniteMoeHybridRMSNormGated`` with one group per head): RMSNorm(y·SiLU(gate)), in float32 or wider."""
    if gate_order == "norm-first":
        return rms_norm(y, weight, eps) * F.silu(gate)
    if gate_order != "gate-first":
        raise ValueError(f"gate_order must be one of {list(GATE_ORDERS)}, got {gate_order!r}")
    wide = torch.promote_types(y.dtype, torch.float32)
    z = y.to(wide) * F.silu(gate.to(wide))
    z = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + eps)
    return weight * z.to(y.dtype)
