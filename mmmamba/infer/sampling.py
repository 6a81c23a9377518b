"""Next-token choice: greedy, temperature, top-k, top-p."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None


MIN_TEMPERATURE = 1e-30  # smaller positive temperatures act as this one: greedy but for exact ties


def sample_next(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """logits (b, vocab) → token ids (b,)."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float()
    t = max(cfg.temperature, MIN_TEMPERATURE)  # a float32 can hold it (1e-308 would round to 0: 0/0 at the max)
    logits = (logits - logits.amax(-1, keepdim=True)) / t  # <= 0: a tiny temperature cannot overflow
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def nucleus_sample(logits: Tensor, temperature: float, top_p: float, u: Tensor, candidates: int = 1024) -> Tensor:
    """Top-p sampling by inverse CDF: logits (b, vocab), uniforms u (b,) in [0, 1) → token ids (b,).

    The nucleus is the smallest run of the most probable tokens (in descending order) whose mass
    reaches ``top_p``; the token is the first of that run whose cumulative mass exceeds ``u`` times
    the nucleus's mass. A pure function of (logits, u), so ``nucleus_sample_reference`` (float64)
    reproduces it from the same uniforms. Only the ``candidates`` most probable tokens are sorted;
    a row whose nucleus is larger is sorted in full (exact either way)."""
    probs = (logits.float() / temperature).softmax(-1)  # (b, V)
    k = min(candidates, probs.shape[-1])
    top, order = probs.topk(k, dim=-1)  # (b, k), descending
    out = _pick(top, order, top_p, u)
    short = (top.sum(-1) < top_p).nonzero()[:, 0]  # rows whose nucleus is larger than k tokens
    if short.numel():
        full, full_order = probs[short].sort(dim=-1, descending=True)
        out[short] = _pick(full, full_order, top_p, u[short])
    return out


def nucleus_threshold(probs: Tensor, top_p: float) -> Tensor:
    """probs (b, V), float32 or float64 → (b, 1): the nucleus's smallest probability, the largest τ with
    Σ{p ≥ τ} ≥ ``top_p``, found without sorting. Positive floats order as their bit patterns do, so a
    bisection over the integers (31 halvings for float32, 63 for float64) ends on τ exactly. Fixed work, no
    host sync: (b, V) masked sums, one a halving."""
    ints, halvings = (torch.int32, 31) if probs.dtype == torch.float32 else (torch.int64, 63)
    bits = probs.view(ints)  # (b, V), monotone in probs for probs ≥ 0
    lo = torch.zeros(probs.shape[0], 1, dtype=ints, device=probs.device)  # Σ{p ≥ lo} = 1 ≥ top_p
    hi = bits.amax(-1, keepdim=True) + 1  # Σ{p ≥ hi} = 0 < top_p
    for _ in range(halvings):
        mid = lo + (hi - lo) // 2
        enough = torch.where(bits >= mid, probs, 0).sum(-1, keepdim=True) >= top_p
        lo, hi = torch.where(enough, mid, lo), torch.where(enough, hi, mid)
    return lo.view(probs.dtype)


def nucleus_sample_unsorted(logits: Tensor, temperature: float, top_p: float, u: Tensor) -> Tensor:
    """Top-p sampling with no sort: logits (b, vocab), uniforms u (b,) in [0, 1) → token ids (b,).

    The nucleus is every token whose probability is at least ``nucleus_threshold`` (the tokens of the
    smallest most-probable run reaching ``top_p``, and any tied with its last); the token is the first, in
    vocabulary order, at which the nucleus's cumulative mass exceeds ``u`` times its mass. The same
    distribution as ``nucleus_sample`` (another token for the same u), a pure function of (logits, u):
    ``nucleus_sample_unsorted_reference`` (float64) reproduces it. Static shapes and no host sync."""
    probs = (logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature).softmax(-1)  # (b, V)
    kept = torch.where(probs >= nucleus_threshold(probs, top_p), probs, 0)
    cum = kept.cumsum(-1)  # (b, V), rises only at nucleus tokens
    i = (cum <= u[:, None].to(cum.dtype) * cum[:, -1:]).sum(-1, keepdim=True)
    last = kept.shape[-1] - 1 - (kept.flip(-1) > 0).to(torch.int8).argmax(-1, keepdim=True)  # the last nucleus token
    return torch.minimum(i, last)[:, 0]


def nucleus_sample_unsorted_reference(logits: Tensor, temperature: float, top_p: float, u: Tensor) -> Tensor:
    """The plain float64 definition of ``nucleus_sample_unsorted``, one row at a time (for tests)."""
    out = []
    for row, ur in zip(logits.double(), u.double()):
        p = (row / temperature).softmax(-1).tolist()
        total, smallest = 0.0, None
        for pi in sorted(p, reverse=True):  # the smallest most-probable run reaching top_p
            if total >= top_p:
                break
            total, smallest = total + pi, pi
        kept = [pi if pi >= smallest else 0.0 for pi in p]
        target, acc = float(ur) * sum(kept), 0.0
        pick = max(j for j, pi in enumerate(kept) if pi > 0)
        for j, pi in enumerate(kept):
            acc += pi
            if pi > 0 and acc > target:
                pick = j
                break
        out.append(pick)
    return torch.tensor(out, dtype=torch.long)


def _pick(sorted_probs: Tensor, order: Tensor, top_p: float, u: Tensor) -> Tensor:
    cum = sorted_probs.cumsum(-1)  # (b, k)
    size = ((cum - sorted_probs) < top_p).sum(-1, keepdim=True)  # tokens in the nucleus (≥ 1)
    mass = cum.gather(-1, size - 1)  # (b, 1)
    i = (cum <= u[:, None].to(cum.dtype) * mass).sum(-1, keepdim=True).clamp(max=size - 1)
    return order.gather(-1, i)[:, 0]


def nucleus_sample_reference(logits: Tensor, temperature: float, top_p: float, u: Tensor) -> Tensor:
    """The plain float64 definition of ``nucleus_sample``, one row at a time (for tests)."""
    out = []
    for row, ur in zip(logits.double(), u.double()):
        p = (row / temperature).softmax(-1)
        ps, order = p.sort(descending=True)
        kept, total = [], 0.0
        for pi in ps.tolist():
            if total >= top_p:
                break
            kept.append(pi)
            total += pi
        target, acc = float(ur) * total, 0.0
        for j, pi in enumerate(kept):
            acc += pi
            if acc > target or j == len(kept) - 1:
                out.append(int(order[j]))
                break
    return torch.tensor(out, dtype=torch.long)
