"""A distillation stage is data: which parameters train, which loss, which learning rate.

Stage 1 and 2 are layer-local (each Mamba-2 mixer is fitted to its teacher layer's attention
output, before Wo, from the teacher's own input to that layer). Stage 3 matches the teacher's
next-token distribution end to end. The model itself knows nothing of stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..layers import Mamba2Mixer
from ..training.optim import OptimConfig

NEW_SSM = ("conv_weight", "conv_bias", "dt_proj", "dt_bias", "A_log", "D", "g_proj", "out_norm", "q_norm", "k_norm")
INHERITED_QKV = ("q_proj", "k_proj", "v_proj")


@dataclass
class StageConfig:
    name: str
    trains: tuple[str, ...]  # mixer parameter name prefixes, in Mamba-2 layers only
    loss: str  # "layer_mse" | "kl"
    optim: OptimConfig = field(default_factory=OptimConfig)
    train_o_proj: bool = False  # stage 3 options (the paper freezes Wo and the MLPs)
    train_mlp: bool = False


STAGES = {
    1: StageConfig("stage1", NEW_SSM, "layer_mse", OptimConfig(lr=1e-3)),
    2: StageConfig("stage2", NEW_SSM + INHERITED_QKV, "layer_mse", OptimConfig(lr=5e-4)),
    3: StageConfig("stage3", NEW_SSM + INHERITED_QKV, "kl", OptimConfig(lr=5e-5)),
}


def select_trainable(model: nn.Module, stage: StageConfig) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything, then unfreeze the stage's parameters; returns them by name."""
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer.mixer, Mamba2Mixer):
            for name, p in layer.mixer.named_parameters():
                if name.split(".")[0] in stage.trains or (stage.train_o_proj and name.startswith("o_proj")):
                    chosen.append((f"layers.{i}.mixer.{name}", p))
        if stage.train_mlp:
            chosen += [(f"layers.{i}.mlp.{n}", p) for n, p in layer.mlp.named_parameters()]
    for _, p in chosen:
        p.requires_grad_(True)
    return chosen
