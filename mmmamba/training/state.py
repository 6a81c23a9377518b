"""Training state on disk: written atomically, read back with ``weights_only=True``, resumed exactly.

The state is one file: model tensors, optimizer state, step, RNG states and any loop counters.
The data order is a pure function of (seed, epoch), so the step number fixes the data position.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checks import whole
from ..errors import MmmambaError
from ..formats.checkpoint import check_finite
from ..io import write_atomic

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
    state["step"] = check_step(state["step"], f)
    _check_counters(state["extra"], f)
    weights = state["model"] if isinstance(state["model"], dict) else {}
    for name, t in weights.items():  # a diverged state is not trained on (its steps would be NaN rows)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t.float()).all()):
            raise MmmambaError(f"{f}: weight {name} holds NaN or Inf; delete the file to restart the stage")
    return state


COUNTERS = ("stage", "skipped", "in_a_row")  # loop counters kept in ``extra``


def _check_counters(extra: dict, source) -> None:
    for key in COUNTERS:
        if key in extra:
            try:
                whole(extra[key], key, 0)
            except MmmambaError as e:
                raise MmmambaError(f"{source}: not a usable training state, {e}; delete it to restart") from None


def check_step(step, source, total: int | None = None) -> int:
    """A saved step: a whole number in [0, total] (one check for every state format)."""
    try:
        whole(step, "its step", 0)
    except MmmambaError as e:
        raise MmmambaError(f"{source}: not a usable training state, {e}; delete it to restart") from None
    if total is not None and step > total:
        raise MmmambaError(
            f"{source}: at step {step}, beyond this run's {total} steps; rerun with "
            "the step count it was started with, or delete it to restart"
        )
    return step


def apply_state(
    state: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, source, total: int | None = None
) -> tuple[int, dict]:
    """Restore model, optimizer and RNG from ``read_state``; returns (step, extra). ``total``: the run's steps."""
    step = check_step(state["step"], source, total)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise MmmambaError(
            f"{source}: the training state does not fit this model or stage ({str(e).splitlines()[0][:120]}); "
            "delete it to restart the stage, or use a new --out"
        ) from None
    return step, state["extra"]


def load_state(
    folder, model: torch.nn.Module, opt: torch.optim.Optimizer, total: int | None = None
) -> tuple[int, dict] | None:
    """Restore model, optimizer and RNG; returns (step, extra), or None when there is nothing to resume."""
    state = read_state(folder)
    return None if state is None else apply_state(state, model, opt, Path(folder) / STATE_FILE, total)


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


# ---- sharded state (several processes): torch.distributed.checkpoint, resumable on any process count ----

DCP_DIR = "train_state.dcp"


def _plain_dicts(model: torch.nn.Module, opt: torch.optim.Optimizer, full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=full, cpu_offload=full))


def save_sharded_state(folder, model, opt, step: int, extra: dict, comm) -> None:
    """Every process writes its shards (DCP) into a temporary folder; rank 0 adds ``meta.json`` and
    renames it into place, so a kill leaves the previous state or the new one, never half of one."""
    import torch.distributed.checkpoint as dcp

    from ..io import publish_dir, temp_sibling, write_json_atomic

    final = Path(folder) / DCP_DIR
    tmp = Path(comm.broadcast_object(str(temp_sibling(final)) if comm.rank == 0 else None))
    msd, osd = _plain_dicts(model, opt)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp))
    comm.barrier()
    if comm.rank == 0:
        write_json_atomic(tmp / "meta.json", {"step": step, "extra": extra})
        publish_dir(tmp, final)
    comm.barrier()


def read_sharded_meta(folder) -> dict | None:
    """``{"step", "extra", "dcp": path}`` of a sharded state, or None."""
    from ..io import read_json

    f = Path(folder) / DCP_DIR
    if not (f / "meta.json").is_file():
        return None
    meta = read_json(f / "meta.json", "sharded training state")
    if not isinstance(meta.get("extra"), dict) or "step" not in meta:
        raise MmmambaError(f"{f}: not an mmmamba training state; delete it to restart")
    _check_counters(meta["extra"], f)
    return meta | {"step": check_step(meta["step"], f), "dcp": str(f)}


def load_sharded_state(meta: dict, model, opt, total: int | None = None) -> tuple[int, dict]:
    """Load a DCP state into an unsharded model and optimizer (every process, any process count)."""
    check_step(meta["step"], meta["dcp"], total)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    msd, osd = _plain_dicts(model, opt)
    state = {"model": msd, "optimizer": osd}
    try:
        dcp.load(state, checkpoint_id=meta["dcp"])
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except Exception as e:  # noqa: BLE001 - a foreign or mismatched state, one line
        raise MmmambaError(
            f"{meta['dcp']}: the training state does not fit this model or stage ({str(e).splitlines()[0][:120]}); "
            "delete it to restart the stage"
        ) from None
    return meta["step"], meta["extra"]


def full_optimizer_state(model, opt) -> dict:
    """The optimizer state keyed by parameter names (what ``set_optimizer_state_dict`` takes after sharding)."""
    return _plain_dicts(model, opt)[1]
