"""Running a model: chunked prefill, constant-memory decode, sampling, batched generation."""

from .chat import ChatSession
from .generate import decode_one_token, decode_tokens, generate, left_pad, prefill, prefill_ids
from .sampling import SamplingConfig, sample_next

__all__ = [
    "ChatSession",
    "SamplingConfig",
    "decode_tokens",
    "decode_one_token",
    "generate",
    "prefill_ids",
    "left_pad",
    "prefill",
    "sample_next",
]
