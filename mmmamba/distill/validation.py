"""What a run's validation records beside the stage loss: in stages that match the teacher's
next-token distribution, the student's and the teacher's perplexity on the validation targets.

``val.csv`` (one row per validation of such a stage) gives the curves against tokens seen:
``tokens_seen`` counts every real token trained on so far, over all stages of the run.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from ..training.losses import next_token_loss
from ..training.run import RunLog

VAL_COLUMNS = ("stage", "step", "tokens_seen", "val_kl", "val_nll", "teacher_val_nll", "val_ppl_ratio")


@torch.no_grad()
def target_nll(teacher, student, batches) -> dict[str, float]:
    """Mean next-token NLL of the student and of the teacher over the batches' target tokens, and the
    ratio of their perplexities (exp of the NLL difference)."""
    s_sum = t_sum = 0.0
    count = 0
    for b in batches:
        weight = b.loss_mask.float()  # each target counts once: ce_rows then returns a sum
        s_sum += float(next_token_loss(student, b.input_ids, b.pixel_values, b.loss_mask, weight=weight))
        t_sum += float(next_token_loss(teacher, b.input_ids, b.pixel_values, b.loss_mask, weight=weight))
        count += int(b.loss_mask[:, 1:].sum())
    count = max(count, 1)
    s, t = s_sum / count, t_sum / count
    return {"val_nll": s, "teacher_val_nll": t, "val_ppl_ratio": math.exp(s - t)}


def val_log(out: Path) -> RunLog:
    """``val.csv`` of a run folder."""
    return RunLog(Path(out) / "val.csv", VAL_COLUMNS, key=("stage", "step"))


def tokens_logged(log_csv: Path) -> int:
    """Real tokens trained on so far: the sum of a run log's per-step ``tokens``."""
    if not log_csv.is_file():
        return 0
    with log_csv.open() as f:
        return sum(int(r["tokens"]) for r in csv.DictReader(f) if r.get("tokens"))
