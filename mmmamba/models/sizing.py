"""Sizes a model config implies, before anything is built: parameters, weight memory, decoding caches."""

from __future__ import annotations

from ..errors import MmmambaError
from ..io import human_bytes, machine_memory
from .config import DecoderConfig


def parameter_count(cfg: DecoderConfig) -> int:
    """Parameters a model of ``cfg`` holds (Mamba-2 layers counted; close enough for attention),
    each layer with its own shapes (``DecoderConfig.layer``)."""
    d = cfg.hidden_size
    kernel = int(cfg.mamba.get("conv_kernel", 2)) if isinstance(cfg.mamba, dict) else 2
    layers = 0
    for i in range(cfg.num_layers):
        s = cfg.layer(i)
        h, kv, hd = s.num_heads, s.num_kv_heads, s.head_dim
        mixer = d * hd * (2 * h + 2 * kv) + (2 * kv + h) * hd * (kernel + 1) + d * h + d * h * hd + 4 * h + 2 * hd
        layers += mixer + 3 * d * s.intermediate_size + 2 * d
    embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    vision = 0
    if cfg.vision is not None:
        v = cfg.vision
        width = max(d, v.embed_dim or d)
        vision = (v.channels * v.patch_size**2 + v.num_patches + 4 * width) * width + 4 * width * d
    return layers + embed + vision + d


def check_fits(cfg: DecoderConfig, where, bytes_per_param: int = 4) -> int:
    """Refuse a config whose weights cannot fit in this machine's memory; returns the bytes needed."""
    need = parameter_count(cfg) * bytes_per_param
    have = machine_memory()
    if need > have:
        raise MmmambaError(
            f"{where}: the config describes {parameter_count(cfg) / 1e9:.3g} B parameters ({human_bytes(need)}), "
            f"more than this machine's {human_bytes(have)} of memory; check the sizes in config.json"
        )
    return need


def cache_bytes(cfg: DecoderConfig, batch: int, length: int, bytes_per: int = 4) -> int:
    """Memory of the decoding caches: a KV cache per attention layer, a constant state per Mamba-2 layer."""
    kernel = int(cfg.mamba.get("conv_kernel", 2))
    kv = state = 0
    for i, kind in enumerate(cfg.mixers):
        s = cfg.layer(i)
        if kind == "attention":
            kv += 2 * batch * length * s.num_kv_heads * s.head_dim * bytes_per
        else:
            conv = (kernel - 1) * (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
            state += batch * (s.num_heads * s.head_dim**2 + conv)
    return kv + state * max(bytes_per, 4)
