"""Train the embedded teacher VLM on the built-in task suite (supervised, loss on answers only)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..checks import MAX_STEPS
from ..data.conversations import collate, encode_sample, read_split
from ..data.images import ImageProcessor
from ..data.scenes import CELL, IMAGE_SIZE
from ..data.tokenizer import ByteTokenizer
from ..errors import MmmambaError
from ..evaluation.tasks import predict, score
from ..formats import save_checkpoint
from ..io import check_checkpoint_output, check_free_space, folder_digest
from ..models import Decoder, DecoderConfig, VisionConfig
from ..training.loop import StepReport, train_loop
from ..training.losses import next_token_loss
from ..training.optim import NonFiniteGuard, OptimConfig, make_adamw
from ..training.run import RunFolder
from ..training.state import STATE_FILE, batch_indices, load_state, read_state, save_state


@dataclass
class TeacherPreset:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    steps: int
    batch_size: int
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=0.05))

    def model_config(self, tok: ByteTokenizer) -> DecoderConfig:
        return DecoderConfig(
            vocab_size=tok.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.hidden_size // self.num_heads,
            intermediate_size=self.intermediate_size,
            rope_theta=10000.0,
            max_position=2048,
            vision=VisionConfig(image_size=IMAGE_SIZE, patch_size=CELL, channels=3),
            image_token_id=tok.image_token_id,
        )


PRESETS = {
    "tiny": TeacherPreset(128, 4, 4, 2, 384, steps=15000, batch_size=64),
    "small": TeacherPreset(512, 8, 8, 4, 1536, steps=4000, batch_size=64, optim=OptimConfig(lr=1e-3)),
}


def train_teacher(
    preset: str,
    data: Path,
    out: Path,
    seed: int = 0,
    steps: int | None = None,
    eval_every: int = 500,
    device: str | None = None,
    max_train: int | None = None,
    allow_outside: bool = False,
) -> dict:
    if preset not in PRESETS:
        raise MmmambaError(f"--preset {preset!r}: use one of {list(PRESETS)}")
    p = PRESETS[preset]
    steps = p.steps if steps is None else steps
    for name, v in (("--steps", steps), ("--eval-every", eval_every)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_STEPS:
            raise MmmambaError(f"{name} {v}: give a whole number between 1 and {MAX_STEPS}")
    out = Path(out)
    check_checkpoint_output(out)
    if (out / "config.json").is_file() and not (out / STATE_FILE).is_file():
        raise MmmambaError(
            f"--out {out}: holds a finished model without a training state (nothing to resume); train into a new folder"
        )
    with RunFolder(out, "train_config.json", what="teacher run") as run:  # one writer
        return _train_teacher(run, p, preset, data, seed, steps, eval_every, device, max_train, allow_outside)


LOG_COLUMNS = ("step", "lr", "loss", "val_accuracy")


def _train_teacher(run: RunFolder, p, preset, data, seed, steps, eval_every, device, max_train, allow_outside) -> dict:
    out = run.out
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    tok = ByteTokenizer(image_tokens=(IMAGE_SIZE // CELL) ** 2)
    train = read_split(data, "train", allow_outside)[:max_train]
    val = read_split(data, "val", allow_outside)
    if len(train) < p.batch_size:
        raise MmmambaError(f"{data}/train.jsonl: {len(train)} samples, fewer than one batch of {p.batch_size}")
    model = Decoder(p.model_config(tok)).to(device)
    opt = make_adamw(model.named_parameters(), p.optim)
    check_free_space(out, 16 * sum(t.numel() for t in model.parameters()), "the checkpoint and training state")
    print(
        f"teacher {preset}: {sum(t.numel() for t in model.parameters()) / 1e6:.2f} M parameters, "
        f"{len(train)} training samples, {steps} steps of {p.batch_size} on {device}"
    )
    images = ImageProcessor(model.config.vision)
    limit = model.config.max_position
    examples = [encode_sample(s, tok, images, limit) for s in tqdm(train, desc="encode", unit="sample")]
    for s in val:
        encode_sample(s, tok, images, limit)  # every validation image readable before the first step
    settings = {"preset": preset, "steps": steps, "seed": seed, "batch_size": p.batch_size, "n_train": len(train)}
    settings["data_identity"] = folder_digest(data, ("train.jsonl", "val.jsonl", "suite.json"))
    if not run.settings_file.exists() and (old := read_state(out)) is not None and old["extra"]:
        run.save_settings(old["extra"])  # a run from before train_config.json kept its settings in the state
    run.check_settings(settings)
    resumed = load_state(out, model, opt, steps)
    start = 0 if resumed is None else resumed[0]
    run.save_settings(settings)
    log = run.log("train_log.csv", LOG_COLUMNS)
    if start == 0 and log.path.exists():
        log.path.unlink()  # a fresh start: the rows of a run that never saved a state go
    log.start()
    report = {}
    guard = NonFiniteGuard(f"teacher {preset}")
    t0 = time.time()

    def batch_at(step: int):
        return collate([examples[i] for i in batch_indices(len(examples), p.batch_size, seed, step)], tok.pad_id).to(
            device
        )

    def after_step(r: StepReport) -> bool:
        nonlocal report
        if r.step % eval_every == 0 or r.step == steps:
            report = score(val, predict(model, tok, val, progress=False))
            tqdm.write(
                f"step {r.step}: loss {r.loss:.4f}, val accuracy {report['mean_accuracy']:.3f} "
                f"{ {k: round(v, 2) for k, v in report['per_family'].items()} }"
            )
            log.add(r.step, f"{r.lr:.3e}", f"{r.loss:.5f}", f"{report['mean_accuracy']:.4f}")
            save_state(out, model, opt, r.step, settings)
        return False

    train_loop(
        params=list(model.parameters()),
        opt=opt,
        optim=p.optim,
        steps=steps,
        start=start,
        micro_batches=lambda step: [batch_at(step)],
        loss=lambda batch: next_token_loss(
            model, batch.input_ids, batch.pixel_values, batch.loss_mask, batch.totals[1]
        ),  # answers only
        guard=guard,
        last_good=lambda: f"{out / 'train_state.pt'}",
        after_step=after_step,
        device=device,
        desc=f"train {preset}",
        train_mode=model.train,
    )
    model.eval()
    save_checkpoint(model, out, extra=tok.save)
    print(f"wrote {out} in {time.time() - t0:.0f} s")
    return report
