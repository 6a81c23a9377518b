"""Run distillation stages in order: one command, a progress bar per stage, validation on the val
split, CSV log + loss-curve PNG, a full checkpoint after every stage, and exact resume.

Output folder:
  after_stage{S}/      complete student checkpoint after stage S (every parameter, tokenizer)
  train_state.pt       in-progress stage: student, optimizer, step, RNG (resumes exactly)
  log.csv, loss.png    per-step training loss and periodic validation loss
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.conversations import Batch, collate, encode_sample, read_jsonl
from ..data.images import image_processor
from ..data.tokenizer import copy_tokenizer, load_tokenizer
from ..errors import MmmambaError
from ..layers import Mamba2Mixer
from ..models import Decoder, load_checkpoint, save_checkpoint
from ..training.optim import clip_and_step, make_adamw, set_lr
from ..training.state import STATE_FILE, batch_indices, load_state, save_state
from .losses import masked_ce, masked_kl, masked_mse
from .stages import STAGES, StageConfig, select_trainable


@dataclass
class DistillConfig:
    stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    steps: dict[int, int] = field(default_factory=lambda: {1: 300, 2: 300, 3: 600})
    batch_size: int = 16
    eval_every: int = 100
    val_limit: int = 128  # validation samples per check
    seed: int = 0
    temperature: float = 1.0
    ce_weight: float = 0.0
    train_o_proj: bool = False
    train_mlp: bool = False
    lr_scale: float = 1.0  # multiplies every stage's paper learning rate
    device: str = "cpu"


def mamba_layers(model: Decoder) -> list[int]:
    return [i for i, layer in enumerate(model.layers) if isinstance(layer.mixer, Mamba2Mixer)]


def layer_mse_per_layer(teacher: Decoder, student: Decoder, batch: Batch) -> dict[int, torch.Tensor]:
    """Each Mamba-2 mixer, fed the teacher's (normed) input to its layer, against the teacher's
    attention output before Wo. Layer-local: no gradient crosses layers."""
    with torch.no_grad():
        t = teacher(batch.input_ids, batch.pixel_values, return_layer_io=True)
    errors = {}
    for i in mamba_layers(student):
        layer = student.layers[i]
        y = layer.mixer.mix(layer.input_norm(t.layer_inputs[i]))
        errors[i] = masked_mse(y, t.mixer_outputs[i], batch.attention_mask)
    return errors


def stage_loss(stage: StageConfig, cfg: DistillConfig, teacher: Decoder, student: Decoder, batch: Batch):
    if stage.loss == "layer_mse":
        errors = layer_mse_per_layer(teacher, student, batch)
        return torch.stack(list(errors.values())).mean()
    with torch.no_grad():
        t_logits = teacher(batch.input_ids, batch.pixel_values).logits
    s_logits = student(batch.input_ids, batch.pixel_values).logits
    loss = masked_kl(t_logits, s_logits, batch.attention_mask, cfg.temperature)
    if cfg.ce_weight:
        loss = loss + cfg.ce_weight * masked_ce(s_logits, batch.input_ids, batch.loss_mask)
    return loss


def keep_hardest_as_attention(teacher: Decoder, student: Decoder, val: list[Batch], k: int) -> list[int]:
    """auto:K — turn back into (copied) teacher attention the K layers with the largest layer-local error."""
    totals: dict[int, float] = {}
    with torch.no_grad():
        for batch in val:
            for i, e in layer_mse_per_layer(teacher, student, batch).items():
                totals[i] = totals.get(i, 0.0) + float(e)
    hardest = sorted(sorted(totals, key=lambda i: -totals[i])[:k])
    for i in hardest:
        student.layers[i].mixer = copy.deepcopy(teacher.layers[i].mixer)
        student.config.mixers[i] = "attention"
    student.config.conversion["keep_attention"] = sorted(
        i for i, kind in enumerate(student.config.mixers) if kind == "attention"
    )
    student.config.conversion["auto_errors"] = {str(i): totals[i] / len(val) for i in sorted(totals)}
    return hardest


class Logger:
    def __init__(self, out: Path):
        self.path = out / "log.csv"
        if not self.path.exists():
            self.path.write_text("stage,step,lr,train_loss,val_loss\n")

    def row(self, stage: int, step: int, lr: float, train: float | None, val: float | None) -> None:
        with self.path.open("a") as f:
            fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731
            csv.writer(f).writerow([stage, step, f"{lr:.3e}", fmt(train), fmt(val)])


def plot_losses(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((out / "log.csv").open()))
    stages = sorted({int(r["stage"]) for r in rows})
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.4), squeeze=False)
    for ax, s in zip(axes[0], stages):
        mine = [r for r in rows if int(r["stage"]) == s]
        tr = [(int(r["step"]), float(r["train_loss"])) for r in mine if r["train_loss"]]
        va = [(int(r["step"]), float(r["val_loss"])) for r in mine if r["val_loss"]]
        if tr:
            ax.plot(*zip(*tr), lw=0.8, alpha=0.7, label="train")
        if va:
            ax.plot(*zip(*va), "o-", label="val")
        ax.set_yscale("log")
        ax.set_title(f"stage {s} ({STAGES[s].loss})")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)


def _batches(examples, idx_lists, pad_id, device) -> list[Batch]:
    return [collate([examples[i] for i in idx], pad_id).to(device) for idx in idx_lists]


def distill(teacher_dir, student_dir, data_dir, out_dir, cfg: DistillConfig, stop_after: int | None = None) -> Decoder:
    """Run ``cfg.stages`` in order; resumes from ``out_dir`` if a previous run was interrupted.

    ``stop_after`` ends the run after that many optimizer steps in this call (to test resuming).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(asdict(cfg) | {"teacher": str(teacher_dir), "student": str(student_dir)}))
    settings_file = out / "distill_config.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise MmmambaError(f"{out}: holds a run with other settings ({settings_file}); use the same or a new --out")
    settings_file.write_text(json.dumps(settings, indent=2) + "\n")

    device = cfg.device
    teacher = load_checkpoint(teacher_dir).float().to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    tok = load_tokenizer(teacher_dir)
    images = image_processor(teacher.config.vision)
    train = [encode_sample(s, tok, images) for s in read_jsonl(Path(data_dir) / "train.jsonl")]
    val_examples = [encode_sample(s, tok, images) for s in read_jsonl(Path(data_dir) / "val.jsonl")[: cfg.val_limit]]
    val = _batches(
        val_examples,
        [range(i, min(i + cfg.batch_size, len(val_examples))) for i in range(0, len(val_examples), cfg.batch_size)],
        tok.pad_id,
        device,
    )
    logger = Logger(out)
    done_steps = 0

    student_src = Path(student_dir)
    for stage_id in cfg.stages:
        finished = out / f"after_stage{stage_id}"
        if (finished / "config.json").exists():
            student_src = finished
            continue
        student = load_checkpoint(student_src).float().to(device)
        auto_k = student.config.conversion.get("auto_keep")
        if stage_id == 3 and auto_k and "auto_errors" not in student.config.conversion:
            kept = keep_hardest_as_attention(teacher, student, val, int(auto_k))
            tqdm.write(f"auto:{auto_k}: keeping layers {kept} as attention (largest stage-2 error)")
        base = STAGES[stage_id]
        stage = dataclasses.replace(
            base,
            train_o_proj=cfg.train_o_proj,
            train_mlp=cfg.train_mlp,
            optim=dataclasses.replace(base.optim, lr=base.optim.lr * cfg.lr_scale),
        )
        params = select_trainable(student, stage)
        if not params:
            raise MmmambaError(f"{student_src}: no Mamba-2 layers to train; convert the teacher first")
        opt = make_adamw(params, stage.optim)
        steps = cfg.steps[stage_id]
        resumed = load_state(out, student, opt) if (out / STATE_FILE).exists() else None
        start = 0
        if resumed is not None:
            start, extra = resumed
            if extra.get("stage") != stage_id:
                raise MmmambaError(f"{out / STATE_FILE}: belongs to stage {extra.get('stage')}, not {stage_id}")
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))
        bar = tqdm(range(start, steps), desc=f"stage {stage_id}", initial=start, total=steps, unit="step")
        for step in bar:
            student.train()
            idx = batch_indices(len(train), cfg.batch_size, cfg.seed + 1000 * stage_id, step)
            (batch,) = _batches(train, [idx], tok.pad_id, device)
            lr = set_lr(opt, step, steps, stage.optim)
            with autocast:
                loss = stage_loss(stage, cfg, teacher, student, batch)
            loss.backward()
            clip_and_step(opt, [p for _, p in params], stage.optim)
            bar.set_postfix(loss=f"{loss.item():.4g}")
            val_loss = None
            if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
                student.eval()
                with torch.no_grad(), autocast:
                    val_loss = sum(float(stage_loss(stage, cfg, teacher, student, b)) for b in val) / len(val)
            logger.row(stage_id, step + 1, lr, loss.item(), val_loss)
            done_steps += 1
            if val_loss is not None or (stop_after is not None and done_steps >= stop_after):
                save_state(out, student, opt, step + 1, {"stage": stage_id})
            if stop_after is not None and done_steps >= stop_after:
                return student
        bar.close()
        student.eval()
        save_checkpoint(student, finished)
        copy_tokenizer(teacher_dir, finished)
        (out / STATE_FILE).unlink(missing_ok=True)
        plot_losses(out)
        student_src = finished
    return load_checkpoint(student_src)
