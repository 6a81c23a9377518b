"""Token-averaged losses for training and distillation.

Each is a sum over real (masked-in) tokens divided by ``total``: by default the mask's own count,
so its scale does not grow with length. A data-parallel or gradient-accumulated step passes the
count over the whole global batch instead; the per-piece losses then add up to the loss of the
global batch, whatever its split into ranks, micro-batches or packed rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def wide(t: Tensor) -> Tensor:
    """At least float32 (bf16 / fp16 logits widened; float64 ones, in tests, kept)."""
    return t if t.dtype == torch.float64 else t.float()


def _mean(per_token: Tensor, mask: Tensor, total: Tensor | None) -> Tensor:
    m = mask.to(per_token.dtype)
    total = m.sum().clamp(min=1) if total is None else total.to(per_token.dtype).clamp(min=1)
    return (per_token * m).sum() / total


def masked_mse(student: Tensor, target: Tensor, mask: Tensor, total: Tensor | None = None) -> Tensor:
    """Per-token mean squared error over the feature dim, averaged over tokens where mask is 1.

    student, target (b, L, d); mask (b, L).
    """
    return _mean((wide(student) - wide(target)).pow(2).mean(-1), mask, total)  # per token (b, L)


KL_CHUNK_TOKENS = 2048  # tokens whose float32 log-probabilities exist at once in masked_kl


def _kl_rows(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """(N, V) logits → (N,) KL(teacher ‖ student), in float32 (float64 for float64 logits)."""
    t = F.log_softmax(wide(teacher_logits) / temperature, dim=-1)
    s = F.log_softmax(wide(student_logits) / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def masked_kl(
    teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, temperature: float = 1.0, total: Tensor | None = None
) -> Tensor:
    """KL(teacher ‖ student) of next-token distributions, averaged over tokens where mask is 1.

    Scaled by T² (Hinton et al.) so gradients keep their size across temperatures. Computed in slices of
    ``KL_CHUNK_TOKENS`` tokens, each recomputed in the backward pass (activation checkpointing): the
    float32 softmaxes of a whole batch (five vocabulary-wide tensors a token) never exist at once.
    """
    *lead, V = student_logits.shape  # (b, L, V) or any (..., V)
    t_rows, s_rows = teacher_logits.reshape(-1, V), student_logits.reshape(-1, V)
    grad = torch.is_grad_enabled() and student_logits.requires_grad
    per = []
    for i in range(0, s_rows.shape[0], KL_CHUNK_TOKENS):
        t, s = t_rows[i : i + KL_CHUNK_TOKENS], s_rows[i : i + KL_CHUNK_TOKENS]
        rows = checkpoint(_kl_rows, t, s, temperature, use_reentrant=False) if grad else _kl_rows(t, s, temperature)
        per.append(rows)
    return _mean(torch.cat(per).view(lead), mask, total) * temperature**2  # per token (b, L)


def masked_ce(logits: Tensor, ids: Tensor, mask: Tensor, total: Tensor | None = None) -> Tensor:
    """Next-token cross-entropy (position t predicts ids[t+1]) over positions where mask[t+1] is 1."""
    return ce_rows(logits[:, :-1][mask[:, 1:].bool()], ids, mask, total)


def predicting_positions(mask: Tensor) -> Tensor:
    """(b, L) target mask → (b, L) bool: the positions whose logits predict a target (t, for target t+1)."""
    return F.pad(mask[:, 1:].bool(), (0, 1))


def ce_rows(
    rows: Tensor, ids: Tensor, mask: Tensor, total: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """``masked_ce`` from the logits of the predicting positions only: rows (N, vocab), row-major order,
    as ``Decoder.forward(..., logits_at=predicting_positions(mask))`` returns them. ``weight`` (b, L):
    each target token's own weight (at the target's position), summed instead of dividing by a count."""
    target = mask[:, 1:].bool()
    targets = ids[:, 1:][target]  # (N,)
    rows = wide(rows)
    if weight is not None:
        return (F.cross_entropy(rows, targets, reduction="none") * weight[:, 1:][target].to(rows.dtype)).sum()
    if total is None:
        return F.cross_entropy(rows, targets)
    return F.cross_entropy(rows, targets, reduction="sum") / total.to(rows.dtype).clamp(min=1)


def next_token_loss(
    model,
    input_ids: Tensor,
    pixel_values,
    mask: Tensor,
    total: Tensor | None = None,
    weight: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor:
    """``masked_ce`` (or ``ce_rows``' weighted sum) of ``model`` on a batch, padded or packed
    (``cu_seqlens``), its head applied only where a target is predicted."""
    rows = model(input_ids, pixel_values, cu_seqlens=cu_seqlens, logits_at=predicting_positions(mask)).logits
    return ce_rows(rows, input_ids, mask, total, weight)
