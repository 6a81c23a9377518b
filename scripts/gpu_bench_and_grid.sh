#!/usr/bin/env bash
# Device call: speed benchmark (mmmamba.bench.speed), then the ablation grid at --lr-scale 10.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}
t0=$(date +%s)
timeout 200 python3 -m mmmamba.bench.speed --layers 8 --contexts 4096 16384 32768 --json $OUT/bench.json 2>&1 | tee $OUT/bench.txt
left=$(( 570 - ($(date +%s) - t0) ))
OMP_NUM_THREADS=1 timeout $left python3 scripts/ablations.py --teacher models/tiny-teacher --data runs/suite \
  --out runs/ablations10 --lr-scale 10 --total-steps 2000 --jobs 8
tar czf $OUT/ablations10.tgz $(ls -d runs/ablations10/*/result.json runs/ablations10/*/run/log.csv runs/ablations10/*/run/loss.png 2>/dev/null)
