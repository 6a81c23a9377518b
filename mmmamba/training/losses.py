"""Token-averaged losses for training and distillation.

Each is a sum over real (masked-in) tokens divided by ``total``: by default the mask's own count,
so its scale does not grow with length. A data-parallel or gradient-accumulated step passes the
count over the whole global batch instead; the per-piece losses then add up to the loss of the
global batch, whatever its split into ranks, micro-batches or packed rows.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _mean(per_token: Tensor, mask: Tensor, total: Tensor | None) -> Tensor:
    m = mask.to(per_token.dtype)
    total = m.sum().clamp(min=1) if total is None else total.to(per_token.dtype).clamp(min=1)
    return (per_token * m).sum() / total


def masked_mse(student: Tensor, target: Tensor, mask: Tensor, total: Tensor | None = None) -> Tensor:
    """Per-token mean squared error over the feature dim, averaged over tokens where mask is 1.

    student, target (b, L, d); mask (b, L).
    """
    return _mean((student.float() - target.float()).pow(2).mean(-1), mask, total)  # per token (b, L)


def masked_kl(
    teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, temperature: float = 1.0, total: Tensor | None = None
) -> Tensor:
    """KL(teacher ‖ student) of next-token distributions, averaged over tokens where mask is 1.

    Scaled by T² (Hinton et al.) so gradients keep their size across temperatures.
    """
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return _mean((t.exp() * (t - s)).sum(-1), mask, total) * temperature**2  # per token (b, L)


def masked_ce(logits: Tensor, ids: Tensor, mask: Tensor, total: Tensor | None = None) -> Tensor:
    """Next-token cross-entropy (position t predicts ids[t+1]) over positions where mask[t+1] is 1."""
    target = mask[:, 1:].bool()
    if total is None:
        return F.cross_entropy(logits[:, :-1][target].float(), ids[:, 1:][target])
    per = F.cross_entropy(logits[:, :-1][target].float(), ids[:, 1:][target], reduction="sum")
    return per / total.float().clamp(min=1)
