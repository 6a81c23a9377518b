"""transformers' ``GraniteMoeHybridForCausalLM`` layout, dense (``num_local_experts: 0``), in and out:
the Mamba-2/attention hybrid that vLLM, SGLang, llama.cpp and MLX serve (SPEC §10, docs/SERVING.md).

Per layer: ``input_layernorm``, a mixer (``self_attn.{q,k,v,o}_proj`` or ``mamba.*``),
``post_attention_layernorm``, ``shared_mlp.input_linear`` = [gate; up] and ``output_linear`` = down.
Their Mamba-2 mixer is ours with a gate-first output (``--gate-order gate-first``), re-laid out:

- ``mamba.in_proj`` rows ``[z (gate) | x | B | C | dt]``: z = our g_proj, x = v_proj and B = k_proj
  repeated from the KV heads to the query heads, C = q_proj, dt = dt_proj;
- ``mamba_n_groups`` = heads (so B and C are per head), ``mamba_d_state`` = ``mamba_d_head`` = head_dim;
- ``mamba.conv1d`` (C, 1, k) over channels ``[x | B | C]``, repeated as the rows are;
- ``dt_bias``, ``A_log`` as ours; ``D`` = 0 (or ours with ``use_D``);
- ``mamba.norm`` (weight h·hd, one group per head) = our head_dim-wide weight tiled over the heads;
- ``mamba.out_proj`` = o_proj.

``mamba_expand`` > heads·head_dim / hidden pads the mixer with zero heads (llama.cpp reads only
expand 2): zero rows, conv taps and out_proj columns, so the padded heads output exactly 0.
``import`` undoes each step, and refuses what our mixer cannot hold (x/B rows or norm weights that
differ inside a group, padded heads that are not zero, biases where we have none).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from ..errors import MmmambaError
from ..models.config import DecoderConfig

ARCH = "GraniteMoeHybridForCausalLM"
TOP = {"model.embed_tokens.weight": "embed_tokens.weight", "model.norm.weight": "norm.weight",
       "lm_head.weight": "lm_head.weight"}  # fmt: skip
LAYER = {  # theirs → ours, under model.layers.N / layers.N, every layer
    "input_layernorm.weight": "input_norm.weight",
    "post_attention_layernorm.weight": "post_norm.weight",
    "shared_mlp.output_linear.weight": "mlp.down_proj.weight",
}
ATTENTION = {f"self_attn.{p}_proj.{leaf}": f"mixer.{p}_proj.{leaf}" for p in "qkvo" for leaf in ("weight", "bias")}
MAMBA = {"mamba.dt_bias": "mixer.dt_bias", "mamba.A_log": "mixer.A_log"}  # per head; the rest is packed below
LAYER_TYPES = {"attention": "attention", "mamba2": "mamba"}
NO_LIMIT = 1e30  # time_step_limit's upper end: no clamp


def _problem(model) -> str | None:
    """Why ``model`` cannot be written in this layout (None: it can)."""
    cfg: DecoderConfig = model.config
    if cfg.vision is not None:
        return "it has a vision stem (a VLM student); the layout is text-only (docs/SERVING.md sketches a vLLM model)"
    if cfg.text_vocab_size or cfg.special_embeddings or cfg.l2_norm_after:
        return "its HoVLE-style text table or L2 norm between stacks has no place in the layout"
    if "mamba2" not in cfg.mixers:
        return "it has no Mamba-2 layer; export the teacher as a plain Llama-style folder instead"
    attention = [layer.mixer.cfg for layer, kind in zip(model.layers, cfg.mixers) if kind == "attention"]
    mamba = [layer.mixer.cfg for layer, kind in zip(model.layers, cfg.mixers) if kind == "mamba2"]
    if attention and cfg.num_heads * cfg.head_dim != cfg.hidden_size:
        return (f"heads {cfg.num_heads} × head_dim {cfg.head_dim} != hidden_size {cfg.hidden_size}: the engines "
                "derive an attention layer's head_dim from hidden_size / heads")  # fmt: skip
    if len({a.rope_theta for a in attention}) > 1:
        return f"RoPE bases {sorted({a.rope_theta for a in attention})} differ between layers; the layout has one"
    for m in mamba:
        if m.gate_order != "gate-first":
            return f"its Mamba-2 mixer is {m.gate_order}; convert with --gate-order gate-first (and distil) to export"
        if m.qk_norm:
            return "its Mamba-2 mixer has q/k norm (B, C normalised), which the layout has no slot for"
        if m.conv_activation != "silu":
            return f"conv activation {m.conv_activation!r}: the layout's is silu"
        if m.norm_eps != cfg.norm_eps:
            return f"the mixer norm eps {m.norm_eps} differs from the model's {cfg.norm_eps}; the layout has one eps"
        if m != mamba[0]:
            return "Mamba-2 settings differ between layers; the layout has one set"
    return None


def _heads(cfg: DecoderConfig, expand: int | None) -> tuple[int, int]:
    """(mamba_expand, mamba_n_heads) for ``expand`` (None: the smallest that holds our heads)."""
    inner = cfg.num_heads * cfg.head_dim
    expand = expand or math.ceil(inner / cfg.hidden_size)
    padded = expand * cfg.hidden_size
    if padded < inner or padded % cfg.head_dim:
        raise MmmambaError(
            f"--mamba-expand {expand}: {expand} × hidden {cfg.hidden_size} must hold {cfg.num_heads} heads of "
            f"{cfg.head_dim} in whole heads; pick another expand"
        )
    return expand, padded // cfg.head_dim


def _repeat(w: Tensor, kv_heads: int, heads: int) -> Tensor:
    """Rows (or channels) per KV head (kvh·hd, ...) → per query head (h·hd, ...): head j takes KV head j // (h/kvh)."""
    return w.unflatten(0, (kv_heads, -1)).repeat_interleave(heads // kv_heads, dim=0).flatten(0, 1)


def _pad(w: Tensor, heads: int, padded: int) -> Tensor:
    """Zero rows for the padded heads: (heads·n, ...) → (padded·n, ...)."""
    rows = w.shape[0] // heads * (padded - heads)
    return torch.cat([w, w.new_zeros(rows, *w.shape[1:])])


def granite_config(model, expand: int | None = None, tokens: dict | None = None) -> dict:
    """config.json of ``model`` in the GraniteMoeHybrid layout."""
    cfg: DecoderConfig = model.config
    m = cfg.mamba2_config()
    expand, n_heads = _heads(cfg, expand)
    dtype = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
    return {
        "architectures": [ARCH],
        "model_type": "granitemoehybrid",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "intermediate_size": cfg.intermediate_size,
        "shared_intermediate_size": cfg.intermediate_size,
        "num_local_experts": 0,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_position,
        "tie_word_embeddings": cfg.tie_embeddings,
        "position_embedding_type": "rope",
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": 0.0,
        "attention_multiplier": cfg.head_dim**-0.5,
        "embedding_multiplier": 1.0,
        "residual_multiplier": 1.0,
        "logits_scaling": 1.0,
        "layer_types": [LAYER_TYPES[k] for k in cfg.mixers],
        "mamba_n_heads": n_heads,
        "mamba_n_groups": n_heads,
        "mamba_d_state": cfg.head_dim,
        "mamba_d_head": cfg.head_dim,
        "mamba_d_conv": m.conv_kernel,
        "mamba_expand": expand,
        "mamba_chunk_size": m.chunk_size,
        "mamba_conv_bias": m.conv_bias,
        "mamba_proj_bias": cfg.qkv_bias,
        # transformers 5.24 cannot cache an all-Mamba GraniteMoeHybrid (its forward asks the cache for a
        # length only attention layers keep): a linear student runs there without a cache (docs/SERVING.md)
        "use_cache": "attention" in cfg.mixers,
        # no clamp on Δ, written out: mlx-lm's default is (0.001, 100); JSON has no inf, and 1e30 clamps nothing
        "time_step_limit": [0.0, NO_LIMIT],
        **(tokens or {}),
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def granite_tensors(model, expand: int | None = None) -> dict[str, Tensor]:
    """Our state dict under the layout's names, each tensor a small transform of ours (module docstring)."""
    cfg: DecoderConfig = model.config
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    _, n_heads = _heads(cfg, expand)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    out = {
        theirs: state[ours] for theirs, ours in TOP.items() if not (cfg.tie_embeddings and theirs == "lm_head.weight")
    }
    for i, kind in enumerate(cfg.mixers):
        ours = {k[len(f"layers.{i}.") :]: v for k, v in state.items() if k.startswith(f"layers.{i}.")}
        mine: dict[str, Tensor] = {}  # this layer's tensors under their names, without the model.layers.N prefix
        for theirs, name in LAYER.items():
            mine[theirs] = ours[name]
        mine["shared_mlp.input_linear.weight"] = torch.cat([ours["mlp.gate_proj.weight"], ours["mlp.up_proj.weight"]])
        if kind == "attention":
            for theirs, name in ATTENTION.items():
                if name in ours:
                    mine[theirs] = ours[name]
            if cfg.qkv_bias:  # the layout's attention_bias also biases o_proj: zeros
                mine["self_attn.o_proj.bias"] = ours["mixer.o_proj.weight"].new_zeros(cfg.hidden_size)
            out.update({f"model.layers.{i}.{k}": v.contiguous() for k, v in mine.items()})
            continue
        pad = lambda w: _pad(w, h, n_heads)  # noqa: E731
        rep = lambda w: _repeat(w, kvh, h)  # noqa: E731
        for theirs, name in MAMBA.items():
            mine[theirs] = pad(ours[name])
        mine["mamba.out_proj.weight"] = pad(ours["mixer.o_proj.weight"].T).T  # zero columns for the padded heads
        # in_proj rows [z | x | B | C | dt], x and B repeated to the query heads, each padded
        blocks = ["g_proj", "v_proj", "k_proj", "q_proj", "dt_proj"]
        for leaf in ("weight", "bias"):
            if leaf == "bias" and not cfg.qkv_bias:
                continue
            got = {b: ours.get(f"mixer.{b}.{leaf}") for b in blocks}
            got = {b: t if t is not None else ours["mixer.dt_bias"].new_zeros(ours[f"mixer.{b}.weight"].shape[0])
                   for b, t in got.items()}  # fmt: skip  # no gate/Δ bias in ours: zeros
            parts = [got["g_proj"], rep(got["v_proj"]), rep(got["k_proj"]), got["q_proj"], got["dt_proj"]]
            mine[f"mamba.in_proj.{leaf}"] = torch.cat([pad(p) for p in parts])
        if cfg.qkv_bias:
            mine["mamba.out_proj.bias"] = ours["mixer.o_proj.weight"].new_zeros(cfg.hidden_size)
        conv_parts = lambda t: t.split([kvh * hd, kvh * hd, h * hd])  # noqa: E731  # channels [v | k | q]
        for leaf in ("weight", "bias"):
            if f"mixer.conv_{leaf}" not in ours:
                continue
            v, k, q = conv_parts(ours[f"mixer.conv_{leaf}"])
            t = torch.cat([pad(rep(v)), pad(rep(k)), pad(q)])
            mine[f"mamba.conv1d.{leaf}"] = t[:, None, :] if leaf == "weight" else t  # (C, 1, kernel)
        mine["mamba.norm.weight"] = ours["mixer.out_norm.weight"].repeat(n_heads)
        D = ours.get("mixer.D")
        mine["mamba.D"] = pad(D) if D is not None else ours["mixer.dt_bias"].new_zeros(n_heads)
        out.update({f"model.layers.{i}.{k}": v.contiguous() for k, v in mine.items()})
    return out


def export_granite(model, out, expand: int | None = None, tokens: dict | None = None) -> Path:
    """Write ``model`` as a GraniteMoeHybrid folder: ``config.json`` + ``model.safetensors`` (the
    tokenizer is the caller's). ``tokens``: bos/eos/pad ids for config.json."""
    from safetensors.torch import save_file

    from ..io import write_atomic, write_json_atomic

    problem = _problem(model)
    if problem:
        raise MmmambaError(f"cannot export in the granite-hybrid layout: {problem}")
    config = granite_config(model, expand, tokens)
    tensors = granite_tensors(model, expand)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    write_json_atomic(out / "config.json", config, digits=None)  # a model config: exact floats
    return out


# -- import ---------------------------------------------------------------------------------------


def _need(raw: dict, key: str, where: str):
    if key not in raw:
        raise MmmambaError(f"{where}: '{key}' is missing; the folder's config.json is incomplete")
    return raw[key]


def _count(raw: dict, key: str, where: str, default: int | None = None) -> int:
    """A whole-number size of at least 1 (a JSON integer, not a string or a bool)."""
    value = _need(raw, key, where) if default is None else default if raw.get(key) is None else raw[key]
    if type(value) is not int or value < 1:
        raise MmmambaError(f"{where}: {key} = {json.dumps(value)}; it must be a whole number of at least 1")
    return value


def _is(raw: dict, key: str, want, where: str, why: str) -> None:
    got = raw.get(key, want)
    ok = (
        math.isclose(got, want, rel_tol=1e-6)
        if isinstance(want, float) and isinstance(got, (int, float))
        else got == want
    )
    if not ok:
        raise MmmambaError(f"{where}: {key} = {json.dumps(got)}; {why}")


def _flag(raw: dict, key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise MmmambaError(f"{where}: {key} = {json.dumps(value)}; it must be true or false")
    return value


def _number(raw: dict, key: str, default: float, where: str, name: str | None = None) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MmmambaError(f"{where}: {name or key} = {json.dumps(value)}; it must be a finite number above 0")
    return float(value)


def granite_decoder_config(raw: dict, where: str) -> tuple[DecoderConfig, int]:
    """(our DecoderConfig, mamba heads in the folder) for a GraniteMoeHybrid config.json; one line per refusal,
    naming the file, whatever kind of value is wrong."""
    if not isinstance(raw, dict):
        raise MmmambaError(f"{where}: not a JSON object; give a GraniteMoeHybrid config.json")
    try:
        return _granite_decoder_config(raw, where)
    except MmmambaError as e:
        raise MmmambaError(str(e) if where in str(e) else f"{where}: {e}; fix the config") from None
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, ArithmeticError) as e:
        reason = " ".join(str(e).split())[:120] or e.__class__.__name__
        raise MmmambaError(f"{where}: a value has the wrong type or size ({reason}); fix the config") from None


def _granite_decoder_config(raw: dict, where: str) -> tuple[DecoderConfig, int]:
    heads, hidden = _count(raw, "num_attention_heads", where), _count(raw, "hidden_size", where)
    kinds = _need(raw, "layer_types", where)
    theirs = {"mamba": "mamba2", "linear_attention": "mamba2", "attention": "attention", "full_attention": "attention"}
    if not isinstance(kinds, list) or any(k not in theirs for k in kinds):
        raise MmmambaError(f"{where}: layer_types must list 'mamba' or 'attention' per layer, got {json.dumps(kinds)}")
    mixers = [theirs[k] for k in kinds]
    if raw.get("num_hidden_layers", len(mixers)) != len(mixers):
        raise MmmambaError(
            f"{where}: layer_types lists {len(mixers)} layers, num_hidden_layers "
            f"{json.dumps(raw['num_hidden_layers'])}; give one type per layer"
        )
    head_dim = _count(raw, "mamba_d_head", where)  # also refuses transformers' 'auto': write it out
    if "attention" in mixers and heads * head_dim != hidden:
        raise MmmambaError(
            f"{where}: mamba_d_head {head_dim} != hidden_size / heads; mmmamba's mixers share one head_dim"
        )
    n_heads = _count(raw, "mamba_n_heads", where)
    _is(raw, "num_local_experts", 0, where, "only the dense layout (no experts) imports")
    _is(raw, "hidden_act", "silu", where, "only silu is supported")
    _is(raw, "mamba_n_groups", n_heads, where, "mmmamba's mixers have one B/C group per head (n_groups = n_heads)")
    _is(raw, "mamba_d_state", head_dim, where, "mmmamba's mixers have d_state = head_dim")
    if n_heads < heads:
        raise MmmambaError(f"{where}: mamba_n_heads {n_heads} < {heads} attention heads; mmmamba's mixers have as many")
    if "attention" in mixers:
        _is(raw, "position_embedding_type", "rope", where, "mmmamba's attention always applies RoPE (NoPE has no slot)")
        _is(raw, "attention_multiplier", head_dim**-0.5, where, "mmmamba's attention scale is 1/sqrt(head_dim)")
    for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        _is(raw, key, 1.0, where, "mmmamba has no such multiplier; only 1 imports")
    expand = raw.get("mamba_expand")
    if expand is not None and (type(expand) is not int or expand * hidden != n_heads * head_dim):
        raise MmmambaError(
            f"{where}: mamba_expand = {json.dumps(expand)}; it must be mamba_n_heads * mamba_d_head / "
            f"hidden_size = {n_heads * head_dim / hidden:g}"
        )
    limit = raw.get("time_step_limit")
    if limit is not None and not (
        isinstance(limit, list) and len(limit) == 2 and all(v is None or isinstance(v, (int, float)) for v in limit)
    ):
        raise MmmambaError(f"{where}: time_step_limit = {json.dumps(limit)}; give [low, high] numbers")
    if limit is not None and (limit[0] != 0 or not (limit[1] is None or limit[1] >= NO_LIMIT)):
        raise MmmambaError(f"{where}: time_step_limit {limit}: mmmamba does not clamp Δ; only (0, inf) imports")
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise MmmambaError(f"{where}: rope_parameters / rope_scaling must be JSON objects")
    if params.get("rope_type", "default") != "default" or scaling:
        kind = (
            params.get("rope_type")
            if params.get("rope_type", "default") != "default"
            else scaling.get("type", scaling.get("rope_type"))
        )
        raise MmmambaError(f"{where}: RoPE scaling {kind!r} (rope_parameters / rope_scaling): only plain RoPE imports")
    biases = {_flag(raw, "attention_bias", False, where) if "attention" in mixers else None,
              _flag(raw, "mamba_proj_bias", False, where)}  # fmt: skip
    if len(biases - {None}) > 1:
        raise MmmambaError(f"{where}: attention_bias and mamba_proj_bias differ; mmmamba has one q/k/v bias switch")
    cfg = DecoderConfig(
        vocab_size=_count(raw, "vocab_size", where),
        hidden_size=hidden,
        num_layers=len(mixers),
        num_heads=heads,
        num_kv_heads=_count(raw, "num_key_value_heads", where, default=heads),
        head_dim=head_dim,
        intermediate_size=_count(raw, "shared_intermediate_size", where),
        rope_theta=_number(params, "rope_theta", raw.get("rope_theta", 10000.0), where, "rope_parameters.rope_theta"),
        norm_eps=_number(raw, "rms_norm_eps", 1e-6, where),
        tie_embeddings=_flag(raw, "tie_word_embeddings", False, where),
        qkv_bias=_flag(raw, "mamba_proj_bias", False, where),
        max_position=_count(raw, "max_position_embeddings", where, default=4096),
        mixers=mixers,
        mamba={
            "conv_kernel": _count(raw, "mamba_d_conv", where),
            "conv_bias": _flag(raw, "mamba_conv_bias", True, where),
            "chunk_size": _count(raw, "mamba_chunk_size", where, default=256),
            "gate_order": "gate-first",
        },  # fmt: skip
        conversion={"source": ARCH},
    )
    return cfg, n_heads


def _fold(w: Tensor, kv_heads: int, heads: int, what: str) -> Tensor:
    """The inverse of ``_repeat``: rows per query head → per KV head, refused unless each group's rows are equal."""
    groups = w.unflatten(0, (kv_heads, heads // kv_heads, -1))  # (kvh, g, hd, ...)
    if not torch.equal(groups, groups[:, :1].expand_as(groups)):
        raise MmmambaError(
            f"{what} differs between the heads of one KV group (trained per head?); mmmamba's mixer shares x and B "
            "per KV head, so it cannot hold it"
        )
    return groups[:, 0].flatten(0, 1)


def _unpad(w: Tensor, heads: int, padded: int, what: str) -> Tensor:
    """The inverse of ``_pad``: the padded heads' rows must be zero."""
    keep = w.shape[0] // padded * heads
    if w[keep:].count_nonzero():
        raise MmmambaError(
            f"{what}: heads past the {heads} attention heads are not zero padding; they cannot be dropped"
        )
    return w[:keep]


def granite_state(cfg: DecoderConfig, n_heads: int, tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """The folder's tensors under our names (the inverse of ``granite_tensors``)."""
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    unused = set(tensors)

    def take(name: str, optional: bool = False) -> Tensor | None:
        if name not in tensors:
            if optional:
                return None
            raise MmmambaError(f"{where}: tensor {name} is missing; the weights are incomplete")
        unused.discard(name)
        return tensors[name]

    out = {ours: take(theirs, optional=theirs == "lm_head.weight") for theirs, ours in TOP.items()}
    if out["lm_head.weight"] is None:
        if not cfg.tie_embeddings:
            raise MmmambaError(f"{where}: lm_head.weight is missing and tie_word_embeddings is false")
        del out["lm_head.weight"]

    def zero(name: str, optional: bool = True) -> None:
        t = take(name, optional)
        if t is not None and t.count_nonzero():
            raise MmmambaError(f"{where}: {name} is not zero; mmmamba has no such bias, so it cannot hold it")

    for i, kind in enumerate(cfg.mixers):
        pre, mine = f"model.layers.{i}.", f"layers.{i}."
        for theirs, name in LAYER.items():
            out[mine + name] = take(pre + theirs)
        gate, up = take(pre + "shared_mlp.input_linear.weight").chunk(2)
        out[mine + "mlp.gate_proj.weight"], out[mine + "mlp.up_proj.weight"] = gate, up
        if kind == "attention":
            for theirs, name in ATTENTION.items():
                if name.startswith("mixer.o_proj.bias"):
                    zero(pre + theirs)
                elif name.endswith("weight") or cfg.qkv_bias:
                    out[mine + name] = take(pre + theirs)
            continue
        what = f"{where}: layer {i} mamba"
        unpad = lambda w, part, what=what: _unpad(w, h, n_heads, f"{what} {part}")  # noqa: E731
        for theirs, name in MAMBA.items():
            out[mine + name] = unpad(take(pre + theirs), theirs)
        out[mine + "mixer.o_proj.weight"] = unpad(take(pre + "mamba.out_proj.weight").T, "out_proj").T.contiguous()
        sizes = [n_heads * hd] * 4 + [n_heads]
        for leaf in ("weight", "bias"):
            t = take(pre + f"mamba.in_proj.{leaf}", optional=leaf == "bias")
            if t is None:
                continue
            z, x, B, C, dt = (unpad(p, f"in_proj {leaf}") for p in t.split(sizes))
            if leaf == "bias" and not cfg.qkv_bias:
                raise MmmambaError(f"{what}: in_proj has a bias while mamba_proj_bias is false")
            parts = {"g_proj": z, "v_proj": _fold(x, kvh, h, f"{what} in_proj x"),
                     "k_proj": _fold(B, kvh, h, f"{what} in_proj B"), "q_proj": C, "dt_proj": dt}  # fmt: skip
            for name, p in parts.items():
                if leaf == "bias" and name in ("g_proj", "dt_proj"):
                    if p.count_nonzero():
                        raise MmmambaError(
                            f"{what}: in_proj bias of {name[0]} rows is not zero; mmmamba has none there"
                        )
                    continue
                out[f"{mine}mixer.{name}.{leaf}"] = p.contiguous()
        if cfg.qkv_bias:
            zero(pre + "mamba.out_proj.bias")
        for leaf in ("weight", "bias"):
            t = take(pre + f"mamba.conv1d.{leaf}", optional=leaf == "bias")
            if t is None:
                continue
            t = t[:, 0] if leaf == "weight" else t  # (C, 1, k) → (C, k)
            x, B, C = (unpad(p, f"conv1d {leaf}") for p in t.split([n_heads * hd] * 3))
            v, k = _fold(x, kvh, h, f"{what} conv1d x"), _fold(B, kvh, h, f"{what} conv1d B")
            out[f"{mine}mixer.conv_{leaf}"] = torch.cat([v, k, C]).contiguous()
        norm = take(pre + "mamba.norm.weight").unflatten(0, (n_heads, hd))
        if not torch.equal(norm, norm[:1].expand_as(norm)):
            raise MmmambaError(
                f"{what} norm weight differs between heads; mmmamba's mixer shares one head_dim-wide weight"
            )
        out[f"{mine}mixer.out_norm.weight"] = norm[0].clone()
        D = unpad(take(pre + "mamba.D"), "D")
        if D.count_nonzero():
            out[f"{mine}mixer.D"] = D
    if unused:
        raise MmmambaError(f"{where}: tensors with no place in the model: {sorted(unused)[:3]}")
    return out


def load_granite(path, raw: dict, dtype: torch.dtype | None = None):
    """A GraniteMoeHybrid folder as our Decoder (config.json and safetensors only; no code is run)."""
    from .build import build_loaded
    from .checkpoint import read_safetensors

    where = f"{path}/config.json"
    cfg, n_heads = granite_decoder_config(raw, where)
    state = granite_state(cfg, n_heads, read_safetensors(Path(path)), str(path))
    layers = [i for i, k in enumerate(cfg.mixers) if k == "mamba2"]
    if layers and any(f"layers.{i}.mixer.D" in state for i in layers):
        if not all(f"layers.{i}.mixer.D" in state for i in layers):
            for i in layers:  # some layers use D and some have it at zero: all carry one
                state.setdefault(f"layers.{i}.mixer.D", state[f"layers.{i}.mixer.dt_bias"].new_zeros(cfg.num_heads))
        cfg.mamba["use_D"] = True
    return build_loaded(cfg, state, path, dtype)
