"""Generated scenes: coloured shapes and real handwritten digits on a grid, and their rendering.

A scene is plain data (a list of objects with grid cells), so every answer can be recomputed
from it. Digits come from the UCI handwritten digits bundled with scikit-learn (8×8, 0–16).
"""

from __future__ import annotations

import numpy as np

GRID = 4  # cells per side
CELL = 8  # pixels per cell side
IMAGE_SIZE = GRID * CELL

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 40),
    "purple": (165, 60, 205),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")


def _shape_masks() -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:CELL, 0:CELL]
    inner = (y >= 1) & (y <= 6) & (x >= 1) & (x <= 6)
    return {
        "circle": (y - 3.5) ** 2 + (x - 3.5) ** 2 <= 3.3**2,
        "square": inner,
        "triangle": inner & (np.abs(x - 3.5) <= (y - 0.5) / 2 + 0.3),
        "cross": inner & ((np.abs(x - 3.5) <= 1) | (np.abs(y - 3.5) <= 1)),
    }


SHAPE_MASKS = _shape_masks()


def load_uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) intensities 0–16 and their labels, from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the built-in task suite needs scikit-learn: pip install 'mmmamba[data]'") from e
    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def render(scene: list[dict], digit_images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scene → (32, 32, 3) uint8 image on a dark background, with a little colour jitter."""
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 12, dtype=np.int64)
    for obj in scene:
        r, c = obj["row"] * CELL, obj["col"] * CELL
        cell = img[r : r + CELL, c : c + CELL]
        if obj["kind"] == "shape":
            color = np.array(COLORS[obj["color"]]) + rng.integers(-15, 16, size=3)
            cell[SHAPE_MASKS[obj["shape"]]] = color
        else:
            gray = digit_images[obj["image"]].astype(np.int64) * 255 // 16
            cell[:] = np.maximum(cell, gray[..., None])
    return np.clip(img, 0, 255).astype(np.uint8)


def free_cells(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    return [(int(i) // GRID, int(i) % GRID) for i in cells]
