#!/usr/bin/env bash
# Device call: every RESULTS.md row on the shipped tiny teacher, many runs in parallel on one GPU.
# Main grid at --lr-scale 3; the headline rows also at lr-scale 1 and 10 (learning-rate check).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/out}
T=models/tiny-teacher; D=runs/suite; S=${TOTAL_STEPS:-2000}
timeout ${BUDGET_S:-540} python3 -m mmmamba.experiments.ablations --teacher $T --data $D --out runs/ablations --lr-scale 3 --total-steps $S --jobs 8 &
for s in 1 10; do
  timeout ${BUDGET_S:-540} python3 -m mmmamba.experiments.ablations --teacher $T --data $D --out runs/lr$s --lr-scale $s --total-steps $S --runs linear hybrid_every4 --jobs 2 &
done
wait
tar czf $OUT/ablations.tgz $(ls -d runs/ablations/*/result.json runs/lr*/*/result.json runs/*/*/run/log.csv runs/*/*/stdout.log 2>/dev/null)
