"""Running a model: chunked prefill, constant-memory decode, sampling, batched generation."""

from .generate import decode_one_token, generate, left_pad, prefill
from .sampling import SamplingConfig, sample_next

__all__ = ["SamplingConfig", "decode_one_token", "generate", "left_pad", "prefill", "sample_next"]
