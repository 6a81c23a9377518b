"""Hugging Face decoder folders (Llama, Mistral, Qwen2) mapped onto our one decoder.

Weight mapping is data: a table of name patterns. Nothing from the folder is imported or run;
only ``config.json`` and ``*.safetensors`` are read.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import MmmambaError
from .checkpoint import load_state_strict, read_safetensors
from .config import DecoderConfig
from .decoder import Decoder

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

# Hugging Face name → our name (regex substitution, applied in order; first match wins)
NAME_MAP = [
    (r"^model\.embed_tokens\.", "embed_tokens."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "lm_head."),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.", r"layers.\1.mixer.\2."),
    (r"^model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.", r"layers.\1.mlp.\2."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"layers.\1.input_norm."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"layers.\1.post_norm."),
]
IGNORED = (r"\.rotary_emb\.inv_freq$",)


def map_name(name: str) -> str | None:
    for pattern, repl in NAME_MAP:
        if re.search(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def decoder_config_from_hf(raw: dict, where: Path) -> DecoderConfig:
    arch = (raw.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        raise MmmambaError(f"{where}/config.json: architecture {arch!r} is not supported; use one of {list(SUPPORTED)}")
    if raw.get("hidden_act", "silu") != "silu":
        raise MmmambaError(f"{where}/config.json: hidden_act {raw['hidden_act']!r} is not supported (only silu)")
    scaling = raw.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise MmmambaError(f"{where}/config.json: rope_scaling {kind!r} is not supported; only plain RoPE (theta)")
    if arch == "LlamaForCausalLM" and raw.get("attention_bias"):
        raise MmmambaError(f"{where}/config.json: attention_bias with an output bias is not supported")
    heads = raw["num_attention_heads"]
    max_position = raw.get("max_position_embeddings", 4096)
    if arch == "MistralForCausalLM" and raw.get("sliding_window"):
        max_position = min(max_position, raw["sliding_window"])  # within the window, sliding = full attention
    theta = raw.get("rope_theta", (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    return DecoderConfig(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        intermediate_size=raw["intermediate_size"],
        rope_theta=float(theta),
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=arch == "Qwen2ForCausalLM",
        max_position=max_position,
        conversion={"source": arch},
    )


def load_hf_decoder(path, raw: dict, dtype: torch.dtype | None = None) -> Decoder:
    path = Path(path)
    cfg = decoder_config_from_hf(raw, path)
    tensors = {}
    for name, t in read_safetensors(path).items():
        if any(re.search(p, name) for p in IGNORED):
            continue
        ours = map_name(name)
        if ours is None:
            raise MmmambaError(f"{path}: tensor {name!r} has no place in a {cfg.conversion['source']} model")
        tensors[ours] = t
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    dtype = dtype or next(iter(tensors.values())).dtype
    model = Decoder(cfg).to(dtype)
    load_state_strict(model, tensors, path)
    return model.eval()
