"""Byte-level tokenizer with special tokens and a chat template, saved beside the checkpoint.

Ids 0–255 are raw UTF-8 bytes; special tokens follow. An image is written in the text as
``<image>`` and expanded to ``<img>`` + one ``<IMG_CONTEXT>`` placeholder per patch + ``</img>``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import MmmambaError

SPECIALS = ("<pad>", "<bos>", "<end>", "<img>", "</img>", "<IMG_CONTEXT>", "<|user|>", "<|assistant|>")
IMAGE_MARK = "<image>"
FILENAME = "tokenizer.json"


class ByteTokenizer:
    def __init__(self, image_tokens: int = 16):
        self.image_tokens = image_tokens
        self.special = {name: 256 + i for i, name in enumerate(SPECIALS)}
        self.vocab_size = 256 + len(SPECIALS)
        self.pad_id, self.bos_id, self.end_id = (self.special[s] for s in ("<pad>", "<bos>", "<end>"))
        self.image_token_id = self.special["<IMG_CONTEXT>"]

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; ``<image>`` becomes the image start, placeholders and end."""
        ids: list[int] = []
        for i, part in enumerate(text.split(IMAGE_MARK)):
            if i:
                ids += [self.special["<img>"], *[self.image_token_id] * self.image_tokens, self.special["</img>"]]
            ids += list(part.encode("utf-8"))
        return ids

    def decode(self, ids) -> str:
        out, raw = [], bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                raw.append(i)
                continue
            out.append(raw.decode("utf-8", errors="replace"))
            raw = bytearray()
            name = SPECIALS[i - 256] if i - 256 < len(SPECIALS) else "<unk>"
            out.append(IMAGE_MARK if name == "<img>" else "" if name in ("</img>", "<IMG_CONTEXT>") else name)
        out.append(raw.decode("utf-8", errors="replace"))
        return "".join(out)

    def user_turn(self, text: str, first: bool = True) -> list[int]:
        """``<bos>`` (first turn only), the user's message and the assistant cue, ready for generation."""
        head = [self.bos_id] if first else []
        return head + [self.special["<|user|>"], *self.encode(text), self.end_id, self.special["<|assistant|>"]]

    def answer(self, text: str) -> list[int]:
        return [*self.encode(text), self.end_id]

    def chat(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[bool]]:
        """(user, assistant) pairs → ids and a mask that is True on answer tokens (the SFT loss targets)."""
        ids: list[int] = []
        mask: list[bool] = []
        for i, (user, assistant) in enumerate(turns):
            prompt, reply = self.user_turn(user, first=i == 0), self.answer(assistant)
            ids += prompt + reply
            mask += [False] * len(prompt) + [True] * len(reply)
        return ids, mask

    def save(self, folder) -> None:
        spec = {"kind": "byte", "specials": list(SPECIALS), "image_tokens": self.image_tokens}
        (Path(folder) / FILENAME).write_text(json.dumps(spec, indent=2) + "\n")

    @classmethod
    def load(cls, folder) -> ByteTokenizer:
        f = Path(folder) / FILENAME
        if not f.is_file():
            raise MmmambaError(f"{f}: no tokenizer.json; save the tokenizer with the checkpoint")
        spec = json.loads(f.read_text())
        if spec.get("kind") != "byte" or spec.get("specials") != list(SPECIALS):
            raise MmmambaError(f"{f}: not an mmmamba byte tokenizer")
        return cls(image_tokens=spec["image_tokens"])


def copy_tokenizer(src, dst) -> None:
    """Copy a checkpoint's tokenizer file next to a derived checkpoint, if the source has one."""
    if (Path(src) / FILENAME).is_file():
        shutil.copyfile(Path(src) / FILENAME, Path(dst) / FILENAME)
