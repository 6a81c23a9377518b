"""Carve Mamba-2 mixers out of attention layers (SPEC §3) and build a student from a teacher.

Three initialisations (the paper's ablation):
  ``mimic``   inherit Wq/Wk/Wv/Wo, new parameters set so the mixer starts attention-like with slow decay;
  ``inherit`` inherit Wq/Wk/Wv/Wo, new parameters at their plain defaults;
  ``scratch`` nothing inherited, everything at plain defaults.
Inherited weights are copied: the student never shares storage with the teacher.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import MmmambaError
from ..formats.official import OFFICIAL_MAMBA
from ..layers import Attention, Mamba2Config, Mamba2Mixer
from ..models import Decoder

INITS = ("mimic", "inherit", "scratch")
INHERITED = ("q_proj", "k_proj", "v_proj", "o_proj")


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


@torch.no_grad()
def init_mamba_mimic(mixer: Mamba2Mixer) -> None:
    """Identity conv (current tap 1), Wdt = 0, dt0 log-uniform in [dt_min, dt_max], A = −e."""
    cfg = mixer.cfg
    mixer.conv_weight.zero_()
    mixer.conv_weight[:, -1] = 1.0
    if mixer.conv_bias is not None:
        mixer.conv_bias.zero_()
    mixer.dt_proj.weight.zero_()
    u = torch.rand(cfg.num_heads, dtype=torch.float64)
    dt0 = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    mixer.dt_bias.copy_(inverse_softplus(dt0))
    mixer.A_log.fill_(1.0)
    _init_output(mixer)


@torch.no_grad()
def init_mamba_plain(mixer: Mamba2Mixer) -> None:
    """Library-default conv and Wdt, dt_bias = 0, A_log = log U(1, 16)."""
    conv = nn.Conv1d(mixer.cfg.conv_dim, mixer.cfg.conv_dim, mixer.cfg.conv_kernel, groups=mixer.cfg.conv_dim)
    mixer.conv_weight.copy_(conv.weight[:, 0])
    if mixer.conv_bias is not None:
        mixer.conv_bias.copy_(conv.bias)
    mixer.dt_proj.reset_parameters()
    mixer.dt_bias.zero_()
    mixer.A_log.copy_(torch.log(torch.empty_like(mixer.A_log).uniform_(1, 16)))
    _init_output(mixer)


def _init_output(mixer: Mamba2Mixer) -> None:
    nn.init.xavier_uniform_(mixer.g_proj.weight, gain=2**-2.5)
    mixer.out_norm.weight.data.fill_(1.0)
    if mixer.D is not None:
        mixer.D.data.fill_(1.0)


def seed_mamba_from_attention(
    attention_layer: Attention, mamba_cfg: Mamba2Config | None = None, init: str = "mimic"
) -> Mamba2Mixer:
    """A new Mamba-2 mixer whose C/B/x/output projections are copies of the attention layer's.

    ``mamba_cfg`` defaults to the attention layer's shapes with the paper's mixer options.
    """
    if mamba_cfg is None:
        a = attention_layer.cfg
        mamba_cfg = Mamba2Config(a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim, a.qkv_bias)
    if init not in INITS:
        raise MmmambaError(f"unknown init {init!r}; use one of {list(INITS)}")
    ref = attention_layer.q_proj.weight
    mixer = Mamba2Mixer(mamba_cfg).to(device=ref.device, dtype=ref.dtype)
    if init != "scratch":
        with torch.no_grad():
            for name in INHERITED:
                src, dst = getattr(attention_layer, name), getattr(mixer, name)
                dst.weight.copy_(src.weight)
                if src.bias is not None:
                    dst.bias.copy_(src.bias)
    (init_mamba_mimic if init == "mimic" else init_mamba_plain)(mixer)
    return mixer


def convert_to_mamba(
    teacher: Decoder, keep_attention: list[int], init: str = "mimic", mamba: dict | None = None
) -> Decoder:
    """A student: a deep copy of ``teacher`` with every layer not in ``keep_attention`` turned into Mamba-2.

    Each mixer takes its layer's own shapes; its gated norm takes the layer's eps, except in a HoVLE
    teacher's students, whose gated norm uses the released mmMamba mixer's fixed eps (so that they
    export to that layout whatever eps each stack's layer norms use). ``mamba`` options win over both.
    """
    n = teacher.config.num_layers
    bad = [i for i in keep_attention if not 0 <= i < n]
    if bad:
        raise MmmambaError(f"layers {bad} to keep as attention are out of range for a {n}-layer model")
    if any(kind != "attention" for kind in teacher.config.mixers):
        raise MmmambaError("the teacher must be all-attention; convert from the original model")
    student = copy.deepcopy(teacher)
    cfg = student.config
    released = {"norm_eps": OFFICIAL_MAMBA["norm_eps"]} if "hovle" in cfg.conversion else {}
    cfg.mamba = {**released, **cfg.mamba, **(mamba or {})}
    cfg.mixers = ["attention" if i in keep_attention else "mamba2" for i in range(n)]
    cfg.conversion = {**cfg.conversion, "init": init, "keep_attention": sorted(keep_attention)}  # keep provenance
    for i, layer in enumerate(student.layers):
        if cfg.mixers[i] == "mamba2":  # each layer's own shapes (DecoderConfig.layer_overrides)
            layer.mixer = seed_mamba_from_attention(teacher.layers[i].mixer, cfg.mamba2_config(i), init)
    return student
