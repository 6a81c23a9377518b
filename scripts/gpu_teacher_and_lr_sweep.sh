#!/usr/bin/env bash
# Device call A: train the tiny teacher from scratch, evaluate it, then distil the linear and
# hybrid students at three learning-rate scales (4 runs in parallel on one GPU).
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}
rm -rf /tmp/tiny runs/sweep*
python3 -m mmmamba teacher train --preset tiny --data runs/suite --out /tmp/tiny --eval-every 3000
python3 -m mmmamba eval --model /tmp/tiny --data runs/suite --split test --json $OUT/tiny_test.json
mkdir -p $OUT/tiny && cp /tmp/tiny/{config.json,model.safetensors,tokenizer.json,train_log.csv} $OUT/tiny/
for s in 1 3 10; do
  python3 scripts/ablations.py --teacher /tmp/tiny --data runs/suite --out runs/sweep_lr$s --lr-scale $s \
    --runs linear hybrid_every4 --jobs 2 &
done
wait
tar czf $OUT/sweep.tgz runs/sweep_lr*/*/result.json runs/sweep_lr*/*/run/log.csv
