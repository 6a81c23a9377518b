"""The fused Triton SSD kernel answers to the float64 sequential reference (CPU: TRITON_INTERPRET=1)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported
triton = pytest.importorskip("triton", reason="triton is a test dependency (pip install -e .[test])")

from mmmamba.ops import ssd_naive_scan, ssd_scan  # noqa: E402
from mmmamba.ops.ssd import pick_backend  # noqa: E402
from mmmamba.ops.ssd_triton import ssd_triton_scan  # noqa: E402
from tests.test_ops_ssd import random_ssd_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(
    "b,L,h,p,n,chunk,block_p",
    [
        (1, 1, 1, 16, 16, 16, 16),  # a single token
        (2, 37, 3, 20, 16, 16, 16),  # odd length, head_dim split into a full and a masked block
        (1, 64, 2, 16, 24, 32, 16),  # length a multiple of the chunk; state size not a power of two
        (2, 100, 2, 32, 16, 16, 32),  # many chunks, odd tail
        (1, 45, 4, 8, 8, 16, 16),  # head_dim and state smaller than a block
    ],
)
@pytest.mark.parametrize("with_state", [False, True])
def test_triton_scan_matches_reference(b, L, h, p, n, chunk, block_p, with_state):
    x, dt, A, B, C, D, s0 = random_ssd_inputs(b, L, h, p, n, seed=L + p)
    s0 = s0 if with_state else None
    y_ref, s_ref = ssd_naive_scan(x, dt, A, B, C, D, s0)
    args = [t if t is None else t.float().to(DEVICE) for t in (x, dt, A, B, C, D, s0)]
    y, s = ssd_triton_scan(*args, chunk_size=chunk, block_p=block_p)
    scale = y_ref.abs().max().item()
    assert (y.double().cpu() - y_ref).abs().max().item() <= 1e-5 * max(1.0, scale)
    assert (s.double().cpu() - s_ref).abs().max().item() <= 1e-5 * max(1.0, s_ref.abs().max().item())


def test_triton_scan_without_D_on_strided_group_shared_inputs():
    x, dt, A, B, C, _, _ = random_ssd_inputs(1, 29, 4, 16, 16, seed=3)
    B, C = B[:, :, :2].repeat_interleave(2, 2), C[:, :, :2].repeat_interleave(2, 2)  # GQA: 2 heads share B, C
    y_ref, s_ref = ssd_naive_scan(x, dt, A, B, C)
    xBC = torch.cat([x.float().flatten(2), B.float().flatten(2), C.float().flatten(2)], -1)  # one packed tensor
    xs, Bs, Cs = xBC.split([64, 64, 64], -1)  # strided views, as a mixer produces them
    xs, Bs, Cs = (t.unflatten(-1, (4, 16)) for t in (xs, Bs, Cs))
    y, s = ssd_triton_scan(xs, dt.float(), A.float(), Bs, Cs, chunk_size=16, block_p=16)
    assert (y.double() - y_ref).abs().max() <= 1e-4 and (s.double() - s_ref).abs().max() <= 1e-4


def test_dispatch_defaults_to_the_autograd_scan_and_obeys_the_override(monkeypatch):
    x, dt, A, B, C, D, s0 = random_ssd_inputs(1, 21, 2, 16, 16, requires_grad=True)
    monkeypatch.delenv("MMMAMBA_SSD_BACKEND", raising=False)
    assert pick_backend() == "torch"
    y, _ = ssd_scan(x, dt, A, B, C, D, s0, chunk_size=4)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    monkeypatch.setenv("MMMAMBA_SSD_BACKEND", "triton")
    args = [t.detach().float().to(DEVICE) for t in (x, dt, A, B, C, D, s0)]
    y_k, _ = ssd_scan(*args)
    assert (y_k.double().cpu() - y.detach()).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="use one of"):
        pick_backend("cuda")
