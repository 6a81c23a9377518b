"""One Mamba-2 layer's decode step after its in-projection: the PyTorch ops against the fused Triton kernel
(``ops.mamba_step``), each replayed from a CUDA graph, and the whole mixer step (in-projection included) both
ways; with the bytes a step must move and the bandwidth that makes.

Run on a GPU:
    mmmamba bench decode --batch 1 8 64 256 --json OUT.json
Shapes are one HoVLE-width Mamba-2 mixer (hidden 2048, 16 query and 8 KV heads of 128), bf16, conv kernel 2.
CUDA-event medians of 20 graph replays after warm-up, each replay 20 steps. The kernel's tile settings
(``block_heads``, ``num_warps``) are swept beside its default.
"""

from __future__ import annotations

import json
from functools import partial

import torch

from ..io import write_json_atomic
from ..layers import Mamba2Config, Mamba2Mixer
from ..ops.mamba_step import mamba2_decode_step_reference, mamba2_decode_step_triton
from .timing import cuda_time_ms, device_bandwidth
from .usage import bench_parser

TILES = ((None, None), (1, 8), (1, 16), (2, 16), (2, 32))  # (block_heads, num_warps); None: the kernel's default


def mamba_step_inputs(b, h, kvh, hd, k, dtype, qk=False, use_D=False, seed=0):
    """(states and parameters, a function making one token's xBC, dt_in, gate) of the Mamba-2 decode step, on
    CUDA; the SSM state is float32."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, device="cuda", generator=g)  # noqa: E731
    cd = (2 * kvh + h) * hd
    s = dict(
        conv_state=r(b, k - 1, cd).to(dtype), conv_weight=(r(cd, k) / k**0.5).to(dtype),
        conv_bias=(r(cd) * 0.1).to(dtype), dt_bias=(r(h) * 0.5 - 3).to(dtype), A_log=(r(h) * 0.5).to(dtype),
        D=r(h).to(dtype) if use_D else None, ssm_state=torch.empty(b, h, hd, hd, device="cuda"),
        norm_weight=(1 + 0.1 * r(hd)).to(dtype), q_norm=(1 + 0.1 * r(hd)).to(dtype) if qk else None,
        k_norm=(1 + 0.1 * r(hd)).to(dtype) if qk else None,
    )  # fmt: skip
    for row in range(b):  # a row at a time: no temporary of a large state
        s["ssm_state"][row].normal_(0, 0.1, generator=g)

    def token():
        return r(b, cd).to(dtype), (r(b, h) * 0.5).to(dtype), r(b, h * hd).to(dtype)

    return s, token


def graph_us(fn, reps: int = 20) -> float:
    """Microseconds a call of ``fn`` takes, replayed from a CUDA graph of ``reps`` calls (median of 20 replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return cuda_time_ms(graph.replay, warmup=3, iters=20) * 1e3 / reps


def measure(mixer: Mamba2Mixer, b: int) -> dict:
    """One batch size's row: µs per layer for the PyTorch ops, each kernel tile setting and the whole step."""
    cfg = mixer.cfg
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    s, token = mamba_step_inputs(b, h, kvh, hd, cfg.conv_kernel, torch.bfloat16, seed=b)
    xBC, dt_in, gate = token()
    kw = dict(num_heads=h, num_kv_heads=kvh, head_dim=hd)
    states = 2 * s["ssm_state"].numel() * 4 + 2 * s["conv_state"].numel() * 2  # read and written
    moved = states + (xBC.numel() + 2 * gate.numel()) * 2  # + inputs read, output written
    row = {
        "batch": b,
        "bytes_moved": moved,
        "torch_us": graph_us(lambda: mamba2_decode_step_reference(xBC, dt_in, gate, **s, **kw)),
    }
    for hb, warps in TILES:
        fused = partial(mamba2_decode_step_triton, xBC, dt_in, gate, **s, **kw, block_heads=hb, num_warps=warps)
        row[f"fused_hb{hb or 'auto'}_w{warps or 'auto'}_us"] = graph_us(fused)
    u = torch.randn(b, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    cache = mixer.make_cache(b, 0, torch.bfloat16, "cuda")
    for backend in ("torch", "triton"):  # the mixer's whole step: in-projection GEMV + the rest, no o_proj
        cfg.decode_backend = backend
        row[f"mixer_step_{backend}_us"] = graph_us(lambda: mixer.step(u, cache))
    return row


def main(argv=None) -> None:
    p = bench_parser("decode", __doc__)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 256], help="rows decoded at once")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    torch.manual_seed(7)
    mixer = Mamba2Mixer(Mamba2Config(2048, 16, 8, 128)).cuda().to(torch.bfloat16).eval()
    mixer.fuse_projections()
    rows = []
    with torch.no_grad():
        for b in args.batch:
            row = measure(mixer, b)
            rows.append(row)
            fused = ", ".join(f"{k[6:-3]} {v:.1f}" for k, v in row.items() if k.startswith("fused_"))
            gbs = row["bytes_moved"] / row["fused_hbauto_wauto_us"] / 1e3
            print(f"b{b}: torch {row['torch_us']:.1f} us; fused {fused} us (default {gbs:.0f} GB/s); whole mixer "
                  f"step torch {row['mixer_step_torch_us']:.1f} us, triton {row['mixer_step_triton_us']:.1f} us; "
                  f"{row['bytes_moved'] / 1e6:.2f} MB moved after the GEMV", flush=True)  # fmt: skip
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
    bw = device_bandwidth()
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s")
    if args.json:
        write_json_atomic(args.json, {"device": torch.cuda.get_device_name(), "bandwidth": bw, "rows": rows})


if __name__ == "__main__":
    main()
