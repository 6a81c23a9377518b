"""The paper's result rows and ablations on one teacher: convert → distil → eval, one run per row.

    python scripts/ablations.py --teacher models/tiny-teacher --data runs/suite --out runs/ablations \
        --runs linear hybrid_every4 ... [--total-steps 4000] [--jobs 4]

Each run writes OUT/NAME/result.json (accuracy, per family, the equivalent CLI commands);
`mmmamba report --runs OUT/* --out RESULTS.md` turns them into tables and a chart.
Stage ablations keep the total number of optimizer steps equal: the steps are split over the
stages a row runs in the ratio 1 : 1 : 2 (stage 1 : stage 2 : stage 3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUNS = {
    # name: (group, --keep-attention, --init, stages)
    "linear": ("headline", "none", "mimic", (1, 2, 3)),
    "hybrid_every4": ("headline", "every:4", "mimic", (1, 2, 3)),
    "stages_1": ("stages", "none", "mimic", (1,)),
    "stages_2": ("stages", "none", "mimic", (2,)),
    "stages_3": ("stages", "none", "mimic", (3,)),
    "stages_12": ("stages", "none", "mimic", (1, 2)),
    "stages_13": ("stages", "none", "mimic", (1, 3)),
    "stages_23": ("stages", "none", "mimic", (2, 3)),
    "init_scratch": ("init", "none", "scratch", (1, 2, 3)),
    "init_inherit": ("init", "none", "inherit", (1, 2, 3)),
    "keep_every2": ("kept", "every:2", "mimic", (1, 2, 3)),
    "keep_head2": ("placement", "head:2", "mimic", (1, 2, 3)),
    "keep_tail2": ("placement", "tail:2", "mimic", (1, 2, 3)),
    "keep_tailinter2": ("placement", "TAIL_INTERLEAVED:2", "mimic", (1, 2, 3)),
    "keep_auto2": ("placement", "auto:2", "mimic", (1, 2, 3)),
    "keep_auto1": ("placement", "auto:1", "mimic", (1, 2, 3)),
}
WEIGHTS = {1: 1, 2: 1, 3: 2}


def resolve_keep(spec: str, num_layers: int) -> str:
    """tail-interleaved: the interleaved pattern anchored at the last layer (e.g. 1,3 of 4)."""
    if spec.startswith("TAIL_INTERLEAVED:"):
        k = int(spec.split(":")[1])
        stride = num_layers // k
        return ",".join(str(num_layers - 1 - stride * j) for j in reversed(range(k)))
    return spec


def split_steps(stages, total: int) -> list[int]:
    w = sum(WEIGHTS[s] for s in stages)
    return [total * WEIGHTS[s] // w for s in stages]


def run_one(name: str, args) -> dict:
    group, keep, init, stages = RUNS[name]
    out = Path(args.out) / name
    result_file = out / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    cfg = json.loads((Path(args.teacher) / "config.json").read_text())
    keep = resolve_keep(keep, cfg["num_layers"])
    steps = split_steps(stages, args.total_steps)
    mm = [sys.executable, "-m", "mmmamba"]
    commands = [
        ["convert", "--teacher", args.teacher, "--keep-attention", keep, "--init", init, "--out", f"{out}/student"],
        [
            "distill",
            "--teacher",
            args.teacher,
            "--student",
            f"{out}/student",
            "--data",
            args.data,
            "--out",
            f"{out}/run",
            "--stages",
            ",".join(map(str, stages)),
            "--steps-per-stage",
            ",".join(map(str, steps)),
            "--batch-size",
            str(args.batch_size),
            "--lr-scale",
            str(args.lr_scale),
            "--eval-every",
            str(args.eval_every),
        ],
        [
            "eval",
            "--model",
            f"{out}/run/after_stage{stages[-1]}",
            "--data",
            args.data,
            "--split",
            "test",
            "--json",
            f"{out}/eval.json",
        ],
    ]
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with (out / "stdout.log").open("w") as log:
        for c in commands:
            subprocess.run(
                mm + c,
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**__import__("os").environ, "TQDM_DISABLE": "1"},
            )
    report = json.loads((out / "eval.json").read_text())
    student_cfg = json.loads((out / "run" / f"after_stage{stages[-1]}" / "config.json").read_text())
    result = {
        "name": name,
        "group": group,
        "keep_attention": student_cfg["conversion"].get("keep_attention", []),
        "init": init,
        "stages": list(stages),
        "steps": steps,
        "seconds": round(time.time() - t0, 1),
        "commands": ["mmmamba " + " ".join(c) for c in commands],
        **report,
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name:<18} {report['mean_accuracy']:.3f}  ({result['seconds']:.0f} s)", flush=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--total-steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr-scale", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (small models leave a GPU idle)")
    p.add_argument("--teacher-eval", default=None, help="teacher's eval JSON: print a comparison table at the end")
    args = p.parse_args()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda n: run_one(n, args), args.runs))
    if args.teacher_eval:
        teacher = json.loads(Path(args.teacher_eval).read_text())
        rows = [{"name": "teacher", **teacher}, *results]
        families = list(teacher["per_family"])
        print(f"\n{'model':<16}{'mean':>7}{'vs teacher':>12}  " + " ".join(f"{f[:9]:>9}" for f in families))
        for r in rows:
            ratio = r["mean_accuracy"] / teacher["mean_accuracy"]
            print(
                f"{r['name']:<16}{r['mean_accuracy']:>7.3f}{ratio:>12.3f}  "
                + " ".join(f"{r['per_family'][f]:>9.2f}" for f in families)
            )


if __name__ == "__main__":
    main()
