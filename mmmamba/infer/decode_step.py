"""The decode step as generation calls it: ``Decoder.decode_step`` run eagerly, replayed from a CUDA
graph, or compiled by ``torch.compile`` and then replayed — for every model kind.

Every buffer a step reads or writes is preallocated (KV cache, Mamba-2 states, slot, positions,
valid-key mask, RoPE tables), so one capture serves the whole generation, and later chat turns too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import MmmambaError
from ..models import Decoder
from ..models.cache import ModelCache
from ..models.decoder import DecoderLayer

MODES = ("auto", "eager", "graph", "compile")


def resolve_mode(mode: str, device: torch.device) -> str:
    if mode not in MODES:
        raise MmmambaError(f"decode mode {mode!r} is unknown; use one of {list(MODES)}")
    if mode == "auto":
        return "graph" if device.type == "cuda" else "eager"
    if mode in ("graph", "compile") and device.type != "cuda":
        raise MmmambaError(f"decode mode {mode!r} needs a CUDA device; use --decode eager")
    return mode


class DecodeStep:
    """``step(token (b,)) → logits (b, vocab)``; same result as ``Decoder.forward`` on that token."""

    def __init__(self, model: Decoder, cache: ModelCache, mode: str = "auto"):
        device = model.embed_tokens.weight.device
        self.mode = resolve_mode(mode, device)
        self.model, self.cache = model, cache
        self.fn = model.decode_step
        if self.mode == "compile":  # regional: one compiled layer step serves every layer of a kind
            layer_step = torch.compile(DecoderLayer.step)
            self.fn = lambda token, cache: model.decode_step(token, cache, layer_step)
        self.graph = None
        if self.mode in ("graph", "compile"):
            self._capture(device)

    def _capture(self, device) -> None:
        batch = self.cache.key_valid.shape[0]
        self.token = torch.zeros(batch, dtype=torch.long, device=device)
        saved = self.cache.snapshot()  # warm-up and capture run real steps: undo them afterwards
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        # coordinate-descent tuning lets Inductor's batch-1 matmuls (GEMVs) reach memory bandwidth (gpt-fast)
        with torch.cuda.stream(stream), torch._inductor.config.patch(coordinate_descent_tuning=True):
            for _ in range(3):  # compile / autotune / allocate outside the graph
                self.fn(self.token, self.cache)
                self.cache.restore(saved)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.fn(self.token, self.cache)
        self.cache.restore(saved)

    def __call__(self, token: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if self.cache.length >= self.cache.max_length:  # host-side count: no sync, and no device assert
            raise MmmambaError(f"the cache holds {self.cache.max_length} tokens and is full; allocate a longer one")
        if self.graph is None:
            logits = self.fn(token, self.cache)
        else:
            self.token.copy_(token.view_as(self.token))
            self.graph.replay()
            logits = self.logits
        self.cache.count_step()
        return logits
