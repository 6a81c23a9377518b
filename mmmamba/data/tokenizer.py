"""Byte-level tokenizer with special tokens and a chat template, saved beside the checkpoint.

``ByteTokenizer``: ids 0–255 are raw UTF-8 bytes; special tokens follow. Hugging Face tokenizers
(``hf_tokenizer.py``) serve through the same ``ChatTokenizer`` interface. An image is written in
the text as ``<image>`` and expanded to ``<img>`` + its ``<IMG_CONTEXT>`` placeholders + ``</img>``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import MmmambaError
from ..io import read_json, write_atomic, write_json_atomic
from .chat_tokenizer import IMAGE_MARK, ChatTokenizer

__all__ = ["IMAGE_MARK", "ByteTokenizer", "ChatTokenizer", "copy_tokenizer", "load_tokenizer"]

SPECIALS = ("<pad>", "<bos>", "<end>", "<img>", "</img>", "<IMG_CONTEXT>", "<|user|>", "<|assistant|>")
FILENAME = "tokenizer.json"


class ByteTokenizer(ChatTokenizer):
    """Our own tokenizer: UTF-8 bytes plus a few specials, with a fixed minimal chat template."""

    source = "byte"

    def __init__(self, image_tokens: int = 16):
        self.image_tokens = image_tokens
        self.special = {name: 256 + i for i, name in enumerate(SPECIALS)}
        self.vocab_size = 256 + len(SPECIALS)
        self.pad_id, self.bos_id, self.end_id = (self.special[s] for s in ("<pad>", "<bos>", "<end>"))
        self.stop_ids = (self.end_id,)
        self.image_token_id = self.special["<IMG_CONTEXT>"]

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def image_span_ids(self) -> tuple[int, int, int]:
        return self.special["<img>"], self.image_token_id, self.special["</img>"]

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

    def user_turn(self, text: str, first: bool = True, image_tokens: list[int] | None = None) -> list[int]:
        """``<bos>`` (first turn only), ``<|user|>``, the message, ``<end>``, ``<|assistant|>``."""
        head = [self.bos_id] if first else []
        body = self.encode(text, image_tokens)
        return head + [self.special["<|user|>"], *body, self.end_id, self.special["<|assistant|>"]]

    def answer(self, text: str) -> list[int]:
        return [*self.encode(text), self.end_id]

    def save(self, folder) -> None:
        spec = {"kind": "byte", "specials": list(SPECIALS), "image_tokens": self.image_tokens}
        write_json_atomic(Path(folder) / FILENAME, spec, digits=None)

    @classmethod
    def load(cls, folder) -> ByteTokenizer:
        f = Path(folder) / FILENAME
        if not f.is_file():
            raise MmmambaError(f"{f}: no tokenizer.json; save the tokenizer with the checkpoint")
        spec = read_json(f, "tokenizer.json")
        if spec.get("kind") != "byte" or spec.get("specials") != list(SPECIALS):
            raise MmmambaError(f"{f}: not an mmmamba byte tokenizer")
        n = spec.get("image_tokens")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1 << 20:
            raise MmmambaError(f"{f}: image_tokens must be a positive integer, got {json.dumps(n)}")
        return cls(image_tokens=n)


# Files that make up a tokenizer in a checkpoint folder (ours, or a Hugging Face one)
TOKENIZER_FILES = (
    FILENAME,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def copy_tokenizer(src, dst) -> None:
    """Copy a checkpoint's tokenizer files next to a derived checkpoint (those the source has), atomically."""
    if Path(src).suffix.lower() == ".gguf" and Path(src).is_file():  # built from the file's metadata
        from ..formats.gguf import gguf_hf_tokenizer, write_tokenizer

        write_tokenizer(gguf_hf_tokenizer(src), dst)
        return
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            write_atomic(Path(dst) / name, lambda p, name=name: shutil.copyfile(Path(src) / name, p))


def load_tokenizer(folder, chat_template: str | None = None) -> ChatTokenizer:
    """The tokenizer saved in a checkpoint folder: ours (byte-level) or a Hugging Face one.

    ``chat_template`` (``--chat-template``): a Jinja file or a conversation template's name used in
    place of the folder's own format (``conversation_templates.override_chat_template``)."""
    tok = _load_tokenizer(folder, own_format=chat_template is None)
    if chat_template is not None:
        from .conversation_templates import override_chat_template

        override_chat_template(tok, chat_template)
    return tok


def check_fits_model(tok: ChatTokenizer, vocab_size: int, model) -> None:
    """The tokenizer may make no id past the model's vocabulary: its embedding has no row for one."""
    n = getattr(tok, "vocab_size", None)
    if type(n) is int and n > vocab_size:
        raise MmmambaError(
            f"{model}: its tokenizer has {n} ids but the model's vocabulary is {vocab_size}; put the model's own "
            "tokenizer files beside it"
        )


def _load_tokenizer(folder, own_format: bool) -> ChatTokenizer:
    if Path(folder).suffix.lower() == ".gguf" and Path(folder).is_file():  # a llama.cpp file's own tokenizer
        from .hf_tokenizer import HFTokenizer

        return HFTokenizer(folder)
    f = Path(folder) / FILENAME
    for name in TOKENIZER_FILES:  # a FIFO or device among them would block the reader (transformers' too)
        g = Path(folder) / name
        if g.exists() and not g.is_file():
            raise MmmambaError(f"{g}: is not a regular file; copy the teacher's tokenizer files into {folder}")
    if f.is_file() and f.stat().st_size < 4096 and read_json(f, "tokenizer.json").get("kind") == "byte":
        return ByteTokenizer.load(folder)
    if f.is_file():
        read_json(f, "tokenizer.json")  # a malformed file is one line here, not deep in transformers
    if not f.is_file() and not (Path(folder) / "tokenizer_config.json").is_file():
        raise MmmambaError(f"{folder}: no tokenizer files; copy the teacher's tokenizer files into it")
    from .conversation_templates import attach_folder_template
    from .hf_tokenizer import HFTokenizer

    tok = HFTokenizer(folder)
    if own_format:  # HoVLE / InternVL: the template the config names, when the tokenizer has none
        attach_folder_template(tok, folder)
    return tok
