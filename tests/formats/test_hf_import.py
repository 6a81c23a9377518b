"""Hugging Face Llama / Mistral / Qwen2 folders load into our decoder with the same logits."""

import json

import pytest
import torch
import transformers  # noqa: E402  (a test extra: the parity oracle)

import mmmamba
from mmmamba.convert import convert_to_mamba

SMALL = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)


def make_hf(tmp_path, kind, tie=False, **save):
    torch.manual_seed(0)
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    model = cls[1](cls[0](**SMALL, tie_word_embeddings=tie)).eval()
    with torch.no_grad():  # random (not default-initialised) norms and biases, so every tensor matters
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(tmp_path, **save)
    return model


@pytest.mark.parametrize("kind,tie", [("llama", False), ("mistral", False), ("qwen2", True), ("qwen2", False)])
def test_logits_match_transformers(tmp_path, kind, tie):
    hf = make_hf(tmp_path, kind, tie)
    ours = mmmamba.from_pretrained(tmp_path)
    assert ours.config.qkv_bias == (kind == "qwen2") and ours.config.num_kv_heads == 2
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        expected = hf(ids).logits
    got = ours(ids).logits
    assert (got - expected).abs().max() <= 1e-4
    student = convert_to_mamba(ours, [1])  # and the family converts like any teacher
    assert student(ids).logits.shape == expected.shape


def test_sharded_folder_loads_and_missing_shard_is_named(tmp_path):
    hf = make_hf(tmp_path, "llama", max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        assert (mmmamba.from_pretrained(tmp_path)(ids).logits - hf(ids).logits).abs().max() <= 1e-4
    shards[-1].unlink()
    with pytest.raises(mmmamba.MmmambaError, match=f"{shards[-1].name}: shard named in .* is missing"):
        mmmamba.from_pretrained(tmp_path)


def test_unknown_architecture_and_shape_mismatch(tmp_path):
    make_hf(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(mmmamba.MmmambaError, match="'GPT2LMHeadModel' is not supported"):
        mmmamba.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 65}))
    with pytest.raises(mmmamba.MmmambaError, match=r"mlp\.gate_proj\.weight' has shape \(64, 32\)"):
        mmmamba.from_pretrained(tmp_path)


def test_internlm2_packed_folder_matches_llama(tmp_path):
    """Pack a tiny Llama's q/k/v into InternLM2's per-KV-head wqkv layout; the import gives Llama's logits."""
    from safetensors.torch import save_file

    from mmmamba.formats.hf_families import pack_qkv, split_packed_qkv

    hf = make_hf(tmp_path / "llama", "llama")
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    hd = SMALL["hidden_size"] // SMALL["num_attention_heads"]
    kv = SMALL["num_key_value_heads"]
    rename = {
        "model.embed_tokens.": "model.tok_embeddings.",
        "lm_head.": "output.",
        "self_attn.o_proj": "attention.wo",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.up_proj": "feed_forward.w3",
        "mlp.down_proj": "feed_forward.w2",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    tensors = {}
    state = hf.state_dict()
    for name, t in state.items():
        if ".self_attn.q_proj." in name:
            k, v = state[name.replace("q_proj", "k_proj")], state[name.replace("q_proj", "v_proj")]
            packed = pack_qkv(t, k, v, kv, hd)
            # the layout SPEC §2 gives: per KV head h, [q_(2h), q_(2h+1), k_h, v_h], head_dim rows each
            assert torch.equal(packed[: 4 * hd], torch.cat([t[: 2 * hd], k[:hd], v[:hd]]))
            assert all(torch.equal(a, b) for a, b in zip(split_packed_qkv(packed, kv, 4, hd), (t, k, v)))
            tensors[name.replace("self_attn.q_proj", "attention.wqkv")] = packed
        elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
            for a, b in rename.items():
                name = name.replace(a, b)
            tensors[name] = t.contiguous()
    folder = tmp_path / "internlm2"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    # InternLM2's released configs carry dynamic NTK RoPE: plain RoPE inside max_position_embeddings
    internlm2 = {
        "architectures": ["InternLM2ForCausalLM"],
        "bias": False,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
    }
    (folder / "config.json").write_text(json.dumps({**cfg, **internlm2}))
    ours = mmmamba.from_pretrained(folder)
    assert ours.config.max_position == SMALL["max_position_embeddings"]
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "change,message",
    [
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}, "rope_type 'llama3'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type 'linear'"),
        ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                              "sliding_attention": {"rope_type": "yarn", "rope_theta": 1e4}}}, "rope_type 'yarn'"),
        ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e6}}}, "RoPE bases"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}},
         "partial_rotary_factor 0.25"),
        ({"rope_parameters": "llama3"}, "rope_parameters must be an object"),
        ({"mlp_bias": True}, "mlp_bias is not supported"),
        ({"tie_word_embeddings": "false"}, 'tie_word_embeddings = "false"; it must be true or false'),
        ({"mlp_bias": 0}, "mlp_bias = 0; it must be true or false"),
    ],
)  # fmt: skip
def test_unsupported_rope_and_mlp_bias_are_refused_in_one_line(tmp_path, change, message):
    """transformers 5 writes RoPE scaling into ``rope_parameters``, not ``rope_scaling``: a Llama 3 folder
    must be refused, not read as plain RoPE with wrong logits past the first positions."""
    make_hf(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_scaling", None)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(mmmamba.MmmambaError, match=message) as e:
        mmmamba.from_pretrained(tmp_path)
    assert "\n" not in str(e.value) and "config.json" in str(e.value)


def test_rope_base_is_read_from_rope_parameters(tmp_path):
    make_hf(tmp_path, "llama")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_theta", None)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 12345.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert mmmamba.from_pretrained(tmp_path).config.rope_theta == 12345.0


@pytest.mark.parametrize("use_sliding_window,limit", [(True, 16), (False, 128)])
def test_qwen2_sliding_window_limits_the_context_to_the_window(tmp_path, use_sliding_window, limit):
    """Inside the window sliding attention is full attention, so the import is exact there and caps the
    context at the window; Qwen2 slides only with use_sliding_window (its layer_types say which layers)."""
    torch.manual_seed(0)
    window = dict(use_sliding_window=use_sliding_window, sliding_window=16, max_window_layers=1)
    cfg = transformers.Qwen2Config(**SMALL, **window)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = mmmamba.from_pretrained(tmp_path)
    assert ours.config.max_position == limit
    ids = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_dynamic_ntk_rope_is_plain_rope_inside_its_original_context(tmp_path):
    """transformers' dynamic RoPE keeps the base until a sequence outgrows the original context: the import
    is exact inside it and caps max_position there (original_max_position_embeddings when given)."""
    torch.manual_seed(0)
    scaling = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4, "original_max_position_embeddings": 48}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL, rope_parameters=scaling)).eval()
    hf.save_pretrained(tmp_path)
    ours = mmmamba.from_pretrained(tmp_path)
    assert ours.config.max_position == 48
    ids = torch.randint(0, 97, (1, 48))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4
