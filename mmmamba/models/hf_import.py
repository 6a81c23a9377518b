"""Hugging Face teacher folders (Llama, Mistral, Qwen2, InternLM2, HoVLE) loaded into our one decoder.

Only ``config.json``, ``*.safetensors`` and tokenizer files are read; nothing from the folder is
imported or run. Weight names are mapped by the tables in ``hf_families.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import MmmambaError
from .checkpoint import build_loaded, read_safetensors
from .config import DecoderConfig, VisionConfig
from .decoder import Decoder
from .hf_families import FAMILIES, Family, family_of, map_names, require, split_packed_qkv, token_id_from_files

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "InternLM2ForCausalLM", "HoVLE*")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SHAPE_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")


def llm_fields(raw: dict, where: str, arch: str) -> dict:
    """DecoderConfig fields from a Llama-like LLM config (Llama, Mistral, Qwen2, InternLM2)."""
    if raw.get("hidden_act", "silu") != "silu":
        raise MmmambaError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported (only silu)")
    scaling = raw.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise MmmambaError(f"{where}: rope_scaling {kind!r} is not supported; only plain RoPE (theta)")
    if arch in ("LlamaForCausalLM", "InternLM2ForCausalLM") and (raw.get("attention_bias") or raw.get("bias")):
        raise MmmambaError(f"{where}: attention bias with an output-projection bias is not supported")
    heads = require(raw, "num_attention_heads", where)
    hidden = require(raw, "hidden_size", where)
    max_position = raw.get("max_position_embeddings", 4096)
    if arch == "MistralForCausalLM" and raw.get("sliding_window"):
        max_position = min(max_position, raw["sliding_window"])  # within the window, sliding = full attention
    theta = raw.get("rope_theta", (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    return dict(
        vocab_size=require(raw, "vocab_size", where),
        hidden_size=hidden,
        num_layers=require(raw, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or hidden // heads,
        intermediate_size=require(raw, "intermediate_size", where),
        rope_theta=float(theta),
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=FAMILIES[arch].qkv_bias,
        max_position=max_position,
    )


def hovle_fields(raw: dict, folder: Path, where: str) -> tuple[dict, list[int]]:
    """HoVLE: holistic-embedding layers + InternLM2 layers as one stack, InternVL-style image front-end."""
    llm, emb = require(raw, "llm_config", where), require(raw, "embedding_config", where)
    fields = llm_fields(llm, f"{where} (llm_config)", "InternLM2ForCausalLM")
    for key in SHAPE_KEYS:
        if key in emb and emb[key] != llm.get(key):
            raise MmmambaError(f"{where}: embedding_config {key}={emb[key]} differs from llm_config's {llm.get(key)}")
    holistic = require(emb, "num_hidden_layers", f"{where} (embedding_config)")
    image_token = raw.get("img_context_token_id") or token_id_from_files(folder, "<IMG_CONTEXT>")
    if image_token is None:
        raise MmmambaError(f"{where}: no <IMG_CONTEXT> token id; set img_context_token_id or add the tokenizer files")
    dynamic = raw.get("dynamic_image_size", True)
    vision = VisionConfig(
        image_size=raw.get("force_image_size") or emb.get("image_size", 448),
        patch_size=emb.get("patch_size", 14),
        channels=emb.get("num_channels", 3),
        style="internvl",
        downsample_ratio=raw.get("downsample_ratio", 0.5),
        min_tiles=raw.get("min_dynamic_patch", 1) if dynamic else 1,
        max_tiles=raw.get("max_dynamic_patch", 12) if dynamic else 1,
        use_thumbnail=bool(raw.get("use_thumbnail", True)),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resample="bicubic",
    )
    fields.update(num_layers=holistic + fields["num_layers"], vision=vision, image_token_id=int(image_token))
    return fields, [holistic, llm["num_hidden_layers"]]


def hf_config(raw: dict, folder: Path) -> tuple[DecoderConfig, Family]:
    where = f"{folder}/config.json"
    arch = (raw.get("architectures") or ["?"])[0]
    family = family_of(arch)
    if family is None:
        raise MmmambaError(f"{where}: architecture {arch!r} is not supported; use one of {list(SUPPORTED)}")
    if family == "HoVLE":
        fields, counts = hovle_fields(raw, folder, where)
    else:
        fields = llm_fields(raw, where, family)
        counts = [fields["num_layers"]]
    cfg = DecoderConfig(**fields, conversion={"source": arch, "stacks": counts})
    return cfg, FAMILIES[family]


def load_hf_decoder(path, raw: dict, dtype: torch.dtype | None = None) -> Decoder:
    path = Path(path)
    cfg, family = hf_config(raw, path)
    hf = read_safetensors(path)
    names = map_names(family, hf, cfg.conversion["stacks"])
    tensors = {}
    for name, t in hf.items():
        if any(re.search(p, name) for p in family.ignored):
            continue
        ours = names[name]
        if ours is None:
            raise MmmambaError(f"{path}: tensor {name!r} has no place in a {cfg.conversion['source']} model")
        if ".mixer.wqkv." in ours:  # InternLM2 packing → our q/k/v projections
            parts = split_packed_qkv(t, cfg.num_kv_heads, cfg.num_heads, cfg.head_dim)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                tensors[ours.replace("wqkv", proj)] = part
            continue
        tensors[ours] = t
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    return build_loaded(cfg, tensors, path, dtype)
