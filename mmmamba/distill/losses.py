"""Distillation losses, averaged over real (non-padding) tokens so their scale does not grow with length."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def masked_mse(student: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-token mean squared error over the feature dim, averaged over tokens where mask is 1.

    student, target (b, L, d); mask (b, L).
    """
    per_token = (student.float() - target.float()).pow(2).mean(-1)  # (b, L)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1)


def masked_kl(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher ‖ student) of next-token distributions, averaged over tokens where mask is 1.

    Scaled by T² (Hinton et al.) so gradients keep their size across temperatures.
    """
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_token = (t.exp() * (t - s)).sum(-1)  # (b, L)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1) * temperature**2


def masked_ce(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Next-token cross-entropy (position t predicts ids[t+1]) over positions where mask[t+1] is 1."""
    target = mask[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][target].float(), ids[:, 1:][target])
