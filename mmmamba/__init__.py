"""mmmamba: turn a decoder-only Transformer (multimodal or plain) into a Mamba-2 / hybrid model."""

from .errors import MmmambaError
from .formats import load_checkpoint as from_pretrained
from .formats import save_checkpoint as save_pretrained
from .infer import generate
from .models import Decoder, DecoderConfig, VisionConfig

__all__ = ["Decoder", "DecoderConfig", "MmmambaError", "VisionConfig", "from_pretrained", "generate", "save_pretrained"]
__version__ = "0.1.0"
