"""`teacher tune` phase-`all` steps through the real code (``step_pieces``, ``piece_loss``), padded (a suite
piece and a text piece: two forwards and backwards) against packed (`--pack`: one row, one forward),
side by side: time a step (CUDA events after warm-up), peak memory, and the PyTorch operators a step
issues (the step is host-bound, BENCHMARKS §5g, so fewer operators should mean a shorter step).

Random weights in SmolLM2-135M's shape with a Fuyu front-end (``gpu_answer_logits.build``); suite-like
samples (a 32-pixel image, a question, a short answer) and 512-token text windows.

    python scripts/gpu_tune_step.py                                   # on the GPU
    python scripts/gpu_tune_step.py --device cpu --layers 2 --hidden 64 --heads 4 --kv-heads 2 --mlp 128 \\
        --vocab 1000 --suite 8 --text 2 --text-len 64 --steps 2 --warmup 1   # a quick check
"""

from __future__ import annotations

import dataclasses
import json

import torch
from torch.profiler import ProfilerActivity, profile

from ..data.conversations import Example
from ..teacher.vlm import TuneConfig, TuneData, TunePhase, piece_loss, step_pieces
from ..training.optim import OptimConfig, make_adamw
from .answer_logits import build, step_arguments, time_steps


def tune_data(args, image_id: int) -> TuneData:
    g = torch.Generator().manual_seed(1)
    suite = []
    for _ in range(4 * args.suite):
        q = int(torch.randint(args.question - 4, args.question + 5, (1,), generator=g))
        ids = [1] + [image_id] * 16 + torch.randint(2, args.vocab - 1, (q + args.answer,), generator=g).tolist()
        mask = [False] * (len(ids) - args.answer) + [True] * args.answer
        suite.append(Example(ids, mask, torch.rand(1, 3, 32, 32, generator=g)))
    text = [
        Example(torch.randint(2, args.vocab - 1, (args.text_len,), generator=g).tolist(), [True] * args.text_len, None)
        for _ in range(4 * args.text)
    ]
    return TuneData(suite, [], [], text, [], [])


def run(model, data: TuneData, cfg: TuneConfig, args) -> dict:
    phase = TunePhase("all", 10**6, "all", 1e-5, 0.3)
    opt = make_adamw(model.named_parameters(), OptimConfig(lr=1e-5))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda"))

    def step(i: int) -> None:
        for piece in step_pieces(data, phase, cfg, i, pad_id=0):
            with autocast:
                loss = piece_loss(model, piece.to(args.device))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    timed = time_steps(step, args)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(0)
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    return {**timed, "aten_ops_per_step": ops}


def main() -> None:
    args = step_arguments(__doc__).parse_args()  # question: the mean, ±4 a sample here
    model = build(args)
    data = tune_data(args, model.config.image_token_id)
    padded = TuneConfig(batch_size=args.suite, text_batch_size=args.text, text_weight=0.3, device=args.device)
    for name, cfg in (("padded", padded), ("packed", dataclasses.replace(padded, pack=True)), ("padded again", padded)):
        print(json.dumps({"variant": name, "device": args.device, **run(model, data, cfg, args)}), flush=True)


if __name__ == "__main__":
    main()
