"""``mmmamba data make``: write the built-in task suite as LLaVA-style JSONL + PNG images.

Deterministic for a seed. Splits are disjoint: no (family, scenes, question) appears twice, and
the UCI digit images are partitioned so test digits are never seen in training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io import write_jsonl_atomic, write_text_atomic
from .scenes import load_uci_digits, render
from .tasks import FAMILIES

SPLITS = ("test", "val", "train")  # held-out splits first, so train can avoid their samples
DIGIT_SHARE = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


def save_png(image: Image.Image, path: Path) -> None:
    """Written under a temporary name, then renamed over ``path``: an image already there (or a link in its
    place) is replaced, never written through. No fsync: the suite is regenerated from its seed, and its
    index files, written atomically last, name only finished images."""
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def digit_pools(n_digits: int, seed: int) -> dict[str, np.ndarray]:
    perm = np.random.default_rng([seed, 99]).permutation(n_digits)
    return {s: np.sort(perm[int(a * n_digits) : int(b * n_digits)]) for s, (a, b) in DIGIT_SHARE.items()}


def make_suite(
    out, seed: int = 0, sizes: dict[str, int] | None = None, recall_images=(2, 3, 4), family_train=None
) -> dict:
    """Write ``{split}.jsonl`` and ``images/{split}/*.png`` under ``out``; returns the manifest.

    ``family_train`` ({family: n}) gives a family another train size than ``sizes["train"]`` (more
    distinct samples of a hard family). Train is drawn last, so val and test do not change with it."""
    sizes = {"train": 4000, "val": 40, "test": 100, **(sizes or {})}
    family_train = dict(family_train or {})
    unknown = sorted(set(family_train) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {list(FAMILIES)}")
    out = Path(out)
    digit_images, labels = load_uci_digits()
    pools = digit_pools(len(labels), seed)
    seen: set[str] = set()
    for split_index, split in enumerate(SPLITS):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, split_index])
        records = []
        per_family = {f: family_train.get(f, sizes[split]) if split == "train" else sizes[split] for f in FAMILIES}
        with tqdm(total=sum(per_family.values()), desc=f"data {split}", unit="sample") as bar:
            for family, make in FAMILIES.items():
                made = 0
                while made < per_family[family]:
                    k = {"k": recall_images[made % len(recall_images)]} if family == "recall" else {}
                    scenes, question, answer = make(rng, pools[split], labels, **k)
                    signature = json.dumps([family, scenes, question], sort_keys=True)
                    if signature in seen:
                        continue
                    seen.add(signature)
                    sample_id = f"{split}-{family}-{made:05d}"
                    paths = []
                    for j, scene in enumerate(scenes):
                        rel = f"images/{split}/{sample_id}-{j}.png"
                        save_png(Image.fromarray(render(scene, digit_images, rng)), out / rel)
                        paths.append(rel)
                    record = {"id": sample_id, "family": family}
                    if paths:
                        record["image"] = paths[0] if len(paths) == 1 else paths
                    record["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
                    record["scenes"] = scenes
                    records.append(record)
                    made += 1
                    bar.update()
        write_jsonl_atomic(out / f"{split}.jsonl", records)
    manifest = {
        "seed": seed,
        "sizes": sizes,
        "family_train": family_train,
        "families": list(FAMILIES),
        "recall_images": list(recall_images),
        "digit_pools": {s: p.tolist() for s, p in pools.items()},
    }
    write_text_atomic(out / "suite.json", json.dumps(manifest) + "\n")
    return manifest
