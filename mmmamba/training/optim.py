"""AdamW without weight decay on biases and norms, and the warmup-stable-decay schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import MmmambaError


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = 0.1  # fraction of steps
    decay: float = 0.1  # fraction of steps, at the end
    min_lr_ratio: float = 0.0
    clip: float = 5.0


def make_adamw(named_params, cfg: OptimConfig) -> torch.optim.AdamW:
    """Decay only matrices; biases, norm weights and per-head scalars (1-D tensors) get none."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def wsd_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier: linear warmup, flat, linear decay to ``min_lr_ratio``."""
    warm = max(1, round(cfg.warmup * total))
    decay = max(1, round(cfg.decay * total))
    if step < warm:
        return (step + 1) / warm
    if step >= total - decay:
        frac = (total - step) / decay
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * frac
    return 1.0


def set_lr(opt: torch.optim.Optimizer, step: int, total: int, cfg: OptimConfig) -> float:
    lr = cfg.lr * wsd_factor(step, total, cfg)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def clip_and_step(opt: torch.optim.Optimizer, params: list[nn.Parameter], cfg: OptimConfig, comm=None) -> float:
    """Clip by the global gradient norm and step; a non-finite norm skips the step (weights unchanged).

    FSDP-sharded gradients (DTensors) give the global norm themselves; with ``comm.local_params``
    (layer-parallel: each process its own parameters) the squares are summed over processes.
    Returns the gradient norm before clipping: NaN or Inf means the step was skipped.
    """
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros(())
    if comm is not None and comm.local_params:
        total = comm.sum(total.reshape(1) ** 2).sqrt()[0]
    torch.nn.utils.clip_grads_with_norm_(params, cfg.clip, total)
    norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
    if math.isfinite(norm):
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm


class NonFiniteGuard:
    """Counts steps skipped for a NaN/Inf loss or gradient and stops a run that keeps diverging.

    ``max_in_a_row`` consecutive bad steps raise an error naming the stage and step; the last
    checkpoint written before them is finite and stays as it is.
    """

    def __init__(self, what: str, max_in_a_row: int = 20, skipped: int = 0, in_a_row: int = 0):
        self.what, self.max_in_a_row = what, max_in_a_row
        self.skipped, self.in_a_row = skipped, in_a_row

    def ok(self, loss: torch.Tensor) -> bool:
        return bool(torch.isfinite(loss.detach()).all())

    def record(self, good: bool, step: int, last_good: str) -> None:
        if good:
            self.in_a_row = 0
            return
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise MmmambaError(
                f"{self.what}, step {step}: {self.in_a_row} non-finite losses or gradients in a row, stopped "
                f"({self.skipped} steps skipped in all); the last good checkpoint is {last_good}; "
                "lower --lr-scale (or raise --temperature) and rerun"
            )
