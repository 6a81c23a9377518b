"""Loading a model from any source we accept: our checkpoint folder, a Hugging Face folder (ours
name tables, ``hf_import``; a GraniteMoeHybrid one, ``granite``), a llama.cpp ``.gguf`` file
(``gguf``). The one place that dispatches on the source; ``checkpoint`` below it knows files, not model classes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.config import DecoderConfig
from ..models.decoder import Decoder
from .build import build_loaded
from .checkpoint import config_from_dict, is_gguf_file, manifest_sizes, read_model_config, read_safetensors

GRANITE = "GraniteMoeHybridForCausalLM"  # granite.ARCH, named here so that the module loads only when used


def load_config(path) -> DecoderConfig:
    """The DecoderConfig of a checkpoint folder (ours or Hugging Face) or a .gguf file, without its weights."""
    if is_gguf_file(path):
        from .gguf import gguf_config, open_gguf

        return gguf_config(open_gguf(path), path)[0]
    raw, ours = read_model_config(path)
    if not ours and raw.get("architectures") == [GRANITE]:
        from .granite import granite_decoder_config

        return granite_decoder_config(raw, f"{path}/config.json")[0]
    if not ours:
        from .hf_import import hf_config

        return hf_config(raw, Path(path))[0]
    return config_from_dict(raw, Path(path) / "config.json")


def load_checkpoint(path, dtype: torch.dtype | None = None) -> Decoder:
    path = Path(path)
    if is_gguf_file(path):
        from .gguf import load_gguf_decoder

        return load_gguf_decoder(path, dtype)
    raw, ours = read_model_config(path)
    manifest_sizes(path)
    if not ours and raw.get("architectures") == [GRANITE]:
        from .granite import load_granite

        return load_granite(path, raw, dtype)
    if not ours:
        from .hf_import import load_hf_decoder

        return load_hf_decoder(path, raw, dtype)
    cfg = config_from_dict(raw, path / "config.json")
    return build_loaded(cfg, read_safetensors(path), path, dtype)
