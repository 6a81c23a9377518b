#!/usr/bin/env bash
# linear student of the main job's settings on a tuning suite, with extra distill flags; one core, one thread
# usage: run.sh SEED NAME CORE [distill flags...]
set -eu
cd "$(dirname "$0")/../.."; . .venv/bin/activate
seed=$1; name=$2; core=$3; shift 3
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
T=runs/tune3
S=$T/suite_s$seed
[ -f $S/suite.json ] || taskset -c $core mmmamba data make --out $S --seed $seed --train 500 --val 16 --test 50 \
  --family-train position=2000 --family-train reverse=1500 > /dev/null
[ -f $S/teacher_eval.json ] || taskset -c $core mmmamba eval --model models/tiny-teacher --data $S --split test --json $S/teacher_eval.json > /dev/null
taskset -c $core python -m mmmamba.experiments.ablations --teacher models/tiny-teacher --data $S --out $T/${name}_s$seed \
  --runs linear --total-steps 2000 --batch-size 8 --lr-scale 20 --stage-shares 1,2,5 --eval-every 250 \
  --convert-args="--conv-kernel 4" --distill-args="--pack $*" --teacher-eval $S/teacher_eval.json --jobs 1 > $T/${name}_s$seed.log 2>&1
