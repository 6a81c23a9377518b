"""Training state on disk: written atomically, read back with ``weights_only=True``, resumed exactly.

The state is one file: model tensors, optimizer state, step, RNG states and any loop counters.
The data order is a pure function of (seed, epoch), so the step number fixes the data position.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MmmambaError
from ..io import write_atomic
from ..models.checkpoint import check_finite

STATE_FILE = "train_state.pt"


def save_state(folder, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, extra: dict | None = None):
    """Write the training state atomically; a state with a NaN/Inf weight is never written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    check_finite(tensors, folder / STATE_FILE)
    state = {
        "model": tensors,
        "optimizer": opt.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "extra": extra or {},
    }
    write_atomic(folder / STATE_FILE, lambda p: torch.save(state, p))


def read_state(folder) -> dict | None:
    """The saved training state (not yet applied), or None when there is none."""
    f = Path(folder) / STATE_FILE
    if not f.exists():
        return None
    if not f.is_file():
        raise MmmambaError(f"{f}: is not a file; remove it to restart the stage")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file, reported as one line
        raise MmmambaError(f"{f}: cannot read training state ({e.__class__.__name__}); delete it to restart") from None
    keys = {"model", "optimizer", "step", "torch_rng", "extra"}
    if not isinstance(state, dict) or not keys <= set(state) or not isinstance(state["extra"], dict):
        raise MmmambaError(f"{f}: not an mmmamba training state; delete it to restart")
    return state


def apply_state(state: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, source) -> tuple[int, dict]:
    """Restore model, optimizer and RNG from ``read_state``; returns (step, extra)."""
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise MmmambaError(
            f"{source}: the training state does not fit this model or stage ({str(e).splitlines()[0][:120]}); "
            "delete it to restart the stage, or use a new --out"
        ) from None
    return int(state["step"]), state["extra"]


def load_state(folder, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, dict] | None:
    """Restore model, optimizer and RNG; returns (step, extra), or None when there is nothing to resume."""
    state = read_state(folder)
    return None if state is None else apply_state(state, model, opt, Path(folder) / STATE_FILE)


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
