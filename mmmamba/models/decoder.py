"""One decoder for every family and every mix of mixers: teacher = all attention, student = some Mamba-2."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import MmmambaError
from ..layers import Attention, DecodeContext, Mamba2Mixer, RMSNorm, SwiGLU
from ..ops.decode_attention import BACKENDS as ATTENTION_BACKENDS
from ..ops.mamba_step import BACKENDS as MAMBA_DECODE_BACKENDS
from ..ops.packing import Unpacker
from ..ops.regions import PREFILL_MODES, inference_mode_of, region
from ..ops.ssd import BACKENDS as SSD_BACKENDS
from .cache import ModelCache
from .config import DecoderConfig
from .vision import build_vision


def build_mixer(kind: str, cfg: DecoderConfig, i: int = 0) -> nn.Module:
    """Layer ``i``'s mixer, with that layer's settings (``DecoderConfig.layer``)."""
    if kind == "attention":
        return Attention(cfg.attention_config(i))
    return Mamba2Mixer(cfg.mamba2_config(i))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, kind: str, i: int = 0):
        super().__init__()
        s = cfg.layer(i)
        self.input_norm = RMSNorm(cfg.hidden_size, s.norm_eps)
        self.mixer = build_mixer(kind, cfg, i)
        self.post_norm = RMSNorm(cfg.hidden_size, s.norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, s.intermediate_size)

    def forward(
        self, x: Tensor, positions: Tensor, valid: Tensor | None, cache, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Returns the new residual stream and the mixer output before its output projection."""
        mixed = self.mixer.mix(self.input_norm(x), positions, valid, cache, cu_seqlens=cu_seqlens)
        mode = inference_mode_of(self.mixer.cfg.prefill_mode, cu_seqlens)
        return region(DecoderLayer._finish, mode)(self, x, mixed), mixed

    def step(self, x: Tensor, cache, ctx: DecodeContext) -> Tensor:
        """One token per row, x (b, d): the static-shaped decode path of ``forward``."""
        return self._finish(x, self.mixer.step(self.input_norm(x), cache, ctx))

    def _finish(self, x: Tensor, mixed: Tensor) -> Tensor:
        """The residual stream after the mixer's output projection and the MLP block."""
        x = x + self.mixer.o_proj(mixed)
        return x + self.mlp(self.post_norm(x))


@dataclass
class DecoderOutput:
    logits: Tensor  # (b, L, vocab); (N, vocab) with forward's logits_at: the N selected positions, in order
    layer_inputs: list[Tensor] = field(default_factory=list)  # residual stream entering each layer
    mixer_outputs: list[Tensor] = field(default_factory=list)  # each mixer's output before o_proj


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.text_vocab_size or cfg.vocab_size, cfg.hidden_size)
        self.special_embeddings = (
            nn.Embedding(cfg.special_embeddings, cfg.hidden_size) if cfg.special_embeddings else None
        )
        self.vision = build_vision(cfg.vision, cfg.hidden_size) if cfg.vision is not None else None
        self.layers = nn.ModuleList(DecoderLayer(cfg, kind, i) for i, kind in enumerate(cfg.mixers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.checkpoint_layers = False  # runtime choice (not saved): recompute each layer in backward

    def between_layers(self, i: int, x: Tensor) -> Tensor:
        """The residual stream after layer ``i``, as the next layer sees it (a model feature hook;
        e.g. HoVLE's L2 normalisation between its two stacks). Identity unless ``i`` is in
        ``config.l2_norm_after``: then each token is divided by its L2 norm (no eps, as HoVLE does)."""
        if i in self.config.l2_norm_after:
            return x / x.norm(dim=-1, keepdim=True)
        return x

    def make_cache(self, batch: int, max_length: int, dtype=None, device=None) -> ModelCache:
        """One cache per layer (a KV cache for attention, a constant-size state for Mamba-2) + decode buffers."""
        p = self.embed_tokens.weight
        dtype, device = dtype or p.dtype, device or p.device
        layers = [layer.mixer.make_cache(batch, max_length, dtype, device) for layer in self.layers]
        attention = [layer.mixer.cfg for layer in self.layers if isinstance(layer.mixer, Attention)]
        rope = {(a.rope_theta, a.head_dim) for a in attention}
        return ModelCache(layers, batch, max_length, rope, dtype, device)

    @torch.no_grad()
    def decode_step(self, token: Tensor, cache: ModelCache, layer_step=None) -> Tensor:
        """token (b,) → next-token logits (b, vocab), static shapes and no host sync (CUDA-graph safe).

        Equals ``forward`` on the one token with the cache's mask; the host-side lengths are left to
        ``cache.count_step()`` so that a captured replay and an eager call are driven the same way.
        ``layer_step(layer, x, cache, ctx)`` replaces ``DecoderLayer.step`` (e.g. compiled once for all layers).
        """
        layer_step = layer_step or DecoderLayer.step
        ctx = cache.context()
        x = self.embed(token)  # (b, d)
        for i, layer in enumerate(self.layers):
            x = self.between_layers(i, layer_step(layer, x, cache[i], ctx))
        cache.advance()
        return self.lm_head(self.norm(x))

    def set_backends(
        self,
        ssd: str | None = None,
        decode_attention: str | None = None,
        mamba_decode: str | None = None,
        prefill_mode: str | None = None,
    ) -> None:
        """Runtime kernel choices (not saved): the Mamba-2 scan (ops.ssd), the decode attention kernel, the
        Mamba-2 decode step (ops.mamba_step: the fused Triton kernel or the PyTorch one) and the prefill mode
        (ops.regions: the work around the scan, attention and matmuls eager or compiled)."""
        if prefill_mode is not None and prefill_mode not in PREFILL_MODES:
            raise MmmambaError(f"prefill mode {prefill_mode!r} is unknown; use one of {list(PREFILL_MODES)}")
        if ssd is not None and ssd not in SSD_BACKENDS:
            raise MmmambaError(f"SSD backend {ssd!r} is unknown; use one of {list(SSD_BACKENDS)}")
        if decode_attention is not None and decode_attention not in ATTENTION_BACKENDS:
            choices = list(ATTENTION_BACKENDS)
            raise MmmambaError(f"decode attention {decode_attention!r} is unknown; use one of {choices}")
        if mamba_decode is not None and mamba_decode not in MAMBA_DECODE_BACKENDS:
            choices = list(MAMBA_DECODE_BACKENDS)
            raise MmmambaError(f"Mamba-2 decode backend {mamba_decode!r} is unknown; use one of {choices}")
        for layer in self.layers:
            cfg = layer.mixer.cfg
            if ssd is not None and isinstance(layer.mixer, Mamba2Mixer):
                cfg.ssd_backend = ssd
            if mamba_decode is not None and isinstance(layer.mixer, Mamba2Mixer):
                cfg.decode_backend = mamba_decode
            if decode_attention is not None and isinstance(layer.mixer, Attention):
                cfg.decode_backend = decode_attention
            if prefill_mode is not None:
                cfg.prefill_mode = prefill_mode

    def fuse_projections(self) -> None:
        """Inference only: one matmul per layer for q/k/v(/gate/Δ) and one for gate/up (see ``fuse_linears``)."""
        for layer in self.layers:
            layer.mixer.fuse_projections()
            layer.mlp.fuse_projections()

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None = None) -> Tensor:
        """Token embeddings with image patch tokens spliced in at the placeholder positions.

        Text ids are looked up as ``DecoderConfig.text_vocab_size`` says; that path has no host sync
        (``torch.where``, no boolean indexing), so a decode step that embeds can be graph-captured.
        """
        images = self.image_patches(input_ids, pixel_values)
        if images is None:  # any shape of ids, (b,) in a decode step
            return self.embed_text(input_ids)
        return self.embed_span(input_ids, 0, input_ids.shape[1], images)

    def image_patches(self, input_ids: Tensor, pixel_values: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The images' tokens (n, d) and, per position (b, L), the index of the token it takes (−1 on text),
        in the order the placeholders appear (row by row); None without images."""
        if pixel_values is None or pixel_values.numel() == 0:
            return None
        if self.vision is None:
            raise MmmambaError("this model has no image front-end; drop the image or use a multimodal model")
        dtype = self.embed_tokens.weight.dtype
        patches = self.vision(pixel_values.to(dtype)).flatten(0, 1)  # (tiles·tokens_per_tile, d)
        where = input_ids == self.config.image_token_id
        if int(where.sum()) != patches.shape[0]:
            per = self.vision.cfg.tokens_per_tile
            raise MmmambaError(
                f"{int(where.sum())} image placeholder tokens but {pixel_values.shape[0]} image tile(s) × "
                f"{per} tokens; put {per} placeholders per tile (the tokenizer does this for '<image>')"
            )
        index = where.flatten().cumsum(0).view_as(input_ids) - 1  # (b, L): k-th placeholder takes patch k
        return patches, torch.where(where, index, -1)

    def embed_span(self, input_ids: Tensor, start: int, end: int, images: tuple[Tensor, Tensor] | None) -> Tensor:
        """Embeddings of positions ``start:end`` (b, end − start, d), images from ``image_patches`` spliced in:
        a long prompt can be embedded one prefill chunk at a time."""
        x = self.embed_text(input_ids[:, start:end])
        if images is None:
            return x
        patches, index = images
        index = index[:, start:end]
        return torch.where((index >= 0)[..., None], patches[index.clamp(min=0)].to(x.dtype), x)

    def embed_text(self, input_ids: Tensor) -> Tensor:
        """(b, L) ids → (b, L, d). With ``text_vocab_size`` set, ids at or past it take a row of
        ``special_embeddings`` (or row 0 of ``embed_tokens`` when there is none), as HoVLE does."""
        first_special = self.config.text_vocab_size
        if not first_special:
            return self.embed_tokens(input_ids)
        special = input_ids >= first_special
        x = self.embed_tokens(torch.where(special, 0, input_ids))
        if self.special_embeddings is None:
            return x
        y = self.special_embeddings(torch.where(special, input_ids - first_special, 0))
        return torch.where(special[..., None], y, x)

    def forward(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: ModelCache | None = None,
        return_layer_io: bool = False,
        inputs_embeds: Tensor | None = None,
        logits_to_keep: int = 0,
        cu_seqlens: Tensor | None = None,
        logits_at: Tensor | None = None,
    ) -> DecoderOutput:
        """input_ids (b, L); attention_mask (b, past+L) with 1 for real tokens (left padding).

        ``logits_to_keep`` > 0 computes logits for the last that many positions only (prefill needs
        one: at 100 K tokens the full logits would take more memory than the model).

        ``logits_at`` (b, L) bool computes logits only where it is True, as (N, vocab) rows in row-major
        order (training on answers: a 49 K-word head over every image and question token is mostly waste).

        ``inputs_embeds`` (b, L, d), from ``embed``, replaces ids and pixels (chunked prefill of images).

        ``cu_seqlens`` (n+1,) packs n samples into one row (b = 1, training): positions, the mixers'
        states and attention restart at each sample start (``data.conversations.pack``).
        """
        x = self.embed(input_ids, pixel_values) if inputs_embeds is None else inputs_embeds
        b, L = x.shape[:2]
        if logits_at is not None:  # checked before the layers run, not after
            if logits_to_keep:
                raise ValueError("give logits_to_keep or logits_at, not both")
            if logits_at.dtype != torch.bool or logits_at.shape != (b, L):
                raise ValueError(f"logits_at: give a bool mask of shape {(b, L)}, got {logits_at.dtype} "
                                 f"{tuple(logits_at.shape)}")  # fmt: skip
        past = 0 if cache is None else cache[0].length
        longest = past + L
        if cu_seqlens is not None:  # a packed row's positions restart at each sample: its longest must fit
            rows = Unpacker.of(cu_seqlens, L, x.device)  # built once a batch, shared with the layers
            longest = rows.width
        if longest > self.config.max_position:
            raise MmmambaError(
                f"sequence of {longest} tokens exceeds the model's max_position {self.config.max_position}; "
                "shorten the prompt"
            )
        if cu_seqlens is not None:
            positions = rows.pos.expand(b, L)
        elif attention_mask is not None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]
        else:
            positions = torch.arange(past, past + L, device=x.device).expand(b, L)
        # an all-ones mask masks nothing: the layers get None, so attention stays on the flash path
        valid = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
        out = DecoderOutput(logits=x)
        for i, layer in enumerate(self.layers):
            if return_layer_io:
                out.layer_inputs.append(x)
            if self.checkpoint_layers and cache is None and torch.is_grad_enabled():
                # activation checkpointing: keep only the layer's input, recompute the rest in backward
                x, mixed = checkpoint(layer, x, positions, valid, None, cu_seqlens, use_reentrant=False)
            else:
                x, mixed = layer(x, positions, valid, None if cache is None else cache[i], cu_seqlens)
            x = self.between_layers(i, x)
            if return_layer_io:
                out.mixer_outputs.append(mixed)
        if isinstance(cache, ModelCache):
            cache.after_prefill(attention_mask, positions, past, L)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if logits_at is not None:
            x = x[logits_at]  # (b, L, d) → (N, d)
        out.logits = self.lm_head(self.norm(x))
        return out
