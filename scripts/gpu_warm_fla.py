"""Pay fla's first-use Triton autotuning once per GPU kind, in parallel, and time it (run on the device).

    python scripts/gpu_warm_fla.py VARIANT      # one of VARIANTS below; the shell starts several at once

fla autotunes every kernel the first time it sees a new key: the dtypes of all its tensor arguments
and block sizes that follow the head dims. For ``chunk_gla``'s backward that is minutes of Triton
compilation per key on an H100/H200. With ``FLA_CACHE_RESULTS=1`` (fla's default) the chosen configs
are stored in ``TRITON_CACHE_DIR``; keep that folder and later runs skip the search.

The model variants run a real ``Mamba2Mixer`` exactly as mmmamba calls it, so their keys are the ones
a run meets: training = fp32 weights under bf16 autocast, forward and backward, padded or packed
(``distill --pack``); inference = prefill, then a chunk continuing from the carried state, in bf16
(``generate``, ``data self-distill``) or fp32 (``eval``). The ``check_*`` variants warm the raw-scan
shapes of ``scripts/gpu_check_kernels.py``. (2026-11-29, H200: warming the raw scan in bf16 did not
cover training, whose inputs reached fla in fp32 then; the first distillation step still took 100–144 s.)
"""

from __future__ import annotations

import sys
import time

import torch
from gpu_check_kernels import scan_inputs  # this folder is on sys.path when run as a script

from mmmamba.layers import Mamba2Mixer
from mmmamba.layers.mamba2 import Mamba2Config, Mamba2State
from mmmamba.ops.ssd_fla import ssd_fla_scan

SMOLLM2 = dict(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64)
HOVLE = dict(hidden_size=2048, num_heads=16, num_kv_heads=8, head_dim=128)
# name: (mixer shape, "train" | "infer", packed rows?, inference dtype)
MODEL_VARIANTS = {
    "train64": (SMOLLM2, "train", False, None),
    "train64_packed": (SMOLLM2, "train", True, None),
    "train128": (HOVLE, "train", False, None),
    "train128_packed": (HOVLE, "train", True, None),
    "infer64": (SMOLLM2, "infer", False, torch.bfloat16),
    "infer64_fp32": (SMOLLM2, "infer", False, torch.float32),
    "infer128": (HOVLE, "infer", False, torch.bfloat16),
    "infer128_fp32": (HOVLE, "infer", False, torch.float32),
}
# raw scan: (heads, head_dim p, state n, length), gradients and an initial state
CHECK_VARIANTS = {"check_short": (16, 128, 128, 1), "check_long": (16, 128, 128, 63)}
VARIANTS = [*MODEL_VARIANTS, *CHECK_VARIANTS]


def run_mixer(variant: str) -> None:
    shape, kind, packed, dtype = MODEL_VARIANTS[variant]
    mixer = Mamba2Mixer(Mamba2Config(**shape, ssd_backend="fla")).cuda()
    L = 512
    if kind == "train":
        u = torch.randn(1 if packed else 2, L, shape["hidden_size"], device="cuda", requires_grad=True)
        cu = torch.tensor([0, L // 3, L], device="cuda", dtype=torch.int32) if packed else None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = mixer.mix(u, None, None, None, cu_seqlens=cu)
        y.float().sum().backward()
    else:
        mixer = mixer.to(dtype)
        state = Mamba2State(1, mixer.cfg, dtype, "cuda")
        with torch.no_grad():
            for length in (333, 77):  # prefill, then a chunk from the carried state
                mixer.mix(torch.randn(1, length, shape["hidden_size"], device="cuda", dtype=dtype), None, None, state)


def run_check(variant: str) -> None:
    h, p, n, L = CHECK_VARIANTS[variant]
    x, dt, A, B, C, s0 = scan_inputs(2, L, h, p, n)
    ins = [t.requires_grad_() for t in (x, dt, A, B, C)]
    y, s = ssd_fla_scan(*ins, None, s0, compute_dtype=torch.bfloat16)
    (y.float().sum() + s.float().sum()).backward()


def run(variant: str) -> float:
    start = time.perf_counter()
    (run_mixer if variant in MODEL_VARIANTS else run_check)(variant)
    torch.cuda.synchronize()
    return time.perf_counter() - start


if __name__ == "__main__":
    name = sys.argv[1]
    if name not in VARIANTS:
        sys.exit(f"unknown variant {name!r}; use one of {', '.join(VARIANTS)}")
    first = run(name)
    again = run(name)
    print(f"{name}: first call {first:.1f} s (autotune + compile), second {again * 1e3:.1f} ms", flush=True)
