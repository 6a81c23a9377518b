import pytest
import torch
import torch.nn.functional as F

from mmmamba.ops import causal_conv1d, causal_conv1d_step

F64 = torch.float64


def conv_by_definition(x, weight, bias, state):
    """y_t[d] = bias[d] + Σ_j weight[d, j] · x_{t−(k−1)+j}[d], earlier inputs from ``state``."""
    k = weight.shape[1]
    xp = torch.cat([state, x], dim=1)
    ys = []
    for t in range(x.shape[1]):
        window = xp[:, t : t + k]  # (b, k, d)
        ys.append((window * weight.T).sum(1) + bias)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 3, 17])
def test_conv_full_matches_definition_and_steps(k, L):
    g = torch.Generator().manual_seed(k * 100 + L)
    b, d = 2, 6
    x = torch.randn(b, L, d, generator=g, dtype=F64)
    w = torch.randn(d, k, generator=g, dtype=F64)
    bias = torch.randn(d, generator=g, dtype=F64)
    s0 = torch.randn(b, k - 1, d, generator=g, dtype=F64)
    y, final = causal_conv1d(x, w, bias, s0)
    torch.testing.assert_close(y, conv_by_definition(x, w, bias, s0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, torch.cat([s0, x], 1)[:, L:], rtol=0, atol=0)
    state, ys = s0, []
    for t in range(L):
        yt, state = causal_conv1d_step(x[:, t], state, w, bias)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=0, atol=0)


def test_conv_without_state_is_zero_padded_causal_conv():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 10, 3, generator=g, dtype=F64)
    w = torch.randn(3, 3, generator=g, dtype=F64)
    y, _ = causal_conv1d(x, w, None)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (2, 0)), w[:, None], groups=3).transpose(1, 2)
    torch.testing.assert_close(y, ref)
