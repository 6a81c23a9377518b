"""The chunked SSD scan and the single step answer to the naive sequential reference."""

import pytest
import torch

from mmmamba.ops import ssd_chunked_scan, ssd_naive_scan, ssd_step

F64 = torch.float64


def random_ssd_inputs(b, L, h, p, n, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=g, dtype=F64)
    dt = torch.rand(b, L, h, generator=g, dtype=F64) * 0.5 + 0.01
    A = -torch.rand(h, generator=g, dtype=F64) * 2 - 0.1
    B = torch.randn(b, L, h, n, generator=g, dtype=F64)
    C = torch.randn(b, L, h, n, generator=g, dtype=F64)
    D = torch.randn(h, generator=g, dtype=F64)
    s0 = torch.randn(b, h, p, n, generator=g, dtype=F64)
    ts = [x, dt, A, B, C, D, s0]
    for t in ts:
        t.requires_grad_(requires_grad)
    return ts


def quadratic_ssd(x, dt, A, B, C, D=None):
    """y_t = Σ_{s≤t} exp(Σ_{r=s+1..t} Δ_r A) Δ_s (C_t·B_s) x_s, materialised: checks the reference itself."""
    L = x.shape[1]
    a = torch.cumsum(dt * A, dim=1)  # (b, L, h)
    seg = a[:, :, None, :] - a[:, None, :, :]  # (b, t, s, h)
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))[None, :, :, None]
    weight = torch.where(causal, torch.exp(seg.masked_fill(~causal, 0)), torch.zeros((), dtype=F64))
    scores = torch.einsum("bthn,bshn->btsh", C, B) * weight * dt[:, None]
    y = torch.einsum("btsh,bshp->bthp", scores, x)
    return y if D is None else y + D[:, None] * x


def test_naive_matches_materialised_quadratic_form():
    x, dt, A, B, C, D, _ = random_ssd_inputs(2, 23, 3, 4, 5)
    y, _ = ssd_naive_scan(x, dt, A, B, C, D)
    torch.testing.assert_close(y, quadratic_ssd(x, dt, A, B, C, D), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [1, 7, 64, 129, 1000])
@pytest.mark.parametrize("chunk", [16, 64, 128])
@pytest.mark.parametrize("with_state_and_D", [False, True])
def test_chunked_matches_naive(L, chunk, with_state_and_D):
    x, dt, A, B, C, D, s0 = random_ssd_inputs(2, L, 3, 4, 5, seed=L + chunk)
    if not with_state_and_D:
        D = s0 = None
    y_ref, f_ref = ssd_naive_scan(x, dt, A, B, C, D, s0)
    y, f = ssd_chunked_scan(x, dt, A, B, C, D, s0, chunk_size=chunk)
    assert y.shape == y_ref.shape == x.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f, f_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("L,chunk", [(7, 4), (33, 16)])
def test_chunked_gradients_match_naive(L, chunk):
    inputs = random_ssd_inputs(1, L, 2, 3, 4, seed=L, requires_grad=True)
    grads = []
    for scan in (ssd_naive_scan, lambda *a: ssd_chunked_scan(*a, chunk_size=chunk)):
        y, f = scan(*inputs)
        w = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        wf = torch.randn_like(f, generator=torch.Generator().manual_seed(2))
        grads.append(torch.autograd.grad((y * w).sum() + (f * wf).sum(), inputs))
    for g_naive, g_chunk in zip(*grads):
        torch.testing.assert_close(g_chunk, g_naive, rtol=1e-9, atol=1e-9)


def test_step_by_step_equals_chunked_and_splitting_carries_state():
    x, dt, A, B, C, D, s0 = random_ssd_inputs(2, 45, 3, 4, 5, seed=3)
    y_full, f_full = ssd_chunked_scan(x, dt, A, B, C, D, s0, chunk_size=16)
    state, ys = s0, []
    for t in range(x.shape[1]):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(state, f_full, rtol=1e-9, atol=1e-9)
    # two chunked calls, the second starting from the first's final state, equal one call
    cut = 20
    y1, f1 = ssd_chunked_scan(x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], D, s0, chunk_size=16)
    y2, f2 = ssd_chunked_scan(x[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:], D, f1, chunk_size=16)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f2, f_full, rtol=1e-9, atol=1e-9)


def test_zero_step_size_leaves_state_untouched():
    x, dt, A, B, C, _, s0 = random_ssd_inputs(1, 9, 2, 3, 4)
    _, f = ssd_chunked_scan(x, torch.zeros_like(dt), A, B, C, None, s0, chunk_size=4)
    torch.testing.assert_close(f, s0, rtol=0, atol=0)


@pytest.mark.parametrize("lengths", [[1], [63, 1, 130, 17], [5, 64, 64, 2]])
@pytest.mark.parametrize("with_state_and_D", [False, True])
def test_packed_scan_equals_each_sample_alone_with_gradients(lengths, with_state_and_D):
    """Packed samples (cu_seqlens) through the torch backend = the naive scan of each sample on its own,
    outputs, final states and the gradients of every input, in float64."""
    from mmmamba.ops.ssd import ssd_scan

    n, L = len(lengths), sum(lengths)
    x, dt, A, B, C, D, _ = random_ssd_inputs(1, L, 3, 4, 5, seed=L, requires_grad=True)
    s0 = torch.randn(n, 3, 4, 5, dtype=F64, requires_grad=True) if with_state_and_D else None
    D = D if with_state_and_D else None
    cu = torch.tensor([0, *lengths]).cumsum(0)
    y, state = ssd_scan(x, dt, A, B, C, D, s0, chunk_size=16, backend="torch", cu_seqlens=cu)
    ys, states = [], []
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        init = None if s0 is None else s0[i : i + 1]
        yi, si = ssd_naive_scan(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D, init)
        ys.append(yi)
        states.append(si)
    y_ref, state_ref = torch.cat(ys, 1), torch.cat(states, 0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(1)
    wy, ws = torch.randn(y.shape, generator=g, dtype=F64), torch.randn(state.shape, generator=g, dtype=F64)
    inputs = [t for t in (x, dt, A, B, C, D, s0) if t is not None]
    got = torch.autograd.grad((y * wy).sum() + (state * ws).sum(), inputs)
    want = torch.autograd.grad((y_ref * wy).sum() + (state_ref * ws).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
