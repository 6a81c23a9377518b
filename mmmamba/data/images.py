"""Image files → normalised tiles for a model's front-end, and how many placeholder tokens they take.

Dynamic tiling follows InternVL / HoVLE: among the grids of ``cols × rows`` tiles with
``min_tiles ≤ cols·rows ≤ max_tiles``, take the one whose aspect ratio is closest to the image's
(on a tie, the larger grid when the image has more than half its pixels), resize the image to
the grid and cut it row-major; with more than one tile, a thumbnail of the whole image follows.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import MmmambaError
from ..io import open_regular
from ..models.config import VisionConfig
from .tokenizer import IMAGE_MARK

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every (cols, rows) with min_tiles ≤ cols·rows ≤ max_tiles, fewest tiles first."""
    grids = {
        (i, j) for i in range(1, max_tiles + 1) for j in range(1, max_tiles + 1) if min_tiles <= i * j <= max_tiles
    }
    return sorted(grids, key=lambda g: (g[0] * g[1], g))


def choose_grid(width: int, height: int, image_size: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """The (cols, rows) tiling of a width × height image."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # larger headers are refused before decoding (decompression bombs)


def open_image(path) -> Image.Image:
    """Decode an image file to RGB; a corrupt, missing, oversized or not regular file (a FIFO) is a one-line
    error naming it."""
    with open_regular(path, "image file") as f:
        return _decode(f, path)


def _decode(f, path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own size limit below says it
            with Image.open(f) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS or min(w, h) < 1:
                    raise MmmambaError(f"{path}: {w}x{h} pixels is not a usable image size; resize it below 64 Mpixel")
                return im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise MmmambaError(f"{path}: cannot read image ({e.__class__.__name__}); replace or remove it") from None


class ImageProcessor:
    """Turns images into the tiles a model with ``cfg`` expects, normalised, as one tensor."""

    def __init__(self, cfg: VisionConfig):
        self.cfg = cfg
        self.resample = RESAMPLE[cfg.resample]
        self.mean = torch.tensor(cfg.mean).view(-1, 1, 1)
        self.std = torch.tensor(cfg.std).view(-1, 1, 1)

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        s, cfg = self.cfg.image_size, self.cfg
        if cfg.max_tiles == 1:
            return [image if image.size == (s, s) else image.resize((s, s), self.resample)]
        cols, rows = choose_grid(*image.size, s, cfg.min_tiles, cfg.max_tiles)
        grid = image.resize((cols * s, rows * s), self.resample)
        out = [grid.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
        if cfg.use_thumbnail and len(out) > 1:
            out.append(image.resize((s, s), self.resample))
        return out

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """(C, S, S) float tensor, (pixel/255 − mean) / std."""
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        return (arr - self.mean) / self.std

    def __call__(self, image) -> torch.Tensor:
        """A path or PIL image → (n_tiles, C, S, S)."""
        image = image if isinstance(image, Image.Image) else open_image(image)
        return torch.stack([self.to_tensor(t) for t in self.tiles(image)])

    def load_many(self, images) -> tuple[torch.Tensor, list[int]]:
        """Images in order → all their tiles (n, C, S, S) and each image's placeholder-token count."""
        s = self.cfg.image_size
        tiles = [self(im) for im in images]
        counts = [t.shape[0] * self.cfg.tokens_per_tile for t in tiles]
        return (torch.cat(tiles) if tiles else torch.zeros(0, self.cfg.channels, s, s)), counts


def attach_image(text: str, tiles: torch.Tensor, cfg: VisionConfig) -> tuple[str, list[int]]:
    """A message sent with one image (its tiles): the ``<image>`` mark, put first when absent, and its token count."""
    return (text if IMAGE_MARK in text else f"{IMAGE_MARK}\n{text}"), [tiles.shape[0] * cfg.tokens_per_tile]


def image_processor(cfg: VisionConfig | None) -> ImageProcessor | None:
    return None if cfg is None else ImageProcessor(cfg)
