"""The stage losses and what flows into them from the teacher.

A stage's ``inputs(teacher, batch)`` runs the frozen teacher once (no gradients); its
``loss(student, batch, inputs, **args)`` returns the batch's loss, a sum over tokens divided by
``batch.totals`` when the training loop set them (the global batch's counts), else by its own.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..layers import Mamba2Mixer
from ..models import Decoder, DecoderOutput
from ..training.losses import masked_ce, masked_kl, masked_mse


def mamba_layers(model: Decoder) -> list[int]:
    return [i for i, layer in enumerate(model.layers) if isinstance(layer.mixer, Mamba2Mixer)]


@torch.no_grad()
def teacher_layer_io(teacher: Decoder, batch) -> DecoderOutput:
    """Stages 1-2: the residual stream entering every layer and each attention output before Wo."""
    return teacher(batch.input_ids, batch.pixel_values, return_layer_io=True, cu_seqlens=batch.cu_seqlens)


@torch.no_grad()
def teacher_logits(teacher: Decoder, batch) -> Tensor:
    """Stage 3: the teacher's next-token logits."""
    return teacher(batch.input_ids, batch.pixel_values, cu_seqlens=batch.cu_seqlens).logits


def batch_total(batch, i: int) -> Tensor | None:
    """The global token (0) or target (1) count a loss divides by, or None: the batch's own mean."""
    return None if batch.totals is None else batch.totals[i]


def layer_errors(student: Decoder, batch, t: DecoderOutput, layers: list[int] | None = None) -> dict[int, Tensor]:
    """Each Mamba-2 mixer fed the teacher's (normed) input to its layer, against the teacher's attention
    output before Wo. Layer-local: no gradient crosses layers."""
    errors = {}
    for i in mamba_layers(student) if layers is None else layers:
        layer = student.layers[i]
        u = layer.input_norm(t.layer_inputs[i])
        if student.checkpoint_layers and torch.is_grad_enabled():  # recompute the mixer in backward
            y = checkpoint(layer.mixer.mix, u, None, None, None, batch.cu_seqlens, use_reentrant=False)
        else:
            y = layer.mixer.mix(u, None, None, None, cu_seqlens=batch.cu_seqlens)
        errors[i] = masked_mse(y, t.mixer_outputs[i], batch.attention_mask, batch_total(batch, 0))
    return errors


def layer_mse(student: Decoder, batch, t: DecoderOutput, layers: list[int] | None = None) -> Tensor:
    """Stages 1-2: the per-layer MSE averaged over all Mamba-2 layers. ``layers`` computes only those
    (layer-parallel: each process its own), still divided by the count of all of them, so the
    processes' losses add up to the whole model's."""
    errors = layer_errors(student, batch, t, layers)
    return torch.stack(list(errors.values())).sum() / len(mamba_layers(student))


def kl_to_teacher(
    student: Decoder, batch, t_logits: Tensor, temperature: float = 1.0, ce_weight: float = 0.0
) -> Tensor:
    """Stage 3: KL(teacher ‖ student) over real tokens, plus ``ce_weight`` × cross-entropy on answers."""
    s_logits = student(batch.input_ids, batch.pixel_values, cu_seqlens=batch.cu_seqlens).logits
    loss = masked_kl(t_logits, s_logits, batch.attention_mask, temperature, batch_total(batch, 0))
    if ce_weight:
        loss = loss + ce_weight * masked_ce(s_logits, batch.input_ids, batch.loss_mask, batch_total(batch, 1))
    return loss
