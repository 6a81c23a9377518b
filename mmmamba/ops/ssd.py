"""The SSD scan as layers call it: one signature, the implementation chosen by a ``backend`` argument.

``torch``: the chunked PyTorch scan (autograd, any device, exact fp32). ``fla``: flash-linear-attention's
Triton kernels (forward and backward, CUDA). ``auto``: fla on CUDA tensors when fla is installed,
torch otherwise. The choice is configuration (``Mamba2Config.ssd_backend``), never the environment.
Our earlier fused forward-only Triton kernel was removed: fla was 4.6× faster in the same run
(BENCHMARKS.md §1b) and has a backward.
"""

from __future__ import annotations

from functools import cache

from torch import Tensor

from ..errors import MmmambaError
from .packing import Unpacker
from .ssd_chunked import ssd_chunked_scan
from .ssd_fla import fla_available, ssd_fla_scan

BACKENDS = ("auto", "torch", "fla")


@cache
def _fla_ok() -> bool:
    return fla_available()


def resolve_backend(backend: str, device_type: str) -> str:
    """The concrete backend (``torch`` or ``fla``) for tensors on ``device_type``."""
    if backend not in BACKENDS:
        raise MmmambaError(f"SSD backend {backend!r} is unknown; use one of {list(BACKENDS)}")
    if backend == "auto":
        return "fla" if device_type == "cuda" and _fla_ok() else "torch"
    if backend == "fla" and not _fla_ok():
        raise MmmambaError("SSD backend 'fla' needs flash-linear-attention: pip install fla-core (CUDA + Triton)")
    if backend == "fla" and device_type != "cuda":
        raise MmmambaError(
            f"SSD backend 'fla' runs on CUDA tensors, not {device_type}; use --ssd-backend torch or auto"
        )
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
    cu_seqlens: Tensor | None = None,
    compute_dtype=None,
) -> tuple[Tensor, Tensor]:
    """SSD scan (shapes as ``ssd_naive_scan``); returns (y (b, L, h, p), final state (b, h, p, n)).

    ``cu_seqlens`` (n+1,) packs n samples into one row of x (b = 1); the state restarts at each
    boundary and the final state has one row per sample. ``compute_dtype`` sets fla's q/k/v dtype.
    """
    kind = resolve_backend(backend, x.device.type)
    if kind == "fla":
        return ssd_fla_scan(x, dt, A, B, C, D, initial_state, chunk_size, cu_seqlens, compute_dtype)
    if cu_seqlens is None:
        return ssd_chunked_scan(x, dt, A, B, C, D, initial_state, chunk_size)
    return packed_chunked_scan(x, dt, A, B, C, D, initial_state, chunk_size, cu_seqlens)


def packed_chunked_scan(x, dt, A, B, C, D, initial_state, chunk_size, cu_seqlens) -> tuple[Tensor, Tensor]:
    """The PyTorch scan over packed samples: the row is unpacked into a zero-padded batch of one sample a
    row and scanned at once. Padding has Δ = 0 (no decay, no input), so each row's final state is its
    sample's. (A scan per sample made packed training 26× slower than padded on an H200: a Python loop of
    small kernels per sample and layer; BENCHMARKS.md §5b.)"""
    if x.shape[0] != 1:
        raise MmmambaError(f"packed sequences (cu_seqlens) need batch 1, got {x.shape[0]}")
    rows = Unpacker.of(cu_seqlens, x.shape[1], x.device)
    x_, dt_, B_, C_ = (rows.unpack(t) for t in (x, dt, B, C))
    y, state = ssd_chunked_scan(x_, dt_, A, B_, C_, None, initial_state, chunk_size)
    y = rows.repack(y)
    if D is not None:
        y = y + D[:, None] * x
    return y, state
