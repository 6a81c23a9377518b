"""LLaVA / InternVL conversation JSONL: reading, validating, tokenising and batching.

One sample a line: ``{"id", "image": path | [paths] | absent, "conversations": [{"from": "human",
"value": "<image>\\n…"}, {"from": "gpt", "value": "…"}, …]}``; image paths are relative to the
data root and must stay inside it (no ``..``, no absolute path) unless the caller allows it
(``--allow-outside-images``). Extra keys (``family``, ``scenes``) are kept for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MmmambaError
from ..io import check_regular, iter_jsonl, resolved
from .images import ImageProcessor
from .tokenizer import IMAGE_MARK, ChatTokenizer


@dataclass
class Sample:
    id: str
    family: str
    images: list[Path]
    turns: list[tuple[str, str]]  # (human, gpt) pairs
    where: str = ""  # "file:line", for messages


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
    return Sample(str(record.get("id", where)), str(record.get("family", "all")), images, turns, where)


def _image_path(root: Path, rel: str, where: str, allow_outside: bool) -> Path:
    """The image's path; unless ``allow_outside``, it must stay inside the data folder once every link
    is resolved (a symlink, or a sub-folder that is one, pointing elsewhere leaves it; one inside is fine)."""
    if not rel or "\x00" in rel:
        raise MmmambaError(f"{where}: empty or invalid image path {rel!r}")
    p = Path(rel)
    if not allow_outside:
        real_root = resolved(root)
        real = resolved(root / p)
        if p.is_absolute() or ".." in p.parts or (real != real_root and real_root not in real.parents):
            via = "" if p.is_absolute() or ".." in p.parts else f" (through a link, to {real})"
            raise MmmambaError(
                f"{where}: image path {rel!r} leaves the data folder{via}; use a file inside it "
                "(or pass --allow-outside-images)"
            )
    return root / p


def read_jsonl(path, allow_outside: bool = False) -> list[Sample]:
    """Parse and validate every line; a bad line raises an error naming the file and line number."""
    path = Path(path)
    if path.is_dir():
        raise MmmambaError(f"{path}: is a folder, expected a JSONL data file")
    if not path.exists():
        raise MmmambaError(f"{path}: no such data file; run `mmmamba data make --out DIR` or point --data at it")
    check_regular(path, "JSONL data file")
    samples = []
    for where, record in iter_jsonl(path, "line (or remove it)"):
        sample = _check(record, where)
        sample.images = [_image_path(path.parent, p, where, allow_outside) for p in sample.images]
        samples.append(sample)
    return samples


def spread(items: list, limit: int | None) -> list:
    """``limit`` items at evenly spaced positions (all of them when ``limit`` is None or not smaller)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def read_split(data_dir, split: str, allow_outside: bool = False, limit: int | None = None) -> list[Sample]:
    """``{data_dir}/{split}.jsonl``; an absent folder or an empty split is an error naming it.

    ``limit`` keeps that many samples spread evenly over the file, in order: a split is written family
    by family, so its first N would leave the later families out of a validation subset."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is a file" if data_dir.exists() else "does not exist"
        raise MmmambaError(f"--data {data_dir}: {what}; point it at a folder with train.jsonl / val.jsonl / test.jsonl")
    samples = spread(read_jsonl(data_dir / f"{split}.jsonl", allow_outside), limit)
    if not samples:
        raise MmmambaError(f"{data_dir / f'{split}.jsonl'}: holds no samples; the {split} split must not be empty")
    return samples


@dataclass
class Example:
    """One tokenised sample: ids, loss mask on answer tokens, and its images."""

    ids: list[int]
    loss_mask: list[bool]
    pixels: torch.Tensor | None  # (n_tiles, C, S, S), all images' tiles in order; None for a text model


def encode_sample(
    sample: Sample, tok: ChatTokenizer, images: ImageProcessor | None, max_length: int | None = None
) -> Example:
    """Tokenise a conversation, each ``<image>`` expanded to as many placeholders as its image's tiles take."""
    where = sample.where or f"sample {sample.id}"
    if images is None:
        if sample.images:
            raise MmmambaError(f"{where}: has images but the model has no image front-end; use text-only data")
        ex = Example(*tok.chat(sample.turns), None)
    else:
        pixels, counts = images.load_many(sample.images)
        ex = Example(*tok.chat(sample.turns, counts), pixels)
    if max_length is not None and len(ex.ids) > max_length:
        raise MmmambaError(
            f"{where}: {len(ex.ids)} tokens, more than the model's max_position {max_length}; shorten or drop it"
        )
    return ex


def check_images_match(samples: list[Sample], vision, model_name) -> None:
    """Image data for a text-only model is refused before any work (it would be scored without its images)."""
    if vision is None:
        with_images = next((s for s in samples if s.images), None)
        if with_images is not None:
            raise MmmambaError(
                f"{with_images.where}: has images but {model_name} is text-only; use text-only data or a VLM"
            )


@dataclass
class Batch:
    input_ids: torch.Tensor  # (b, L)
    attention_mask: torch.Tensor  # (b, L), 1 on real tokens
    loss_mask: torch.Tensor  # (b, L), 1 where the token at this position is a training target
    pixel_values: torch.Tensor | None  # (n_tiles_in_batch, C, S, S), in sequence order
    cu_seqlens: torch.Tensor | None = None  # (n+1,) sample starts of a packed row (b = 1), see ``pack``
    totals: torch.Tensor | None = None  # (2,) tokens and targets of the whole global batch (set by the loop)

    def counts(self) -> torch.Tensor:
        """(2,) real tokens (the KL / MSE denominator) and answer targets (the CE denominator)."""
        return torch.stack([self.attention_mask.sum(), self.loss_mask[:, 1:].sum()]).long()

    def to(self, device) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            move(self.pixel_values),
            move(self.cu_seqlens),
            move(self.totals),
        )


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


def pack(examples: list[Example]) -> Batch:
    """All examples end to end in one row (b = 1) with ``cu_seqlens`` at the sample starts: no padding.

    The model restarts the scan, the conv window, attention and RoPE at every start, so each sample
    is computed exactly as alone; the losses are token sums, so the packed batch's loss equals the
    padded batch's (tests/test_packing.py). A sample's first token is never a target (nothing of its own
    precedes it; in a padded row it sits at position 0), so it leaves the mask: else the previous
    sample's last token would be trained to predict it.
    """
    ids = torch.tensor([t for e in examples for t in e.ids], dtype=torch.long)[None]
    loss = torch.tensor([m and i > 0 for e in examples for i, m in enumerate(e.loss_mask)], dtype=torch.bool)[None]
    lengths = torch.tensor([0] + [len(e.ids) for e in examples])
    pixels = [e.pixels for e in examples if e.pixels is not None]
    cu = lengths.cumsum(0).to(torch.int32)
    return Batch(ids, torch.ones_like(ids), loss, torch.cat(pixels) if pixels else None, cu)
