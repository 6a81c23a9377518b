"""The decoder (teacher and student alike), its config, its image front-end and its decoding cache."""

from .config import DecoderConfig, VisionConfig
from .decoder import Decoder, DecoderOutput

__all__ = ["Decoder", "DecoderConfig", "DecoderOutput", "VisionConfig"]
