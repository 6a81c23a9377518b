"""``auto:K``: the conversion step between stages 2 and 3 that turns back into teacher attention the K
layers whose Mamba-2 mixers fit their teacher layer worst after the layer-local stages.

``convert --keep-attention auto:K [--auto-rank error|relative]`` records K and the rank in the student's
``conversion`` (``auto_keep``, ``auto_rank``); ``distill`` runs ``apply_auto_keep`` before stage 3 (once:
it records ``auto_errors`` and ``auto_relative_errors``). From Python::

    kept = keep_hardest_as_attention(teacher, student, val_batches, k=2)
"""

from __future__ import annotations

import copy

import torch

from ..errors import MmmambaError
from ..models import Decoder
from ..training.losses import masked_mse
from .losses import batch_total, layer_errors, teacher_layer_io

RANKS = ("error", "relative")  # auto:K ranks layers by their stage-2 MSE, or by that MSE over their output's size


@torch.no_grad()
def layer_fit(teacher: Decoder, student: Decoder, batches: list) -> tuple[dict[int, float], dict[int, float]]:
    """Each Mamba-2 layer's stage-1/2 error (MSE to the teacher's attention output) and the mean square
    of that teacher output (the error of predicting zeros), both averaged over batches."""
    errors: dict[int, float] = {}
    powers: dict[int, float] = {}
    for batch in batches:
        t = teacher_layer_io(teacher, batch)
        for i, e in layer_errors(student, batch, t).items():
            target = t.mixer_outputs[i]
            power = masked_mse(torch.zeros_like(target), target, batch.attention_mask, batch_total(batch, 0))
            errors[i] = errors.get(i, 0.0) + float(e) / len(batches)
            powers[i] = powers.get(i, 0.0) + float(power) / len(batches)
    return errors, powers


def layer_error_means(teacher: Decoder, student: Decoder, batches: list) -> dict[int, float]:
    """Each Mamba-2 layer's stage-1/2 error (MSE to the teacher's attention output), averaged over batches."""
    return layer_fit(teacher, student, batches)[0]


def keep_hardest_as_attention(
    teacher: Decoder, student: Decoder, batches: list, k: int, rank: str = "error"
) -> list[int]:
    """Replace the ``k`` worst-fitting Mamba-2 mixers by copies of the teacher's attention (no shared
    storage). ``rank``: "error" ranks by the MSE, which grows with the size of a layer's output (in
    SmolLM2 the deepest layers write the largest); "relative" by the MSE over the teacher output's mean
    square. Records the kept layers, the rank and every layer's error and relative error in
    ``student.config.conversion``. Returns the layers turned back, ascending."""
    if rank not in RANKS:
        raise MmmambaError(f"auto:K rank {rank!r}: use one of {', '.join(RANKS)}")
    errors, powers = layer_fit(teacher, student, batches)
    relative = {i: errors[i] / max(powers[i], 1e-30) for i in errors}
    score = errors if rank == "error" else relative
    hardest = sorted(sorted(score, key=lambda i: -score[i])[:k])
    for i in hardest:
        student.layers[i].mixer = copy.deepcopy(teacher.layers[i].mixer)
        student.config.mixers[i] = "attention"
    kinds = student.config.mixers
    conversion = student.config.conversion
    conversion["keep_attention"] = [i for i, kind in enumerate(kinds) if kind == "attention"]
    conversion["auto_rank"] = rank
    conversion["auto_errors"] = {str(i): errors[i] for i in sorted(errors)}
    conversion["auto_relative_errors"] = {str(i): relative[i] for i in sorted(relative)}
    return hardest


def apply_auto_keep(teacher: Decoder, student: Decoder, batches: list) -> list[int] | None:
    """Run the step when the student asks for it (``auto_keep``) and has not had it; else None."""
    k = student.config.conversion.get("auto_keep")
    if not k or "auto_errors" in student.config.conversion:
        return None
    rank = student.config.conversion.get("auto_rank", "error")
    return keep_hardest_as_attention(teacher, student, batches, int(k), rank)
