#!/usr/bin/env bash
# usage: [RUNS=linear] bash results/embedded_default_cpu_2026-12-02/run.sh NAME DATASEED "DATA_MAKE_EXTRA" ABLATION_ARGS...
# (pinned to core 1, one thread; suite under runs/tune/, rows under runs/tune/NAME/)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
NAME=$1; DS=$2; DMX=$3; shift 3
SUITE=runs/tune/suite_s${DS}${DMX:+_$(echo "$DMX" | tr -c 'a-zA-Z0-9' '_')}
start=$(date +%s)
[ -f "$SUITE/suite.json" ] || taskset -c 1 mmmamba data make --out "$SUITE" --seed "$DS" --train 500 --val 16 --test 50 $DMX
[ -f "$SUITE/teacher_eval.json" ] || taskset -c 1 mmmamba eval --model models/tiny-teacher --data "$SUITE" --split test --json "$SUITE/teacher_eval.json"
t1=$(date +%s)
taskset -c 1 python -m mmmamba.experiments.ablations --teacher models/tiny-teacher --data "$SUITE" --out runs/tune/$NAME \
  --runs ${RUNS:-linear hybrid_every4} --eval-every 100 --teacher-eval "$SUITE/teacher_eval.json" "$@" > runs/tune/$NAME.log 2>&1
t2=$(date +%s)
echo "$NAME suite=$SUITE prep=$((t1-start))s ablations=$((t2-t1))s args: $*" >> runs/tune/$NAME.log
tail -20 runs/tune/$NAME.log
