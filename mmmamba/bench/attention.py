"""One layer's prefill attention over a long prompt: whole-sequence causal SDPA against chunked prefill.

Chunked prefill attends each chunk to the cached past and causally to itself (``ops.prefill_attention``),
for every backend that applies, at several chunk sizes; milliseconds for the whole prompt (CUDA events,
median after warm-up) and the rate in TFLOP/s of causal attention's useful work (4·h·d·T²/2). Run on a GPU:

    mmmamba bench attention --tokens 103424 --chunks 8192 16384
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..ops.prefill_attention import prefill_attention
from .timing import cuda_time_ms
from .usage import bench_parser


def chunked(q, k, v, chunk: int, backend: str) -> None:
    T = q.shape[2]
    for s in range(0, T, chunk):
        e = min(T, s + chunk)
        prefill_attention(q[:, :, s:e], k[:, :, :s], v[:, :, :s], k[:, :, s:e], v[:, :, s:e], None, backend)


def main(argv=None) -> None:
    p = bench_parser("attention", __doc__)
    p.add_argument("--tokens", type=int, default=103424)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--chunks", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--backends", nargs="+", default=["flash", "cudnn"], choices=["flash", "cudnn"])
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    T, h, kvh, d = args.tokens, args.heads, args.kv_heads, args.head_dim
    q = torch.randn(1, h, T, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, kvh, T, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    flops = 4 * h * d * T * T / 2
    runs = {"whole causal SDPA": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)}
    for backend in args.backends:
        for chunk in args.chunks:
            runs[f"chunks of {chunk}, {backend}"] = lambda c=chunk, b=backend: chunked(q, k, v, c, b)
    rows = []
    for name, fn in runs.items():
        try:
            ms = cuda_time_ms(fn, warmup=2, iters=5)
            rows.append({"run": name, "ms": round(ms, 2), "tflops": round(flops / ms / 1e9, 1)})
        except RuntimeError as e:
            rows.append({"run": name, "error": str(e)[:200]})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "tokens": T, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
