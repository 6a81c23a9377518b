"""Modules that hold parameters and call the math in ``mmmamba.ops``."""

from .attention import Attention, AttentionConfig, DecodeContext, KVCache
from .mamba2 import Mamba2Config, Mamba2Mixer, Mamba2State
from .mlp import SwiGLU
from .norm import GATE_ORDERS, GatedHeadNorm, GateFirstHeadNorm, RMSNorm

__all__ = [
    "GATE_ORDERS",
    "Attention",
    "AttentionConfig",
    "DecodeContext",
    "GateFirstHeadNorm",
    "GatedHeadNorm",
    "KVCache",
    "Mamba2Config",
    "Mamba2Mixer",
    "Mamba2State",
    "RMSNorm",
    "SwiGLU",
]
