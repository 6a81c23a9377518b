"""The decoder (teacher and student alike), its config, its image front-end and its checkpoints."""

from .checkpoint import save_checkpoint
from .config import DecoderConfig, VisionConfig
from .decoder import Decoder, DecoderOutput
from .loading import load_checkpoint

__all__ = ["Decoder", "DecoderConfig", "DecoderOutput", "VisionConfig", "load_checkpoint", "save_checkpoint"]
