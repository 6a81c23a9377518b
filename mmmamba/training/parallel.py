"""Several processes, through PyTorch's own engine: ``torchrun`` + ``torch.distributed``.

``Comm`` is the process group as the training loop sees it (every method is the identity in a
single process). ``shard_fsdp`` wraps a model with FSDP2 (``fully_shard``): parameters, gradients
and optimizer state sharded across processes, gradients reduce-scattered. ``layer_owners`` splits
layers between processes for the layer-parallel mode of layer-local stages (each process trains its
own layers' mixers on the whole global batch, no gradient communication at all).
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import MmmambaError

MODES = ("fsdp", "layer")


class Comm:
    """The processes of one run. ``grad_scale`` undoes FSDP's gradient averaging (the loop's losses
    are already divided by global counts); ``local_params`` says that each process holds different
    parameters (layer-parallel), so the gradient norm is the root of the summed squares."""

    def __init__(self, mode: str = "fsdp"):
        self.on = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.on else 1
        self.rank = dist.get_rank() if self.on else 0
        self.mode = mode
        self.grad_scale = float(self.world) if self.on and mode == "fsdp" else 1.0
        self.local_params = self.on and mode == "layer"
        self.units: list[nn.Module] = []  # FSDP-wrapped modules, for gradient-sync control

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every process (a small picklable-free value: str, int, None, list of them)."""
        if not self.on:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check(self, error: BaseException | None) -> None:
        """Collective: when any process failed, every process raises one error naming the first failed rank."""
        if not self.on:
            if error is not None:
                raise error
            return
        failed = torch.tensor([self.rank if error is not None else self.world])
        dist.all_reduce(failed, op=dist.ReduceOp.MIN)
        first = int(failed)
        if first < self.world:
            if error is not None and first == self.rank:
                raise error
            raise MmmambaError(f"rank {first} failed (its message is above); every rank stopped")

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool):
        """FSDP: no reduce-scatter until the last micro-batch of a step (gradient accumulation)."""
        for unit in self.units:
            unit.set_requires_gradient_sync(enabled, recurse=False)
        yield


def init_from_env(device: str) -> tuple[Comm, str]:
    """Join the ``torchrun`` process group when launched by it (``WORLD_SIZE`` > 1); returns the Comm and
    this process's device (``cuda:LOCAL_RANK`` on GPU). A single process gets a Comm that does nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    elif dist.is_initialized() and str(device).startswith("cuda"):
        device = f"cuda:{torch.cuda.current_device()}"
    return Comm(), device


def shard_fsdp(comm: Comm, units: list[nn.Module], forward_method: str | None = None, root: nn.Module | None = None):
    """FSDP2: shard each of ``units`` (and, given ``root``, the rest of it) across the processes.

    ``forward_method`` registers a method other than ``forward`` (``Mamba2Mixer.mix``, which the
    layer-local losses call directly) so that it too gathers the unit's parameters before running.
    Stages 1-2 shard the mixers only (the frozen rest is replicated and never runs as a whole).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for unit in units:
        fully_shard(unit)
        if forward_method is not None:
            register_fsdp_forward_method(unit, forward_method)
    comm.units = list(units)
    if root is not None:
        fully_shard(root)
        comm.units.append(root)


def layer_owners(layers: list[int], world: int) -> dict[int, int]:
    """Layer → owning rank, contiguous and as even as the count allows (rank r gets a block)."""
    per, extra = divmod(len(layers), world)
    owners, i = {}, 0
    for r in range(world):
        for _ in range(per + (r < extra)):
            owners[layers[i]] = r
            i += 1
    return owners
