"""Seeding Mamba-2 from attention and turning a teacher into a linear or hybrid student."""

from .seed import INITS, convert_to_mamba, seed_mamba_from_attention

__all__ = ["INITS", "convert_to_mamba", "seed_mamba_from_attention"]
