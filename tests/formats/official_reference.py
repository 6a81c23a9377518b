"""A small float32 forward of HoVLE and of the released mmMamba students, written from the facts of
their official modeling code (issue #11), straight from the folder's tensors and config.json.

Deliberately plain (loops over tokens, heads and patches) so it shares nothing with our Decoder.
"""

import math

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x, positions, theta):
    """Non-interleaved RoPE: the two halves of each head rotate together. x (L, heads, hd)."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angle = positions[:, None].float() * inv[None]  # (L, hd/2)
    cos, sin = torch.cat([angle.cos()] * 2, -1)[:, None], torch.cat([angle.sin()] * 2, -1)[:, None]
    half = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
    return x * cos + half * sin


def unpack_wqkv(w, heads, kv_heads, hd):
    """InternLM2 rows, per KV head: its query heads, then its key, then its value."""
    g = heads // kv_heads
    q, k, v = [], [], []
    for h in range(kv_heads):
        block = w[h * (g + 2) * hd : (h + 1) * (g + 2) * hd]
        q.append(block[: g * hd])
        k.append(block[g * hd : (g + 1) * hd])
        v.append(block[(g + 1) * hd :])
    return torch.cat(q), torch.cat(k), torch.cat(v)


def attention(u, wq, wk, wv, wo, heads, kv_heads, theta):
    """Causal softmax attention with GQA; u (L, d)."""
    L = u.shape[0]
    hd = wq.shape[0] // heads
    q = rotate((u @ wq.T).view(L, heads, hd), torch.arange(L), theta)
    k = rotate((u @ wk.T).view(L, kv_heads, hd), torch.arange(L), theta)
    v = (u @ wv.T).view(L, kv_heads, hd)
    out = torch.zeros(L, heads, hd)
    for h in range(heads):
        kv = h // (heads // kv_heads)
        scores = q[:, h] @ k[:, kv].T / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(L, L).triu(1).bool(), float("-inf"))
        out[:, h] = scores.softmax(-1) @ v[:, kv]
    return out.reshape(L, heads * hd) @ wo.T


def mamba2(u, t, p, heads, kv_heads):
    """The released Mamba2 mixer, token by token; u (L, d)."""
    L = u.shape[0]
    hd = t[p + "o_proj.weight"].shape[1] // heads
    z = u @ t[p + "wvkqgdt.weight"].T
    n_vkq = (2 * kv_heads + heads) * hd
    vkq, gate, dt = z[:, :n_vkq], z[:, n_vkq : n_vkq + heads * hd], z[:, n_vkq + heads * hd :]
    w, b = t[p + "conv1d.weight"][:, 0], t[p + "conv1d.bias"]  # (C, 2): tap 1 = this token, tap 0 = the previous
    previous = torch.cat([torch.zeros(1, n_vkq), vkq[:-1]])
    vkq = F.silu(previous * w[:, 0] + vkq * w[:, 1] + b)
    v = vkq[:, : kv_heads * hd].view(L, kv_heads, hd)
    k = vkq[:, kv_heads * hd : 2 * kv_heads * hd].view(L, kv_heads, hd)
    q = vkq[:, 2 * kv_heads * hd :].view(L, heads, hd)
    delta = F.softplus(dt + t[p + "dt_bias"])  # (L, heads)
    A = -torch.exp(t[p + "A_log_bias"])
    y = torch.zeros(L, heads, hd)
    for h in range(heads):
        kv = h // (heads // kv_heads)
        state = torch.zeros(hd, hd)  # (value dim, key dim)
        for s in range(L):
            state = torch.exp(delta[s, h] * A[h]) * state + delta[s, h] * torch.outer(v[s, kv], k[s, kv])
            y[s, h] = state @ q[s, h]
    gated = rms_norm(y, t[p + "g_norm_swish_gate.weight"], 1e-5) * F.silu(gate.view(L, heads, hd))
    return gated.reshape(L, heads * hd) @ t[p + "o_proj.weight"].T


def internlm2_layer(x, t, p, cfg, kind="mha"):
    eps, heads, kv_heads = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    u = rms_norm(x, t[p + "attention_norm.weight"], eps)
    if kind == "mamba2":
        x = x + mamba2(u, t, p + "attention.", heads, kv_heads)
    else:
        hd = cfg["hidden_size"] // heads
        wq, wk, wv = unpack_wqkv(t[p + "attention.wqkv.weight"], heads, kv_heads, hd)
        x = x + attention(u, wq, wk, wv, t[p + "attention.wo.weight"], heads, kv_heads, cfg["rope_theta"])
    u = rms_norm(x, t[p + "ffn_norm.weight"], eps)
    w1, w2, w3 = (t[p + f"feed_forward.{n}.weight"] for n in ("w1", "w2", "w3"))
    return x + (F.silu(u @ w1.T) * (u @ w3.T)) @ w2.T


def llama_layer(x, t, p, cfg):
    eps, heads, kv_heads = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    u = rms_norm(x, t[p + "input_layernorm.weight"], eps)
    wq, wk, wv, wo = (t[p + f"self_attn.{n}_proj.weight"] for n in "qkvo")
    x = x + attention(u, wq, wk, wv, wo, heads, kv_heads, cfg["rope_theta"])
    u = rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
    gate, up, down = (t[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
    return x + (F.silu(u @ gate.T) * (u @ up.T)) @ down.T


def image_tokens(t, emb, pixels):
    """Tiles (n, 3, S, S) → (n·tokens, d): conv patches, resized positions, 2×2 shuffle, projector."""
    pre = "embedding_model.vision_embeddings."
    patch = emb["patch_size"]
    x = F.conv2d(pixels, t[pre + "patch_embedding.weight"], t[pre + "patch_embedding.bias"], stride=patch)
    n, d, gh, gw = x.shape
    stored = emb["image_size"] // patch
    table = t[pre + "position_embedding"][0, 1:]  # the first row is the class slot: skipped
    grid = table.reshape(stored, stored, d).permute(2, 0, 1)[None]
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)[0]  # (d, gh, gw)
    x = x + grid[None]
    out = []
    for i in range(n):
        for a in range(gh // 2):
            for c in range(gw // 2):  # block rows slowest, then columns, then channels
                out.append(torch.cat([x[i, :, 2 * a + di, 2 * c + dj] for di in (0, 1) for dj in (0, 1)]))
    merged = torch.stack(out)
    proj = "embedding_model.pixel_shuffle_proj."
    hidden = F.gelu(merged @ t[proj + "0.weight"].T + t[proj + "0.bias"])
    return hidden @ t[proj + "2.weight"].T + t[proj + "2.bias"]


def text_embeddings(t, emb, ids):
    table = t["embedding_model.llm_text_embeddings.weight"]
    rows = []
    for i in ids.tolist():
        if i < emb["llm_vocab_size"]:
            rows.append(table[i])
        elif emb["special_token_maps"]:
            rows.append(t["embedding_model.special_text_embeddings.weight"][i - emb["llm_vocab_size"]])
        else:
            rows.append(table[0])
    return torch.stack(rows)


def official_logits(tensors, config, ids, pixels=None, dtype=torch.float32):
    """Logits (L, vocab) of one sequence ``ids`` (L,) with optional tiles, as the official model computes them.

    ``dtype`` float64 needs ``torch.set_default_dtype(torch.float64)`` too (the loops allocate)."""
    t = {k: v.to(dtype) for k, v in tensors.items()}
    emb, llm = config["embedding_config"], config["llm_config"]
    x = text_embeddings(t, emb, ids)
    if pixels is not None:
        where = (ids == emb["img_context_token_id"]).nonzero()[:, 0]
        x[where] = image_tokens(t, emb, pixels.to(dtype))
    blocks = emb.get("layers_block_type", ["mha"] * emb["num_hidden_layers"])
    for i in range(emb["num_hidden_layers"]):
        x = internlm2_layer(x, t, f"embedding_model.encoder.{i}.", emb, blocks[i])
    if config.get("normalize_encoder_output"):
        x = x / x.norm(dim=-1, keepdim=True)
    blocks = llm.get("layers_block_type", ["mha"] * llm["num_hidden_layers"])
    is_llama = llm["architectures"][0] == "LlamaForCausalLM"
    for i in range(llm["num_hidden_layers"]):
        if is_llama:
            x = llama_layer(x, t, f"language_model.model.layers.{i}.", llm)
        else:
            x = internlm2_layer(x, t, f"language_model.model.layers.{i}.", llm, blocks[i])
    x = rms_norm(x, t["language_model.model.norm.weight"], llm["rms_norm_eps"])
    head = t["language_model.lm_head.weight" if is_llama else "language_model.output.weight"]
    return x @ head.T
