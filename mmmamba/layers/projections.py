"""The q/k/v/o projections shared by attention and the Mamba-2 mixer, under the same names,
so seeding a mixer from an attention layer is a plain copy of these four."""

from __future__ import annotations

import torch
from torch import nn


def add_qkvo_projections(module: nn.Module, hidden: int, heads: int, kv_heads: int, head_dim: int, bias: bool):
    module.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
    module.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
    module.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
    module.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)


def fuse_linears(module: nn.Module, name: str, linears: list[nn.Linear]) -> None:
    """Register ``{name}_weight`` / ``{name}_bias`` on ``module``: one matmul for all of ``linears``.

    The fused tensors are non-persistent buffers (not in the state dict, not trained), and the
    originals' parameters are re-pointed to row slices of them, so no memory is duplicated. Fuse for
    inference, after moving the model to its device and dtype; a later ``.to()`` copies the two apart
    (still correct, twice the memory). Missing biases become zeros in the fused bias.
    """
    weight = torch.cat([lin.weight.data for lin in linears])  # (Σ out, in)
    bias = None
    if any(lin.bias is not None for lin in linears):
        parts = [lin.bias.data if lin.bias is not None else weight.new_zeros(lin.out_features) for lin in linears]
        bias = torch.cat(parts)
    start = 0
    for lin in linears:
        end = start + lin.out_features
        lin.weight.data = weight[start:end]
        if lin.bias is not None:
            lin.bias.data = bias[start:end]
        start = end
    module.register_buffer(f"{name}_weight", weight, persistent=False)
    module.register_buffer(f"{name}_bias", bias, persistent=False)
