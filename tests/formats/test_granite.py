"""``export --format granite-hybrid``: transformers' own ``GraniteMoeHybridForCausalLM`` loads the folder
(no remote code) and computes our student's logits, greedy text and cached generation; import reads it
back bit-exactly; what the layout cannot express is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.data.granite_tokenizer import write_granite_tokenizer
from mmmamba.data.tokenizer import ByteTokenizer, load_tokenizer
from mmmamba.errors import MmmambaError
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.formats.granite import export_granite
from mmmamba.infer import generate
from mmmamba.models import Decoder, DecoderConfig

transformers = pytest.importorskip("transformers")
VOCAB = ByteTokenizer().vocab_size  # 264: the students carry our byte tokenizer, exported as its HF equivalent


def student(heads, kv_heads, head_dim, kernel, tied, keep, layers=3, seed=0, **extra) -> Decoder:
    """A random float32 text student, gate-first, with every parameter far from its seed."""
    torch.manual_seed(seed)
    mamba = {"gate_order": "gate-first", "conv_kernel": kernel, **extra.pop("mamba", {})}
    hidden = extra.pop("hidden_size", heads * head_dim)
    cfg = DecoderConfig(vocab_size=VOCAB, hidden_size=hidden, num_layers=layers, num_heads=heads,
                        num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=72, tie_embeddings=tied,
                        rope_theta=5e4, max_position=256, **extra)  # fmt: skip
    teacher = Decoder(cfg)
    s = convert_to_mamba(teacher, keep, mamba=mamba)
    with torch.no_grad():
        for name, p in s.named_parameters():
            if "norm" in name and "out_norm" not in name:
                p.normal_(1.0, 0.1)
            elif name.endswith("A_log"):
                p.uniform_(-2, 1)
            else:
                p.normal_(0, 0.15)
    return s.eval()


SHAPES = {  # GQA ratio, head_dim, conv kernel, tied, kept layers (first, middle, last, none)
    "ratio1-hd16-k2-untied-first": dict(heads=4, kv_heads=4, head_dim=16, kernel=2, tied=False, keep=[0]),
    "ratio2-hd32-k4-tied-middle": dict(heads=4, kv_heads=2, head_dim=32, kernel=4, tied=True, keep=[1]),
    "ratio3-hd16-k4-untied-last": dict(heads=6, kv_heads=2, head_dim=16, kernel=4, tied=False, keep=[2]),
    "ratio2-hd16-k2-tied-linear": dict(heads=4, kv_heads=2, head_dim=16, kernel=2, tied=True, keep=[]),
    "ratio1-hd32-k3-bias-D-two-kept": dict(
        heads=2,
        kv_heads=2,
        head_dim=32,
        kernel=3,
        tied=False,
        keep=[0, 3],
        layers=4,
        qkv_bias=True,
        mamba={"use_D": True},
    ),  # fmt: skip
}


def export(model, folder, tmp_path, expand=None):
    save_checkpoint(model, tmp_path / "ours", extra=ByteTokenizer().save)
    tokens = write_granite_tokenizer(tmp_path / "ours", folder)
    export_granite(model, folder, expand, tokens)
    return transformers.GraniteMoeHybridForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("expand", [None, 2])
@pytest.mark.parametrize("name", list(SHAPES))
def test_transformers_computes_our_student(name, expand, tmp_path):
    if expand == 2 and name not in ("ratio2-hd32-k4-tied-middle", "ratio2-hd16-k2-tied-linear"):
        pytest.skip("zero-head padding: checked on two shapes")
    model = student(**SHAPES[name])
    hf = export(model, tmp_path / "granite", tmp_path, expand)
    assert hf.config.num_local_experts == 0 and hf.config.position_embedding_type == "rope"
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (2, 19))  # odd length, past one conv window
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    # greedy generation: transformers with its own (hybrid) cache against our static decode
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "granite")
    ours_tok = load_tokenizer(tmp_path / "ours")
    for text in ("the cat sat", "Ω ≈ 3, again and again and"):
        prompt = ours_tok.encode_text(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == prompt  # the same ids either way
        mine = generate(model, [prompt], max_new_tokens=12, stop_ids=ours_tok.stop_ids, decode="eager")[0]
        # transformers 5.24 cannot cache an all-Mamba GraniteMoeHybrid: the export says use_cache false there
        assert hf.config.use_cache == ("attention" in model.config.mixers)
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :]
        assert out.tolist() == mine
        text = ours_tok.decode([t for t in mine if t < 256])  # ours shows some specials (<image>); HF skips them
        assert tok.decode(out, skip_special_tokens=True) == text


def test_chat_template_renders_our_turns(tmp_path):
    model = student(**SHAPES["ratio2-hd16-k2-tied-linear"])
    export(model, tmp_path / "granite", tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "granite")
    ours = ByteTokenizer()
    got = tok.apply_chat_template([{"role": "user", "content": "hi there"}], add_generation_prompt=True)
    if isinstance(got, dict) or hasattr(got, "input_ids"):
        got = got["input_ids"]
    assert list(got) == ours.user_turn("hi there")


@pytest.mark.parametrize("name", ["ratio3-hd16-k4-untied-last", "ratio1-hd32-k3-bias-D-two-kept"])
@pytest.mark.parametrize("expand", [None, 3])
def test_export_import_export_is_bit_exact(name, expand, tmp_path):
    model = student(**SHAPES[name])
    save_checkpoint(model, tmp_path / "ours", extra=ByteTokenizer().save)
    assert main(["export", "--format", "granite-hybrid", "--model", str(tmp_path / "ours"), "--out",
                 str(tmp_path / "a")] + (["--mamba-expand", str(expand)] if expand else [])) == 0  # fmt: skip
    assert main(["import", "granite-hybrid", str(tmp_path / "a"), "--out", str(tmp_path / "back")]) == 0
    back = load_checkpoint(tmp_path / "back")
    assert back.config.mixers == model.config.mixers
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert main(["export", "--format", "granite-hybrid", "--model", str(tmp_path / "back"), "--out",
                 str(tmp_path / "b")] + (["--mamba-expand", str(expand)] if expand else [])) == 0  # fmt: skip
    for f in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    direct = load_checkpoint(tmp_path / "a")  # the folder also loads wherever a model folder is accepted
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(direct(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_import_refuses_a_broken_tokenizer_before_writing(tmp_path, capsys):
    model = student(**SHAPES["ratio2-hd16-k2-tied-linear"])
    save_checkpoint(model, tmp_path / "ours", extra=ByteTokenizer().save)
    assert main(["export", "--format", "granite-hybrid", "--model", str(tmp_path / "ours"), "--out",
                 str(tmp_path / "a")]) == 0  # fmt: skip
    (tmp_path / "a" / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    capsys.readouterr()
    assert main(["import", "granite-hybrid", str(tmp_path / "a"), "--out", str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tokenizer" in err and str(tmp_path / "a") in err, err
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize(
    "key, value",
    [("mamba_n_heads", 0), ("mamba_d_state", "64"), ("mamba_chunk_size", 0), ("mamba_d_conv", "2"),
     ("rms_norm_eps", "tiny"), ("rms_norm_eps", [1]), ("rope_parameters", [1, 2]), ("rope_parameters", "default"),
     ("rope_parameters", {"rope_theta": "abc"}), ("time_step_limit", 5), ("time_step_limit", []),
     ("time_step_limit", [0, "inf"]), ("layer_types", [{"a": 1}, "mamba"]), ("mamba_conv_bias", "false"),
     ("mamba_proj_bias", "no"), ("tie_word_embeddings", "false"), ("mamba_expand", 1000),
     ("max_position_embeddings", "long"), ("rope_scaling", {"type": "linear"}), ("num_hidden_layers", 7)],
)  # fmt: skip
def test_import_names_a_bad_config_field_before_anything_else(tmp_path, capsys, key, value):
    model = student(**SHAPES["ratio2-hd16-k2-tied-linear"])
    save_checkpoint(model, tmp_path / "ours", extra=ByteTokenizer().save)
    assert main(["export", "--format", "granite-hybrid", "--model", str(tmp_path / "ours"), "--out",
                 str(tmp_path / "a")]) == 0  # fmt: skip
    raw = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**raw, key: value}))
    capsys.readouterr()
    assert main(["import", "granite-hybrid", str(tmp_path / "a"), "--out", str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "config.json: " in err and "Traceback" not in err, err
    assert key in err or json.dumps(value) in err or "wrong type" in err, err
    assert "tokenizer" not in err, err  # the config is checked before the tokenizer


def refused(model, tmp_path, match):
    with pytest.raises(MmmambaError, match=match):
        export_granite(model, tmp_path / "x")


def test_what_the_layout_cannot_express_is_refused(tmp_path):
    base = SHAPES["ratio2-hd16-k2-tied-linear"]
    norm_first = student(**{**base, "mamba": {"gate_order": "norm-first"}})
    refused(norm_first, tmp_path, "norm-first; convert with --gate-order gate-first")
    refused(student(**{**base, "mamba": {"qk_norm": True}}), tmp_path, "q/k norm")
    hybrid = student(heads=4, kv_heads=2, head_dim=16, kernel=2, tied=False, keep=[0, 2])
    hybrid.layers[2].mixer.cfg.rope_theta = 1e6  # a per-layer RoPE base
    refused(hybrid, tmp_path, "RoPE bases .* differ between layers")
    wide = student(heads=4, kv_heads=2, head_dim=16, kernel=2, tied=False, keep=[1], hidden_size=48)
    refused(wide, tmp_path, "derive an attention layer's head_dim")
    vlm = DecoderConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16,
                        intermediate_size=40, vision={"image_size": 8, "patch_size": 4}, image_token_id=5)  # fmt: skip
    refused(convert_to_mamba(Decoder(vlm), [], mamba={"gate_order": "gate-first"}), tmp_path, "vision stem")
    with pytest.raises(MmmambaError, match="--mamba-expand 1"):
        export_granite(student(heads=3, kv_heads=3, head_dim=16, kernel=2, tied=False, keep=[], hidden_size=32),
                       tmp_path / "y", expand=1)  # fmt: skip


def test_cli_refusals_are_one_line_exit_2(tmp_path, capsys):
    model = student(**{**SHAPES["ratio2-hd16-k2-tied-linear"], "mamba": {"gate_order": "norm-first"}})
    save_checkpoint(model, tmp_path / "ours", extra=ByteTokenizer().save)
    assert main(["export", "--format", "granite-hybrid", "--model", str(tmp_path / "ours"), "--out",
                 str(tmp_path / "g")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--gate-order gate-first" in err
    assert main(["export", "--format", "mmmamba-official", "--model", str(tmp_path / "ours"), "--out",
                 str(tmp_path / "o"), "--mamba-expand", "2"]) == 2  # fmt: skip
    assert "only for --format granite-hybrid" in capsys.readouterr().err


def test_import_refuses_what_our_mixer_cannot_hold(tmp_path):
    model = student(**SHAPES["ratio3-hd16-k4-untied-last"])
    export(model, tmp_path / "g", tmp_path, expand=2)
    from safetensors.torch import load_file, save_file

    clean = load_file(tmp_path / "g/model.safetensors")
    cases = {
        "in_proj x differs between the heads of one KV group": ("model.layers.0.mamba.in_proj.weight", 12 * 16 + 3),
        "norm weight differs between heads": ("model.layers.0.mamba.norm.weight", 20),
        "not zero padding": ("model.layers.1.mamba.out_proj.weight", None),
    }
    for match, (name, row) in cases.items():
        t = {k: v.clone() for k, v in clean.items()}
        if row is None:
            t[name][:, -1] = 1.0  # a padded head's out_proj column
        else:
            t[name][row] += 1.0
        save_file(t, str(tmp_path / "g/model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(MmmambaError, match=match):
            load_checkpoint(tmp_path / "g")
    raw = json.loads((tmp_path / "g/config.json").read_text())
    save_file(clean, str(tmp_path / "g/model.safetensors"), metadata={"format": "pt"})
    changes = [("num_local_experts", 4, "no experts"), ("position_embedding_type", None, "NoPE"),
               ("mamba_n_groups", 1, "n_groups = n_heads"), ("logits_scaling", 2.0, "multiplier"),
               ("mamba_d_conv", "2", 'config.json: mamba_d_conv = "2"'), ("mamba_n_heads", 0, "mamba_n_heads = 0"),
               ("vocab_size", True, "config.json: vocab_size")]  # fmt: skip
    for key, value, match in changes:
        (tmp_path / "g/config.json").write_text(json.dumps({**raw, key: value}))
        with pytest.raises(MmmambaError, match=match):
            load_checkpoint(tmp_path / "g")
