"""File formats above the model: our checkpoint folders, Hugging Face folders (a name table per family),
llama.cpp GGUF files and the released mmMamba layout. ``loading`` is the one place that dispatches on the
source; the model imports nothing from here."""

from .checkpoint import save_checkpoint
from .loading import load_checkpoint, load_config

__all__ = ["load_checkpoint", "load_config", "save_checkpoint"]
