"""SwiGLU feed-forward block (Llama / InternLM2 / Qwen2 style)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .projections import fuse_linears


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "gate_up_weight"):  # fused by ``fuse_projections``
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fuse_projections(self) -> None:
        if not hasattr(self, "gate_up_weight"):
            fuse_linears(self, "gate_up", [self.gate_proj, self.up_proj])
