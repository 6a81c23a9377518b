#!/usr/bin/env bash
# Train the tiny and small teacher presets on the GPU (device tool), evaluate on test.
# Usage (device machine, repo root, suite carried in runs/suite): bash scripts/gpu_train_teachers.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m mmmamba teacher train --preset tiny --data runs/suite --out /tmp/tiny --eval-every 1000
python3 -m mmmamba eval --model /tmp/tiny --data runs/suite --split test --json $OUT/tiny_test.json
mkdir -p $OUT/tiny && cp /tmp/tiny/{config.json,model.safetensors,tokenizer.json,train_log.csv} $OUT/tiny/
timeout 300 python3 -m mmmamba teacher train --preset small --data runs/suite --out /tmp/small --eval-every 1000 --steps ${SMALL_STEPS:-4000}
python3 -m mmmamba eval --model /tmp/small --data runs/suite --split test --json $OUT/small_test.json
cp /tmp/small/train_log.csv $OUT/small_train_log.csv
