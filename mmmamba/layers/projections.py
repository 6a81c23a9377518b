"""The q/k/v/o projections shared by attention and the Mamba-2 mixer, under the same names,
so seeding a mixer from an attention layer is a plain copy of these four."""

from __future__ import annotations

from torch import nn


def add_qkvo_projections(module: nn.Module, hidden: int, heads: int, kv_heads: int, head_dim: int, bias: bool):
    module.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
    module.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
    module.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
    module.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
