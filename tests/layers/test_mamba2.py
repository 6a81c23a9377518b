"""The Mamba-2 mixer is wired as SPEC §3 says: C = q, B = k, x = v, GQA by repetition."""

import pytest
import torch
from torch import nn

from mmmamba.convert.seed import inverse_softplus
from mmmamba.layers import Attention, AttentionConfig, Mamba2Config, Mamba2Mixer

F64 = torch.float64


class NoGateNoNorm(nn.Module):
    def forward(self, y, gate):
        return y


def linear_attention(q, k, v):
    """Σ_{s≤t} (q_t·k_s) v_s, per head; q (b, L, h, d), k and v (b, L, kvh, d)."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    scores = torch.einsum("bthd,bshd->bhts", q, k)
    scores = scores * torch.tril(torch.ones(q.shape[1], q.shape[1], dtype=q.dtype))
    return torch.einsum("bhts,bshd->bthd", scores, v)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1), (2, 2)])
def test_mixer_without_decay_is_causal_linear_attention(heads, kv_heads):
    torch.manual_seed(heads * 10 + kv_heads)
    cfg = Mamba2Config(
        hidden_size=12,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=5,
        qkv_bias=True,
        conv_kernel=3,
        conv_activation="identity",
        chunk_size=4,
    )
    m = Mamba2Mixer(cfg).double()
    with torch.no_grad():
        m.A_log.fill_(float("-inf"))  # A = −exp(−inf) = 0: no decay
        m.dt_proj.weight.zero_()
        m.dt_bias.copy_(inverse_softplus(torch.ones(heads, dtype=F64)))  # Δ = 1
        m.conv_weight.zero_()
        m.conv_weight[:, -1] = 1.0  # identity conv
        m.conv_bias.zero_()
    m.out_norm = NoGateNoNorm()
    b, L = 2, 11
    u = torch.randn(b, L, 12, dtype=F64)
    q = m.q_proj(u).view(b, L, heads, 5)
    k = m.k_proj(u).view(b, L, kv_heads, 5)
    v = m.v_proj(u).view(b, L, kv_heads, 5)
    expected = linear_attention(q, k, v).reshape(b, L, heads * 5)
    torch.testing.assert_close(m.mix(u), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(u), m.o_proj(expected), rtol=1e-10, atol=1e-10)


def test_mixer_and_attention_share_the_call_and_projection_names():
    a = Attention(AttentionConfig(16, 4, 2, 4))
    m = Mamba2Mixer(Mamba2Config(16, 4, 2, 4))
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert getattr(a, name).weight.shape == getattr(m, name).weight.shape


@pytest.mark.parametrize("options", [dict(), dict(use_D=True, qk_norm=True, conv_kernel=4)])
def test_mixer_recurrent_decode_matches_full_sequence(options):
    torch.manual_seed(1)
    m = Mamba2Mixer(Mamba2Config(16, 4, 2, 4, chunk_size=8, **options)).double()
    with torch.no_grad():
        m.dt_bias.uniform_(-3, 0)
        m.A_log.uniform_(-1, 1)
    u = torch.randn(2, 21, 16, dtype=F64)
    full = m.mix(u)
    cache = m.make_cache(2, 0, F64)
    prefix = m.mix(u[:, :13], cache=cache)  # chunked prefill into the state
    steps = [m.mix(u[:, t : t + 1], cache=cache) for t in range(13, 21)]
    torch.testing.assert_close(torch.cat([prefix, *steps], 1), full, rtol=1e-10, atol=1e-10)
    assert cache.length == 21


def test_padding_never_enters_the_state():
    """Left padding with a mask gives the same outputs and state as the unpadded sequence."""
    torch.manual_seed(2)
    m = Mamba2Mixer(Mamba2Config(16, 4, 2, 4, chunk_size=8, conv_kernel=3)).double()
    u = torch.randn(1, 10, 16, dtype=F64)
    padded = torch.cat([torch.randn(1, 5, 16, dtype=F64), u], 1)
    valid = torch.cat([torch.zeros(1, 5), torch.ones(1, 10)], 1)
    c1, c2 = m.make_cache(1, 0, F64), m.make_cache(1, 0, F64)
    y = m.mix(u, cache=c1)
    y_pad = m.mix(padded, valid=valid, cache=c2)
    torch.testing.assert_close(y_pad[:, 5:], y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c2.ssm, c1.ssm, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c2.conv, c1.conv, rtol=0, atol=0)


def test_fla_takes_the_autocast_dtype_in_training():
    """Under bf16 autocast (training) fla's q/k/v are bf16 even when activations are fp32; else theirs."""
    from mmmamba.layers.mamba2 import scan_dtype

    u = torch.randn(2, 3)
    assert scan_dtype(u) == torch.float32 and scan_dtype(u.double()) == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scan_dtype(u) == torch.bfloat16
