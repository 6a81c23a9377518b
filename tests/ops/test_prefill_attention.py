"""Chunked prefill attention (past + chunk merged by log-sum-exp) against one masked softmax in float64."""

import math

import pytest
import torch

from mmmamba.ops.prefill_attention import merge_by_lse, prefill_attention


def full_reference(q, k_all, v_all, valid, past):
    """Softmax over [past; chunk] keys, causal inside the chunk, padded keys out; unseeing rows → 0."""
    b, h, L, d = q.shape
    kvh, S = k_all.shape[1], k_all.shape[2]
    g = h // kvh
    k_all, v_all = k_all.repeat_interleave(g, 1).double(), v_all.repeat_interleave(g, 1).double()
    scores = torch.einsum("bhld,bhsd->bhls", q.double(), k_all) / math.sqrt(d)
    q_pos = torch.arange(past, past + L)[:, None]
    mask = (torch.arange(S)[None, :] <= q_pos)[None, None]
    if valid is not None:
        mask = mask & valid[:, None, None, :]
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.nan_to_num(scores.softmax(-1), nan=0.0)
    return torch.einsum("bhls,bhsd->bhld", w, v_all)


@pytest.mark.parametrize("backend", ["torch", "flash"])
@pytest.mark.parametrize(
    "b,h,kvh,past,L,d", [(1, 4, 4, 0, 7, 8), (2, 6, 2, 13, 5, 16), (3, 6, 3, 1, 9, 8), (1, 2, 1, 31, 1, 32)]
)
@pytest.mark.parametrize("padded", [False, True])
def test_prefill_attention_matches_masked_softmax(backend, b, h, kvh, past, L, d, padded):
    torch.manual_seed(past * 7 + L)
    dtype = torch.float64 if backend == "torch" else torch.float32
    q = torch.randn(b, h, L, d, dtype=dtype)
    k_all = torch.randn(b, kvh, past + L, d, dtype=dtype)
    v_all = torch.randn(b, kvh, past + L, d, dtype=dtype)
    valid = None
    if padded:  # left padding of a different length per row; row 0 fully padded in the past
        pad = torch.randint(0, past + L, (b,))
        pad[0] = past
        valid = torch.arange(past + L)[None, :] >= pad[:, None]
    out = prefill_attention(
        q, k_all[:, :, :past], v_all[:, :, :past], k_all[:, :, past:], v_all[:, :, past:], valid, backend
    )
    ref = full_reference(q, k_all, v_all, valid, past)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    real = torch.ones(b, L, dtype=torch.bool) if valid is None else valid[:, past:]
    torch.testing.assert_close(out.double()[real[:, None].expand(b, h, L)], ref[real[:, None].expand(b, h, L)],
                               atol=tol, rtol=tol)  # fmt: skip


def test_merge_by_lse_is_softmax_over_the_union_and_zero_when_nothing_is_seen():
    torch.manual_seed(0)
    s_a, s_b = torch.randn(2, 3, 5), torch.randn(2, 3, 4)
    v_a, v_b = torch.randn(5, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    s_a, s_b = s_a.double(), s_b.double()
    out_a, out_b = s_a.softmax(-1) @ v_a, s_b.softmax(-1) @ v_b
    merged = merge_by_lse(out_a, s_a.logsumexp(-1), out_b, s_b.logsumexp(-1))
    whole = torch.cat([s_a, s_b], -1).softmax(-1) @ torch.cat([v_a, v_b])
    torch.testing.assert_close(merged.double(), whole)
    none = torch.full((2, 3), float("-inf"), dtype=torch.float64)
    nan = torch.full_like(out_a, float("nan"))
    assert (merge_by_lse(nan, none, nan, none) == 0).all()
