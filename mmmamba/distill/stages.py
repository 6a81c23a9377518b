"""A distillation stage is data: which parameter groups train, what flows in from the teacher,
which loss (a callable and its arguments), the learning rate and the default step count.

Stage 1 and 2 are layer-local (each Mamba-2 mixer is fitted to its teacher layer's attention
output, before Wo, from the teacher's own input to that layer). Stage 3 matches the teacher's
next-token distribution end to end. The model knows nothing of stages; the mixer declares its
parameter groups (``Mamba2Mixer.parameter_groups``) and a stage selects groups, never names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..layers import Mamba2Mixer
from ..training.optim import OptimConfig
from .losses import kl_to_teacher, layer_mse, teacher_layer_io, teacher_logits


@dataclass(frozen=True)
class StageConfig:
    id: int
    groups: tuple[str, ...]  # Mamba2Mixer.parameter_groups() that train
    inputs: Callable  # (teacher, batch) -> what the loss reads (run without gradients)
    loss: Callable  # (student, batch, inputs, **loss_args) -> scalar loss
    loss_args: dict = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 300  # default step count
    train_mlp: bool = False  # stage-3 option (the paper freezes the MLPs)

    @property
    def name(self) -> str:
        return f"stage{self.id}"

    @property
    def layer_local(self) -> bool:
        """No gradient crosses layers: each process may own some layers (layer-parallel mode)."""
        return self.inputs is teacher_layer_io

    def with_options(self, lr_scale: float = 1.0, train_o_proj: bool = False, train_mlp: bool = False, **loss_args):
        """This stage with a run's options: learning-rate scale, Wo / MLPs trained, and loss
        arguments (only those the loss takes, e.g. ``temperature``, ``ce_weight``, ``layers``)."""
        args = {**self.loss_args, **{k: v for k, v in loss_args.items() if k in self.loss_args}}
        return dataclasses.replace(
            self,
            groups=self.groups + (("output",) if train_o_proj and "output" not in self.groups else ()),
            train_mlp=train_mlp,
            loss_args=args,
            optim=dataclasses.replace(self.optim, lr=self.optim.lr * lr_scale),
        )


STAGES = {
    1: StageConfig(1, ("new_ssm",), teacher_layer_io, layer_mse, {"layers": None}, OptimConfig(lr=1e-3), 300),
    2: StageConfig(
        2, ("new_ssm", "inherited_qkv"), teacher_layer_io, layer_mse, {"layers": None}, OptimConfig(lr=5e-4), 300
    ),
    3: StageConfig(
        3,
        ("new_ssm", "inherited_qkv"),
        teacher_logits,
        kl_to_teacher,
        {"temperature": 1.0, "ce_weight": 0.0},
        OptimConfig(lr=5e-5),
        600,
    ),
}


def select_trainable(model: nn.Module, stage: StageConfig) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything, then unfreeze the stage's groups of every Mamba-2 mixer (and the MLPs when
    asked); returns them by name. Kept attention layers stay frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer.mixer, Mamba2Mixer):
            params = dict(layer.mixer.named_parameters())
            groups = layer.mixer.parameter_groups()
            chosen += [(f"layers.{i}.mixer.{n}", params[n]) for g in stage.groups for n in groups[g]]
        if stage.train_mlp:
            chosen += [(f"layers.{i}.mlp.{n}", p) for n, p in layer.mlp.named_parameters()]
    for _, p in chosen:
        p.requires_grad_(True)
    return chosen


def stage_loss(stage: StageConfig, teacher: nn.Module, student: nn.Module, batch):
    """The stage's loss on one batch: the teacher's contribution flows in, then the student's loss."""
    return stage.loss(student, batch, stage.inputs(teacher, batch), **stage.loss_args)
