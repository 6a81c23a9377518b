#!/usr/bin/env bash
# The paper's tables at real depth. SmolLM2-135M-Instruct (30 layers, from its GGUF) becomes a decoder-only
# VLM (a Fuyu-style patch embedding in front of the LLM, `mmmamba teacher graft`), is trained on the task
# suite with text mixed in (`mmmamba teacher tune`: the patch embedding alone, then everything), and is
# then distilled into every row of `python -m mmmamba.experiments.ablations --grid deep` with the same
# budget: linear; 2, 4, 8 attention layers kept; six placements of 8; five stage sets; three inits.
# `mmmamba report` turns the runs into $R/RESULTS_deep.md and a chart, next to the paper's numbers.
#
#   GGUF=path/SmolLM2-135M-Instruct.Q4_1.gguf TEXT=runs/smol/text bash recipes/deep_vlm.sh
#   ... JOBS=2 RUNS="linear keep_autorel8" bash recipes/deep_vlm.sh      # a subset of the rows
#
# Needs: a CUDA GPU (an H200 holds 7 rows side by side at the defaults), python with mmmamba[gguf].
# TEXT: a `mmmamba data text` corpus built with the SmolLM2 tokenizer (e.g. recipes/debian_docs.py, or
# `mmmamba data text --inputs python3.11-doc/html`); it is mixed into the teacher's training and
# distillation, and its test split gives every model's text perplexity. DATA_SEED: the task suite's seed.
# Budget: EMBED_STEPS, TUNE_STEPS, TUNE_LR, TUNE_BATCH, TOTAL_STEPS (each distillation run; split 1:1:2 over
# the stages it runs), BATCH, JOBS (runs side by side on one GPU), SUITE (samples per family), FAMILY_TRAIN
# (another train size for a family: the teacher and every row train on it; val and test do not change),
# CONVERT_ARGS, DISTILL_FAMILY_TRAIN, RUNS (a subset). Resumable: finished steps are skipped.
# The defaults reproduce RESULTS.md §2 (one H200, 2026-11-29): teacher test 0.981, linear 0.938 of it,
# auto:8 0.985. How they were chosen: results/deep_h200_2026-11-29f/NOTES.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
R=${R:-runs/deep}
GGUF=${GGUF:?give GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf}
TEXT=${TEXT:?give TEXT=a mmmamba data text folder built with the SmolLM2 tokenizer}
DATA_SEED=${DATA_SEED:-2911}
# Defaults: run F in RESULTS.md (H200, 2026-11-29): teacher test 0.981; linear 0.938 of it, auto:8 0.985.
EMBED_STEPS=${EMBED_STEPS:-150}
TUNE_STEPS=${TUNE_STEPS:-1500}
TUNE_LR=${TUNE_LR:-3e-4}  # phase `all` (run C's pick on val); several, e.g. "1.5e-4 3e-4 6e-4": tuned side by side,
# the best on val kept (pick_teacher.py)
TOTAL_STEPS=${TOTAL_STEPS:-960}  # run E; every ratio rose from 240 to 480 steps in run D (RESULTS.md)
BATCH=${BATCH:-64}
TUNE_BATCH=${TUNE_BATCH:-128}  # task-suite samples a teacher step
TUNE_PACK=${TUNE_PACK:-1}  # `teacher tune --pack`: the same loss, 1.3-1.5x faster a step, 2x peak memory (§5h, §5i)
PACK_ARG=(); [ "$TUNE_PACK" != 1 ] || PACK_ARG=(--pack)
JOBS=${JOBS:-7}  # each row peaks near 17.5 GB at BATCH=64: 8 overfilled an H200 (two rows retried)
SSD=${SSD:-auto}
SUITE=${SUITE:-8000,40,100}  # task-suite samples per family: train, val, test
FAMILY_TRAIN=${FAMILY_TRAIN-reverse=32000}  # other train sizes: more distinct words of the hard family (run E:
# teacher reverse 0.64 -> 0.80); FAMILY_TRAIN= (empty) for runs A-D's uniform suite
DISTILL_FAMILY_TRAIN=${DISTILL_FAMILY_TRAIN-reverse=32000 position=32000}  # the rows' own train sizes (run F; the
# students' position column was 0.51-0.64 on the teacher's mix in run E): a second suite of the same seed (val and
# test the same bytes, so every score is on the same test split) that the rows distil on; the teacher's suite is
# untouched. Made beside the teacher's tune. "none" or empty: the teacher's suite.
[ "$DISTILL_FAMILY_TRAIN" != none ] || DISTILL_FAMILY_TRAIN=
ROW_SUITE=$R/suite
[ -z "$DISTILL_FAMILY_TRAIN" ] || ROW_SUITE=$R/suite_$(echo "$DISTILL_FAMILY_TRAIN" | tr ' =' '_-')
RUNS=${RUNS:-}  # a subset of the deep grid's runs (default: all)
STOP_AFTER=${STOP_AFTER:-}  # "teacher": stop once the teacher is tuned and scored
START_WITHIN=${START_WITHIN:-}  # seconds after the grid starts: no row starts later (a device budget)
TEXT_WINDOWS=${TEXT_WINDOWS:-200}
DISTILL_ARGS=${DISTILL_ARGS:-}  # more `mmmamba distill` flags for every row, e.g. "--ce-weight 1"
CONVERT_ARGS=${CONVERT_ARGS---conv-kernel 4}  # more `mmmamba convert` flags for every row (run F: a 4-tap conv, the
# paper's is 2; "--conv-kernel 2" for the paper's)
ABL=${ABL:-ablations}  # the rows' folder under $R; another ABL (with DISTILL_ARGS) is a second recipe beside it
TAG=${ABL#ablations}  # its report: RESULTS_deep$TAG.md, deep_chart$TAG.png, quality$TAG.json
if [ -n "$TAG" ] && [ "$TAG" = "$ABL" ]; then TAG=_$ABL; fi  # a name not starting with "ablations"
mm() { echo "+ mmmamba $*" >&2; "$PY" -m mmmamba "$@"; }
mkdir -p "$R"

[ -f "$R/llm/config.json" ] || mm import gguf "$GGUF" --out "$R/llm"
make_suite() {  # $1: the folder, $2: its other train sizes ("family=N ..."); val and test do not depend on $2
  local sizes=(); for f in $2; do sizes+=(--family-train "$f"); done
  mm data make --out "$1" --seed "$DATA_SEED" --train "${SUITE%%,*}" --val "$(echo "$SUITE" | cut -d, -f2)" \
    --test "${SUITE##*,}" "${sizes[@]}"
}
[ -f "$R/suite/suite.json" ] || make_suite "$R/suite" "$FAMILY_TRAIN"
rows_suite=
if [ "$ROW_SUITE" != "$R/suite" ] && [ ! -f "$ROW_SUITE/suite.json" ]; then
  make_suite "$ROW_SUITE" "$DISTILL_FAMILY_TRAIN" > "$ROW_SUITE.log" 2>&1 &
  rows_suite=$!
fi
[ -f "$R/vlm/config.json" ] || mm teacher graft --llm "$R/llm" --out "$R/vlm" --vision fuyu
tune() {  # $1: the rate of phase `all`, $2: the run folder
  mm teacher tune --init "$R/vlm" --data "$R/suite" --text "$TEXT" --out "$2" --embed-steps "$EMBED_STEPS" \
    --steps "$TUNE_STEPS" --batch-size "$TUNE_BATCH" --text-batch-size 8 --lr "$1" --eval-every "${TUNE_EVAL_EVERY:-250}" \
    "${PACK_ARG[@]}"
}
read -ra RATES <<< "$TUNE_LR"
if [ "${#RATES[@]}" -eq 1 ]; then
  [ -f "$R/teacher/teacher_report.json" ] || tune "${RATES[0]}" "$R/teacher"
elif [ ! -e "$R/teacher" ]; then  # several rates: tuned side by side, CPU threads split, the best on val kept
  threads=$(( $(nproc) / ${#RATES[@]} )); [ "$threads" -ge 1 ] || threads=1
  for lr in "${RATES[@]}"; do
    (OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads tune "$lr" "$R/teacher_lr$lr" > "$R/tune_lr$lr.log" 2>&1 \
      || echo "teacher tune at lr $lr failed: $R/tune_lr$lr.log" >&2) &
  done
  wait
  "$PY" -m mmmamba.teacher.pick --runs "$R"/teacher_lr* --out "$R/teacher_choice.json" --link "$R/teacher"
fi
[ -f "$R/teacher_eval.json" ] || mm eval --model "$R/teacher" --data "$R/suite" --split test --json "$R/teacher_eval.json" \
  --answers "$R/teacher_answers.jsonl"
[ -z "$rows_suite" ] || wait "$rows_suite" || { echo "the rows' suite failed: $ROW_SUITE.log" >&2; exit 1; }
[ "$STOP_AFTER" != teacher ] || exit 0

rc=0  # rows that failed every attempt: the report still covers the finished ones, then the exit says so
"$PY" -m mmmamba.experiments.ablations --grid deep --teacher "$R/teacher" --data "$ROW_SUITE" "$TEXT" --text "$TEXT" \
  --out "$R/$ABL" --total-steps "$TOTAL_STEPS" --batch-size "$BATCH" --lr-scale 3 --jobs "$JOBS" \
  --distill-args "--pack --micro-batch 32 --ssd-backend $SSD $DISTILL_ARGS" --convert-args "$CONVERT_ARGS" \
  --teacher-eval "$R/teacher_eval.json" \
  --text-windows "$TEXT_WINDOWS" ${RUNS:+--runs $RUNS} ${START_WITHIN:+--start-within $START_WITHIN} || rc=$?
mm report --runs "$R/$ABL"/*/result.json --teacher-eval "$R/teacher_eval.json" --out "$R/RESULTS_deep$TAG.md" \
  --chart "$R/deep_chart$TAG.png" --quality "$R/quality$TAG.json"
"$PY" - "$R/teacher/teacher_report.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"teacher: test accuracy {r['suite_test']['mean_accuracy']:.3f}, "
      f"text ppl {r['text_test_ppl_before']:.2f} -> {r['text_test_ppl_after']:.2f}")
PYEOF
exit $rc
