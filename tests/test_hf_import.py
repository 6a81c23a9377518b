"""Hugging Face Llama / Mistral / Qwen2 folders load into our decoder with the same logits."""

import json

import numpy as np
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

    from mmmamba.models.hf_families import pack_qkv, split_packed_qkv

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
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["InternLM2ForCausalLM"], "bias": False}))
    ours = mmmamba.from_pretrained(folder)
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_hovle_folder_loads_every_tensor_into_place(tmp_path):
    from mmmamba.models.hf_families import split_packed_qkv
    from tests.hf_folders import HOVLE_SHAPE, write_hovle

    tensors, tok = write_hovle(tmp_path)
    model = mmmamba.from_pretrained(tmp_path)  # strict: no missing, no unexpected tensor
    cfg, s = model.config, HOVLE_SHAPE
    assert cfg.num_layers == s["holistic"] + s["llm"] and cfg.conversion["stacks"] == [s["holistic"], s["llm"]]
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert cfg.vision.tokens_per_tile == (56 // 14) ** 2 // 4 and cfg.vision.max_tiles == 6
    ours = model.state_dict()
    # holistic layer 1 is our layer 1; LLM layer 0 is our layer 2
    assert torch.equal(
        ours["layers.2.mixer.o_proj.weight"], tensors["language_model.model.layers.0.attention.wo.weight"]
    )
    q, k, v = split_packed_qkv(tensors["embedding_model.layers.1.attention.wqkv.weight"], 2, 4, 8)
    assert torch.equal(ours["layers.1.mixer.k_proj.weight"], k) and torch.equal(ours["layers.1.mixer.q_proj.weight"], q)
    assert torch.equal(ours["vision.projector.3.weight"], tensors["embedding_model.mlp1.3.weight"])
    assert torch.equal(
        ours["layers.3.mlp.up_proj.weight"], tensors["language_model.model.layers.1.feed_forward.w3.weight"]
    )


def test_hovle_missing_or_extra_tensor_is_named(tmp_path):
    from safetensors.torch import save_file

    from tests.hf_folders import write_hovle

    tensors, _ = write_hovle(tmp_path)
    save_file({k: v for k, v in tensors.items() if "mlp1.1.bias" not in k}, str(tmp_path / "model.safetensors"))
    with pytest.raises(mmmamba.MmmambaError, match=r"'vision\.projector\.1\.bias' is missing"):
        mmmamba.from_pretrained(tmp_path)
    save_file({**tensors, "embedding_model.extra.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(mmmamba.MmmambaError, match="'embedding_model.extra.weight' has no place in a HoVLE model"):
        mmmamba.from_pretrained(tmp_path)


def test_hovle_image_forward_uses_the_tiles(tmp_path):
    from PIL import Image

    from mmmamba.data.images import ImageProcessor
    from mmmamba.data.tokenizer import load_tokenizer
    from tests.hf_folders import write_hovle

    write_hovle(tmp_path)
    model = mmmamba.from_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    images = ImageProcessor(model.config.vision)
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (60, 130, 3), dtype=np.uint8))  # wide: 2×1 tiles + thumbnail
    pixels, counts = images.load_many([picture])
    assert pixels.shape == (3, 3, 56, 56) and counts == [3 * 4]
    ids = torch.tensor([tok.user_turn("<image>\nwhat is in the picture?", image_tokens=counts)])
    assert int((ids == model.config.image_token_id).sum()) == 12
    with torch.no_grad():
        a = model(ids, pixels).logits
        b = model(ids, pixels.flip(0)).logits  # same tiles, other order: only positions after the image change
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    assert torch.isfinite(a).all() and torch.equal(a[:, :first], b[:, :first])
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4
