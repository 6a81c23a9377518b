"""Per-family weight names and config fields of Hugging Face teachers, as data.

Every family maps onto the same ``Decoder``; a family is a table of top-level names, per-layer
names, the stacks of layers it has (HoVLE: holistic-embedding layers, then the LLM's), and how to
read its config. InternLM2's packed ``wqkv`` is unpacked by ``split_packed_qkv``.
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


@dataclass(frozen=True)
class Family:
    top: dict[str, str]  # HF name prefix → ours (whole-name or dotted-prefix match)
    stacks: tuple[tuple[str, dict[str, str]], ...]  # (HF layer-list prefix, per-layer table), in stack order
    qkv_bias: bool = False
    ignored: tuple[str, ...] = field(default=(r"\.rotary_emb\.inv_freq$",))


LLAMA = Family(
    top={"model.embed_tokens": "embed_tokens", "model.norm": "norm", "lm_head": "lm_head"},
    stacks=(("model.layers", LLAMA_LAYER),),
)
INTERNLM2 = Family(
    top={"model.tok_embeddings": "embed_tokens", "model.norm": "norm", "output": "lm_head"},
    stacks=(("model.layers", INTERNLM2_LAYER),),
)
HOVLE = Family(
    top={
        "language_model.model.tok_embeddings": "embed_tokens",
        "language_model.model.norm": "norm",
        "language_model.output": "lm_head",
        "embedding_model.embeddings.patch_embedding": "vision.patch_embedding",
        "embedding_model.embeddings.position_embedding": "vision.position_embedding",
        "embedding_model.mlp1": "vision.projector",
    },
    stacks=(("embedding_model.layers", INTERNLM2_LAYER), ("language_model.model.layers", INTERNLM2_LAYER)),
)
FAMILIES = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": Family(LLAMA.top, LLAMA.stacks, qkv_bias=True),
    "InternLM2ForCausalLM": INTERNLM2,
    "HoVLE": HOVLE,  # any architecture name starting with "HoVLE"
}


def family_of(arch: str) -> str | None:
    if arch.startswith("HoVLE"):
        return "HoVLE"
    return arch if arch in FAMILIES else None


def map_names(family: Family, names, layer_counts: list[int]) -> dict[str, str | None]:
    """HF tensor name → our name (None: no place in the model). Stacks are numbered one after another."""
    out: dict[str, str | None] = {}
    offsets = [sum(layer_counts[:i]) for i in range(len(layer_counts))]
    for name in names:
        out[name] = None
        for prefix, ours in family.top.items():
            if name == prefix or name.startswith(prefix + "."):
                out[name] = ours + name[len(prefix) :]
                break
        for (prefix, table), offset in zip(family.stacks, offsets):
            m = re.fullmatch(re.escape(prefix) + r"\.(\d+)\.(.+)\.(weight|bias)", name)
            if m and m[2] in table:
                out[name] = f"layers.{int(m[1]) + offset}.{table[m[2]]}.{m[3]}"
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
