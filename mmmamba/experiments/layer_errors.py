"""What does auto:K's ranking follow? Each Mamba-2 layer's stage-1/2 error beside the size of what it fits.

    python -m mmmamba.experiments.layer_errors --teacher runs/smol/teacher --student RUN/after_stage1 \
        --data runs/smol/text --k 8

auto:K (mmmamba/distill/auto_keep.py) keeps as attention the K layers with the largest stage-2
validation error: the MSE of each mixer's output to its teacher attention layer's output. This prints,
per layer and averaged over the first validation batches of ``--data``: the teacher output's mean
square, that MSE, and their ratio (the relative error), then the top K by each, so that one can see
whether the ranking follows the fit or the size of the layer's output (RESULTS.md §2).
Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..distill.auto_keep import layer_fit
from ..distill.config import DistillConfig
from ..distill.prepare import prepare


def top(scores: dict[int, float], k: int) -> list[int]:
    return sorted(sorted(scores, key=lambda i: -scores[i])[:k])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True, help="a converted student, e.g. a run's after_stage1/ or after_stage2/")
    p.add_argument("--data", required=True)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    cfg = DistillConfig(batch_size=args.batch_size, val_limit=args.batches * args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare(args.teacher, args.student, args.data, Path(tmp) / "run", cfg, progress=False)
    student = prep.student.eval()
    student.set_backends(ssd="torch")
    mse, power = layer_fit(prep.teacher, student, prep.val[: args.batches])  # what auto:K computes
    relative = {i: mse[i] / power[i] for i in mse}
    print(f"{'layer':>5} {'output mean square':>19} {'MSE':>9} {'relative':>9}")
    for i in sorted(mse):
        print(f"{i:>5} {power[i]:>19.4f} {mse[i]:>9.4f} {relative[i]:>9.3f}")
    print(f"top {args.k} by MSE (auto:{args.k}): {top(mse, args.k)}")
    print(f"top {args.k} by output mean square: {top(power, args.k)}")
    print(f"top {args.k} by relative error: {top(relative, args.k)}")


if __name__ == "__main__":
    main()
