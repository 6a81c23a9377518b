"""One layer's SSD scan on the GPU: our PyTorch chunked scan vs fla's ``chunk_simple_gla``, forward
and forward + backward, and the decode step (our PyTorch step vs fla's ``fused_recurrent_simple_gla``).

Run on a GPU:
    mmmamba bench scan --contexts 8192 32768 103424 --json OUT.json
Shapes are one HoVLE-width Mamba-2 mixer (16 heads × head_dim 128, state 128), batch 1. CUDA-event
medians after warm-up; the floor is the bytes the scan must move (inputs, outputs) over the
measured copy bandwidth.
"""

from __future__ import annotations

import json
from functools import partial

import torch

from ..io import write_json_atomic
from ..ops import ssd_chunked_scan, ssd_step
from ..ops.ssd_fla import ssd_fla_scan
from .timing import cuda_time_ms, device_bandwidth
from .usage import bench_parser


def inputs(L: int, h: int, p: int, n: int, dtype=torch.float32, seed: int = 0, grad: bool = False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(1, L, h, p, device="cuda", dtype=dtype, generator=g)
    dt = torch.rand(1, L, h, device="cuda", dtype=dtype, generator=g) * 0.1 + 0.001
    A = -torch.rand(h, device="cuda", dtype=dtype, generator=g) - 0.5
    B = torch.randn(1, L, h, n, device="cuda", dtype=dtype, generator=g) / n**0.5
    C = torch.randn(1, L, h, n, device="cuda", dtype=dtype, generator=g) / n**0.5
    return [t.requires_grad_(grad) for t in (x, dt, A, B, C)]


def fwd_bwd(scan, args) -> None:
    y, s = scan(*args)
    (y.float().sum() + s.float().sum()).backward()


def main(argv=None) -> None:
    p = bench_parser("scan", __doc__)
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 103424], help="sequence lengths")
    p.add_argument("--heads", type=int, default=16, help="Mamba-2 heads")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension (= state size)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    h, hd = args.heads, args.head_dim
    bw = device_bandwidth()
    rows = []
    scans = {
        "torch_fp32": lambda *t: ssd_chunked_scan(*t, chunk_size=64),
        "fla_bf16": lambda *t: ssd_fla_scan(*t, compute_dtype=torch.bfloat16),
        "fla_fp32": lambda *t: ssd_fla_scan(*t),
    }
    for L in args.contexts:
        row = {"L": L}
        x = inputs(L, h, hd, hd)
        for name, scan in scans.items():
            row[f"{name}_fwd_ms"] = cuda_time_ms(partial(scan, *x), warmup=3, iters=10)
        if L <= 32768:  # the PyTorch backward at 103 K needs more memory than it is worth
            xg = inputs(L, h, hd, hd, grad=True)
            for name, scan in scans.items():
                row[f"{name}_fwd_bwd_ms"] = cuda_time_ms(partial(fwd_bwd, scan, xg), warmup=2, iters=5)
        moved = L * h * (3 * hd + 1) * 2 + L * h * hd * 2  # bf16 q, k, v, g in; y out
        row["floor_ms"] = moved / bw * 1e3
        rows.append(row)
        print(json.dumps(row), flush=True)
    # decode: one token's recurrent step for one layer
    from fla.ops.simple_gla import fused_recurrent_simple_gla

    g = torch.Generator(device="cuda").manual_seed(1)
    state = torch.randn(1, h, hd, hd, device="cuda", generator=g)
    xs, Bs, Cs = (torch.randn(1, h, hd, device="cuda", generator=g) for _ in range(3))
    dts = torch.rand(1, h, device="cuda", generator=g) * 0.1
    As = -torch.rand(h, device="cuda", generator=g)
    step_row = {"ours_step_ms": cuda_time_ms(partial(ssd_step, state, xs, dts, As, Bs, Cs), warmup=3, iters=50)}
    q, k, v = Cs[:, None], (Bs * dts[..., None])[:, None], xs[:, None]
    gl = (dts * As)[:, None]
    fused = partial(
        fused_recurrent_simple_gla, q, k, v, gl, scale=1.0, initial_state=state, output_final_state=True,
        state_v_first=True,
    )  # fmt: skip
    step_row["fla_fused_recurrent_ms"] = cuda_time_ms(fused, warmup=3, iters=50)
    y_ours, s_ours = ssd_step(state, xs, dts, As, Bs, Cs)
    y_fla, s_fla = fused()
    step_row["fla_vs_ours_max_abs"] = max(
        (y_ours - y_fla[:, 0]).abs().max().item(), (s_ours - s_fla).abs().max().item()
    )
    print(json.dumps(step_row), flush=True)
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s, {h} heads × {hd}")
    if args.json:
        result = {"device": torch.cuda.get_device_name(), "bandwidth": bw, "rows": rows, "step": step_row}
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
