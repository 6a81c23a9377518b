"""Greedy answers of several models to the same prompts, side by side, as Markdown (one process, batched).

    python -m mmmamba.experiments.answer_prompts OUT.md NAME=MODEL_DIR [NAME=MODEL_DIR ...] < prompts.txt

One prompt a line on standard input; each model answers them all in one batch (bf16 on CUDA, float32
on CPU), with its own chat template, up to ``MAX_NEW`` (96) new tokens.
"""

from __future__ import annotations

import os
import sys

import torch

from ..data.tokenizer import load_tokenizer
from ..formats import load_checkpoint
from ..infer.self_distill import answer_prompts
from ..io import write_text_atomic


def main() -> None:
    out, models = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    answers: dict[str, list[str]] = {}
    for name, folder in models:
        model = load_checkpoint(folder).to(device, dtype).eval()
        tok = load_tokenizer(folder)
        got = answer_prompts(model, tok, prompts, int(os.environ.get("MAX_NEW", 96)), len(prompts), progress=False)
        answers[name] = [tok.decode(ids).strip() + ("" if ended else " …") for ids, ended in got]
        del model
    lines = []
    for i, prompt in enumerate(prompts):
        lines.append(f"### {prompt}\n")
        lines += [f"- **{name}**: {answers[name][i]}" for name, _ in models]
        lines.append("")
    write_text_atomic(out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
