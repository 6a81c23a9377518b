"""The settings of one distillation run, validated once (``DistillConfig.check``), and what of them a
resume must find again (``settings``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..checks import MAX_BATCH, MAX_STEPS, MAX_TEMPERATURE, MIN_TEMPERATURE
from ..errors import MmmambaError
from ..ops.ssd import BACKENDS as SSD_BACKENDS
from ..training.parallel import MODES
from .stages import STAGES

# settings that may differ between a run and its resume (the loss of every step stays the same)
RESUMABLE_WITH_OTHER = ("max_bad_steps", "micro_batch", "parallel", "device", "ssd_backend", "checkpoint_activations")


@dataclass
class DistillConfig:
    stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    steps: dict[int, int] = field(default_factory=lambda: {s: stage.steps for s, stage in STAGES.items()})
    batch_size: int = 16  # the global batch: over all processes and micro-batches
    eval_every: int = 100
    val_limit: int = 128  # validation samples per check
    seed: int = 0
    temperature: float = 1.0
    ce_weight: float = 0.0
    train_o_proj: bool = False
    train_mlp: bool = False
    lr_scale: float = 1.0  # multiplies every stage's paper learning rate
    device: str = "cpu"
    max_bad_steps: int = 20  # consecutive non-finite steps that stop the run
    allow_outside_images: bool = False
    pack: bool = False  # each micro-batch packed into one row with cu_seqlens (no padding)
    micro_batch: int | None = None  # samples per forward on one process (gradient accumulation); None: all
    parallel: str = "fsdp"  # several processes (torchrun): fsdp | layer (stages 1-2: each owns some layers)
    ssd_backend: str | None = None  # the student's Mamba-2 scan: auto | torch | fla; None keeps its config's
    checkpoint_activations: bool = False  # recompute each student layer / mixer in backward (memory for time)

    def check(self) -> DistillConfig:
        """Every setting in range, before anything is read; returns itself."""
        stages = list(self.stages)
        if not stages or any(s not in STAGES for s in stages) or stages != sorted(set(stages)):
            raise MmmambaError(f"--stages {stages}: give stages from 1,2,3, in order, each once")
        for s in stages:
            n = self.steps.get(s)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_STEPS:
                raise MmmambaError(f"stage {s}: {n} steps; give a whole number of steps between 1 and {MAX_STEPS}")
        positive = {"batch_size": MAX_BATCH, "eval_every": MAX_STEPS, "val_limit": 1 << 24, "max_bad_steps": MAX_STEPS}
        for name, high in positive.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= high:
                raise MmmambaError(f"{name.replace('_', '-')} {v}: give a whole number between 1 and {high}")
        mb = self.micro_batch
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or not 1 <= mb <= MAX_BATCH):
            raise MmmambaError(f"--micro-batch {mb}: give a whole number between 1 and {MAX_BATCH}")
        if self.parallel not in MODES:
            raise MmmambaError(f"--parallel {self.parallel}: use one of {', '.join(MODES)}")
        if self.ssd_backend is not None and self.ssd_backend not in SSD_BACKENDS:
            raise MmmambaError(f"--ssd-backend {self.ssd_backend}: use one of {', '.join(SSD_BACKENDS)}")
        for name, low_open in (("temperature", True), ("lr_scale", True), ("ce_weight", False)):
            v = getattr(self, name)
            bad = not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (low_open and v == 0)
            if bad:
                need = "a finite number above 0" if low_open else "a finite number, 0 or more"
                raise MmmambaError(f"--{name.replace('_', '-')} {v}: give {need}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:  # logits / T: a tiny T is an argmax, no gradient
            raise MmmambaError(
                f"--temperature {self.temperature}: give a KL temperature from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g}"
            )
        return self

    def settings(self) -> dict:
        """What a resume must find again (JSON-ready): every setting but those a resume may change."""
        out = {k: v for k, v in asdict(self).items() if k not in RESUMABLE_WITH_OTHER}
        out["steps"] = {str(k): v for k, v in out["steps"].items()}
        return out
