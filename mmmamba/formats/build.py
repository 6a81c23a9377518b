"""Building a ``Decoder`` around tensors already read: no throw-away random init, strict names."""

from __future__ import annotations

import torch

from ..models.config import DecoderConfig
from ..models.decoder import Decoder
from ..models.sizing import check_fits
from .checkpoint import load_state_strict


def build_loaded(cfg: DecoderConfig, tensors: dict[str, torch.Tensor], source, dtype=None) -> Decoder:
    """A model of ``cfg`` holding ``tensors`` (strictly), built without a throw-away random init."""
    check_fits(cfg, source)
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    dtype = dtype or (floats[0] if floats else torch.float32)
    with torch.device("meta"):
        model = Decoder(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    load_state_strict(model, tensors, source)
    return model.eval()
