"""The SSD scan as layers call it: one signature, the implementation chosen by ``backend``."""

from __future__ import annotations

import os

from torch import Tensor

from .ssd_chunked import ssd_chunked_scan

# auto = torch. The fused Triton kernel is opt-in: measured on an H100 (BENCHMARKS.md §1b) it is
# 5–8× slower than PyTorch with exact fp32 dots and 2.8–4.3× faster with TF32 dots, but TF32 moved
# a bf16 student's logits by up to 0.3 (7 of 400 greedy answers changed), so it is not the default.
BACKENDS = ("auto", "torch", "triton", "triton_tf32")


def pick_backend(backend: str = "auto") -> str:
    """``backend``, or for ``auto`` the environment variable ``MMMAMBA_SSD_BACKEND`` (default torch)."""
    if backend == "auto":
        backend = os.environ.get("MMMAMBA_SSD_BACKEND", "torch")
    if backend not in BACKENDS[1:]:
        raise ValueError(f"SSD backend {backend!r}: use one of {list(BACKENDS[1:])}")
    return backend


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """SSD scan (shapes as ``ssd_naive_scan``); returns (y (b, L, h, p), final state (b, h, p, n)).

    ``torch``: the chunked PyTorch scan (autograd, any device). ``triton`` / ``triton_tf32``: the
    fused forward-only kernel with exact fp32 or TF32 matmuls (inference on CUDA).
    """
    kind = pick_backend(backend)
    if kind == "torch":
        return ssd_chunked_scan(x, dt, A, B, C, D, initial_state, chunk_size)
    from .ssd_triton import ssd_triton_scan

    precision = "tf32" if kind == "triton_tf32" else "ieee"
    return ssd_triton_scan(x, dt, A, B, C, D, initial_state, chunk_size, precision=precision)
