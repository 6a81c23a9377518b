"""The whole model's decoding cache: one cache per layer plus the static buffers a decode step reads.

Per layer: a preallocated KV cache (attention) or a constant-size conv + SSM state (Mamba-2).
Shared: ``key_valid`` (b, slots) marks the slots holding real tokens (left padding is False),
``slot`` () is where the next token goes and ``position`` (b,) its RoPE position, all device
tensors so a decode step never syncs with the host; RoPE cos/sin tables are computed once.
Prefill (``Decoder.forward``) and the static step (``Decoder.decode_step``) keep them in step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import DecodeContext
from ..layers.rope import rope_cos_sin


class ModelCache(nn.Module):
    def __init__(self, layer_caches: list[nn.Module], batch: int, max_length: int, rope, dtype, device):
        super().__init__()
        self.layers = nn.ModuleList(layer_caches)
        self.max_length = max_length
        self.register_buffer("key_valid", torch.zeros(batch, max_length, dtype=torch.bool, device=device), False)
        self.register_buffer("slot", torch.zeros((), dtype=torch.long, device=device), False)
        self.register_buffer("position", torch.zeros(batch, dtype=torch.long, device=device), False)
        self.rope_cos: dict[tuple[float, int], Tensor] = {}
        self.rope_sin: dict[tuple[float, int], Tensor] = {}
        positions = torch.arange(max_length, device=device)[None]  # (1, max_length)
        for theta, head_dim in sorted(rope):  # one table per (theta, head_dim) the attention layers use
            cos, sin = rope_cos_sin(positions, head_dim, theta, dtype)  # (1, 1, max_length, hd), as forward rounds
            self.rope_cos[theta, head_dim], self.rope_sin[theta, head_dim] = cos[0, 0], sin[0, 0]

    def __getitem__(self, i: int) -> nn.Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    @property
    def length(self) -> int:
        """Tokens seen so far (host-side count, the same in every layer)."""
        return self.layers[0].length

    def after_prefill(self, valid: Tensor | None, positions: Tensor, past: int, new: int) -> None:
        """Record ``new`` tokens written at slots past…past+new; valid (b, past+new) or None; positions (b, new)."""
        if valid is None:
            self.key_valid[:, past : past + new] = True
        else:
            self.key_valid[:, past : past + new] = valid[:, -new:].bool()
        self.slot.fill_(past + new)
        self.position.copy_(positions[:, -1] + 1)

    def context(self) -> DecodeContext:
        """The decode step's view: marks the new token's slot valid and gathers its RoPE (graph-safe)."""
        self.key_valid.index_fill_(1, self.slot.view(1), True)
        cos = {t: c[self.position] for t, c in self.rope_cos.items()}  # (b, hd)
        sin = {t: s[self.position] for t, s in self.rope_sin.items()}
        return DecodeContext(cos, sin, self.slot, self.key_valid)

    def advance(self) -> None:
        """After a decode step: device counters move on; host lengths follow (no sync either way)."""
        self.slot.add_(1)
        self.position.add_(1)

    def count_step(self) -> None:
        """Host-side bookkeeping of one decode step (call outside a captured graph)."""
        for layer in self.layers:
            layer.length += 1

    def snapshot(self) -> dict[str, Tensor]:
        """Copies of everything a decode step changes except the KV tensors (a step only writes the
        slot it is given, which ``restore`` hands back as free)."""
        return {n: b.clone() for n, b in self.named_buffers() if not n.endswith((".k", ".v"))}

    def restore(self, saved: dict[str, Tensor]) -> None:
        buffers = dict(self.named_buffers())
        for name, value in saved.items():
            buffers[name].copy_(value)
