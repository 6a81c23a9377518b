"""Per-layer settings (``DecoderConfig.layer_overrides``): every layer computes with its own RoPE base,
norm eps, heads, KV heads, head dim and MLP width, through forward, static decode, convert, save and load."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import mmmamba
from mmmamba.convert import convert_to_mamba
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.models import Decoder, DecoderConfig
from mmmamba.models.sizing import cache_bytes, parameter_count
from tests.conftest import tiny_config
from tests.infer.test_decode import decode_both_ways

GROUPS = [
    {"layers": [0, 1], "rope_theta": 1e6, "norm_eps": 1e-6, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16},
    {"layers": [3], "intermediate_size": 24, "num_kv_heads": 4, "rope_theta": 500.0},
]


def model_with_own_layers(groups=GROUPS, seed=0) -> Decoder:
    torch.manual_seed(seed)
    cfg = tiny_config(layer_overrides=groups, vision=None, image_token_id=None, max_position=128)
    model = Decoder(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    return model.double()


def reference_logits(model: Decoder, ids: torch.Tensor) -> torch.Tensor:
    """Float64 plain math of an all-attention decoder, each layer read from ``config.layer(i)``."""
    cfg = model.config
    x = model.embed_tokens.weight[ids]  # (L, d)
    L = ids.shape[0]
    for i, layer in enumerate(model.layers):
        s = cfg.layer(i)

        def norm(t, w):
            return w * t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + s.norm_eps)  # noqa: B023

        u = norm(x, layer.input_norm.weight)
        m = layer.mixer
        q = (u @ m.q_proj.weight.T).view(L, s.num_heads, s.head_dim)
        k = (u @ m.k_proj.weight.T).view(L, s.num_kv_heads, s.head_dim)
        v = (u @ m.v_proj.weight.T).view(L, s.num_kv_heads, s.head_dim)
        inv = s.rope_theta ** -(torch.arange(0, s.head_dim, 2, dtype=torch.float64) / s.head_dim)
        ang = torch.arange(L, dtype=torch.float64)[:, None] * inv
        cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]

        def rot(t):
            half = s.head_dim // 2  # noqa: B023
            return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin  # noqa: B023

        q, k = rot(q), rot(k)
        group = s.num_heads // s.num_kv_heads
        out = torch.zeros(L, s.num_heads, s.head_dim, dtype=torch.float64)
        for h in range(s.num_heads):
            scores = q[:, h] @ k[:, h // group].T / math.sqrt(s.head_dim)
            scores = scores.masked_fill(torch.ones(L, L).triu(1).bool(), float("-inf"))
            out[:, h] = scores.softmax(-1) @ v[:, h // group]
        x = x + out.reshape(L, -1) @ m.o_proj.weight.T
        u = norm(x, layer.post_norm.weight)
        w = layer.mlp
        x = x + (F.silu(u @ w.gate_proj.weight.T) * (u @ w.up_proj.weight.T)) @ w.down_proj.weight.T
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * model.norm.weight
    return x @ model.lm_head.weight.T


@pytest.mark.parametrize("length", [1, 7, 20])
def test_forward_follows_each_layers_settings(length):
    model = model_with_own_layers()
    ids = torch.randint(0, 61, (length,), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        torch.testing.assert_close(model(ids[None]).logits[0], reference_logits(model, ids), rtol=1e-9, atol=1e-9)
    s0, s2, s3 = (model.config.layer(i) for i in (0, 2, 3))
    assert (s0.head_dim, s0.rope_theta, s2.head_dim, s2.rope_theta, s3.intermediate_size) == (16, 1e6, 8, 1e4, 24)
    assert model.layers[0].mixer.k_proj.weight.shape == (16, 32)  # 1 KV head of 16
    assert model.layers[3].mixer.k_proj.weight.shape == (32, 32)  # 4 KV heads of 8


@pytest.mark.parametrize("kind", ["teacher", "linear", "hybrid"])
def test_static_decode_equals_forward_with_layers_of_their_own(kind):
    model = model_with_own_layers()
    if kind != "teacher":
        model = convert_to_mamba(model, [] if kind == "linear" else [0, 3])
    for i, layer in enumerate(model.layers):
        assert layer.mixer.cfg.num_heads == model.config.layer(i).num_heads
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    for static, ref in decode_both_ways(model, prompts, steps=6):
        torch.testing.assert_close(static, ref, rtol=1e-10, atol=1e-10)


def test_two_tables_for_one_base_with_two_head_dims():
    groups = [{"layers": [0], "num_heads": 2, "num_kv_heads": 2, "head_dim": 16}]  # same theta, other head_dim
    model = model_with_own_layers(groups)
    assert sorted(model.make_cache(1, 8).rope_cos) == [(1e4, 8), (1e4, 16)]
    for static, ref in decode_both_ways(model, [[3, 4, 5, 6], [7, 8]], steps=4):
        torch.testing.assert_close(static, ref, rtol=1e-10, atol=1e-10)


def test_save_load_keeps_the_settings_and_old_configs_load_unchanged(tmp_path):
    student = convert_to_mamba(model_with_own_layers().float(), [1])
    save_checkpoint(student, tmp_path / "s")
    back = load_checkpoint(tmp_path / "s")
    assert back.config.layer_overrides == GROUPS
    assert [back.config.layer(i) for i in range(4)] == [student.config.layer(i) for i in range(4)]
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, student(ids).logits)
    # a uniform model writes no layer_overrides: checkpoints read by older code, and theirs by ours
    uniform = Decoder(tiny_config(vision=None, image_token_id=None))
    save_checkpoint(uniform, tmp_path / "u")
    raw = json.loads((tmp_path / "u" / "config.json").read_text())
    assert "layer_overrides" not in raw
    assert load_checkpoint(tmp_path / "u").config == uniform.config


def test_sizes_count_each_layer():
    model = model_with_own_layers()
    cfg = model.config
    uniform = tiny_config(vision=None, image_token_id=None, max_position=128)
    counted = sum(p.numel() for p in convert_to_mamba(model, []).parameters())
    assert parameter_count(cfg) != parameter_count(uniform)
    assert abs(parameter_count(convert_to_mamba(model, []).config) - counted) <= counted * 0.01
    kv = sum(2 * 3 * 100 * cfg.layer(i).num_kv_heads * cfg.layer(i).head_dim * 4 for i in range(4))
    assert cache_bytes(cfg, 3, 100) == kv


@pytest.mark.parametrize(
    "groups,message",
    [
        ([{"layers": [4], "rope_theta": 1e4}], "layer 4 is out of range for a 4-layer model"),
        ([{"layers": [0], "hidden_size": 64}], r"unknown key\(s\) \['hidden_size'\]"),
        ([{"layers": [0], "num_heads": 3}], "layer 0: num_heads 3 is not a multiple of num_kv_heads 2"),
        ([{"layers": [1]}, {"layers": [1], "norm_eps": 1e-6}], "layer 1 is in two groups"),
        ([{"rope_theta": 1e4}], "give a 'layers' list"),
        ([{"layers": [0], "rope_theta": -1.0}], "rope_theta = -1.0 is not a valid value"),
    ],
)
def test_bad_overrides_are_one_line_errors(groups, message):
    with pytest.raises(mmmamba.MmmambaError, match=message):
        tiny_config(layer_overrides=groups)


@pytest.mark.parametrize("kept", [[99], [1, 0], [0, 0], [1], "0", [0.0]])
def test_a_kept_attention_record_that_contradicts_the_mixers_is_refused(kept):
    mixers = ["attention", "mamba2", "mamba2", "mamba2"]
    base = dict(
        vocab_size=32, hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64
    )
    assert DecoderConfig(**base, mixers=mixers, conversion={"keep_attention": [0]}).conversion["keep_attention"] == [0]
    with pytest.raises(mmmamba.MmmambaError, match="conversion.keep_attention .* does not list the attention layers"):
        DecoderConfig(**base, mixers=mixers, conversion={"keep_attention": kept})
