"""Image front-ends: pixels → tokens, spliced into the sequence at image-placeholder positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VisionConfig


def _check_pixels(cfg: VisionConfig, pixel_values: Tensor) -> None:
    _, c, height, width = pixel_values.shape
    s = cfg.image_size
    if (c, height, width) != (cfg.channels, s, s):
        raise ValueError(f"expected images of shape ({cfg.channels}, {s}, {s}), got ({c}, {height}, {width})")


def pixel_shuffle(x: Tensor, r: int) -> Tensor:
    """InternVL's pixel shuffle (v2, ratio 1/r): (n, h, w, c) → (n, h/r, w/r, c·r²).

    Each output token concatenates an r×r block of neighbouring patches; the channel order follows
    InternVL so that projector weights trained there apply unchanged.
    """
    n, h, w, c = x.shape
    x = x.reshape(n, h, w // r, c * r).permute(0, 2, 1, 3)  # (n, w/r, h, c·r)
    x = x.reshape(n, w // r, h // r, c * r * r).permute(0, 2, 1, 3)  # (n, h/r, w/r, c·r²)
    return x.contiguous()


class PatchEmbedding(nn.Module):
    """Fuyu style: each patch linearly projected to one token, plus a learned per-patch position."""

    def __init__(self, cfg: VisionConfig, hidden_size: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.channels * cfg.patch_size**2, hidden_size)
        self.pos = nn.Parameter(torch.randn(cfg.num_patches, hidden_size) * 0.02)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values (n, C, H, W) → (n, num_patches, hidden)."""
        _check_pixels(self.cfg, pixel_values)
        n, c = pixel_values.shape[:2]
        s, p = self.cfg.image_size, self.cfg.patch_size
        # (n, C, H, W) → (n, H/p, W/p, p·p·C): row-major patches
        patches = pixel_values.reshape(n, c, s // p, p, s // p, p).permute(0, 2, 4, 3, 5, 1)
        return self.proj(patches.reshape(n, (s // p) ** 2, p * p * c)) + self.pos


class ShuffledPatchEmbedding(nn.Module):
    """InternVL / HoVLE style: conv patches + positions → pixel shuffle → MLP projector."""

    def __init__(self, cfg: VisionConfig, hidden_size: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim or hidden_size
        merged = d * cfg.merge**2
        self.patch_embedding = nn.Conv2d(cfg.channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, cfg.num_patches, d) * 0.02)
        self.projector = nn.Sequential(
            nn.LayerNorm(merged), nn.Linear(merged, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values (n, C, H, W) → (n, tokens_per_tile, hidden)."""
        _check_pixels(self.cfg, pixel_values)
        x = self.patch_embedding(pixel_values)  # (n, d, h, w)
        n, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.position_embedding  # (n, h·w, d)
        x = pixel_shuffle(x.reshape(n, h, w, d), self.cfg.merge)
        return self.projector(x.reshape(n, -1, x.shape[-1]))


class HolisticPatchEmbedding(nn.Module):
    """HoVLE's released front-end: conv patches + positions → pixel shuffle → Linear, GELU, Linear.

    The position table is stored as HoVLE stores it: (1, grid² + 1, d) with a class slot first,
    which the forward skips; when the image's patch grid differs from the stored grid, the table
    is resized by bicubic interpolation (align_corners=False, in float32), as the official code does.
    """

    def __init__(self, cfg: VisionConfig, hidden_size: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim or hidden_size
        self.stored_grid = cfg.position_grid or cfg.grid
        self.patch_embedding = nn.Conv2d(cfg.channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))  # in the released weights; unused here too
        self.position_embedding = nn.Parameter(torch.randn(1, self.stored_grid**2 + 1, d) * 0.02)
        self.projector = nn.Sequential(
            nn.Linear(d * cfg.merge**2, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    def positions(self, h: int, w: int) -> Tensor:
        """(1, h·w, d) position embeddings for an h × w patch grid (class slot skipped)."""
        table = self.position_embedding[:, 1:]
        g = self.stored_grid
        if (h, w) == (g, g):
            return table  # bicubic resizing to the same size is the identity
        grid = table.float().reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, d, g, g)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2).to(table.dtype)  # (1, h·w, d)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values (n, C, H, W) → (n, tokens_per_tile, hidden)."""
        _check_pixels(self.cfg, pixel_values)
        x = self.patch_embedding(pixel_values)  # (n, d, h, w)
        n, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.positions(h, w).to(x.dtype)  # (n, h·w, d)
        x = pixel_shuffle(x.reshape(n, h, w, d), self.cfg.merge)
        return self.projector(x.reshape(n, -1, x.shape[-1]))


def build_vision(cfg: VisionConfig, hidden_size: int) -> nn.Module:
    styles = {"fuyu": PatchEmbedding, "internvl": ShuffledPatchEmbedding, "hovle": HolisticPatchEmbedding}
    return styles[cfg.style](cfg, hidden_size)
