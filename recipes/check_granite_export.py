"""transformers serves a real exported student: logits, greedy text and cached generation against ours.

    python recipes/check_granite_export.py --model STUDENT [STUDENT ...] --work /tmp/granite [--json report.json]

For each gate-first text student (a real one, e.g. a SmolLM2 student from recipes/smollm2.sh):
1. ``mmmamba export --format granite-hybrid --model STUDENT --out WORK/NAME-granite``;
2. ``transformers.GraniteMoeHybridForCausalLM.from_pretrained`` loads the folder (no remote code), float32;
3. on 20 prompts made with the student's own tokenizer: next-token logits (max |Δ| over the largest
   logit's magnitude), 16 greedy tokens from ``generate`` with transformers' cache (none for an all-Mamba
   student, whose export says ``use_cache: false``: transformers 5.24 cannot cache one) against our static
   decode. Targets (the CI tests' on tiny random students): logits within 1e-4, greedy tokens equal.

Runs on the CPU or, with ``--device cuda``, on a GPU (float32 either way). Exit code 0 when every
student passes. Needs transformers ≥ 5.23: earlier versions normalise the gated norm over all heads at once
(``mamba_n_groups`` ignored; exit 2 here), which moved a distilled SmolLM2 hybrid's logits by 0.75 of the
largest under 5.17.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROMPTS = [
    "The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3, 4,", "The quick brown fox",
    "In 1492, Columbus", "Water boils at", "import numpy as np\n", "Dear Sir or Madam,", "The mitochondria is",
    "SELECT * FROM", "To be or not to be", "Hello, my name is", "The square root of 16 is", "Mamba is a",
    "Paris, London, Berlin,", "A B C D E", "Translate to German: cat", "Q: What is 2+2?\nA:", "The end.",
]  # fmt: skip


GROUPED_NORM = (5, 23)  # the first transformers whose GraniteMoeHybridRMSNormGated reads mamba_n_groups


def check(student: Path, work: Path, device: str, new_tokens: int) -> dict:
    import torch
    import transformers

    from mmmamba.data.tokenizer import load_tokenizer
    from mmmamba.formats import load_checkpoint
    from mmmamba.infer import generate

    export = work / f"{student.name}-granite"
    if not (export / "config.json").is_file():
        cmd = [sys.executable, "-m", "mmmamba", "export", "--format", "granite-hybrid", "--model", str(student),
               "--out", str(export)]  # fmt: skip
        subprocess.run(cmd, check=True)
    tok = load_tokenizer(student)
    prompts = [tok.encode_text(p) for p in PROMPTS]
    ours = load_checkpoint(student).float().eval().to(device)
    theirs = transformers.GraniteMoeHybridForCausalLM.from_pretrained(export, torch_dtype=torch.float32)
    theirs = theirs.eval().to(device)
    worst, equal = 0.0, 0
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            a, b = ours(ids).logits[0, -1], theirs(ids).logits[0, -1]
            worst = max(worst, float((a - b).abs().max() / a.abs().max()))
            mine = generate(ours, [p], max_new_tokens=new_tokens, decode="eager")[0]
            # the export's own use_cache: off for an all-Mamba student (transformers 5.24 cannot cache one)
            hf = theirs.generate(ids, max_new_tokens=new_tokens, do_sample=False, use_cache=theirs.config.use_cache,
                                 pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()  # fmt: skip
            equal += mine[: len(hf)] == hf
    passed = worst <= 1e-4 and equal == len(prompts)
    row = {"model": str(student), "export": str(export), "device": device, "max_logit_error_rel": worst,
           "greedy_equal": f"{equal}/{len(prompts)}", "new_tokens": new_tokens, "hf_cache": theirs.config.use_cache,
           "pass": passed}  # fmt: skip
    cache = "with" if theirs.config.use_cache else "without"
    verdict = "PASS" if passed else "FAIL"
    print(f"{student}: logits max |Δ| / max |logit| = {worst:.2e}; greedy {new_tokens} tokens (transformers {cache} "
          f"its cache vs our decode) equal on {equal}/{len(prompts)} -> {verdict}", flush=True)  # fmt: skip
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", required=True, help="gate-first text student checkpoint folders")
    p.add_argument("--work", required=True, help="folder for the exported copies")
    p.add_argument("--device", default="cpu")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args()
    import transformers
    from packaging.version import Version  # transformers' own dependency

    if Version(transformers.__version__).release[:2] < GROUPED_NORM:  # release: 5.23.0.dev0 → (5, 23, 0)
        print(f"transformers {transformers.__version__} normalises a GraniteMoeHybrid's gated norm over all heads at "
              f"once (mamba_n_groups ignored), so it cannot run our per-head students; pip install "
              f"'transformers>={GROUPED_NORM[0]}.{GROUPED_NORM[1]}'", file=sys.stderr)  # fmt: skip
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [check(Path(m), work, args.device, args.new_tokens) for m in args.model]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
