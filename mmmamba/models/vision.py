"""Image front-end: pixels → one token per patch, to be spliced at image-placeholder positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import VisionConfig


class PatchEmbedding(nn.Module):
    """Fuyu-style linear patch projection plus a learned per-patch position embedding."""

    def __init__(self, cfg: VisionConfig, hidden_size: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.channels * cfg.patch_size**2, hidden_size)
        self.pos = nn.Parameter(torch.randn(cfg.num_patches, hidden_size) * 0.02)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values (n, C, H, W) → (n, num_patches, hidden)."""
        n, c, height, width = pixel_values.shape
        s, p = self.cfg.image_size, self.cfg.patch_size
        if (c, height, width) != (self.cfg.channels, s, s):
            raise ValueError(f"expected images of shape ({self.cfg.channels}, {s}, {s}), got ({c}, {height}, {width})")
        # (n, C, H, W) → (n, H/p, W/p, p·p·C): row-major patches
        patches = pixel_values.reshape(n, c, s // p, p, s // p, p).permute(0, 2, 4, 3, 5, 1)
        return self.proj(patches.reshape(n, (s // p) ** 2, p * p * c)) + self.pos
