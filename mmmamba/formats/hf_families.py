"""Per-family weight names and config fields of Hugging Face teachers, as data.

Every family maps onto the same ``Decoder``; a family is a table of top-level names, per-layer
names, the stacks of layers it has (HoVLE: holistic-embedding layers, then the LLM's), and the
tensors its forward never reads. InternLM2's packed ``wqkv`` is unpacked by ``split_packed_qkv``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MmmambaError

LLAMA_LAYER = {
    "self_attn.q_proj": "mixer.q_proj",
    "self_attn.k_proj": "mixer.k_proj",
    "self_attn.v_proj": "mixer.v_proj",
    "self_attn.o_proj": "mixer.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_norm",
}
INTERNLM2_LAYER = {
    "attention.wqkv": "mixer.wqkv",  # packed; split into q/k/v_proj after renaming
    "attention.wo": "mixer.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_norm",
    "ffn_norm": "post_norm",
}


# The released mmMamba students (``modeling_mmMamba*.py``): a Mamba-2 layer's mixer tensors. The
# packed ``wvkqgdt`` and the (C, 1, k) conv weight are unpacked after renaming (``official.py``).
MMMAMBA_MAMBA_LAYER = {
    "attention.wvkqgdt": "mixer.wvkqgdt",
    "attention.o_proj": "mixer.o_proj",
    "attention.conv1d.weight": "mixer.conv_weight",
    "attention.conv1d.bias": "mixer.conv_bias",
    "attention.g_norm_swish_gate": "mixer.out_norm",
    "attention.dt_bias": "mixer.dt_bias",
    "attention.A_log_bias": "mixer.A_log",
}


@dataclass(frozen=True)
class Family:
    top: dict[str, str]  # HF name prefix → ours (whole-name or dotted-prefix match)
    stacks: tuple[tuple[str, dict[str, str]], ...]  # (HF layer-list prefix, per-layer table), in stack order
    qkv_bias: bool = False
    ignored: tuple[str, ...] = field(default=(r"\.rotary_emb\.inv_freq$",))  # tensors the forward never reads


LLAMA = Family(
    top={"model.embed_tokens": "embed_tokens", "model.norm": "norm", "lm_head": "lm_head"},
    stacks=(("model.layers", LLAMA_LAYER),),
)
INTERNLM2 = Family(
    top={"model.tok_embeddings": "embed_tokens", "model.norm": "norm", "output": "lm_head"},
    stacks=(("model.layers", INTERNLM2_LAYER),),
)
FAMILIES = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": Family(LLAMA.top, LLAMA.stacks, qkv_bias=True),
    "InternLM2ForCausalLM": INTERNLM2,
}
HOVLE_LLMS = ("InternLM2ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")
HOVLE_FRONT = {  # HolisticEmbedding's own tensors (hovle/modeling_holistic_embedding.py)
    "embedding_model.llm_text_embeddings": "embed_tokens",  # embeds the text for the whole model
    "embedding_model.special_text_embeddings": "special_embeddings",
    "embedding_model.vision_embeddings.patch_embedding": "vision.patch_embedding",
    "embedding_model.vision_embeddings.position_embedding": "vision.position_embedding",
    "embedding_model.vision_embeddings.class_embedding": "vision.class_embedding",
    "embedding_model.pixel_shuffle_proj": "vision.projector",  # .0 Linear(4C→C), .1 GELU, .2 Linear(C→C)
}


def holistic_family(llm_arch: str, student: bool) -> Family:
    """HoVLE (``InternVLChatModel``) or a released mmMamba student (``mmMambaChatModel``): the
    holistic-embedding stack ``embedding_model.encoder.N`` (InternLM2 names), then the LLM stack
    under ``language_model.``. The LLM's own token table is never read by the forward (text is
    embedded by ``llm_text_embeddings``), so it is ignored."""
    llm = FAMILIES[llm_arch]
    ((llm_prefix, llm_layer),) = llm.stacks
    llm_embed = next(k for k, v in llm.top.items() if v == "embed_tokens")
    mamba = MMMAMBA_MAMBA_LAYER if student else {}
    return Family(
        top={**HOVLE_FRONT, **{f"language_model.{k}": v for k, v in llm.top.items() if v != "embed_tokens"}},
        stacks=(
            ("embedding_model.encoder", INTERNLM2_LAYER | mamba),
            (f"language_model.{llm_prefix}", llm_layer | mamba),
        ),
        qkv_bias=llm.qkv_bias,
        ignored=(r"\.rotary_emb\.inv_freq$", "^" + re.escape(f"language_model.{llm_embed}.weight") + "$"),
    )


def map_names(family: Family, names, layer_counts: list[int]) -> dict[str, str | None]:
    """HF tensor name → our name (None: no place in the model). Stacks are numbered one after another.

    A per-layer table maps module names (the tensor's leaf name is kept) or whole tensor names.
    """
    out: dict[str, str | None] = {}
    offsets = [sum(layer_counts[:i]) for i in range(len(layer_counts))]
    for name in names:
        out[name] = None
        for prefix, ours in family.top.items():
            if name == prefix or name.startswith(prefix + "."):
                out[name] = ours + name[len(prefix) :]
                break
        for (prefix, table), offset, count in zip(family.stacks, offsets, layer_counts):
            m = re.fullmatch(re.escape(prefix) + r"\.(\d+)\.(.+)", name)
            if not m or int(m[1]) >= count:
                continue
            module, _, leaf = m[2].rpartition(".")
            if m[2] in table:
                out[name] = f"layers.{int(m[1]) + offset}.{table[m[2]]}"
            elif module in table:
                out[name] = f"layers.{int(m[1]) + offset}.{table[module]}.{leaf}"
    return out


def split_packed_qkv(wqkv: torch.Tensor, num_kv_heads: int, num_heads: int, head_dim: int):
    """InternLM2 ``wqkv`` rows, per KV head h: its group's query heads, then k_h, then v_h → (q, k, v).

    Query head order is preserved (KV head h serves query heads h·g … h·g+g−1), as in grouped attention.
    """
    g = num_heads // num_kv_heads
    w = wqkv.reshape(num_kv_heads, g + 2, head_dim, *wqkv.shape[1:])  # (kv, g+2, hd, in)
    q = w[:, :g].reshape(num_heads * head_dim, *wqkv.shape[1:])
    return q, w[:, g].reshape(num_kv_heads * head_dim, *wqkv.shape[1:]), w[:, g + 1].reshape(-1, *wqkv.shape[1:])


def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """The inverse of ``split_packed_qkv`` (used to write InternLM2-layout checkpoints in tests and tools)."""
    rest = q.shape[1:]
    q = q.reshape(num_kv_heads, -1, head_dim, *rest)
    k, v = (t.reshape(num_kv_heads, 1, head_dim, *rest) for t in (k, v))
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def token_id_from_files(folder: Path, token: str) -> int | None:
    """A special token's id read from the tokenizer files (no tokenizer code is run)."""
    added = folder / "added_tokens.json"
    if added.is_file() and token in (ids := json.loads(added.read_text())):
        return int(ids[token])
    tj = folder / "tokenizer.json"
    if tj.is_file():
        spec = json.loads(tj.read_text())
        for t in spec.get("added_tokens", []):
            if t.get("content") == token:
                return int(t["id"])
        vocab = (spec.get("model") or {}).get("vocab")
        if isinstance(vocab, dict) and token in vocab:
            return int(vocab[token])
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        for i, t in (json.loads(cfg.read_text()).get("added_tokens_decoder") or {}).items():
            if t.get("content") == token:
                return int(i)
    return None


def require(raw: dict, key: str, where: str):
    if key not in raw:
        raise MmmambaError(f"{where}: '{key}' is missing; the folder's config.json is incomplete")
    return raw[key]
