"""The built-in question families: each draws a scene and asks one question about it.

Every family returns (images as scenes, question, answer). Answers are computed from the
scene description alone; ``tests/test_data.py`` recomputes them independently.
"""

from __future__ import annotations

from .scenes import COLORS, SHAPES, free_cells

COLOR_NAMES = tuple(COLORS)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _shapes(rng, n, distinct_shapes=False, distinct_colors=False) -> list[dict]:
    shapes = rng.choice(SHAPES, n, replace=not distinct_shapes)
    colors = rng.choice(COLOR_NAMES, n, replace=not distinct_colors)
    return [
        {"kind": "shape", "shape": str(s), "color": str(c), "row": r, "col": col}
        for s, c, (r, col) in zip(shapes, colors, free_cells(rng, n))
    ]


def _digits(rng, pool, n) -> list[dict]:
    cells = free_cells(rng, n)
    return [{"kind": "digit", "image": int(rng.choice(pool)), "row": r, "col": c} for r, c in cells]


def count(rng, pool, labels):
    scene = _shapes(rng, int(rng.integers(1, 7)))
    return [scene], "<image>\nHow many shapes are there?", str(len(scene))


def color(rng, pool, labels):
    scene = _shapes(rng, int(rng.integers(1, 5)), distinct_shapes=True)
    target = scene[int(rng.integers(len(scene)))]
    return [scene], f"<image>\nWhat color is the {target['shape']}?", target["color"]


def shape(rng, pool, labels):
    scene = _shapes(rng, int(rng.integers(1, 5)), distinct_colors=True)
    target = scene[int(rng.integers(len(scene)))]
    return [scene], f"<image>\nWhat shape is the {target['color']} one?", target["shape"]


def position(rng, pool, labels):
    scene = _shapes(rng, int(rng.integers(1, 4)), distinct_shapes=True, distinct_colors=True)
    t = scene[int(rng.integers(len(scene)))]
    return [scene], f"<image>\nWhere is the {t['color']} {t['shape']}?", f"row {t['row'] + 1} column {t['col'] + 1}"


def digit(rng, pool, labels):
    scene = _digits(rng, pool, 1) + _shapes(rng, int(rng.integers(0, 3)))
    scene = _dedupe_cells(scene)
    return [scene], "<image>\nWhat digit is written?", str(labels[scene[0]["image"]])


def digit_sum(rng, pool, labels):
    scene = _digits(rng, pool, 2)
    total = sum(int(labels[o["image"]]) for o in scene)
    return [scene], "<image>\nWhat is the sum of the two digits?", str(total)


def reverse(rng, pool, labels):
    word = "".join(rng.choice(list(LETTERS), int(rng.integers(3, 8))))
    return [], f"Reverse the word: {word}", word[::-1]


def recall(rng, pool, labels, k: int | None = None):
    k = int(rng.integers(2, 5)) if k is None else k
    scenes = [_shapes(rng, 1) for _ in range(k)]
    j = int(rng.integers(k))
    text = "".join(f"Image {i + 1}: <image>\n" for i in range(k))
    o = scenes[j][0]
    return scenes, f"{text}What is in image {j + 1}?", f"{o['color']} {o['shape']}"


def _dedupe_cells(scene):
    """Drop distractors that landed on an occupied cell (digit first, so it always stays)."""
    seen, out = set(), []
    for o in scene:
        if (o["row"], o["col"]) not in seen:
            seen.add((o["row"], o["col"]))
            out.append(o)
    return out


FAMILIES = {
    "count": count,
    "color": color,
    "shape": shape,
    "position": position,
    "digit": digit,
    "digit_sum": digit_sum,
    "reverse": reverse,
    "recall": recall,
}
MULTI_IMAGE = ("recall",)
