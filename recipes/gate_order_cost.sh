#!/usr/bin/env bash
# What gate-first costs against norm-first at the toy main job's budget (the settings of
# scripts/main.sh, repeated below) on a task-suite seed never tuned on, SEEDS repeats each for the noise.
#   OUT=runs/gate_order DATA_SEED=11 SEEDS="0 1" bash recipes/gate_order_cost.sh
# Each (order, seed) is one `python -m mmmamba.experiments.ablations` call (RUNS: linear and hybrid_every4) under OUT/ORDER-sSEED/;
# SEED is both the convert seed (the new parameters) and the distill seed (the data order). seed 0 with
# norm-first is exactly the main job's run on that suite. The summary lists each run's test accuracy,
# vs teacher, and its last stage-3 validation loss (KL to the teacher), then mean ± spread per order.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gate_order}
DATA_SEED=${DATA_SEED:-11}
SEEDS=${SEEDS:-"0 1"}
ORDERS=${ORDERS:-"norm-first gate-first"}
RUNS=${RUNS:-"linear hybrid_every4"}
TEACHER=${TEACHER:-models/tiny-teacher}
PY=${PY:-python}
# scripts/main.sh's settings (keep the two in step)
STEPS=${STEPS:-1600}
FAMILY_TRAIN=${FAMILY_TRAIN:-"--family-train position=2000 --family-train reverse=1500"}
ABLATION_ARGS=${ABLATION_ARGS:-"--batch-size 8 --lr-scale 20 --stage-shares 1,2,5 --eval-every 250"}
CONVERT_ARGS=${CONVERT_ARGS:-"--conv-kernel 4"}
DISTILL_ARGS=${DISTILL_ARGS:-"--pack"}
mkdir -p "$OUT"
# shellcheck disable=SC2086
[ -f "$OUT/suite/suite.json" ] || $PY -m mmmamba data make --out "$OUT/suite" --seed "$DATA_SEED" --train 500 --val 16 --test 50 $FAMILY_TRAIN
[ -f "$OUT/teacher_eval.json" ] || $PY -m mmmamba eval --model "$TEACHER" --data "$OUT/suite" --split test --json "$OUT/teacher_eval.json"
for seed in $SEEDS; do
  for order in $ORDERS; do
    # shellcheck disable=SC2086
    $PY -m mmmamba.experiments.ablations --teacher "$TEACHER" --data "$OUT/suite" --out "$OUT/$order-s$seed" \
      --runs $RUNS --total-steps "$STEPS" $ABLATION_ARGS \
      "--convert-args=$CONVERT_ARGS --gate-order $order --seed $seed" "--distill-args=$DISTILL_ARGS --seed $seed"
  done
done
$PY - "$OUT" <<'PY'
import json, statistics, sys
from collections import defaultdict
from pathlib import Path
out = Path(sys.argv[1])
teacher = json.loads((out / "teacher_eval.json").read_text())["mean_accuracy"]
print(f"teacher {teacher:.3f}")
groups = defaultdict(list)
for f in sorted(out.glob("*-s*/*/result.json")):
    r = json.loads(f.read_text())
    rows = [line.split(",") for line in (f.parent / "run/log.csv").read_text().splitlines()[1:]]
    val = [row for row in rows if row[0] == "3" and row[4]]
    kl = f"{float(val[-1][4]):.4f}" if val else "-"
    fam = r["per_family"]
    order = f.parent.parent.name.rsplit("-s", 1)[0]
    groups[order, r["name"]].append(r["mean_accuracy"] / teacher)
    print(f"{f.parent.parent.name:<16} {r['name']:<14} accuracy {r['mean_accuracy']:.3f}  vs teacher "
          f"{r['mean_accuracy'] / teacher:.3f}  position {fam['position']:.2f}  reverse {fam['reverse']:.2f}  "
          f"stage-3 val {kl}  {r['seconds']:.0f} s")
print("vs teacher, mean ± spread (half the range) over seeds:")
for (order, name), v in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    spread = (max(v) - min(v)) / 2
    sd = f"  sd {statistics.stdev(v):.3f}" if len(v) > 1 else ""
    print(f"  {name:<14} {order:<11} {statistics.mean(v):.3f} ± {spread:.3f}  (n = {len(v)}{sd})")
PY
