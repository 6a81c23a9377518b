"""Hugging Face folders (Llama, Mistral, Qwen2, InternLM2, HoVLE, released mmMamba students) loaded
into our one decoder.

Only ``config.json``, ``*.safetensors`` and tokenizer files are read; nothing from the folder is
imported or run. Weight names are mapped by the tables in ``hf_families.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..checks import whole
from ..errors import MmmambaError
from ..models.config import LAYER_FIELDS, DecoderConfig, VisionConfig
from ..models.decoder import Decoder
from .build import build_loaded
from .checkpoint import read_safetensors
from .hf_families import (
    FAMILIES,
    HOVLE_LLMS,
    Family,
    holistic_family,
    map_names,
    require,
    split_packed_qkv,
    token_id_from_files,
)
from .official import conv_weight_from_official, official_student_fields, split_wvkqgdt

SUPPORTED = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "InternLM2ForCausalLM",
    "InternVLChatModel / HoVLE* (model_type internvl_chat, holistic embedding_config)",
    "mmMambaChatModel (model_type mmMamba_chat)",
)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def rope_groups(raw: dict, key: str, where: str) -> list[dict]:
    """The RoPE settings under ``key``: one group, or one per layer type (transformers 5's ``rope_parameters``
    may be keyed by layer type)."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise MmmambaError(f"{where}: {key} must be an object, got {type(value).__name__}; fix the config")
    return list(value.values()) if value and all(isinstance(v, dict) for v in value.values()) else [value]


def check_plain_rope(raw: dict, where: str, allow_dynamic: bool = False) -> int | None:
    """Refuse RoPE that is not plain full-width RoPE with one base. transformers 4 writes scaling as
    ``rope_scaling``, transformers 5 as ``rope_parameters`` (with the base). ``allow_dynamic``: dynamic NTK
    scaling (InternLM2's default) changes the base only past the original context, so inside it that is
    plain RoPE; returns that context, the cap on ``max_position`` (None when no group is dynamic)."""
    groups = rope_groups(raw, "rope_scaling", where) + rope_groups(raw, "rope_parameters", where)
    cap = None
    for group in groups:
        kind = group.get("rope_type", group.get("type", "default"))
        if kind == "dynamic" and allow_dynamic:
            original = group.get("original_max_position_embeddings") or raw.get("max_position_embeddings", 4096)
            cap = whole(original, f"{where}: original_max_position_embeddings")
        elif kind != "default":
            raise MmmambaError(f"{where}: rope_type {kind!r} is not supported; only plain RoPE (one theta, no scaling)")
    for group in [raw, *groups]:
        if group.get("partial_rotary_factor", 1.0) != 1.0:
            raise MmmambaError(f"{where}: partial_rotary_factor {group['partial_rotary_factor']} is not supported; "
                               "only RoPE on the whole head")  # fmt: skip
    return cap


def rope_theta(raw: dict, where: str) -> float:
    """The one RoPE base: ``rope_theta`` (transformers 4) or inside ``rope_parameters`` (5), whose groups per
    layer type must then agree."""
    thetas = {g["rope_theta"] for g in rope_groups(raw, "rope_parameters", where) if "rope_theta" in g}
    if len(thetas) > 1:
        raise MmmambaError(f"{where}: RoPE bases {sorted(thetas)} differ between layer types; only one is supported")
    return raw.get("rope_theta", thetas.pop() if thetas else 10000.0)


def slides(raw: dict, arch: str) -> bool:
    """Whether some layer attends through a sliding window: ``layer_types`` says so where present (transformers
    5); otherwise Mistral slides whenever ``sliding_window`` is set, Qwen2 only with ``use_sliding_window``."""
    if not raw.get("sliding_window"):
        return False
    if raw.get("layer_types") is not None:
        return "sliding_attention" in raw["layer_types"]
    return arch == "MistralForCausalLM" or (arch == "Qwen2ForCausalLM" and bool(raw.get("use_sliding_window")))


BOOLEAN_KEYS = ("tie_word_embeddings", "use_sliding_window", "mlp_bias", "attention_bias", "bias", "use_thumbnail")


def check_booleans(raw: dict, where: str) -> None:
    """A switch given as "false" or 0 would read as on: every boolean key must be true, false or null."""
    for key in BOOLEAN_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            raise MmmambaError(f"{where}: {key} = {json.dumps(raw[key])}; it must be true or false")


def llm_fields(raw: dict, where: str, arch: str) -> dict:
    """DecoderConfig fields from a Llama-like LLM config (Llama, Mistral, Qwen2, InternLM2)."""
    check_booleans(raw, where)
    if raw.get("hidden_act", "silu") != "silu":
        raise MmmambaError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported (only silu)")
    plain_until = check_plain_rope(raw, where, allow_dynamic=True)
    if raw.get("mlp_bias"):
        raise MmmambaError(f"{where}: mlp_bias is not supported; the MLP has no biases")
    if arch in ("LlamaForCausalLM", "InternLM2ForCausalLM") and (raw.get("attention_bias") or raw.get("bias")):
        raise MmmambaError(f"{where}: attention bias with an output-projection bias is not supported")
    heads = require(raw, "num_attention_heads", where)
    hidden = require(raw, "hidden_size", where)
    max_position = raw.get("max_position_embeddings", 4096)
    if slides(raw, arch):  # within the window, sliding attention = full attention
        max_position = min(max_position, whole(raw["sliding_window"], f"{where}: sliding_window"))
    if plain_until is not None:  # dynamic NTK RoPE: plain RoPE up to the original context
        max_position = min(max_position, plain_until)
    theta = rope_theta(raw, where)
    return dict(
        vocab_size=require(raw, "vocab_size", where),
        hidden_size=hidden,
        num_layers=require(raw, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or hidden // heads,
        intermediate_size=require(raw, "intermediate_size", where),
        rope_theta=theta,
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=FAMILIES[arch].qkv_bias,
        max_position=max_position,
    )


# HolisticEmbeddingConfig's defaults (hovle/configuration_holistic_embedding.py): what the official
# code computes with when a key is left out of ``embedding_config``.
EMBEDDING_DEFAULTS = dict(
    num_hidden_layers=32,
    num_channels=3,
    patch_size=14,
    image_size=224,
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=32,
    attention_bias=False,
    rope_theta=10000.0,
    rope_scaling=None,
    intermediate_size=11008,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    special_token_maps={},
    llm_vocab_size=92553,
    llm_hidden_size=2048,
    downsample_ratio=0.5,
    img_context_token_id=92546,
    pixel_shuffle_loc="pre",
)


def holistic_kind(raw: dict) -> str | None:
    """ "hovle" (InternVLChatModel / HoVLE*), "mmmamba" (a released mmMamba student) or None."""
    arch = (raw.get("architectures") or [""])[0]
    if raw.get("model_type") == "mmMamba_chat" or arch.startswith("mmMamba"):
        return "mmmamba"
    if arch.startswith("HoVLE") or arch == "InternVLChatModel" or raw.get("model_type") == "internvl_chat":
        return "hovle"
    return None


def embedding_stack(emb: dict, where: str, student: bool) -> dict:
    """The settings the holistic layers compute with, as DecoderConfig fields."""
    if emb.get("hidden_act") != "silu":
        raise MmmambaError(f"{where}: hidden_act {emb['hidden_act']!r} is not supported (only silu)")
    check_plain_rope(emb, where)
    if emb.get("attention_bias") and not student:  # the students' layers have no bias whatever the config says
        raise MmmambaError(f"{where}: attention_bias (with an output-projection bias) is not supported")
    hidden, heads = emb["hidden_size"], emb["num_attention_heads"]
    try:
        whole(hidden, "hidden_size")
        whole(heads, "num_attention_heads")
    except MmmambaError as e:
        raise MmmambaError(f"{where}: {e}; fix the config") from None
    return dict(
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=emb["num_key_value_heads"],
        head_dim=hidden // heads,
        intermediate_size=emb["intermediate_size"],
        rope_theta=rope_theta(emb, where),
        norm_eps=emb["rms_norm_eps"],
        qkv_bias=False,
    )


def holistic_fields(raw: dict, folder: Path, where: str, kind: str) -> tuple[dict, list[int], str]:
    """HoVLE or a released mmMamba student: the holistic-embedding stack + the LLM stack as one
    Decoder, HoVLE's image front-end, its own text table and the L2 normalisation between stacks.

    The LLM's settings are the config's defaults; where the holistic stack's differ (RoPE base, norm
    eps, heads, MLP width: ``HolisticEmbeddingConfig`` has defaults of its own), its layers carry
    them as ``layer_overrides``. Refused: stacks of different widths (one residual stream) and
    ``pixel_shuffle_loc: post`` (two token streams of different lengths).
    """
    student = kind == "mmmamba"
    if "embedding_config" not in raw and "vision_config" in raw:
        raise MmmambaError(
            f"{where}: an InternVL model with a separate vision encoder (vision_config) is not supported; "
            "only HoVLE's holistic embedding_config"
        )
    llm, emb = require(raw, "llm_config", where), require(raw, "embedding_config", where)
    emb = {**EMBEDDING_DEFAULTS, **emb}
    ew, lw = f"{where} (embedding_config)", f"{where} (llm_config)"
    llm_arch = "InternLM2ForCausalLM" if student else (llm.get("architectures") or ["InternLM2ForCausalLM"])[0]
    if llm_arch not in HOVLE_LLMS:
        raise MmmambaError(f"{lw}: LLM architecture {llm_arch!r} is not supported; use one of {list(HOVLE_LLMS)}")
    fields = llm_fields({**llm, "bias": False} if student else llm, lw, llm_arch)
    stack = embedding_stack(emb, ew, student)
    if stack["hidden_size"] != fields["hidden_size"]:
        raise MmmambaError(
            f"{where}: embedding_config hidden_size {stack['hidden_size']} differs from llm_config's "
            f"{fields['hidden_size']}; the two stacks share one residual stream, so they must be equally wide"
        )
    holistic = emb["num_hidden_layers"]
    if not isinstance(holistic, int) or holistic < 1:
        raise MmmambaError(f"{ew}: num_hidden_layers must be at least 1")
    own = {k: stack[k] for k in LAYER_FIELDS if stack[k] != fields[k]}  # the LLM's settings are the defaults
    overrides = [{"layers": list(range(holistic)), **own}] if own else []
    if emb["llm_hidden_size"] != fields["hidden_size"]:
        raise MmmambaError(f"{ew}: llm_hidden_size {emb['llm_hidden_size']} differs from hidden_size")
    if emb.get("use_ls"):
        raise MmmambaError(f"{ew}: use_ls (LayerScale) is not supported; the official code refuses it too")
    if not emb.get("use_pixel_shuffle_proj", True):
        raise MmmambaError(f"{ew}: use_pixel_shuffle_proj false (no projector) is not supported")
    loc = emb["pixel_shuffle_loc"]
    if loc != "pre":
        raise MmmambaError(
            f"{ew}: pixel_shuffle_loc {loc!r} is not supported: with 'post' the holistic layers see the "
            "un-shuffled tiles and the LLM a shorter sequence; only 'pre' models load"
        )
    ratio = raw.get("downsample_ratio", emb["downsample_ratio"])
    if ratio != emb["downsample_ratio"]:
        raise MmmambaError(
            f"{where}: downsample_ratio {ratio} differs from embedding_config's {emb['downsample_ratio']}"
        )
    image_token = int(emb["img_context_token_id"])
    from_tokenizer = token_id_from_files(folder, "<IMG_CONTEXT>")
    if from_tokenizer is not None and from_tokenizer != image_token:
        raise MmmambaError(
            f"{ew}: img_context_token_id {image_token} but the tokenizer's <IMG_CONTEXT> is {from_tokenizer}; "
            "make them agree"
        )
    stored = emb["image_size"]
    if stored % emb["patch_size"]:
        raise MmmambaError(f"{ew}: image_size {stored} is not a multiple of patch_size {emb['patch_size']}")
    dynamic = raw.get("dynamic_image_size", True)
    vision = VisionConfig(
        image_size=raw.get("force_image_size") or stored,
        patch_size=emb["patch_size"],
        channels=emb["num_channels"],
        style="hovle",
        downsample_ratio=ratio,
        min_tiles=raw.get("min_dynamic_patch", 1) if dynamic else 1,
        max_tiles=raw.get("max_dynamic_patch", 12) if dynamic else 1,
        use_thumbnail=bool(raw.get("use_thumbnail", True)),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resample="bicubic",
        position_grid=stored // emb["patch_size"],
    )
    counts = [holistic, fields["num_layers"]]
    fields.update(
        num_layers=sum(counts),
        vision=vision,
        image_token_id=image_token,
        tie_embeddings=False,  # our embed_tokens is the holistic text table, never the LLM's
        text_vocab_size=int(emb["llm_vocab_size"]),
        special_embeddings=len(emb["special_token_maps"]),
        l2_norm_after=[holistic - 1] if raw.get("normalize_encoder_output") else [],
        layer_overrides=overrides,
    )
    if student:
        fields.update(official_student_fields(emb, llm, where))
    return fields, counts, llm_arch


def hf_config(raw: dict, folder: Path) -> tuple[DecoderConfig, Family, dict]:
    """Our config, the family's name table, and what the loader needs beyond them; every number is checked
    by ``DecoderConfig``, and a value of the wrong kind anywhere in the file is one line naming it."""
    where = f"{folder}/config.json"
    try:
        return _hf_config(raw, folder, where)
    except MmmambaError as e:
        raise MmmambaError(str(e) if str(folder) in str(e) else f"{where}: {e}; fix the config") from None
    except KeyError as e:
        raise MmmambaError(f"{where}: {e} is missing; the folder's config.json is incomplete") from None
    except (TypeError, ValueError, AttributeError, ArithmeticError) as e:
        reason = " ".join(str(e).split())[:120] or e.__class__.__name__
        raise MmmambaError(f"{where}: a value has the wrong type or size ({reason}); fix the config") from None


def _hf_config(raw: dict, folder: Path, where: str) -> tuple[DecoderConfig, Family, dict]:
    arch = (raw.get("architectures") or ["?"])[0]
    kind = holistic_kind(raw)
    check_booleans(raw, where)
    for part in ("llm_config", "embedding_config"):
        if isinstance(raw.get(part), dict):
            check_booleans(raw[part], f"{where} ({part})")
    extra = {"tied_llm": False}
    if kind is not None:
        fields, counts, llm_arch = holistic_fields(raw, folder, where, kind)
        family = holistic_family(llm_arch, student=kind == "mmmamba")
        extra["tied_llm"] = bool(raw["llm_config"].get("tie_word_embeddings", False))
        emb = raw["embedding_config"]
        provenance = {
            "llm_architecture": llm_arch,
            "special_token_maps": emb.get("special_token_maps", {}),
            **{k: raw[k] for k in ("template", "select_layer", "ps_version") if k in raw},
        }
        conversion = {"source": arch, "stacks": counts, "hovle": provenance}
    elif arch in FAMILIES:
        family = FAMILIES[arch]
        fields = llm_fields(raw, where, arch)
        conversion = {"source": arch, "stacks": [fields["num_layers"]]}
    else:
        raise MmmambaError(f"{where}: architecture {arch!r} is not supported; use one of {list(SUPPORTED)}")
    return DecoderConfig(**fields, conversion=conversion), family, extra


def load_hf_decoder(path, raw: dict, dtype: torch.dtype | None = None) -> Decoder:
    path = Path(path)
    cfg, family, extra = hf_config(raw, path)
    hf = read_safetensors(path)
    names = map_names(family, hf, cfg.conversion["stacks"])
    tensors = {}
    for name, t in hf.items():
        if any(re.search(p, name) for p in family.ignored):
            if extra["tied_llm"] and "embed" in name:  # a tied LLM head is its (otherwise unused) token table
                tensors.setdefault("lm_head.weight", t)
            continue
        ours = names[name]
        if ours is None:
            raise MmmambaError(f"{path}: tensor {name!r} has no place in a {cfg.conversion['source']} model")
        layer = cfg.layer(int(ours.split(".")[1])) if ours.startswith("layers.") else None
        if ".mixer.wqkv." in ours:  # InternLM2 packing → our q/k/v projections
            parts = split_packed_qkv(t, layer.num_kv_heads, layer.num_heads, layer.head_dim)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                tensors[ours.replace("wqkv", proj)] = part
            continue
        if ours.endswith(".mixer.wvkqgdt.weight"):  # mmMamba packing → our v/k/q/g/dt projections
            for proj, part in split_wvkqgdt(t, layer.num_heads, layer.num_kv_heads, layer.head_dim).items():
                tensors[ours.replace("wvkqgdt", proj)] = part
            continue
        if ours.endswith(".mixer.conv_weight"):
            t = conv_weight_from_official(t, ours)
        tensors[ours] = t
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    return build_loaded(cfg, tensors, path, dtype)
