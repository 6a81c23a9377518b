"""LLaVA / InternVL conversation JSONL: reading, validating, tokenising and batching.

One sample a line: ``{"id", "image": path | [paths] | absent, "conversations": [{"from": "human",
"value": "<image>\\n…"}, {"from": "gpt", "value": "…"}, …]}``; image paths are relative to the
data root. Extra keys (``family``, ``scenes``) are kept for evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MmmambaError
from .images import ImageProcessor
from .tokenizer import IMAGE_MARK, ChatTokenizer


@dataclass
class Sample:
    id: str
    family: str
    images: list[Path]
    turns: list[tuple[str, str]]  # (human, gpt) pairs


def _check(record, where: str) -> Sample:
    if not isinstance(record, dict):
        raise MmmambaError(f"{where}: expected a JSON object per line")
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv or len(conv) % 2:
        raise MmmambaError(f"{where}: 'conversations' must be a non-empty list of human/gpt pairs")
    turns = []
    for i in range(0, len(conv), 2):
        h, g = conv[i], conv[i + 1]
        ok = all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in (h, g))
        if not ok or h.get("from") != "human" or g.get("from") != "gpt":
            raise MmmambaError(f"{where}: turn {i // 2 + 1} must be a 'human' then a 'gpt' message with a 'value'")
        turns.append((h["value"], g["value"]))
    image = record.get("image", [])
    images = [image] if isinstance(image, str) else image
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise MmmambaError(f"{where}: 'image' must be a path or a list of paths")
    marks = sum(h.count(IMAGE_MARK) for h, _ in turns)
    if marks != len(images):
        raise MmmambaError(f"{where}: {marks} '<image>' marks but {len(images)} image path(s); make them match")
    return Sample(str(record.get("id", where)), str(record.get("family", "all")), images, turns)


def read_jsonl(path) -> list[Sample]:
    """Parse and validate every line; a bad line raises an error naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise MmmambaError(f"{path}: no such data file; run `mmmamba data make --out DIR` or point --data at it")
    samples = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MmmambaError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove the line") from None
            sample = _check(record, f"{path}:{n}")
            sample.images = [path.parent / p for p in sample.images]
            samples.append(sample)
    return samples


@dataclass
class Example:
    """One tokenised sample: ids, loss mask on answer tokens, and its images."""

    ids: list[int]
    loss_mask: list[bool]
    pixels: torch.Tensor | None  # (n_tiles, C, S, S), all images' tiles in order; None for a text model


def encode_sample(sample: Sample, tok: ChatTokenizer, images: ImageProcessor | None) -> Example:
    """Tokenise a conversation, each ``<image>`` expanded to as many placeholders as its image's tiles take."""
    if images is None:
        if sample.images:
            raise MmmambaError(f"sample {sample.id}: has images but the model has no image front-end; drop them")
        return Example(*tok.chat(sample.turns), None)
    pixels, counts = images.load_many(sample.images)
    return Example(*tok.chat(sample.turns, counts), pixels)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (b, L)
    attention_mask: torch.Tensor  # (b, L), 1 on real tokens
    loss_mask: torch.Tensor  # (b, L), 1 where the token at this position is a training target
    pixel_values: torch.Tensor | None  # (n_tiles_in_batch, C, S, S), in sequence order

    def to(self, device) -> Batch:
        pixels = None if self.pixel_values is None else self.pixel_values.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device), pixels)


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-pad a list of examples for training (causal: padding at the end never affects real tokens)."""
    L = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    att = torch.zeros(len(examples), L, dtype=torch.long)
    loss = torch.zeros(len(examples), L, dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        att[i, : len(e.ids)] = 1
        loss[i, : len(e.ids)] = torch.tensor(e.loss_mask)
    pixels = [e.pixels for e in examples if e.pixels is not None]
    return Batch(ids, att, loss, torch.cat(pixels) if pixels else None)
