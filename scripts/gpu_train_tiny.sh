#!/usr/bin/env bash
# Train the shipped tiny teacher on the GPU (device tool) and evaluate it on the test split.
# Usage (device machine, repo root, suite carried in runs/suite): bash scripts/gpu_train_tiny.sh
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}
python3 -m mmmamba teacher train --preset tiny --data runs/suite --out /tmp/tiny --eval-every 3000
python3 -m mmmamba eval --model /tmp/tiny --data runs/suite --split test --json $OUT/tiny_test.json
mkdir -p $OUT/tiny && cp /tmp/tiny/{config.json,model.safetensors,tokenizer.json,train_log.csv} $OUT/tiny/
