"""Teacher-text throughput (``mmmamba data teacher-text``'s inner loop) at SmolLM2-135M's shape with random
weights: new tokens/s per batch size, through the same ``Writer`` (one cache, the static decode step
replayed from a CUDA graph, exact top-p). Prints one JSON object a line, then a summary.

    python recipes/bench_teacher_text.py                                   # one H200, ~2-4 min
    python recipes/bench_teacher_text.py --batch-sizes 2048 --samplers sorted,unsorted --sampler-only --logit-scale 8
    python recipes/bench_teacher_text.py --device cpu --decode eager --layers 2 --hidden 64 --heads 4 \\
        --kv-heads 2 --mlp 128 --vocab 256 --batch-sizes 4 --new-tokens 8   # a smoke test

Random weights give flatter next-token distributions than a trained model, so more rows overflow the
``--candidates`` pre-sort and are sorted in full: ``full_sort_rows`` reports the share, and
``--logit-scale`` sharpens the logits (a trained SmolLM2's top-p 0.95 nucleus is mostly under 1 K tokens).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmmamba.bench.speed import add_shape_arguments
from mmmamba.infer.teacher_text import TeacherTextConfig, Writer
from mmmamba.models import Decoder, DecoderConfig


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    add_shape_arguments(p, layers=30, hidden=576, heads=9, kv_heads=3, mlp=1536, vocab=49152)  # SmolLM2-135M's
    p.add_argument("--batch-sizes", default="256,512,1024,2048")
    p.add_argument("--prefix-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=192)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--candidates", type=int, default=1024)
    p.add_argument("--decode", default="auto", help="auto (graph on CUDA) | eager | graph | compile")
    p.add_argument("--logit-scale", type=float, default=1.0, help="multiply the output head (sharper logits)")
    p.add_argument("--batches", type=int, default=2, help="timed batches per size (after one untimed)")
    p.add_argument("--samplers", default="sorted", help="comma list of sorted | unsorted, each run through the Writer")
    p.add_argument("--sampler-only", action="store_true",
                   help="also time the samplers alone on the model's logits at each batch size (CUDA events; "
                        "unsorted also under torch.compile)")  # fmt: skip
    return p.parse_args()


def time_samplers(logits: torch.Tensor, top_p: float, candidates: int) -> dict:
    """ms per call of each sampler on the same (b, V) logits, after warm-up, timed with CUDA events."""
    from mmmamba.infer.sampling import nucleus_sample, nucleus_sample_unsorted

    u = torch.rand(logits.shape[0], device=logits.device, dtype=torch.float64)
    compiled = torch.compile(nucleus_sample_unsorted, dynamic=False)
    fns = {
        "sorted": lambda: nucleus_sample(logits, 1.0, top_p, u, candidates),
        "unsorted": lambda: nucleus_sample_unsorted(logits, 1.0, top_p, u),
        "unsorted_compiled": lambda: compiled(logits, 1.0, top_p, u),
    }
    out = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        warm_s = time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            fn()
        end.record()
        torch.cuda.synchronize()
        out[f"{name}_ms"] = round(start.elapsed_time(end) / 10, 3)
        out[f"{name}_warmup_s"] = round(warm_s, 1)
    return out


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads, intermediate_size=args.mlp,
        rope_theta=1e5, max_position=args.prefix_tokens + args.new_tokens + 8,
    )  # fmt: skip
    with torch.device(device):
        model = Decoder(cfg)
    model = model.to(torch.bfloat16 if cuda else torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(args.logit_scale)
    stop = args.vocab - 1
    rows = []
    runs = [(int(b), sampler) for b in args.batch_sizes.split(",") for sampler in args.samplers.split(",")]
    for b, sampler in runs:
        tc = TeacherTextConfig(prefix_tokens=args.prefix_tokens, new_tokens=args.new_tokens, batch_size=b,
                               top_p=args.top_p, candidates=args.candidates, decode=args.decode,
                               sampler=sampler)  # fmt: skip
        g = torch.Generator().manual_seed(b)
        prefixes = torch.randint(0, args.vocab - 1, (b, args.prefix_tokens), generator=g).tolist()
        t0 = time.perf_counter()
        try:
            writer = Writer(model, tc, args.prefix_tokens + args.new_tokens, (stop,), 0)
            writer.write(prefixes, 0)  # untimed: capture, allocation, first kernels
            if cuda:
                torch.cuda.synchronize()
            first = time.perf_counter() - t0
            t1, new = time.perf_counter(), 0
            for k in range(args.batches):
                new += sum(len(n) for n in writer.write(prefixes, k + 1))
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t1
            with torch.no_grad():  # how many rows the candidates pre-sort could not settle (at the prefix's end)
                logits = model(torch.tensor(prefixes[: min(b, 256)], device=device)).logits[:, -1].float()
                top = logits.softmax(-1).topk(min(args.candidates, args.vocab), -1).values.sum(-1)
            row = {"batch": b, "sampler": sampler, "decode": writer.step.mode, "first_batch_s": round(first, 2),
                   "new_tokens_per_s": round(new / seconds),
                   "ms_per_step": seconds / args.batches / args.new_tokens * 1e3,
                   "full_sort_rows": float((top < args.top_p).float().mean()),
                   "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}  # fmt: skip
            del writer
            if args.sampler_only and cuda and sampler == args.samplers.split(",")[0]:
                with torch.no_grad():
                    full = model(torch.tensor(prefixes, device=device)).logits[:, -1]  # (b, V), the model's dtype
                row |= time_samplers(full, args.top_p, args.candidates)
                del full
        except torch.OutOfMemoryError as e:
            row = {"batch": b, "error": f"out of memory: {e}"[:200]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if cuda:
            torch.cuda.empty_cache()
    best = max((r for r in rows if "new_tokens_per_s" in r), key=lambda r: r["new_tokens_per_s"], default=None)
    print(json.dumps({"summary": {"device": torch.cuda.get_device_name() if cuda else "cpu", "best": best,
                                  "target_new_tokens_per_s": 100_000}}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
