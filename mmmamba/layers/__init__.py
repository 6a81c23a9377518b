"""Modules that hold parameters and call the math in ``mmmamba.ops``."""

from .attention import Attention, AttentionConfig, KVCache
from .mamba2 import Mamba2Config, Mamba2Mixer, Mamba2State
from .mlp import SwiGLU
from .norm import GatedHeadNorm, RMSNorm

__all__ = [
    "Attention",
    "AttentionConfig",
    "GatedHeadNorm",
    "KVCache",
    "Mamba2Config",
    "Mamba2Mixer",
    "Mamba2State",
    "RMSNorm",
    "SwiGLU",
]
