"""A teacher-tune training step with the output head over every position against over the predicting
positions only (``Decoder.forward(logits_at=...)``, ``training.losses.next_token_loss``), side by side.

The model is SmolLM2-135M's shape with a Fuyu front-end (random weights: speed does not depend on them);
a step is one `teacher tune` phase-`all` step: suite-like rows (a 32-pixel image = 16 patch tokens, a
question, a short answer; the answer tokens are the targets) plus 512-token text windows (every token a
target), bf16 autocast, AdamW. Timed with CUDA events after warm-up; prints one JSON line per variant
and the two losses (equal up to float rounding).

    python scripts/gpu_answer_logits.py                        # the H200 run in BENCHMARKS.md
    python scripts/gpu_answer_logits.py --steps 3 --warmup 3 --profile   # its profile (BENCHMARKS.md)
    python scripts/gpu_answer_logits.py --device cpu --layers 2 --hidden 64 --heads 4 --kv-heads 2 \\
        --mlp 128 --vocab 1000 --suite 8 --text 2 --text-len 64 --steps 2 --warmup 1   # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from ..bench.speed import add_shape_arguments, hovle_config
from ..models import Decoder, VisionConfig
from ..training.losses import masked_ce, next_token_loss
from ..training.optim import OptimConfig, make_adamw


def build(args) -> Decoder:
    """The speed benchmark's decoder shape (``bench.speed.hovle_config``) with a Fuyu front-end added."""
    shape = hovle_config(argparse.Namespace(**vars(args), ssd_backend="torch"), max_position=2048)
    vision = VisionConfig(image_size=32, patch_size=8, channels=3)
    torch.manual_seed(0)
    return Decoder(dataclasses.replace(shape, vision=vision, image_token_id=args.vocab - 1)).to(args.device)


def batches(args, vocab: int, image_id: int):
    """Suite-like rows (image, question, answer at the end) and text windows, with their target masks."""
    g = torch.Generator().manual_seed(1)
    L = 1 + 16 + args.question + args.answer
    ids = torch.randint(0, vocab - 1, (args.suite, L), generator=g)
    ids[:, 1:17] = image_id
    mask = torch.zeros(args.suite, L, dtype=torch.bool)
    mask[:, -args.answer :] = True
    pixels = torch.rand(args.suite, 3, 32, 32, generator=g)
    text = torch.randint(0, vocab - 1, (args.text, args.text_len), generator=g)
    d = args.device
    return (ids.to(d), pixels.to(d), mask.to(d)), (text.to(d), None, torch.ones_like(text, dtype=torch.bool).to(d))


def full_head(model, ids, pixels, mask):
    return masked_ce(model(ids, pixels).logits, ids, mask)


def answer_head(model, ids, pixels, mask):
    return next_token_loss(model, ids, pixels, mask)


def time_variant(model, opt, loss_fn, pieces, args) -> dict:
    cuda = args.device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def step() -> float:
        total = 0.0
        for weight, piece in zip((0.7, 0.3), pieces):
            with autocast:
                loss = weight * loss_fn(model, *piece)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    return time_steps(lambda i: step(), args)


def time_steps(step, args) -> dict:
    """``step(i)`` ``args.warmup`` times, then ``args.steps`` times timed (CUDA events on the GPU): ms a
    step and the peak GiB allocated while timed (None on the CPU)."""
    cuda = args.device.startswith("cuda")
    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if not cuda:
        return {"ms_per_step": round((time.perf_counter() - t0) * 1000 / args.steps, 2), "peak_gib": None}
    end.record()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"ms_per_step": round(start.elapsed_time(end) / args.steps, 2), "peak_gib": round(peak, 2)}


def step_arguments(doc: str) -> argparse.ArgumentParser:
    """The model shape (SmolLM2-135M's) and the step's make-up, shared with gpu_tune_step.py."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    add_shape_arguments(ap, layers=30, hidden=576, heads=9, kv_heads=3, mlp=1536, vocab=49155)
    ap.add_argument("--suite", type=int, default=128, help="suite rows a step")
    ap.add_argument("--question", type=int, default=14, help="question tokens a row (besides the image)")
    ap.add_argument("--answer", type=int, default=4, help="answer tokens a row (the targets)")
    ap.add_argument("--text", type=int, default=8, help="text windows a step")
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    return ap


def main() -> None:
    ap = step_arguments(__doc__)
    ap.add_argument("--profile", action="store_true", help="also profile the answer-head steps: top ops by device time")
    args = ap.parse_args()
    model = build(args)
    pieces = batches(args, args.vocab, model.config.image_token_id)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
        a, b = full_head(model, *pieces[0]).item(), answer_head(model, *pieces[0]).item()
    print(json.dumps({"suite_loss_full_head": a, "suite_loss_answer_head": b, "device": str(args.device)}))
    for name, fn in (("full head", full_head), ("answer head", answer_head), ("full head again", full_head)):
        opt = make_adamw(model.named_parameters(), OptimConfig(lr=1e-5))
        print(json.dumps({"variant": name, **time_variant(model, opt, fn, pieces, args)}), flush=True)
    if args.profile:  # is the step bound by the device or by the host launching its kernels?
        from torch.profiler import ProfilerActivity, profile

        opt = make_adamw(model.named_parameters(), OptimConfig(lr=1e-5))
        time_variant(model, opt, answer_head, pieces, args)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            time_variant(model, opt, answer_head, pieces, args)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
