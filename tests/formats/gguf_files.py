"""Tiny GGUF files written with ``gguf.GGUFWriter``, the way llama.cpp's converter writes a Llama.

A random ``transformers.LlamaForCausalLM`` is the source: its q/k rows are permuted for llama.cpp's
RoPE (``permute_rope_rows``), its matrices quantized to a mix of types, and a byte-level BPE
tokenizer (256 byte tokens, a few merges, ChatML specials) and a ChatML template go in the header.
"""

from __future__ import annotations

import numpy as np
import torch

from mmmamba.formats.gguf import permute_rope_rows

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ROPE_THETA = 10000.0
MERGES = ("Ġ t", "h e", "Ġt he", "i s", "Ġ a")
# Per GGUF name suffix: the type it is stored in (every supported kind appears at least once).
TYPES = {
    "token_embd": "Q8_0",
    "attn_q": "Q4_0",
    "attn_k": "Q4_1",
    "attn_v": "Q8_0",
    "attn_output": "F16",
    "ffn_gate": "BF16",
    "ffn_up": "Q4_1",
    "ffn_down": "F32",
    "output": "Q8_0",
}
LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tokenizer_vocab() -> list[str]:
    merged = [a + b for a, b in (m.split(" ") for m in MERGES)]
    return byte_tokens() + merged + list(SPECIALS)


def hf_llama(tie: bool = False, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tokenizer_vocab()),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=tie,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + 1.0)
            else:
                p.copy_(torch.randn_like(p) * 0.2)
    return model


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, n, rest = hf_name.split(".", 3)
    module = rest.rsplit(".", 1)[0]
    return f"blk.{n}.{LAYER[module]}.weight"


def roundtrip(w: np.ndarray, kind: str) -> np.ndarray:
    """What a tensor stored as ``kind`` reads back as (float32)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).astype(np.float32)


def write_gguf(
    path, model, arch: str = "llama", types: dict | None = None, extra: dict | None = None
) -> dict[str, torch.Tensor]:
    """Write ``model`` as a GGUF file (plus ``extra`` float32 tensors by GGUF name, e.g. ``rope_freqs.weight``);
    returns the HF tensors as the file stores them (after quantization)."""
    import gguf

    types = {**TYPES, **(types or {})}
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(3)
    add_tokenizer(w)
    stored = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        g = gguf_name(name)
        x = t.detach().float().numpy()
        if ".attn_q." in g:
            x = permute_rope_rows(torch.from_numpy(x), cfg.num_attention_heads).numpy()
        elif ".attn_k." in g:
            x = permute_rope_rows(torch.from_numpy(x), cfg.num_key_value_heads).numpy()
        kind = "F32" if x.ndim == 1 else types[g.split(".")[-2]]
        qtype = gguf.GGMLQuantizationType[kind]
        data = x if kind == "F32" else gguf.quants.quantize(x, qtype)
        w.add_tensor(g, data, raw_dtype=None if kind == "F32" else qtype)
        back = torch.from_numpy(x if kind == "F32" else roundtrip(x, kind))
        if ".attn_q." in g or ".attn_k." in g:  # stored rows are permuted; report HF order
            heads = cfg.num_attention_heads if ".attn_q." in g else cfg.num_key_value_heads
            from mmmamba.formats.gguf import unpermute_rope_rows

            back = unpermute_rope_rows(back, heads)
        stored[name] = back
    for g, x in (extra or {}).items():
        w.add_tensor(g, np.asarray(x, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def add_tokenizer(w) -> None:
    """The tiny ChatML byte-level BPE tokenizer's keys, as llama.cpp's converter writes them."""
    vocab = tokenizer_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    w.add_token_merges(list(MERGES))
    w.add_bos_token_id(vocab.index("<|im_start|>"))
    w.add_eos_token_id(vocab.index("<|im_end|>"))
    w.add_unk_token_id(vocab.index("<|endoftext|>"))
    w.add_pad_token_id(vocab.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)


def write_vocab_gguf(path, arch: str = "gpt2", tokenizer: bool = True) -> None:
    """A vocabulary-only GGUF file (no tensors), like the ``models/ggml-vocab-*.gguf`` llama.cpp ships."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    if tokenizer:
        add_tokenizer(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
