"""``auto:K``: the conversion step between stages 2 and 3 that turns back into teacher attention the K
layers whose Mamba-2 mixers fit their teacher layer worst after the layer-local stages.

``convert --keep-attention auto:K`` records K in the student's ``conversion["auto_keep"]``;
``distill`` runs ``apply_auto_keep`` before stage 3 (once: it records ``auto_errors``). From Python::

    kept = keep_hardest_as_attention(teacher, student, val_batches, k=2)
"""

from __future__ import annotations

import copy

import torch

from ..models import Decoder
from .losses import layer_errors, teacher_layer_io


@torch.no_grad()
def layer_error_means(teacher: Decoder, student: Decoder, batches: list) -> dict[int, float]:
    """Each Mamba-2 layer's stage-1/2 error (MSE to the teacher's attention output), averaged over batches."""
    totals: dict[int, float] = {}
    for batch in batches:
        for i, e in layer_errors(student, batch, teacher_layer_io(teacher, batch)).items():
            totals[i] = totals.get(i, 0.0) + float(e)
    return {i: v / len(batches) for i, v in totals.items()}


def keep_hardest_as_attention(teacher: Decoder, student: Decoder, batches: list, k: int) -> list[int]:
    """Replace the ``k`` worst-fitting Mamba-2 mixers by copies of the teacher's attention (no shared
    storage); records the kept layers and every layer's error in ``student.config.conversion``.
    Returns the layers turned back, ascending."""
    errors = layer_error_means(teacher, student, batches)
    hardest = sorted(sorted(errors, key=lambda i: -errors[i])[:k])
    for i in hardest:
        student.layers[i].mixer = copy.deepcopy(teacher.layers[i].mixer)
        student.config.mixers[i] = "attention"
    kinds = student.config.mixers
    student.config.conversion["keep_attention"] = [i for i, kind in enumerate(kinds) if kind == "attention"]
    student.config.conversion["auto_errors"] = {str(i): errors[i] for i in sorted(errors)}
    return hardest


def apply_auto_keep(teacher: Decoder, student: Decoder, batches: list) -> list[int] | None:
    """Run the step when the student asks for it (``auto_keep``) and has not had it; else None."""
    k = student.config.conversion.get("auto_keep")
    if not k or "auto_errors" in student.config.conversion:
        return None
    return keep_hardest_as_attention(teacher, student, batches, int(k))
