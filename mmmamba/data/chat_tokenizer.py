"""The interface every tokenizer serves (byte-level ``ByteTokenizer``, Hugging Face ``HFTokenizer``):
turns of a chat, image marks and stop ids. Below both, so neither imports the other.
"""

from __future__ import annotations

from ..errors import MmmambaError

IMAGE_MARK = "<image>"


class ChatTokenizer:
    """What training, evaluation and generation need of a tokenizer, whatever its kind.

    Subclasses set the ids below and implement ``encode_text``, ``decode``, ``user_turn`` and ``answer``.
    ``<image>`` in a message becomes ``<img>``, one ``<IMG_CONTEXT>`` per image token, ``</img>``;
    the count per image comes from the image processor (tiles × tokens per tile).
    """

    pad_id: int
    bos_id: int | None
    end_id: int
    stop_ids: tuple[int, ...]
    image_token_id: int | None
    image_tokens: int = 0  # placeholders per image when the caller gives no counts
    source = "tokenizer"

    def encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def image_span_ids(self) -> tuple[int, int, int]:
        """Ids of ``<img>``, ``<IMG_CONTEXT>``, ``</img>``."""
        raise NotImplementedError

    def encode(self, text: str, image_tokens: list[int] | None = None) -> list[int]:
        """Text to ids; each ``<image>`` mark expands to its image's placeholder span."""
        parts = text.split(IMAGE_MARK)
        counts = [self.image_tokens] * (len(parts) - 1) if image_tokens is None else list(image_tokens)
        if len(counts) != len(parts) - 1:
            raise MmmambaError(f"{len(parts) - 1} '<image>' mark(s) but {len(counts)} image(s); make them match")
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i:
                start, ctx, end = self.image_span_ids()
                ids += [start, *[ctx] * counts[i - 1], end]
            ids += self.encode_text(part) if part else []
        return ids

    def user_turn(self, text: str, first: bool = True, image_tokens: list[int] | None = None) -> list[int]:
        """The user's message wrapped as a turn, ending with the assistant cue (ready to generate)."""
        raise NotImplementedError

    def answer(self, text: str) -> list[int]:
        """The assistant's reply as a turn, ending with the end-of-turn token."""
        raise NotImplementedError

    def chat(self, turns: list[tuple[str, str]], image_tokens: list[int] | None = None) -> tuple[list[int], list[bool]]:
        """(user, assistant) pairs → ids and a mask that is True on answer tokens (the SFT loss targets)."""
        ids: list[int] = []
        mask: list[bool] = []
        counts = None if image_tokens is None else list(image_tokens)
        for i, (user, assistant) in enumerate(turns):
            k = user.count(IMAGE_MARK)
            mine = None if counts is None else counts[:k]
            counts = None if counts is None else counts[k:]
            prompt, reply = self.user_turn(user, first=i == 0, image_tokens=mine), self.answer(assistant)
            ids += prompt + reply
            mask += [False] * len(prompt) + [True] * len(reply)
        return ids, mask
