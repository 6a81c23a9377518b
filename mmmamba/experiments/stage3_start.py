"""Where does stage 3 start? The stage-3 loss of students that have not been trained (RESULTS.md §2).

    python -m mmmamba.experiments.stage3_start --teacher models/tiny-teacher --data runs/suite --converted 0,1,2,3,4
    python -m mmmamba.experiments.stage3_start --teacher runs/smol/teacher --data runs/smol/text \
        --converted 0,1,2,4,8,15,30 --batches 1 --batch-size 8

Stage 3 alone (no stage 1 or 2) reached 0.596 on the 4-layer toy teacher but 0.000 on the 30-layer
SmolLM2 VLM at the same budget. This probe measures the loss stage 3 starts from: KL(teacher ‖ student)
over every real token of the first validation batches of ``--data`` (the `distill` stage-3 loss), for
a student whose first K layers are Mamba-2 seeded from attention (``--init``, default mimic) and whose
other layers stay attention, for each K of ``--converted``; then, with every layer converted, for each
init (scratch, inherit, mimic). For scale, it prints the KL of a uniform guess (zero logits) and of the
teacher to itself (0). Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from ..convert.seed import INITS, convert_to_mamba
from ..distill.config import DistillConfig
from ..distill.prepare import prepare
from ..distill.stages import STAGES
from ..formats import load_checkpoint, save_checkpoint
from ..training.losses import masked_kl


@torch.no_grad()
def stage3_loss(student, batches, teacher_logits) -> float:
    """Mean stage-3 loss of ``student`` over ``batches`` (teacher logits computed once)."""
    student.eval()
    stage = STAGES[3]
    losses = [stage.loss(student, b, t, **stage.loss_args) for b, t in zip(batches, teacher_logits)]
    return sum(float(v) for v in losses) / len(losses)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, help="a `mmmamba data make` suite or a `mmmamba data text` corpus")
    p.add_argument("--converted", default="0,1,2,4", help="K values: the first K layers become Mamba-2")
    p.add_argument("--init", default="mimic", choices=list(INITS))
    p.add_argument("--batches", type=int, default=2, help="validation batches scored")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    teacher = load_checkpoint(args.teacher).float().eval()
    layers = teacher.config.num_layers
    ks = sorted({min(int(k), layers) for k in args.converted.split(",")})
    with tempfile.TemporaryDirectory() as tmp:  # `prepare` reads the student from a folder
        save_checkpoint(convert_to_mamba(teacher, [], args.init), Path(tmp) / "student")
        cfg = DistillConfig(batch_size=args.batch_size, val_limit=args.batches * args.batch_size)
        prep = prepare(args.teacher, Path(tmp) / "student", args.data, Path(tmp) / "run", cfg, progress=False)
    batches = prep.val[: args.batches]
    teacher_logits = [STAGES[3].inputs(prep.teacher, b) for b in batches]
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    uniform = sum(
        float(masked_kl(t, torch.zeros_like(t), b.attention_mask, 1.0, None)) for b, t in zip(batches, teacher_logits)
    ) / len(batches)
    print(f"{args.teacher}: {layers} layers; {args.data}: {len(batches)} batches, {tokens} tokens")
    log_v = math.log(teacher.config.vocab_size)
    print(f"KL(teacher ‖ uniform guess) {uniform:.3f} nats/token (log V = {log_v:.2f})")
    print(f"{'first K converted':>18} {'init':>8} {'stage-3 loss':>13} {'of uniform':>11} {'seconds':>8}")
    rows = [(k, args.init) for k in ks] + [(layers, i) for i in INITS if i != args.init]
    for k, init in rows:
        t0 = time.time()
        student = convert_to_mamba(prep.teacher, list(range(k, layers)), init)
        student.set_backends(ssd="torch")
        loss = stage3_loss(student, batches, teacher_logits)
        print(f"{k:>18} {init:>8} {loss:>13.3f} {loss / uniform:>11.2f} {time.time() - t0:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
