"""Tiny Hugging Face-style teacher folders written on the fly (no downloads): tokenizer, InternLM2, HoVLE."""

import json

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmmamba.formats.hf_families import pack_qkv

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
CORPUS = ["what is in the picture?", "a red square and a blue circle", "count the shapes: 1 2 3 4 5", "hello there"]


def write_tokenizer(folder, chat_template=CHATML, specials=SPECIALS):
    """A byte-level BPE tokenizer (~300 ids) with chat and (by default) image special tokens, saved as HF files."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
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


def random_mamba_tensors(prefix, layer, hidden, heads, kv_heads, gen):
    """A released mmMamba student's Mamba-2 mixer tensors for one layer (random; decays kept moderate)."""
    hd = hidden // heads
    rows = 2 * kv_heads * hd + 2 * heads * hd + heads
    conv = (2 * kv_heads + heads) * hd
    p = f"{prefix}.{layer}.attention."
    return {
        p + "wvkqgdt.weight": torch.randn(rows, hidden, generator=gen) * 0.2,
        p + "o_proj.weight": torch.randn(hidden, heads * hd, generator=gen) * 0.2,
        p + "conv1d.weight": torch.randn(conv, 1, 2, generator=gen) * 0.5,
        p + "conv1d.bias": torch.randn(conv, generator=gen) * 0.1,
        p + "g_norm_swish_gate.weight": 1 + 0.1 * torch.randn(hd, generator=gen),
        p + "dt_bias": torch.randn(heads, generator=gen) * 0.5 - 1.0,
        p + "A_log_bias": torch.randn(heads, generator=gen) * 0.5,
    }


def hovle_tensors(
    vocab, llm_vocab, specials, stored_grid, s, gen, llm="InternLM2ForCausalLM", blocks=None, holistic_shape=None
):
    """Every tensor of a HoVLE (or released mmMamba) model under the official names.

    ``holistic_shape`` (heads, kv_heads, inter): the holistic stack's own, when it differs from the LLM's."""
    d, patch = s["hidden"], s["patch"]
    tensors = {
        "embedding_model.vision_embeddings.patch_embedding.weight": torch.randn(d, 3, patch, patch, generator=gen)
        * 0.05,
        "embedding_model.vision_embeddings.patch_embedding.bias": torch.randn(d, generator=gen) * 0.1,
        "embedding_model.vision_embeddings.position_embedding": torch.randn(1, stored_grid**2 + 1, d, generator=gen),
        "embedding_model.vision_embeddings.class_embedding": torch.randn(1, 1, d, generator=gen),
        "embedding_model.llm_text_embeddings.weight": torch.randn(llm_vocab, d, generator=gen),
        "embedding_model.pixel_shuffle_proj.0.weight": torch.randn(d, 4 * d, generator=gen) * 0.1,
        "embedding_model.pixel_shuffle_proj.0.bias": 0.1 * torch.randn(d, generator=gen),
        "embedding_model.pixel_shuffle_proj.2.weight": torch.randn(d, d, generator=gen) * 0.2,
        "embedding_model.pixel_shuffle_proj.2.bias": 0.1 * torch.randn(d, generator=gen),
    }
    if specials:
        tensors["embedding_model.special_text_embeddings.weight"] = torch.randn(specials, d, generator=gen)
    shape = (d, s["heads"], s["kv_heads"], s["inter"])
    own = (d, *holistic_shape) if holistic_shape else shape
    tensors |= random_llm_tensors("embedding_model.encoder", s["holistic"], *own, gen)
    if llm == "InternLM2ForCausalLM":
        tensors |= random_llm_tensors("language_model.model.layers", s["llm"], *shape, gen)
        tensors |= {
            "language_model.model.tok_embeddings.weight": torch.randn(vocab, d, generator=gen),  # never read
            "language_model.model.norm.weight": 1 + 0.1 * torch.randn(d, generator=gen),
            "language_model.output.weight": torch.randn(vocab, d, generator=gen) * 0.2,
        }
    else:  # Llama names under language_model.
        tensors |= random_llama_tensors("language_model.model.layers", s["llm"], *shape, gen)
        tensors |= {
            "language_model.model.embed_tokens.weight": torch.randn(vocab, d, generator=gen),  # never read
            "language_model.model.norm.weight": 1 + 0.1 * torch.randn(d, generator=gen),
            "language_model.lm_head.weight": torch.randn(vocab, d, generator=gen) * 0.2,
        }
    for i, kind in enumerate(blocks or []):
        prefix = "embedding_model.encoder" if i < s["holistic"] else "language_model.model.layers"
        layer = i if i < s["holistic"] else i - s["holistic"]
        if kind == "mamba2":
            for name in ("wqkv", "wo"):
                del tensors[f"{prefix}.{layer}.attention.{name}.weight"]
            heads = own[1:3] if i < s["holistic"] else shape[1:3]
            tensors |= random_mamba_tensors(prefix, layer, d, *heads, gen)
    return tensors


def random_llama_tensors(prefix, n_layers, hidden, heads, kv_heads, inter, gen):
    hd = hidden // heads
    out = {}
    for i in range(n_layers):
        p = f"{prefix}.{i}."
        for name, rows in (("q_proj", heads * hd), ("k_proj", kv_heads * hd), ("v_proj", kv_heads * hd)):
            out[p + f"self_attn.{name}.weight"] = torch.randn(rows, hidden, generator=gen) * 0.2
        out[p + "self_attn.o_proj.weight"] = torch.randn(hidden, heads * hd, generator=gen) * 0.2
        for name, shape in (
            ("gate_proj", (inter, hidden)),
            ("up_proj", (inter, hidden)),
            ("down_proj", (hidden, inter)),
        ):
            out[p + f"mlp.{name}.weight"] = torch.randn(*shape, generator=gen) * 0.2
        for name in ("input_layernorm", "post_attention_layernorm"):
            out[p + f"{name}.weight"] = 1 + 0.1 * torch.randn(hidden, generator=gen)
    return out


def write_hovle(
    folder,
    seed=0,
    normalize=True,
    specials=0,
    stored_image_size=None,
    pixel_shuffle_loc="pre",
    arch="InternVLChatModel",
    llm="InternLM2ForCausalLM",
    blocks=None,
    embedding_overrides=None,
    chat_template=CHATML,
    template="internlm2-chat",
    specials_extra=(),
):
    """A tiny folder as HoVLE's official code saves it (``blocks``: a released mmMamba student instead,
    with one "mamba2"/"mha" per layer, holistic layers first). ``chat_template=None``: a tokenizer without
    one, as HoVLE's releases ship it (the config's ``template`` names its conversation format instead).
    Returns (tensors, tokenizer, config)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(folder, chat_template, SPECIALS + list(specials_extra))
    s, g = HOVLE_SHAPE, torch.Generator().manual_seed(seed)
    d, vocab = s["hidden"], len(tok)
    llm_vocab = vocab - specials  # the last `specials` ids are embedded by special_text_embeddings
    stored = stored_image_size or s["image_size"]
    stack = dict(
        hidden_size=d,
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        intermediate_size=s["inter"],
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        rope_scaling=None,
        max_position_embeddings=2048,
    )
    llm_cfg = dict(
        architectures=[llm], vocab_size=vocab, num_hidden_layers=s["llm"], **stack, tie_word_embeddings=False
    )
    if llm == "InternLM2ForCausalLM":
        llm_cfg |= dict(model_type="internlm2", bias=False)
    embedding = dict(
        model_type="holistic_embedding",
        num_hidden_layers=s["holistic"],
        num_channels=3,
        patch_size=s["patch"],
        image_size=stored,
        **stack,
        attention_bias=False,
        use_ls=False,
        special_token_maps={f"<special_{i}>": llm_vocab + i for i in range(specials)},
        llm_vocab_size=llm_vocab,
        llm_hidden_size=d,
        downsample_ratio=0.5,
        img_context_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        pixel_shuffle_loc=pixel_shuffle_loc,
        use_pixel_shuffle_proj=True,
    ) | (embedding_overrides or {})
    keys = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
    holistic_shape = tuple(embedding[k] for k in keys)  # the tensors follow the stack's own config
    tensors = hovle_tensors(vocab, llm_vocab, specials, stored // s["patch"], s, g, llm, blocks, holistic_shape)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {
        "architectures": [arch],
        "model_type": "internvl_chat",
        "embedding_config": embedding,
        "llm_config": llm_cfg,
        "downsample_ratio": 0.5,
        "force_image_size": s["image_size"],
        "dynamic_image_size": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 6,
        "use_thumbnail": True,
        "normalize_encoder_output": normalize,
        "template": template,
        "select_layer": -1,
        "ps_version": "v2",
    }
    if blocks is not None:
        config |= {"architectures": ["mmMambaChatModel"], "model_type": "mmMamba_chat"}
        embedding |= {"model_type": "mmMamba_embedding", "layers_block_type": blocks[: s["holistic"]]}
        llm_cfg |= {"architectures": ["mmMambaForCausalLM"], "model_type": "mmMamba"}
        llm_cfg["layers_block_type"] = blocks[s["holistic"] :]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return tensors, tok, config
