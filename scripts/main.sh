#!/usr/bin/env bash
# The main job on the embedded default teacher (models/tiny-teacher), CPU-sized budget:
#   set-up → task suite → convert (linear, hybrid every:4) → distil stages 1-3 → eval → chat on an image.
# The full-budget runs behind RESULTS.md §1 are the commands given there (same code, more steps); other
# recipes are in recipes/. How these defaults were chosen: results/embedded_default_cpu_2026-12-02/
# and results/embedded_default_cpu_2026-12-03/ (stage 3 trains the MLPs too, with cross-entropy on answers).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -e ".[data]"
. .venv/bin/activate
OUT=${OUT:-runs/main}
STEPS=${STEPS:-1800}
mkdir -p "$OUT"
stage() { echo; echo "== [$1/4] $2 ($(( $(date +%s) - start )) s so far)"; }
stage 1 "task suite -> $OUT/suite"
[ -f "$OUT/suite/suite.json" ] || mmmamba data make --out "$OUT/suite" --seed 0 --train 500 --val 16 --test 50 \
  --family-train position=2000 --family-train reverse=1500
stage 2 "the teacher's test accuracy"
mmmamba eval --model models/tiny-teacher --data "$OUT/suite" --split test --json "$OUT/teacher_eval.json"
stage 3 "convert and distil linear and hybrid (progress below; each run's log: $OUT/runs/NAME/stdout.log)"
python -m mmmamba.experiments.ablations --teacher models/tiny-teacher --data "$OUT/suite" --out "$OUT/runs" \
  --runs linear hybrid_every4 --total-steps "$STEPS" --batch-size 8 --lr-scale 20 --stage-shares 1,2,5 --eval-every 250 \
  --convert-args="--conv-kernel 4" --distill-args="--pack --train-mlp --ce-weight 0.5" \
  --teacher-eval "$OUT/teacher_eval.json" --jobs 2 --progress
stage 4 "answers on one test image"
img="$OUT/suite/images/test/test-shape-00000-0.png"
q=$(python -c "import json
for line in open('$OUT/suite/test.jsonl'):
    r = json.loads(line)
    if r['id'] == 'test-shape-00000':
        print(r['conversations'][0]['value'].split(chr(10), 1)[1])")
for m in models/tiny-teacher "$OUT/runs/linear/run/after_stage3" "$OUT/runs/hybrid_every4/run/after_stage3"; do
  echo "[$m] image $img, you: $q"
  echo -n "  answer: "; mmmamba generate --model "$m" --image "$img" --prompt "$q" --max-new-tokens 16
done
echo "main job took $(( $(date +%s) - start )) s"
