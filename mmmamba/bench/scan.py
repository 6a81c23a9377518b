"""One layer's SSD scan on the GPU: PyTorch chunked scan vs the fused Triton kernel.

Run on a GPU:
    python -m mmmamba.bench.scan --contexts 8192 32768 103424 --json OUT.json
Shapes are one HoVLE-width Mamba-2 mixer (16 heads × head_dim 128, state 128, float32 scan),
batch 1. Checks first (float64 sequential reference at 2 K tokens; Triton vs PyTorch at every
length), then CUDA-event medians after warm-up, a block/warp sweep, and the floors: bytes moved
over the measured copy bandwidth, and FLOPs.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch

from ..ops import ssd_chunked_scan, ssd_naive_scan
from ..ops.ssd_triton import ssd_triton_scan
from .timing import cuda_time_ms, device_bandwidth


def inputs(L: int, h: int, p: int, n: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(1, L, h, p, device="cuda", dtype=dtype, generator=g)
    dt = torch.rand(1, L, h, device="cuda", dtype=dtype, generator=g) * 0.1 + 0.001
    A = -torch.rand(h, device="cuda", dtype=dtype, generator=g) - 0.5
    B = torch.randn(1, L, h, n, device="cuda", dtype=dtype, generator=g) / n**0.5
    C = torch.randn(1, L, h, n, device="cuda", dtype=dtype, generator=g) / n**0.5
    D = torch.randn(h, device="cuda", dtype=dtype, generator=g)
    return x, dt, A, B, C, D


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def time_length(L: int, h: int, p: int, n: int, chunk: int, best: dict, bw: float) -> dict:
    """Agreement and CUDA-event times of both scans at one length, with the floors."""
    x = inputs(L, h, p, n)
    kernel = partial(ssd_triton_scan, *x, chunk_size=chunk, block_p=best["block_p"], num_warps=best["num_warps"])
    torch_scan = partial(ssd_chunked_scan, *x, chunk_size=chunk)
    (y_t, s_t), (y_k, s_k) = torch_scan(), kernel()
    row = {"L": L, "triton_vs_torch_rel_err": max(rel_err(y_k, y_t), rel_err(s_k, s_t))}
    del y_t, s_t, y_k, s_k
    row["torch_ms"] = cuda_time_ms(torch_scan, iters=5)
    for prec in ("ieee", "tf32"):
        row[f"triton_{prec}_ms"] = cuda_time_ms(partial(kernel, precision=prec))
    nbytes = 4 * L * h * (2 * p + 2 * n + 1)  # read x, B, C, Δ; write y (float32)
    flops = L * h * (2 * chunk * (n + p) + 4 * n * p)
    row["floor_bytes_ms"] = nbytes / bw * 1e3
    for prec in ("ieee", "tf32"):
        row[f"triton_{prec}_TFLOPs"] = flops / (row[f"triton_{prec}_ms"] / 1e3) / 1e12
        row[f"speedup_{prec}"] = row["torch_ms"] / row[f"triton_{prec}_ms"]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 103424])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    h, p, n = args.heads, args.head_dim, args.head_dim
    bw = device_bandwidth()
    out = {"device": torch.cuda.get_device_name(), "bandwidth_TBps": bw / 1e12, "checks": {}, "rows": [], "sweep": []}
    print(f"{out['device']}: copy bandwidth {bw / 1e12:.2f} TB/s; scan 1 × L × {h} heads × {p}, state {n}")

    ref_in = inputs(2048, h, p, n, torch.float64, seed=1)
    y_ref, s_ref = ssd_naive_scan(*ref_in)
    f32 = [t.float() for t in ref_in]
    for name, fn in {
        "torch_chunked": lambda: ssd_chunked_scan(*f32, chunk_size=args.chunk),
        "triton_ieee": lambda: ssd_triton_scan(*f32, chunk_size=args.chunk),
        "triton_tf32": lambda: ssd_triton_scan(*f32, chunk_size=args.chunk, precision="tf32"),
    }.items():
        y, s = fn()
        out["checks"][name] = {"y_rel_err_vs_f64": rel_err(y, y_ref), "state_rel_err_vs_f64": rel_err(s, s_ref)}
    print("vs float64 sequential reference (L=2048):", json.dumps(out["checks"]))

    L = args.contexts[len(args.contexts) // 2]
    tensors = inputs(L, h, p, n)
    for block_p in (32, 64, 128):
        for warps in (4, 8):
            run = partial(ssd_triton_scan, *tensors, chunk_size=args.chunk, block_p=block_p, num_warps=warps)
            try:
                ms = cuda_time_ms(run)
            except Exception as e:  # noqa: BLE001 - a config may not fit in shared memory / registers
                ms = float("nan")
                print(f"  block_p {block_p} warps {warps}: failed ({e.__class__.__name__})")
            out["sweep"].append({"L": L, "block_p": block_p, "num_warps": warps, "ms": ms})
            print(f"  sweep L={L} block_p={block_p} warps={warps}: {ms:.3f} ms")
    del tensors
    best = min((r for r in out["sweep"] if r["ms"] == r["ms"]), key=lambda r: r["ms"])
    for L in args.contexts:
        out["rows"].append(time_length(L, h, p, n, args.chunk, best, bw))
        print(json.dumps(out["rows"][-1]))
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
