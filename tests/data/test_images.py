"""Image preprocessing (dynamic tiling, normalisation) and the InternVL-style front-end, against references."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmmamba.data.images import ImageProcessor, candidate_grids, choose_grid
from mmmamba.models import VisionConfig
from mmmamba.models.vision import ShuffledPatchEmbedding, pixel_shuffle

HOVLE = VisionConfig(
    image_size=448, patch_size=14, style="internvl", downsample_ratio=0.5, max_tiles=12, use_thumbnail=True
)


def test_hovle_tile_has_256_tokens():
    assert HOVLE.num_patches == 32 * 32 and HOVLE.tokens_per_tile == 256


@pytest.mark.parametrize(
    "size,grid",
    [
        ((448, 448), (1, 1)),  # square, small: one tile
        ((1000, 1000), (3, 3)),  # square, large: ties on ratio go to the larger grid while it has the pixels
        ((600, 600), (1, 1)),  # 600² < half of 2×2 tiles (401 408 px)
        ((700, 700), (2, 2)),  # 700² > half of 2×2 tiles but < half of 3×3 (903 168 px)
        ((896, 448), (2, 1)),
        ((448, 1344), (1, 3)),  # tall
        ((800, 600), (4, 3)),  # 4:3 exactly available with 12 tiles
        ((5000, 100), (12, 1)),  # extreme: the widest grid allowed
    ],
)
def test_tiling_choice_follows_aspect_ratio(size, grid):
    assert choose_grid(*size, 448, 1, 12) == grid


def test_candidate_grids_and_tile_counts():
    grids = candidate_grids(1, 12)
    assert all(1 <= c * r <= 12 for c, r in grids) and len(grids) == len(set(grids))
    assert (12, 1) in grids and (1, 12) in grids and (5, 3) not in grids
    proc = ImageProcessor(HOVLE)
    wide = Image.new("RGB", (896, 448), (255, 0, 0))
    tiles, counts = proc.load_many([wide, Image.new("RGB", (448, 448))])
    assert tiles.shape == (2 + 1 + 1, 3, 448, 448)  # 2 tiles + thumbnail, then 1 tile without thumbnail
    assert counts == [3 * 256, 256]


def test_tiles_are_row_major_crops_and_imagenet_normalised():
    cfg = VisionConfig(
        image_size=4,
        patch_size=2,
        style="internvl",
        downsample_ratio=0.5,
        max_tiles=6,
        use_thumbnail=False,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
    )
    arr = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)  # 12 wide, 8 tall → 3×2 tiles
    tiles = ImageProcessor(cfg)(Image.fromarray(arr))
    assert tiles.shape == (6, 3, 4, 4)
    expect = (arr[4:8, 8:12] / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]  # row 1, col 2 = tile 5
    assert np.allclose(tiles[5].permute(1, 2, 0).numpy(), expect, atol=1e-5)


def test_pixel_shuffle_matches_a_loop_reference():
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    r = 2
    ref = torch.zeros(2, 3, 2, 5 * r * r, dtype=torch.float64)
    for i in range(3):
        for j in range(2):
            # InternVL order: the block's rows vary slowest, then columns, then channels
            ref[:, i, j] = torch.cat([x[:, i * r + di, j * r + dj] for di in range(r) for dj in range(r)], dim=-1)
    assert torch.equal(pixel_shuffle(x, 2), ref)


def test_shuffled_patch_embedding_matches_per_patch_matmul():
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=8, patch_size=2, style="internvl", downsample_ratio=0.5)
    front = ShuffledPatchEmbedding(cfg, hidden_size=6).double()
    pixels = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    w, b = front.patch_embedding.weight, front.patch_embedding.bias  # (d, C, p, p)
    d = w.shape[0]
    grid = torch.zeros(3, 4, 4, d, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            patch = pixels[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            grid[:, i, j] = patch.flatten(1) @ w.flatten(1).T + b + front.position_embedding[0, i * 4 + j]
    merged = torch.stack(
        [
            torch.cat([grid[:, 2 * a + di, 2 * c + dj] for di in (0, 1) for dj in (0, 1)], -1)
            for a in (0, 1)
            for c in (0, 1)
        ],
        dim=1,
    )
    with torch.no_grad():
        assert torch.allclose(front(pixels), front.projector(merged), atol=1e-12)
