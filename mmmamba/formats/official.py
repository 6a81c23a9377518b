"""The released mmMamba students' layout (hub ``hustvl/mmMamba-linear``, ``hustvl/mmMamba_hybrid``), in and out.

A released folder is HoVLE's layout (``embedding_model`` + ``language_model``, ``hf_families.HOVLE_FRONT``)
with ``model_type: mmMamba_chat`` and, per stack, ``layers_block_type``: ``"mha"`` (an attention
layer: ``attention.wqkv`` / ``attention.wo``, as InternLM2) or ``"mamba2"``, whose mixer is

- ``attention.wvkqgdt`` rows ``[v (kv·hd) | k (kv·hd) | q (h·hd) | gate (h·hd) | dt (h)]``, no bias;
- ``attention.conv1d`` depthwise, kernel 2, with bias, over channels ``[v, k, q]``, then SiLU;
- Δ = softplus(dt + ``dt_bias``), A = −exp(``A_log_bias``), GQA by repeating k and v per query
  head, scan with x = v, B = k, C = q, no D skip and no 1/√d;
- ``g_norm_swish_gate``: RMSNorm of each head's y (eps 1e-5, one head_dim-wide weight) × SiLU(gate);
- ``attention.o_proj``.

That is our ``Mamba2Mixer`` with ``OFFICIAL_MAMBA`` options, so loading is a renaming plus the
``wvkqgdt`` split; ``export_official`` writes the inverse.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import MmmambaError
from .hf_families import HOVLE_FRONT, INTERNLM2_LAYER, MMMAMBA_MAMBA_LAYER, pack_qkv

# the Mamba2Config options the released mixer computes with (conv kernel, gate-norm eps: hard-coded there)
OFFICIAL_MAMBA = {
    "conv_kernel": 2,
    "conv_bias": True,
    "conv_activation": "silu",
    "use_D": False,
    "qk_norm": False,
    "norm_eps": 1e-5,
}
BLOCK_TYPES = {"mha": "attention", "mamba2": "mamba2"}
WVKQGDT = ("v_proj", "k_proj", "q_proj", "g_proj", "dt_proj")  # row blocks, in order


def wvkqgdt_sizes(heads: int, kv_heads: int, head_dim: int) -> list[int]:
    return [kv_heads * head_dim, kv_heads * head_dim, heads * head_dim, heads * head_dim, heads]


def split_wvkqgdt(w: Tensor, heads: int, kv_heads: int, head_dim: int) -> dict[str, Tensor]:
    """``wvkqgdt`` (rows [v | k | q | gate | dt], hidden) → our v/k/q/g/dt projection weights."""
    sizes = wvkqgdt_sizes(heads, kv_heads, head_dim)
    if w.shape[0] != sum(sizes):
        raise MmmambaError(
            f"wvkqgdt has {w.shape[0]} rows; {heads} heads, {kv_heads} KV heads of {head_dim} need {sum(sizes)}"
        )
    return dict(zip(WVKQGDT, w.split(sizes)))


def pack_wvkqgdt(parts: dict[str, Tensor]) -> Tensor:
    """The inverse of ``split_wvkqgdt``."""
    return torch.cat([parts[name] for name in WVKQGDT])


def conv_weight_from_official(w: Tensor, name: str) -> Tensor:
    """nn.Conv1d depthwise weight (C, 1, k) → ours (C, k); tap k−1 is the current token in both."""
    if w.ndim != 3 or w.shape[1] != 1:
        raise MmmambaError(f"{name}: conv1d weight of shape {tuple(w.shape)}; a depthwise (C, 1, k) one is needed")
    return w[:, 0]


def official_student_fields(emb: dict, llm: dict, where: str) -> dict:
    """DecoderConfig fields of a released student beyond HoVLE's: its mixers and their options."""
    mixers = []
    for stack, name in ((emb, "embedding_config"), (llm, "llm_config")):
        kinds = stack.get("layers_block_type")
        n = stack.get("num_hidden_layers")
        if not isinstance(kinds, list) or len(kinds) != n:
            raise MmmambaError(f"{where} ({name}): layers_block_type must list one of 'mamba2'/'mha' per layer ({n})")
        bad = sorted(set(kinds) - set(BLOCK_TYPES))
        if bad:
            raise MmmambaError(f"{where} ({name}): unknown layers_block_type {bad}; use 'mamba2' or 'mha'")
        mixers += [BLOCK_TYPES[k] for k in kinds]
    return {"mixers": mixers, "mamba": dict(OFFICIAL_MAMBA)}


def _export_problem(cfg) -> str | None:
    """Why a model cannot be written in the released layout (None: it can)."""
    if "mamba2" in cfg.mixers and cfg.mamba2_config().gate_order != "norm-first":
        order = cfg.mamba2_config().gate_order
        return f"gate order {order}: the released mixer is norm-first; convert with --gate-order norm-first"
    stacks = cfg.conversion.get("stacks", [])
    if cfg.vision is None or cfg.vision.style != "hovle" or len(stacks) != 2 or not cfg.text_vocab_size:
        return "only HoVLE-structured models (imported from HoVLE or a released mmMamba, then converted) export"
    if cfg.l2_norm_after not in ([], [stacks[0] - 1]):
        return f"l2_norm_after {cfg.l2_norm_after}: the released layout normalises only between its two stacks"
    layers = [cfg.layer(i) for i in range(cfg.num_layers)]
    if any(s.qkv_bias for s in layers) or cfg.tie_embeddings:
        return "q/k/v biases and tied embeddings have no place in the released layout"
    for i, s in enumerate(layers):
        if s.head_dim * s.num_heads != cfg.hidden_size:
            return f"layer {i}: head_dim {s.head_dim} × {s.num_heads} heads != hidden_size (derived in the release)"
    for name, stack in (("holistic", layers[: stacks[0]]), ("LLM", layers[stacks[0] :])):
        if any(s != stack[0] for s in stack):
            return f"the {name} stack's layers differ in their settings; the released layout has one config per stack"
    if cfg.norm_eps != layers[-1].norm_eps:
        return f"the final norm's eps {cfg.norm_eps} differs from the LLM layers' {layers[-1].norm_eps}"
    for i, kind in enumerate(cfg.mixers):
        if kind != "mamba2":
            continue
        options = cfg.mamba2_config(i)
        differ = {k: getattr(options, k) for k, v in OFFICIAL_MAMBA.items() if getattr(options, k) != v}
        if differ:
            return f"Mamba-2 options {differ} differ from the released mixer's {OFFICIAL_MAMBA}"
    return None


def official_tensors(model) -> dict[str, Tensor]:
    """Our state dict under the released names (packing q/k/v and v/k/q/g/dt back)."""
    cfg = model.config
    holistic = cfg.conversion["stacks"][0]
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    front = {ours: hf for hf, ours in HOVLE_FRONT.items()}
    front |= {"norm": "language_model.model.norm", "lm_head": "language_model.output"}
    out = {}
    for name, t in state.items():
        for ours, theirs in front.items():
            if name == ours or name.startswith(ours + "."):
                out[theirs + name[len(ours) :]] = t
    for i, kind in enumerate(cfg.mixers):
        prefix = f"embedding_model.encoder.{i}" if i < holistic else f"language_model.model.layers.{i - holistic}"
        ours = {k[len(f"layers.{i}.") :]: v for k, v in state.items() if k.startswith(f"layers.{i}.")}
        mixer = {k[len("mixer.") :].removesuffix(".weight"): v for k, v in ours.items() if k.startswith("mixer.")}
        table = {v: k for k, v in INTERNLM2_LAYER.items() if not k.startswith("attention.")}
        for k, v in ours.items():
            module, _, leaf = k.rpartition(".")
            if module in table:
                out[f"{prefix}.{table[module]}.{leaf}"] = v
        if kind == "attention":
            q, k_, v_ = mixer["q_proj"], mixer["k_proj"], mixer["v_proj"]
            layer = cfg.layer(i)
            out[f"{prefix}.attention.wqkv.weight"] = pack_qkv(q, k_, v_, layer.num_kv_heads, layer.head_dim)
            out[f"{prefix}.attention.wo.weight"] = mixer["o_proj"]
            continue
        names = {v: k for k, v in MMMAMBA_MAMBA_LAYER.items()}
        out[f"{prefix}.attention.wvkqgdt.weight"] = pack_wvkqgdt(mixer)
        out[f"{prefix}.{names['mixer.o_proj']}.weight"] = mixer["o_proj"]
        out[f"{prefix}.{names['mixer.conv_weight']}"] = mixer["conv_weight"][:, None, :].contiguous()  # (C, 1, k)
        out[f"{prefix}.{names['mixer.conv_bias']}"] = mixer["conv_bias"]
        out[f"{prefix}.{names['mixer.out_norm']}.weight"] = mixer["out_norm"]
        out[f"{prefix}.{names['mixer.dt_bias']}"] = mixer["dt_bias"]
        out[f"{prefix}.{names['mixer.A_log']}"] = mixer["A_log"]
    # the LLM's own token table exists in the released model but its forward never reads it: we keep
    # none, so write the text table when it has the LLM's shape, zeros otherwise
    text = state["embed_tokens.weight"]
    unused = text if text.shape[0] == cfg.vocab_size else text.new_zeros(cfg.vocab_size, cfg.hidden_size)
    out["language_model.model.tok_embeddings.weight"] = unused.clone()
    return out


def official_config(cfg) -> dict:
    """config.json of the released layout for a HoVLE-structured ``cfg``."""
    holistic, llm_layers = cfg.conversion["stacks"]
    hovle = cfg.conversion.get("hovle", {})
    v = cfg.vision
    kinds = {ours: theirs for theirs, ours in BLOCK_TYPES.items()}
    blocks = [kinds[m] for m in cfg.mixers]
    specials = hovle.get("special_token_maps") or {}
    if len(specials) != cfg.special_embeddings:
        specials = {f"<special_{i}>": cfg.text_vocab_size + i for i in range(cfg.special_embeddings)}

    def stack(s) -> dict:  # one stack's settings (``_export_problem``: its layers all agree)
        return dict(
            hidden_size=cfg.hidden_size,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_kv_heads,
            intermediate_size=s.intermediate_size,
            hidden_act="silu",
            rms_norm_eps=s.norm_eps,
            rope_theta=s.rope_theta,
            rope_scaling=None,
            max_position_embeddings=cfg.max_position,
        )

    grid = v.position_grid or v.grid
    embedding = dict(
        model_type="mmMamba_embedding",
        num_hidden_layers=holistic,
        layers_block_type=blocks[:holistic],
        num_channels=v.channels,
        patch_size=v.patch_size,
        image_size=grid * v.patch_size,
        **stack(cfg.layer(0)),
        attention_bias=False,
        use_ls=False,
        special_token_maps=specials,
        llm_vocab_size=cfg.text_vocab_size,
        llm_hidden_size=cfg.hidden_size,
        downsample_ratio=v.downsample_ratio,
        img_context_token_id=cfg.image_token_id,
        pixel_shuffle_loc="pre",
        use_pixel_shuffle_proj=True,
    )
    llm = dict(
        architectures=["mmMambaForCausalLM"],
        model_type="mmMamba",
        vocab_size=cfg.vocab_size,
        num_hidden_layers=llm_layers,
        layers_block_type=blocks[holistic:],
        **stack(cfg.layer(holistic)),
        bias=False,
        tie_word_embeddings=False,
    )
    return dict(
        architectures=["mmMambaChatModel"],
        model_type="mmMamba_chat",
        embedding_config=embedding,
        llm_config=llm,
        force_image_size=v.image_size,
        downsample_ratio=v.downsample_ratio,
        dynamic_image_size=v.max_tiles > 1,
        min_dynamic_patch=v.min_tiles,
        max_dynamic_patch=v.max_tiles,
        use_thumbnail=v.use_thumbnail,
        normalize_encoder_output=bool(cfg.l2_norm_after),
        template=hovle.get("template", "internlm2-chat"),
        select_layer=hovle.get("select_layer", -1),
        ps_version=hovle.get("ps_version", "v2"),
    )


def export_official(model, out) -> Path:
    """Write ``model`` (a HoVLE-structured teacher or student) as a released mmMamba folder:
    ``config.json`` + ``model.safetensors``. No modeling code is written (we ship none of theirs)."""
    from safetensors.torch import save_file

    from ..io import write_atomic, write_json_atomic

    problem = _export_problem(model.config)
    if problem:
        raise MmmambaError(f"cannot export in the mmmamba-official layout: {problem}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = official_tensors(model)
    write_atomic(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    config = official_config(model.config)
    config["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    write_json_atomic(out / "config.json", config, digits=None)
    return out
