"""CUDA-event timing after warm-up, and the measured copy bandwidth (bytes read + written per second)."""

from __future__ import annotations

import statistics

import torch


def cuda_time_ms(fn, warmup: int = 3, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` calls, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def device_bandwidth(nbytes: int = 2 * 1024**3) -> float:
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = cuda_time_ms(lambda: y.copy_(x), warmup=2, iters=10)
    return 2 * nbytes / (ms / 1e3)
