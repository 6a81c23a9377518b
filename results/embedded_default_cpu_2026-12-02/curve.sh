#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/../.."; . .venv/bin/activate; export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for steps in 2000 2400; do
  taskset -c 1 python -m mmmamba.experiments.ablations --teacher models/tiny-teacher --data runs/gate_order_s11/suite \
    --out runs/curve_s11/steps$steps --runs linear --total-steps $steps --batch-size 8 --lr-scale 20 --stage-shares 1,2,5 \
    --eval-every 250 "--convert-args=--conv-kernel 4" "--distill-args=--pack" --teacher-eval runs/gate_order_s11/teacher_eval.json
done
