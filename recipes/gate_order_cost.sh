#!/usr/bin/env bash
# What gate-first costs against norm-first (issue 28) at the toy main job's budget (scripts/main.sh:
# 600 steps, batch 16, lr-scale 10) on a task-suite seed never tuned on, SEEDS repeats each for the noise.
#   OUT=runs/gate_order DATA_SEED=7 SEEDS="0 1" bash recipes/gate_order_cost.sh
# Each (order, seed) is one `python -m mmmamba.experiments.ablations` call (RUNS: linear and hybrid_every4) under OUT/ORDER-sSEED/;
# the summary lists each run's test accuracy and its last stage-3 validation loss (KL to the teacher).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gate_order}
DATA_SEED=${DATA_SEED:-7}
SEEDS=${SEEDS:-"0 1"}
STEPS=${STEPS:-600}
RUNS=${RUNS:-"linear hybrid_every4"}
TEACHER=${TEACHER:-models/tiny-teacher}
PY=${PY:-python}
mkdir -p "$OUT"
[ -f "$OUT/suite/suite.json" ] || $PY -m mmmamba data make --out "$OUT/suite" --seed "$DATA_SEED" --train 500 --val 16 --test 50
[ -f "$OUT/teacher_eval.json" ] || $PY -m mmmamba eval --model "$TEACHER" --data "$OUT/suite" --split test --json "$OUT/teacher_eval.json"
for seed in $SEEDS; do
  for order in norm-first gate-first; do
    $PY -m mmmamba.experiments.ablations --teacher "$TEACHER" --data "$OUT/suite" --out "$OUT/$order-s$seed" \
      --runs $RUNS --total-steps "$STEPS" --batch-size 16 --lr-scale 10 --eval-every 100 \
      --convert-args "--gate-order $order --seed $seed" --distill-args "--seed $seed"
  done
done
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
teacher = json.loads((out / "teacher_eval.json").read_text())["mean_accuracy"]
print(f"teacher {teacher:.3f}")
for f in sorted(out.glob("*-s*/*/result.json")):
    r = json.loads(f.read_text())
    rows = [line.split(",") for line in (f.parent / "run/log.csv").read_text().splitlines()[1:]]
    val = [row for row in rows if row[0] == "3" and row[4]]
    kl = f"{float(val[-1][4]):.4f}" if val else "-"
    print(f"{f.parent.parent.name:<16} {r['name']:<14} accuracy {r['mean_accuracy']:.3f}  stage-3 val {kl}  "
          f"{r['seconds']:.0f} s")
PY
