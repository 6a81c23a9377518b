"""Training state on disk: written atomically, read back with ``weights_only=True``, resumed exactly.

The state is one file: model tensors, optimizer state, step, RNG states and any loop counters.
The data order is a pure function of (seed, epoch), so the step number fixes the data position.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import MmmambaError

STATE_FILE = "train_state.pt"


def save_state(folder, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, extra: dict | None = None):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    tmp = folder / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / STATE_FILE)


def load_state(folder, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, dict] | None:
    """Restore model, optimizer and RNG; returns (step, extra), or None when there is nothing to resume."""
    f = Path(folder) / STATE_FILE
    if not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise MmmambaError(f"{f}: cannot read training state ({e.__class__.__name__}); delete it to restart") from None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), state["extra"]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The sample indices of global ``step``, drawn from epoch-wise shuffles without replacement."""
    per_epoch = n // batch
    if per_epoch == 0:
        raise MmmambaError(f"{n} training samples are fewer than one batch of {batch}; lower the batch size")
    epoch, i = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[i * batch : (i + 1) * batch].tolist()
