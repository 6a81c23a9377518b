"""HoVLE and the released mmMamba students, as their official code lays them out and computes them.

Folders are written the way the official code saves them (``tests/hf_folders.py``); the expected
logits come from a plain float32 forward written from the official math (``tests/official_reference.py``).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mmmamba
from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.formats import save_checkpoint
from mmmamba.formats.hf_families import split_packed_qkv
from mmmamba.formats.official import export_official, split_wvkqgdt
from tests.formats.hf_folders import HOVLE_SHAPE, write_hovle
from tests.formats.official_reference import official_logits

LINEAR = ["mamba2"] * 4
HYBRID = ["mha", "mamba2", "mamba2", "mha"]


def prompt(tok, image_token, tiles, specials=0, seed=0):
    """Text, an image's placeholders, more text, and (with specials) ids embedded by the special table."""
    g = torch.Generator().manual_seed(seed)
    n_text = len(tok) - specials
    body = [torch.randint(8, n_text, (5,), generator=g), torch.full((tiles * 4,), image_token)]
    body.append(torch.randint(8, n_text, (6,), generator=g))
    if specials:
        body.append(torch.arange(n_text, len(tok)))
    return torch.cat(body)


def check_logits(folder, tensors, tok, config, tiles=2, specials=0):
    model = mmmamba.from_pretrained(folder)
    image_token = config["embedding_config"]["img_context_token_id"]
    ids = prompt(tok, image_token, tiles, specials)
    pixels = torch.randn(tiles, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # float64 on both sides: the layouts, not the float32 rounding, are under test
        ours = model.double()(ids[None], pixels.double()).logits[0]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        expected = official_logits(tensors, config, ids, pixels, dtype=torch.float64)
    finally:
        torch.set_default_dtype(default)
    assert (ours - expected).abs().max() <= 1e-5  # RoPE angles stay float32 on both sides, as in HF
    return model.float()


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(normalize=False),
        dict(specials=3),
        dict(stored_image_size=28),  # 2×2 stored positions, bicubic-resized to the 4×4 patch grid
        dict(stored_image_size=42, normalize=False, specials=2),
        dict(arch="HoVLE"),
        dict(llm="LlamaForCausalLM"),
    ],
)
def test_hovle_logits_match_the_official_math(tmp_path, options):
    tensors, tok, config = write_hovle(tmp_path, **options)
    model = check_logits(tmp_path, tensors, tok, config, specials=options.get("specials", 0))
    cfg = model.config
    assert cfg.l2_norm_after == ([1] if options.get("normalize", True) else [])
    assert (
        cfg.special_embeddings == options.get("specials", 0)
        and cfg.text_vocab_size == len(tok) - cfg.special_embeddings
    )


@pytest.mark.parametrize("blocks", [LINEAR, HYBRID], ids=["linear", "hybrid"])
def test_released_students_logits_match_the_official_math(tmp_path, blocks):
    tensors, tok, config = write_hovle(tmp_path, blocks=blocks, specials=2)
    model = check_logits(tmp_path, tensors, tok, config, specials=2)
    assert model.config.mixers == ["attention" if b == "mha" else "mamba2" for b in blocks]
    assert model.config.mamba2_config().norm_eps == 1e-5 and model.config.mamba2_config().conv_kernel == 2


def test_hovle_every_tensor_lands_where_the_official_forward_uses_it(tmp_path):
    tensors, tok, config = write_hovle(tmp_path, specials=2)
    ours = mmmamba.from_pretrained(tmp_path).state_dict()  # strict: nothing missing, nothing left over
    s = HOVLE_SHAPE
    hd = s["hidden"] // s["heads"]
    pairs = {
        "embed_tokens.weight": "embedding_model.llm_text_embeddings.weight",
        "special_embeddings.weight": "embedding_model.special_text_embeddings.weight",
        "vision.patch_embedding.weight": "embedding_model.vision_embeddings.patch_embedding.weight",
        "vision.position_embedding": "embedding_model.vision_embeddings.position_embedding",
        "vision.class_embedding": "embedding_model.vision_embeddings.class_embedding",
        "vision.projector.0.weight": "embedding_model.pixel_shuffle_proj.0.weight",
        "vision.projector.2.bias": "embedding_model.pixel_shuffle_proj.2.bias",
        "layers.1.mixer.o_proj.weight": "embedding_model.encoder.1.attention.wo.weight",
        "layers.2.mixer.o_proj.weight": "language_model.model.layers.0.attention.wo.weight",
        "layers.3.mlp.up_proj.weight": "language_model.model.layers.1.feed_forward.w3.weight",
        "layers.0.input_norm.weight": "embedding_model.encoder.0.attention_norm.weight",
        "norm.weight": "language_model.model.norm.weight",
        "lm_head.weight": "language_model.output.weight",
    }
    for mine, theirs in pairs.items():
        assert torch.equal(ours[mine], tensors[theirs]), mine
    q, k, v = split_packed_qkv(tensors["embedding_model.encoder.1.attention.wqkv.weight"], 2, 4, hd)
    assert torch.equal(ours["layers.1.mixer.q_proj.weight"], q) and torch.equal(ours["layers.1.mixer.v_proj.weight"], v)
    # the LLM's own token table is never read by the forward: it has no place in ours
    assert not any(torch.equal(t, tensors["language_model.model.tok_embeddings.weight"]) for t in ours.values())


def test_wvkqgdt_split_follows_the_row_blocks(tmp_path):
    tensors, _, _ = write_hovle(tmp_path, blocks=HYBRID)
    s = HOVLE_SHAPE
    h, kv, hd = s["heads"], s["kv_heads"], s["hidden"] // s["heads"]
    w = tensors["embedding_model.encoder.1.attention.wvkqgdt.weight"]
    parts = split_wvkqgdt(w, h, kv, hd)
    bounds = np.cumsum([0, kv * hd, kv * hd, h * hd, h * hd, h])
    for (name, part), lo, hi in zip(parts.items(), bounds[:-1], bounds[1:]):
        assert torch.equal(part, w[lo:hi]), name
    ours = mmmamba.from_pretrained(tmp_path).state_dict()
    for name in ("v_proj", "k_proj", "q_proj", "g_proj", "dt_proj"):
        assert torch.equal(ours[f"layers.1.mixer.{name}.weight"], parts[name])
    p = "embedding_model.encoder.1.attention."
    assert torch.equal(ours["layers.1.mixer.conv_weight"], tensors[p + "conv1d.weight"][:, 0])
    assert torch.equal(ours["layers.1.mixer.A_log"], tensors[p + "A_log_bias"])
    assert torch.equal(ours["layers.1.mixer.out_norm.weight"], tensors[p + "g_norm_swish_gate.weight"])
    with pytest.raises(mmmamba.MmmambaError, match="wvkqgdt has 10 rows"):
        split_wvkqgdt(w[:10], h, kv, hd)


@pytest.mark.parametrize("blocks", [LINEAR, HYBRID], ids=["linear", "hybrid"])
def test_export_round_trip_is_bit_exact(tmp_path, blocks):
    tensors, _, config = write_hovle(tmp_path / "released", blocks=blocks, specials=2, stored_image_size=28)
    first = mmmamba.from_pretrained(tmp_path / "released")
    export_official(first, tmp_path / "out")
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(tensors)  # the same names as the released layout, nothing more or less
    for name, t in tensors.items():
        if name != "language_model.model.tok_embeddings.weight":  # never read by the forward; not kept
            assert torch.equal(written[name], t), name
    again = mmmamba.from_pretrained(tmp_path / "out")
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("layers_block_type", "special_token_maps", "image_size", "llm_vocab_size", "img_context_token_id"):
        assert out_cfg["embedding_config"][key] == config["embedding_config"][key], key
    assert out_cfg["llm_config"]["layers_block_type"] == config["llm_config"]["layers_block_type"]
    assert out_cfg["normalize_encoder_output"] is True and out_cfg["model_type"] == "mmMamba_chat"


def test_converted_hovle_student_exports_through_the_cli(tmp_path, capsys):
    write_hovle(tmp_path / "teacher", specials=1)
    teacher = mmmamba.from_pretrained(tmp_path / "teacher")
    student = convert_to_mamba(teacher, [0, 3])
    save_checkpoint(student, tmp_path / "student")
    (tmp_path / "teacher" / "tokenizer.json").rename(tmp_path / "student" / "tokenizer.json")
    args = ["export", "--format", "mmmamba-official", "--model", str(tmp_path / "student")]
    assert main([*args, "--out", str(tmp_path / "official")]) == 0
    assert (tmp_path / "official" / "tokenizer.json").is_file()
    back = mmmamba.from_pretrained(tmp_path / "official")
    assert back.config.mixers == student.config.mixers and back.config.l2_norm_after == [1]
    ids = torch.randint(0, 290, (1, 30))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, mmmamba.from_pretrained(tmp_path / "student")(ids).logits)
    # and the written folder computes what the official math computes
    config = json.loads((tmp_path / "official" / "config.json").read_text())
    tensors = load_file(str(tmp_path / "official" / "model.safetensors"))
    with torch.no_grad():
        assert (back(ids).logits[0] - official_logits(tensors, config, ids[0])).abs().max() <= 1e-4


def test_students_keep_the_hovle_features_through_convert_save_and_load(tmp_path):
    write_hovle(tmp_path / "teacher", specials=2, stored_image_size=28)
    teacher = mmmamba.from_pretrained(tmp_path / "teacher")
    student = convert_to_mamba(teacher, [])
    save_checkpoint(student, tmp_path / "student")
    back = mmmamba.from_pretrained(tmp_path / "student")
    for key in ("l2_norm_after", "text_vocab_size", "special_embeddings", "vision"):
        assert getattr(back.config, key) == getattr(teacher.config, key), key
    ids = torch.tensor([[5, 9, 290, 291, 3]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, student(ids).logits)


def test_export_refuses_models_outside_the_released_layout(tmp_path):
    write_hovle(tmp_path / "teacher")
    teacher = mmmamba.from_pretrained(tmp_path / "teacher")
    with pytest.raises(mmmamba.MmmambaError, match="Mamba-2 options .*conv_kernel"):
        export_official(convert_to_mamba(teacher, [], mamba={"conv_kernel": 4}), tmp_path / "out")
    plain = mmmamba.Decoder(mmmamba.DecoderConfig(97, 16, 2, 2, 2, 8, 32))
    with pytest.raises(mmmamba.MmmambaError, match="only HoVLE-structured models"):
        export_official(plain, tmp_path / "out")


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(pixel_shuffle_loc="post"), "pixel_shuffle_loc 'post' is not supported"),
        (dict(hidden_size=48, llm_hidden_size=48), "hidden_size 48 differs from llm_config's 32; the two stacks share"),
        (dict(use_pixel_shuffle_proj=False), "use_pixel_shuffle_proj false"),
        (dict(img_context_token_id=3), "img_context_token_id 3 but the tokenizer's <IMG_CONTEXT> is 7"),
    ],
)
def test_unsupported_hovle_settings_are_one_line_errors(tmp_path, change, message):
    write_hovle(tmp_path, embedding_overrides=change)
    with pytest.raises(mmmamba.MmmambaError, match=message):
        mmmamba.from_pretrained(tmp_path)


def test_internvl_with_a_vision_encoder_and_missing_tensors_are_named(tmp_path):
    tensors, _, config = write_hovle(tmp_path)
    save_file(
        {k: v for k, v in tensors.items() if "pixel_shuffle_proj.2.bias" not in k}, str(tmp_path / "model.safetensors")
    )
    with pytest.raises(mmmamba.MmmambaError, match=r"'vision\.projector\.2\.bias' is missing"):
        mmmamba.from_pretrained(tmp_path)
    save_file({**tensors, "embedding_model.extra.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(mmmamba.MmmambaError, match="'embedding_model.extra.weight' has no place"):
        mmmamba.from_pretrained(tmp_path)
    vit = {k: v for k, v in config.items() if k != "embedding_config"} | {"vision_config": {}}
    (tmp_path / "config.json").write_text(json.dumps(vit))
    with pytest.raises(mmmamba.MmmambaError, match="separate vision encoder"):
        mmmamba.from_pretrained(tmp_path)


def test_text_embedding_has_no_host_sync_and_special_ids_use_their_table(tmp_path):
    write_hovle(tmp_path, specials=2)
    model = mmmamba.from_pretrained(tmp_path)
    n = model.config.text_vocab_size
    ids = torch.tensor([[0, 5, n, n + 1]])
    with torch.no_grad():
        x = model.embed(ids)
    assert torch.equal(x[0, 1], model.embed_tokens.weight[5]) and torch.equal(
        x[0, 3], model.special_embeddings.weight[1]
    )
    if hasattr(torch.cuda, "set_sync_debug_mode") and torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("error")
        try:
            model.cuda().embed(ids.cuda())
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_hovle_image_forward_uses_the_tiles(tmp_path):
    from PIL import Image

    from mmmamba.data.images import ImageProcessor
    from mmmamba.data.tokenizer import load_tokenizer

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


def test_released_student_without_architectures_is_recognised_by_model_type(tmp_path):
    tensors, tok, config = write_hovle(tmp_path, blocks=LINEAR, specials=2)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("architectures", None)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = mmmamba.from_pretrained(tmp_path)
    assert model.config.mixers == ["mamba2"] * len(LINEAR)


# The holistic stack configured apart from the LLM (HolisticEmbeddingConfig has defaults of its own)
OWN_THETA = dict(rope_theta=1e4)
OWN_EPS = dict(rms_norm_eps=1e-6)
OWN_HEADS = dict(num_attention_heads=2, num_key_value_heads=1)  # head_dim 16 against the LLM's 8
OWN_MLP = dict(intermediate_size=48)
OWN_ALL = OWN_THETA | OWN_EPS | OWN_HEADS | OWN_MLP


@pytest.mark.parametrize(
    "own,blocks",
    [
        (OWN_THETA, None),
        (OWN_EPS, None),
        (OWN_HEADS, None),
        (OWN_MLP, None),
        (OWN_ALL, None),
        (OWN_ALL, HYBRID),
        (OWN_HEADS | OWN_THETA, LINEAR),
    ],
    ids=["theta", "eps", "heads", "mlp", "all", "all-hybrid-student", "heads-theta-linear-student"],
)
def test_stacks_with_their_own_settings_match_the_official_math(tmp_path, own, blocks):
    tensors, tok, config = write_hovle(tmp_path, embedding_overrides=own, blocks=blocks, specials=1)
    model = check_logits(tmp_path, tensors, tok, config, tiles=3, specials=1)
    cfg, emb = model.config, config["embedding_config"]
    for i in range(HOVLE_SHAPE["holistic"] + HOVLE_SHAPE["llm"]):
        s = cfg.layer(i)
        stack = emb if i < HOVLE_SHAPE["holistic"] else config["llm_config"]
        assert (s.rope_theta, s.norm_eps, s.num_heads, s.num_kv_heads, s.intermediate_size) == (
            stack["rope_theta"],
            stack["rms_norm_eps"],
            stack["num_attention_heads"],
            stack["num_key_value_heads"],
            stack["intermediate_size"],
        ), i
        assert s.head_dim == HOVLE_SHAPE["hidden"] // stack["num_attention_heads"]


def test_embedding_config_without_a_rope_base_uses_the_official_default(tmp_path):
    """A released folder whose embedding_config does not repeat the LLM's base runs at 1e4 there."""
    tensors, tok, config = write_hovle(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["embedding_config"]["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = mmmamba.from_pretrained(tmp_path)
    assert model.config.layer(0).rope_theta == 1e4 and model.config.layer(2).rope_theta == 1e6
    ids = prompt(tok, config["embedding_config"]["img_context_token_id"], 1)
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    expected = official_logits(tensors, {**raw, "embedding_config": raw["embedding_config"] | OWN_THETA}, ids, pixels)
    with torch.no_grad():
        assert (model(ids[None], pixels).logits[0] - expected).abs().max() <= 1e-4


def test_students_keep_every_layers_settings_through_save_load_and_export(tmp_path):
    write_hovle(tmp_path / "teacher", embedding_overrides=OWN_ALL, specials=2)
    teacher = mmmamba.from_pretrained(tmp_path / "teacher")
    student = convert_to_mamba(teacher, [0, 3])  # one attention layer in each stack
    for i, layer in enumerate(student.layers):
        s = student.config.layer(i)
        assert layer.mixer.cfg.num_heads == s.num_heads and layer.mixer.cfg.head_dim == s.head_dim, i
        assert layer.input_norm.eps == s.norm_eps and layer.mlp.up_proj.out_features == s.intermediate_size, i
    assert student.layers[0].mixer.cfg.rope_theta == 1e4 and student.layers[3].mixer.cfg.rope_theta == 1e6
    save_checkpoint(student, tmp_path / "student")
    back = mmmamba.from_pretrained(tmp_path / "student")
    assert back.config.layer_overrides == teacher.config.layer_overrides
    assert [back.config.layer(i) for i in range(4)] == [teacher.config.layer(i) for i in range(4)]
    ids = torch.randint(0, 290, (1, 25), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, student(ids).logits)
    export_official(back, tmp_path / "official")
    config = json.loads((tmp_path / "official" / "config.json").read_text())
    emb, llm = config["embedding_config"], config["llm_config"]
    assert (emb["rope_theta"], emb["rms_norm_eps"], emb["num_attention_heads"], emb["intermediate_size"]) == (
        1e4, 1e-6, 2, 48,
    )  # fmt: skip
    assert (llm["rope_theta"], llm["rms_norm_eps"], llm["num_attention_heads"], llm["intermediate_size"]) == (
        1e6, 1e-5, 4, 64,
    )  # fmt: skip
    again = mmmamba.from_pretrained(tmp_path / "official")
    tensors = load_file(str(tmp_path / "official" / "model.safetensors"))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, back(ids).logits)
        assert (again(ids).logits[0] - official_logits(tensors, config, ids[0])).abs().max() <= 1e-4


def test_static_decode_equals_forward_with_stacks_of_their_own(tmp_path):
    from tests.infer.test_decode import decode_both_ways

    write_hovle(tmp_path, embedding_overrides=OWN_ALL)
    teacher = mmmamba.from_pretrained(tmp_path).double()
    for model in (teacher, convert_to_mamba(teacher, [0, 3]), convert_to_mamba(teacher, [1])):
        for static, ref in decode_both_ways(model, [[5, 6, 7, 8, 9], [10, 11]], steps=6):
            torch.testing.assert_close(static, ref, rtol=1e-10, atol=1e-10)


def test_export_refuses_a_stack_whose_layers_differ(tmp_path):
    write_hovle(tmp_path / "teacher")
    teacher = mmmamba.from_pretrained(tmp_path / "teacher")
    teacher.config.layer_overrides = [{"layers": [3], "rope_theta": 5e5}]
    cfg = mmmamba.DecoderConfig.from_dict(teacher.config.to_dict())
    with pytest.raises(mmmamba.MmmambaError, match="the LLM stack's layers differ in their settings"):
        export_official(mmmamba.Decoder(cfg), tmp_path / "out")
