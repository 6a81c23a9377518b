"""Multi-turn chat that keeps the model's cache between turns instead of re-reading the history.

For a Mamba-2 model the cache is a constant-size state, so each turn costs only its own tokens.
The session holds ``max_length`` tokens (``--max-context``) in every model kind: a turn that would not
fit starts a new conversation (``restarted``), and an answer is cut where the context ends.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.images import attach_image
from ..data.tokenizer import ChatTokenizer
from ..errors import MmmambaError
from ..models import Decoder
from .decode_step import DecodeStep
from .generate import check_length, decode_tokens, prefill_ids
from .sampling import SamplingConfig


class ChatSession:
    def __init__(
        self,
        model: Decoder,
        tok: ChatTokenizer,
        sampling: SamplingConfig | None = None,
        max_length: int | None = None,
        decode: str = "auto",
    ):
        self.model, self.tok, self.decode = model, tok, decode
        self.sampling = sampling or SamplingConfig()
        self.max_length = max_length or model.config.max_position
        self.reset()

    def reset(self) -> None:
        self.cache = self.model.make_cache(1, self.max_length)
        self.step: DecodeStep | None = None  # made at the first answer; its buffers last the session
        self.mask = torch.zeros(1, 0, dtype=torch.long, device=self.model.embed_tokens.weight.device)
        self.pending: list[int] = []  # the last turn's stop token, sampled but not yet fed
        self.tokens = 0  # tokens the cache holds
        self.restarted = False  # the last ``ask`` found the context full and started a new conversation

    @torch.no_grad()
    def ask(
        self,
        text: str,
        image: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """One user turn, with an optional image as its tiles (n_tiles, C, S, S); returns the answer's tokens."""
        counts = None
        if image is not None:
            text, counts = attach_image(text, image, self.model.config.vision)
        ids = self.pending + self.tok.user_turn(text, first=self.tokens == 0, image_tokens=counts)
        self.restarted = False
        if self.tokens and self.tokens + len(ids) >= self.max_length:  # full: this turn starts a new conversation
            self.reset()
            self.restarted = True
            ids = self.tok.user_turn(text, first=True, image_tokens=counts)
        room = self.max_length - len(ids)
        if room < 1:
            raise MmmambaError(
                f"a message of {len(ids)} tokens leaves no room for an answer in the {self.max_length}-token "
                "context; shorten it (or raise --max-context)"
            )
        max_new_tokens = min(max_new_tokens, self.max_length - self.tokens - len(ids))  # the answer is cut there
        check_length(self.model, self.tokens + len(ids), max_new_tokens)
        device = self.mask.device
        ids_t = torch.tensor([ids], device=device)
        self.mask = torch.cat([self.mask, torch.ones_like(ids_t)], dim=1)
        pixels = None if image is None else image.to(device, self.model.embed_tokens.weight.dtype)
        logits = prefill_ids(self.model, ids_t, pixels, self.mask, self.cache)
        callback = None if on_token is None else (lambda t: on_token(int(t[0])))
        if self.step is None:
            self.step = DecodeStep(self.model, self.cache, self.decode)
        (answer,), self.mask = decode_tokens(
            self.model, logits, self.mask, self.cache, max_new_tokens, self.sampling, self.tok.stop_ids, callback,
            self.step,
        )  # fmt: skip
        self.tokens = self.mask.shape[1]
        self.pending = answer[-1:]
        return answer
