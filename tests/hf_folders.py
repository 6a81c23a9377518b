"""Tiny Hugging Face-style teacher folders written on the fly (no downloads): tokenizer, InternLM2, HoVLE."""

import json

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmmamba.models.hf_families import pack_qkv

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
CORPUS = ["what is in the picture?", "a red square and a blue circle", "count the shapes: 1 2 3 4 5", "hello there"]


def write_tokenizer(folder, chat_template=CHATML):
    """A byte-level BPE tokenizer (~300 ids) with chat and image special tokens, saved as HF files."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[3:],
    )
    tok.chat_template = chat_template
    tok.save_pretrained(folder)
    return tok


def random_llm_tensors(prefix, n_layers, hidden, heads, kv_heads, inter, gen):
    """InternLM2-named layer tensors under ``prefix`` (random, norms near 1)."""
    hd = hidden // heads
    out = {}
    for i in range(n_layers):
        p = f"{prefix}.{i}."
        q, k, v = (torch.randn(n * hd, hidden, generator=gen) * 0.2 for n in (heads, kv_heads, kv_heads))
        out[p + "attention.wqkv.weight"] = pack_qkv(q, k, v, kv_heads, hd)
        out[p + "attention.wo.weight"] = torch.randn(hidden, heads * hd, generator=gen) * 0.2
        for name, shape in (("w1", (inter, hidden)), ("w3", (inter, hidden)), ("w2", (hidden, inter))):
            out[p + f"feed_forward.{name}.weight"] = torch.randn(*shape, generator=gen) * 0.2
        for name in ("attention_norm", "ffn_norm"):
            out[p + f"{name}.weight"] = 1 + 0.1 * torch.randn(hidden, generator=gen)
    return out


HOVLE_SHAPE = dict(hidden=32, heads=4, kv_heads=2, inter=64, holistic=2, llm=2, image_size=56, patch=14)


def write_hovle(folder, seed=0):
    """A tiny HoVLE-layout folder: holistic layers + InternLM2 layers, InternVL-style image front-end."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(folder)
    s, g = HOVLE_SHAPE, torch.Generator().manual_seed(seed)
    d, vocab = s["hidden"], len(tok)
    patches = (s["image_size"] // s["patch"]) ** 2
    tensors = {
        "embedding_model.embeddings.patch_embedding.weight": torch.randn(d, 3, s["patch"], s["patch"], generator=g)
        * 0.05,
        "embedding_model.embeddings.patch_embedding.bias": torch.randn(d, generator=g) * 0.1,
        "embedding_model.embeddings.position_embedding": torch.randn(1, patches, d, generator=g) * 0.1,
        "embedding_model.mlp1.0.weight": 1 + 0.1 * torch.randn(4 * d, generator=g),
        "embedding_model.mlp1.0.bias": 0.1 * torch.randn(4 * d, generator=g),
        "embedding_model.mlp1.1.weight": torch.randn(d, 4 * d, generator=g) * 0.1,
        "embedding_model.mlp1.1.bias": 0.1 * torch.randn(d, generator=g),
        "embedding_model.mlp1.3.weight": torch.randn(d, d, generator=g) * 0.2,
        "embedding_model.mlp1.3.bias": 0.1 * torch.randn(d, generator=g),
        "language_model.model.tok_embeddings.weight": torch.randn(vocab, d, generator=g),
        "language_model.model.norm.weight": 1 + 0.1 * torch.randn(d, generator=g),
        "language_model.output.weight": torch.randn(vocab, d, generator=g) * 0.2,
    }
    shape = (d, s["heads"], s["kv_heads"], s["inter"])
    tensors |= random_llm_tensors("embedding_model.layers", s["holistic"], *shape, g)
    tensors |= random_llm_tensors("language_model.model.layers", s["llm"], *shape, g)
    save_file(tensors, str(folder / "model.safetensors"))
    llm = dict(
        architectures=["InternLM2ForCausalLM"],
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=s["llm"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        intermediate_size=s["inter"],
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        max_position_embeddings=2048,
        bias=False,
    )
    config = {
        "architectures": ["HoVLE"],
        "llm_config": llm,
        "embedding_config": {"num_hidden_layers": s["holistic"], "image_size": s["image_size"], "patch_size": 14},
        "downsample_ratio": 0.5,
        "force_image_size": s["image_size"],
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 6,
        "use_thumbnail": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return tensors, tok
