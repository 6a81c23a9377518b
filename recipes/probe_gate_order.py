"""What does the gate order cost in stage 1? A cheap probe (the end-to-end answer is recipes/gate_order_cost.sh).

    python recipes/probe_gate_order.py --teacher models/tiny-teacher --data runs/gate_order/suite \
        --seeds 0 1 2 --steps 150

For each gate order and seed: convert the teacher to a linear student (mimic init, the same seed for
both orders), then run stage 1 alone (the new SSM parameters fit each layer's teacher attention output,
lr 1e-3 × --lr-scale, AdamW with the paper's schedule) on a fixed pool of training batches whose teacher
outputs are computed once. It prints the per-layer validation MSE relative to the teacher output's mean
square, averaged over the layers, at the start and after --steps. Seeds give the run-to-run noise. The
end-to-end cost (stages 1-3, task accuracy) is recipes/gate_order_cost.sh's, a GPU-sized job.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch


def main():
    from mmmamba.convert import convert_to_mamba
    from mmmamba.data.conversations import collate
    from mmmamba.data.tokenizer import copy_tokenizer
    from mmmamba.distill.config import DistillConfig
    from mmmamba.distill.losses import layer_errors, teacher_layer_io
    from mmmamba.distill.prepare import prepare
    from mmmamba.distill.stages import STAGES, select_trainable
    from mmmamba.formats import load_checkpoint, save_checkpoint
    from mmmamba.training.optim import make_adamw, set_lr

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pool", type=int, default=8, help="training batches, cycled")
    p.add_argument("--lr-scale", type=float, default=10.0, help="scripts/main.sh's until 2026-12-02 (now 20)")
    args = p.parse_args()
    teacher = load_checkpoint(args.teacher).float().eval()
    stage = STAGES[1].with_options(lr_scale=args.lr_scale)
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:  # prepare() reads a student folder: the data and tokenizer
        folder = Path(tmp) / "student"
        save_checkpoint(convert_to_mamba(teacher, []), folder, extra=lambda d: copy_tokenizer(args.teacher, d))
        prep = prepare(args.teacher, folder, args.data, Path(tmp) / "run", DistillConfig(val_limit=64), progress=False)
    val = [(b, teacher_layer_io(teacher, b)) for b in prep.val[:2]]
    power = {
        i: statistics.mean(float(t.mixer_outputs[i].pow(2).mean()) for _, t in val) for i in range(len(teacher.layers))
    }
    for seed in args.seeds:
        gen = torch.Generator().manual_seed(seed)  # the same batches for both orders of a seed
        pool = []
        for _ in range(args.pool):
            idx = torch.randperm(len(prep.train), generator=gen)[: args.batch_size].tolist()
            batch = collate([prep.train[i] for i in idx], prep.tok.pad_id)
            pool.append((batch, teacher_layer_io(teacher, batch)))
        for order in ("norm-first", "gate-first"):
            torch.manual_seed(seed)  # the same seeded parameters for both orders
            student = convert_to_mamba(teacher, [], mamba={"gate_order": order, "conv_kernel": 2}).train()
            student.set_backends(ssd="torch")
            params = select_trainable(student, stage)
            opt = make_adamw(params, stage.optim)

            def rel_error(student=student) -> float:
                with torch.no_grad():
                    errs = [layer_errors(student, b, t) for b, t in val]
                return statistics.mean(float(sum(e[i] for e in errs) / len(errs)) / power[i] for i in errs[0])

            start = rel_error()
            for step in range(args.steps):
                batch, t = pool[step % len(pool)]
                set_lr(opt, step, args.steps, stage.optim)
                loss = torch.stack(list(layer_errors(student, batch, t).values())).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([q for _, q in params], stage.optim.clip)
                opt.step()
            end = rel_error()
            results.setdefault(order, []).append((start, end))
            print(f"seed {seed} {order:<10} relative stage-1 val error: start {start:.4f} -> {end:.4f}", flush=True)
    for order, rows in results.items():
        ends = [e for _, e in rows]
        spread = statistics.stdev(ends) if len(ends) > 1 else float("nan")
        print(f"{order:<10} after {args.steps} steps: mean {statistics.mean(ends):.4f}, sd {spread:.4f} over "
              f"{len(ends)} seeds")  # fmt: skip


if __name__ == "__main__":
    main()
