"""Regional compilation for prefill: the elementwise work between a layer's matmuls and its scan (norms,
the causal conv, SiLU, the Δ softplus, the gated norm, residual adds) fused by ``torch.compile``.

A layer method compiled here serves every layer of its kind: with nn.Module inlining (PyTorch's default)
the weights are graph inputs, so 30 layers share one graph, as the compiled decode step does
(``infer.decode_step``). The scan and attention stay outside the compiled regions (fla's and SDPA's own
kernels). ``PREFILL_MODES``: ``eager`` runs the methods as they are; ``compile`` runs them compiled.
"""

from __future__ import annotations

from functools import cache

import torch

PREFILL_MODES = ("eager", "compile")
COMPILER_BACKEND = "inductor"  # torch.compile's backend (tests on a CPU without a C++ toolchain: aot_eager)


@cache
def _compiled(fn, backend: str):
    return torch.compile(fn, backend=backend)


def inference_mode_of(prefill_mode: str, cu_seqlens) -> str:
    """The mode a layer runs in: its configured ``prefill_mode`` for inference over whole chunks, ``eager`` for
    training (autograd's graph) and packed rows."""
    return prefill_mode if cu_seqlens is None and not torch.is_grad_enabled() else "eager"


def region(fn, mode: str):
    """``fn`` itself (eager) or its compiled form (compile; the configs validate the mode), compiled once per
    process."""
    return fn if mode == "eager" else _compiled(fn, COMPILER_BACKEND)
