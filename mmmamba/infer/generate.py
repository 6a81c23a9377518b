"""Generation: left-padded batched prompts, chunked prefill, one recurrent/KV step per token.

Padding never enters a Mamba-2 state (the mixer zeroes its conv input and Δ there) nor an
attention score (the mask), so a batch gives the tokens each prompt would get alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import MmmambaError
from ..models import Decoder
from ..models.cache import ModelCache
from .decode_step import DecodeStep
from .sampling import SamplingConfig, sample_next


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Prompts → ids (b, L) and attention mask (b, L), padded on the left."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), L, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p, device=device)
        mask[i, L - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def prefill(
    model: Decoder, embeds: Tensor, attention_mask: Tensor, cache: ModelCache, chunk_size: int | None = None
) -> Tensor:
    """Run the prompt's embeddings through in chunks, filling ``cache``; returns the last position's logits."""
    return _prefill(model, lambda s, e: embeds[:, s:e], embeds.shape[1], attention_mask, cache, chunk_size)


@torch.no_grad()
def prefill_ids(
    model: Decoder,
    ids: Tensor,
    pixel_values: Tensor | None,
    attention_mask: Tensor,
    cache: ModelCache,
    chunk_size: int | None = None,
) -> Tensor:
    """``prefill`` from token ids (and images): each chunk is embedded when it runs, so the whole prompt's
    (b, L, d) embeddings never exist at once (0.42 GB at 103 K tokens, hidden 2048, bf16)."""
    images = model.image_patches(ids, pixel_values)
    embed = lambda s, e: model.embed_span(ids, s, e, images)  # noqa: E731
    return _prefill(model, embed, ids.shape[1], attention_mask, cache, chunk_size)


def _prefill(model: Decoder, embed, length: int, attention_mask: Tensor, cache: ModelCache, chunk_size) -> Tensor:
    """``embed(s, e)`` gives positions s:e (b, e − s, d); returns the last position's logits (b, vocab)."""
    past = cache[0].length
    step = chunk_size or length
    logits = None
    for s in range(0, length, step):
        e = min(length, s + step)
        logits = model(
            inputs_embeds=embed(s, e), attention_mask=attention_mask[:, : past + e], cache=cache, logits_to_keep=1
        ).logits
    return logits[:, -1]


@torch.no_grad()
def decode_one_token(model: Decoder, token: Tensor, attention_mask: Tensor, cache: ModelCache) -> Tensor:
    """token (b,) → next logits (b, vocab); one recurrent step per Mamba-2 layer, one KV append per attention layer."""
    return model(token[:, None], attention_mask=attention_mask, cache=cache).logits[:, -1]


@torch.no_grad()
def decode_tokens(
    model: Decoder,
    logits: Tensor,
    attention_mask: Tensor,
    cache: ModelCache,
    max_new_tokens: int,
    sampling: SamplingConfig,
    stop_ids: tuple[int, ...] = (),
    on_token: Callable[[Tensor], None] | None = None,
    step: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[list[list[int]], Tensor]:
    """Sample up to ``max_new_tokens`` per row from ``logits`` onwards; a row stops at a stop token.

    The last sampled token is returned but not fed through the model (the caller feeds it first
    next time, as the chat does). Returns the new tokens per row and the extended attention mask.
    ``step(token, mask) → logits`` replaces the eager decode step (e.g. a CUDA-graph replay).
    """
    step = step or (lambda token, mask: decode_one_token(model, token, mask, cache))
    device = logits.device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    out: list[list[int]] = [[] for _ in range(logits.shape[0])]
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    for i_new in range(max_new_tokens):
        token = sample_next(logits, sampling, generator)
        for i in (~done).nonzero()[:, 0].tolist():
            out[i].append(int(token[i]))
        if on_token is not None:
            on_token(token)
        done |= torch.isin(token, stops)
        if bool(done.all()) or i_new == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        logits = step(token, attention_mask)
    return out, attention_mask


def check_length(model: Decoder, prompt_tokens: int, max_new_tokens: int) -> None:
    if prompt_tokens + max_new_tokens > model.config.max_position:
        raise MmmambaError(
            f"prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"max_position {model.config.max_position}; shorten the prompt or lower --max-new-tokens"
        )


@torch.no_grad()
def generate(
    model: Decoder,
    prompts: list[list[int]],
    pixel_values: Tensor | None = None,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    chunk_size: int | None = None,
    on_token: Callable[[Tensor], None] | None = None,
    decode: str = "auto",
) -> list[list[int]]:
    """Generate for a batch of tokenised prompts; returns each prompt's new tokens (stop token included).

    ``pixel_values`` holds the images of all prompts in order; ``on_token`` sees each step's tokens (b,).
    ``decode``: how each step runs (``DecodeStep``): auto (a CUDA graph on CUDA, eager elsewhere),
    eager, graph, or compile (``torch.compile`` then a CUDA graph); every model kind.
    """
    if not prompts or not all(prompts):
        raise MmmambaError("a prompt of 0 tokens: nothing to continue from; check the prompt and its chat template")
    device = model.embed_tokens.weight.device
    longest = max(len(p) for p in prompts)
    check_length(model, longest, max_new_tokens)
    ids, mask = left_pad(prompts, pad_id, device)
    cache = model.make_cache(len(prompts), longest + max_new_tokens)
    pixels = None if pixel_values is None else pixel_values.to(device)
    logits = prefill_ids(model, ids, pixels, mask, cache, chunk_size)
    step = DecodeStep(model, cache, decode) if max_new_tokens > 1 else None
    sampling = sampling or SamplingConfig()
    out, _ = decode_tokens(model, logits, mask, cache, max_new_tokens, sampling, stop_ids, on_token, step)
    return out


@torch.no_grad()
def generate_in_batches(
    model: Decoder,
    prompts: list[list[int]],
    pixels: list[Tensor | None] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    sampling: SamplingConfig | None = None,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[int]]:
    """``generate`` over many prompts, batched by prompt length (a batch answers as each prompt alone);
    the answers come back in the prompts' order. ``pixels``: each prompt's image tiles, or None."""
    if batch_size < 1:
        raise MmmambaError(f"batch size {batch_size}: give 1 or more")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    dtype = model.embed_tokens.weight.dtype
    out: list[list[int]] = [[] for _ in prompts]
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        rows = order[s : s + batch_size]
        batch_pixels = None if pixels is None else torch.cat([pixels[i] for i in rows]).to(dtype)
        answers = generate(model, [prompts[i] for i in rows], batch_pixels, max_new_tokens, sampling, stop_ids, pad_id)
        for i, ids in zip(rows, answers):
            out[i] = list(ids)
    return out
