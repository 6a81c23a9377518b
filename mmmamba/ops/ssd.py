"""The SSD scan as layers call it: one signature, the fastest implementation that serves the call."""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from .ssd_chunked import ssd_chunked_scan

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def pick_backend(x: Tensor, *tensors: Tensor | None, backend: str = "auto", tf32_ok: bool = False) -> str:
    """``auto``: the fused Triton kernel (TF32 matmuls) on CUDA when no gradient is needed and the
    caller accepts TF32 rounding (``tf32_ok``: a bf16/fp16 model, whose own inputs are coarser);
    otherwise the PyTorch chunked scan — exact in fp32, and the one autograd differentiates.
    Measured on an H100 (BENCHMARKS.md): Triton TF32 2.8–4.3× faster than PyTorch, Triton with
    exact fp32 matmuls 5–8× slower, so exact float32 stays on PyTorch.
    The environment variable ``MMMAMBA_SSD_BACKEND`` (torch | triton) overrides ``auto``."""
    if backend == "auto":
        backend = os.environ.get("MMMAMBA_SSD_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"SSD backend {backend!r}: use one of {list(BACKENDS)}")
    if backend != "auto":
        return backend
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors))
    ok = tf32_ok and x.is_cuda and x.dtype == torch.float32 and not needs_grad and triton_available()
    return "triton" if ok else "torch"


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
    tf32_ok: bool = False,
) -> tuple[Tensor, Tensor]:
    """SSD scan (shapes as ``ssd_naive_scan``); returns (y (b, L, h, p), final state (b, h, p, n))."""
    if pick_backend(x, dt, A, B, C, D, initial_state, backend=backend, tf32_ok=tf32_ok) == "triton":
        from .ssd_triton import ssd_triton_scan

        return ssd_triton_scan(x, dt, A, B, C, D, initial_state, chunk_size, precision="tf32" if tf32_ok else "ieee")
    return ssd_chunked_scan(x, dt, A, B, C, D, initial_state, chunk_size)
