"""CUDA-graph decode for models whose decode step has static shapes (all layers Mamba-2).

The recurrent step reads and writes fixed-size conv/SSM state buffers in place, so one token's
forward can be captured once and replayed; a KV cache grows, so attention layers are refused.
"""

from __future__ import annotations

import torch

from ..errors import MmmambaError
from ..layers import Mamba2Mixer
from ..models import Decoder


class GraphedDecodeStep:
    """``step(token (b,)) → logits (b, vocab)``, replayed from a CUDA graph, same result as eager decode."""

    def __init__(self, model: Decoder, cache: torch.nn.ModuleList, batch: int):
        if not all(isinstance(layer.mixer, Mamba2Mixer) for layer in model.layers):
            raise MmmambaError("CUDA-graph decode needs an all-Mamba-2 model; hybrids decode eagerly")
        self.model, self.cache = model, cache
        device = model.embed_tokens.weight.device
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        saved = [(c.conv.clone(), c.ssm.clone(), c.length) for c in cache]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm up outside the graph
                model(self.token, cache=cache)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.logits = model(self.token, cache=cache).logits[:, -1]
        for c, (conv, ssm, length) in zip(cache, saved):  # undo the warm-up and capture steps
            c.conv.copy_(conv)
            c.ssm.copy_(ssm)
            c.length = length

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token.view_as(self.token))
        self.graph.replay()
        for c in self.cache:
            c.length += 1
        return self.logits
