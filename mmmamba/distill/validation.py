"""What a run's validation records beside the stage loss: in stages that match the teacher's
next-token distribution, the student's and the teacher's perplexity on the validation targets.

``val.csv`` (one row per validation of such a stage) gives the curves against tokens seen:
``tokens_seen`` counts every real token trained on so far, over all stages of the run.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..training.losses import next_token_loss
from ..training.run import RunLog

VAL_COLUMNS = ("stage", "step", "tokens_seen", "val_kl", "val_nll", "teacher_val_nll", "val_ppl_ratio")


@torch.no_grad()
def mean_target_nll(model, batches) -> float:
    """Mean next-token NLL of ``model`` over the batches' target tokens."""
    total, count = 0.0, 0
    for b in batches:
        weight = b.loss_mask.float()  # each target counts once: ce_rows then returns a sum
        total += float(next_token_loss(model, b.input_ids, b.pixel_values, b.loss_mask, weight=weight))
        count += int(b.loss_mask[:, 1:].sum())
    return total / max(count, 1)


def target_nll(teacher, student, batches, teacher_nll: float | None = None) -> dict[str, float]:
    """The student's and the teacher's mean target NLL over the batches, and the ratio of their perplexities
    (exp of the NLL difference). ``teacher_nll``: the teacher's, measured before on the same batches."""
    t = mean_target_nll(teacher, batches) if teacher_nll is None else teacher_nll
    s = mean_target_nll(student, batches)
    return {"val_nll": s, "teacher_val_nll": t, "val_ppl_ratio": math.exp(s - t)}


def val_log(out: Path) -> RunLog:
    """``val.csv`` of a run folder."""
    return RunLog(Path(out) / "val.csv", VAL_COLUMNS, key=("stage", "step"))
