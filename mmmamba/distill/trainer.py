"""Run distillation stages in order: one command, a progress bar per stage, validation on the val
split, CSV log + loss-curve PNG, a full checkpoint after every stage, and exact resume.

Output folder (``training/run.py`` owns the folder; this module owns what a stage does):
  distill_config.json  the run's settings (a rerun with other settings is refused)
  after_stage{S}/      complete student checkpoint after stage S (every parameter, tokenizer, manifest)
  train_state.pt       in-progress stage: student, optimizer, step, RNG, skip counters (resumes exactly)
  log.csv, loss.png    per-step training loss and periodic validation loss
  val.csv              stage 3's validations: KL, student and teacher perplexity, against tokens seen

Crash safety: every file is written under a temporary name and renamed; ``after_stage{S}`` is
written complete (tokenizer included) into a temporary folder and renamed into place, and only
then is ``train_state.pt`` removed. A kill at any point leaves a folder that the same command
resumes; a leftover state of a finished stage is recognised (and removed) before anything loads.
Everything the run needs is checked before the first step (``prepare``; ``dry_run`` stops there).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.conversations import Batch
from ..data.conversations import pack as pack_examples
from ..data.mixture import MixtureSampler, parse_sources
from ..data.tokenizer import copy_tokenizer
from ..errors import MmmambaError
from ..formats import load_checkpoint
from ..io import DISTILL_SETTINGS, remove_tree
from ..models import Decoder
from ..training.loop import StepReport, train_loop
from ..training.optim import NonFiniteGuard, make_adamw
from ..training.parallel import Comm, init_from_env, layer_owners, shard_fsdp
from ..training.run import RunFolder, RunLog, write_figure
from ..training.state import (
    DCP_DIR,
    STATE_FILE,
    apply_state,
    check_step,
    full_optimizer_state,
    load_sharded_state,
    read_sharded_meta,
    read_state,
    save_sharded_state,
    save_state,
)
from .auto_keep import apply_auto_keep
from .config import DistillConfig
from .losses import kl_to_teacher, mamba_layers
from .prepare import Prepared, batches, cfg_loss_args, check_paths, data_identity, prepare, time_steps
from .stages import STAGES, StageConfig, select_trainable, stage_loss
from .validation import target_nll, val_log

SETTINGS_FILE = DISTILL_SETTINGS
PLAIN_KL = {"temperature": 1.0, "ce_weight": 0.0}  # val.csv's KL: the stage-3 loss with no options
LOG_COLUMNS = ("stage", "step", "lr", "train_loss", "val_loss", "tokens", "seconds")


def train_log(out: Path) -> RunLog:
    return RunLog(Path(out) / "log.csv", LOG_COLUMNS, key=("stage", "step"))


def plot_losses(out: Path) -> None:
    """loss.png: per stage, the training loss of every step and the validation loss (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in train_log(out).rows() if r.get("stage", "").isdigit()]
    stages = sorted({int(r["stage"]) for r in rows})
    if not stages:
        return
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
        ax.set_title(f"stage {s} ({STAGES[s].loss.__name__})")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    write_figure(out / "loss.png", fig)


def run_settings(cfg: DistillConfig, teacher_dir, student_dir, data_dir) -> dict:
    """What distill_config.json records: the settings, the two models, the data and its identity."""
    settings = cfg.settings() | {"teacher": str(teacher_dir), "student": str(student_dir)}
    folders, weights = parse_sources(data_dir)
    if any(w != 1 for w in weights):  # recorded only when weighted: unweighted runs resume as before
        settings["data_weights"] = {str(d): w for d, w in zip(folders, weights)}
    settings["data_identity"] = data_identity(data_dir)
    return settings


def _finished(out: Path, stage_id: int) -> bool:
    return RunFolder(out, SETTINGS_FILE).finished(f"stage{stage_id}")


def all_finished(out, stages) -> bool:
    """Every stage of the run has its checkpoint: a rerun has nothing left to do."""
    return all(_finished(Path(out), s) for s in stages)


def pending_state(out: Path, cfg: DistillConfig, lead: bool = True) -> dict | None:
    """The in-progress training state, checked against the run before anything is loaded into a model.

    A state left by a stage that already finished (a kill between the stage's checkpoint and the
    removal of the state) is stale: it is removed with a note.
    """
    found = [st for st in (read_state(out), read_sharded_meta(out)) if st is not None]
    if not found:
        return None
    # both only after a kill between writing one format and removing the other: the later step wins
    state = max(found, key=lambda st: (st["extra"].get("stage", 0), st["step"]))
    f = Path(state["dcp"]) if "dcp" in state else out / STATE_FILE
    stage = state["extra"].get("stage")
    if stage not in cfg.stages:
        raise MmmambaError(
            f"{f}: belongs to stage {stage}, which this run (stages {cfg.stages}) does not include; "
            "delete it to drop that stage's progress, or rerun with the same --stages"
        )
    if _finished(out, stage):
        if lead:
            tqdm.write(f"{f}: left over from finished stage {stage} (an interrupted run); removed")
            _drop_state(out)
        return None
    earlier = [s for s in cfg.stages if s < stage and not _finished(out, s)]
    if earlier:
        raise MmmambaError(
            f"{f}: is for stage {stage} but stage {earlier[0]} has no checkpoint "
            f"({out / f'after_stage{earlier[0]}'}); restore it or delete {f.name} to restart"
        )
    check_step(state["step"], f, cfg.steps[stage])  # before anything is built or written
    return state


def _state_files(out: Path) -> list[Path]:
    return [p for p in (out / STATE_FILE, out / DCP_DIR) if p.exists()]


def _drop_state(out: Path) -> None:
    (out / STATE_FILE).unlink(missing_ok=True)
    if (out / DCP_DIR).exists():
        remove_tree(out / DCP_DIR)


def rank_slice(idx: list[int], comm: Comm) -> list[int]:
    """This process's samples of the global batch: a contiguous block (data-parallel), or all of them
    (layer-parallel: every process sees the whole batch for its own layers)."""
    if comm.mode == "layer":
        return idx
    per = len(idx) // comm.world
    return idx[comm.rank * per : (comm.rank + 1) * per]


def micro_batches(examples, idx: list[int], cfg: DistillConfig, pad_id: int, device) -> list[Batch]:
    """This process's samples in micro-batches of ``cfg.micro_batch`` (the memory knob: samples per
    forward); packed, each micro-batch is one row. A packed row may be longer than the model's
    max_position: positions, the scan and attention restart at every sample (each sample fits, checked
    when it is encoded), and one long row launches the step's many small kernels once, not once a row."""
    size = cfg.micro_batch or len(idx)
    groups = [idx[i : i + size] for i in range(0, len(idx), size)]
    if not cfg.pack:
        return batches(examples, groups, pad_id, device)
    return [pack_examples([examples[i] for i in g]).to(device) for g in groups]


def _gather_owned(student: Decoder, owners: dict[int, int], comm: Comm) -> None:
    """Layer-parallel: every process gets each mixer's weights from the process that trained it."""
    import torch.distributed as dist

    for i, r in owners.items():
        for p in student.layers[i].mixer.parameters():
            dist.broadcast(p.data, src=r)


def _full_student(student: Decoder, plain: Decoder, comm: Comm, sharded: bool) -> Decoder:
    """The whole student, unsharded, on rank 0 (every process must call this: it gathers)."""
    if not sharded:
        return student
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if comm.rank == 0:
        plain.load_state_dict(full)
    return plain


@dataclass
class Progress:
    """What the stages of one call share: optimizer steps taken in this call, and the last good checkpoint."""

    last_good: str
    done_steps: int = 0
    stop_after: int | None = None

    @property
    def stopped(self) -> bool:
        return self.stop_after is not None and self.done_steps >= self.stop_after


class StageRun:
    """One stage of a run: its options applied once, its student, optimizer, sampler, validation and
    saves. ``train()`` runs the stage's remaining steps; ``publish()`` writes ``after_stage{S}``."""

    def __init__(self, stage_id: int, student: Decoder, prep: Prepared, cfg: DistillConfig, data_dir, out: Path,
                 comm: Comm, device, pending: dict | None, progress: Progress):  # fmt: skip
        self.id, self.cfg, self.out, self.comm, self.device, self.progress = stage_id, cfg, out, comm, device, progress
        self.last_val: float | None = None  # the latest validation loss of this call
        self.teacher, self.pad_id, self.train_examples, self.val = prep.teacher, prep.tok.pad_id, prep.train, prep.val
        self.lead = comm.rank == 0
        base = STAGES[stage_id]
        self.layer_mode = comm.on and cfg.parallel == "layer" and base.layer_local
        self.owners = layer_owners(mamba_layers(student), comm.world) if self.layer_mode else {}
        if self.layer_mode and len(self.owners) < comm.world:
            raise MmmambaError(
                f"--parallel layer: {len(self.owners)} Mamba-2 layers for {comm.world} processes; use fsdp"
            )
        own = [i for i, r in self.owners.items() if r == comm.rank] if self.layer_mode else None
        self.stage: StageConfig = base.with_options(
            cfg.lr_scale, cfg.train_o_proj, cfg.train_mlp, layers=own, **cfg_loss_args(cfg)
        )  # every option, once
        comm.mode = "layer" if self.layer_mode else "fsdp"
        comm.grad_scale = float(comm.world) if comm.on and not self.layer_mode else 1.0
        comm.local_params = self.layer_mode
        self.student = student
        params = select_trainable(student, self.stage)
        if not params:
            raise MmmambaError(f"{progress.last_good}: no Mamba-2 layers to train; convert the teacher first")
        opt = make_adamw(params, self.stage.optim)
        self.steps = cfg.steps[stage_id]
        self.start, extra = 0, {}
        if pending is not None:
            if "dcp" in pending:
                self.start, extra = load_sharded_state(pending, student, opt, self.steps)
            else:
                self.start, extra = apply_state(pending, student, opt, out / STATE_FILE, self.steps)
            progress.last_good = f"{_state_files(out)[0]} (stage {stage_id}, step {self.start})"
        self.sharded = comm.on and not self.layer_mode
        self.plain = student
        if self.sharded:  # FSDP2: shard the trainable units, move the optimizer state onto the shards
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            osd = full_optimizer_state(student, opt) if self.start else None
            self.plain = copy.deepcopy(student) if self.lead else student
            if base.layer_local:  # the losses call each mixer's ``mix`` and nothing else of the student
                shard_fsdp(comm, [student.layers[i].mixer for i in mamba_layers(student)], "mix")
            else:
                shard_fsdp(comm, list(student.layers), root=student)
            params = select_trainable(student, self.stage)
            opt = make_adamw(params, self.stage.optim)
            if osd is not None:
                set_optimizer_state_dict(student, opt, osd, options=StateDictOptions(full_state_dict=True))
        self.params, self.opt = params, opt
        self.guard = NonFiniteGuard(
            f"stage {stage_id}", cfg.max_bad_steps, extra.get("skipped", 0), extra.get("in_a_row", 0)
        )
        weights = parse_sources(data_dir)[1]
        self.sampler = MixtureSampler(prep.sizes, weights, cfg.batch_size, cfg.seed + 1000 * stage_id)
        self.log, self.val_log = train_log(out), val_log(out)
        if self.lead:
            self.log.start()
            self.log.truncate(stage_id, self.start)
            self.val_log.truncate(stage_id, self.start)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))
        self.teacher_nll: float | None = None  # on the val batches, measured at the first validation

    def loss(self, batch: Batch) -> torch.Tensor:
        return stage_loss(self.stage, self.teacher, self.student, batch)

    def micro_batches(self, step: int) -> list[Batch]:
        mine = rank_slice(self.sampler.indices(step), self.comm)
        return micro_batches(self.train_examples, mine, self.cfg, self.pad_id, self.device)

    def validate(self) -> tuple[float, dict | None]:
        """The stage loss over the val batches and, where the stage matches next-token distributions,
        the student's and the teacher's perplexity on the val targets."""
        self.student.eval()
        with torch.no_grad(), self.autocast:
            losses = [self.loss(b) for b in self.val]
            if self.layer_mode:  # each process holds its layers' share of the loss
                losses = [self.comm.sum(v.detach().reshape(1)) for v in losses]
            val_loss = sum(float(v) for v in losses) / len(self.val)
            fit = None
            if self.stage.loss is kl_to_teacher:  # the frozen teacher on fixed batches: its NLL is measured once
                fit = target_nll(self.teacher, self.student, self.val, self.teacher_nll)
                self.teacher_nll = fit["teacher_val_nll"]
                fit["val_kl"] = val_loss if self.stage.loss_args == PLAIN_KL else self.plain_kl()
        return val_loss, fit

    def plain_kl(self) -> float:
        """KL(teacher ‖ student) per token over the val batches at temperature 1 with no CE term: the curve's
        KL, comparable between runs whatever their stage-3 loss options."""
        plain = replace(self.stage, loss_args=PLAIN_KL)
        return sum(float(stage_loss(plain, self.teacher, self.student, b)) for b in self.val) / len(self.val)

    def save(self, step: int) -> None:
        counters = {"stage": self.id, "skipped": self.guard.skipped, "in_a_row": self.guard.in_a_row}
        if self.comm.on:
            if self.layer_mode:
                _gather_owned(self.student, self.owners, self.comm)
            save_sharded_state(self.out, self.student, self.opt, step, counters, self.comm)
            if self.lead:
                (self.out / STATE_FILE).unlink(missing_ok=True)
        else:
            save_state(self.out, self.student, self.opt, step, counters)
            if (self.out / DCP_DIR).exists():
                remove_tree(self.out / DCP_DIR)
        self.progress.last_good = f"{_state_files(self.out)[0]} (stage {self.id}, step {step})"

    def after_step(self, r: StepReport) -> bool:
        val_loss = fit = None
        if r.step % self.cfg.eval_every == 0 or r.step == self.steps:
            val_loss, fit = self.validate()
            self.last_val = val_loss
        if self.lead:
            train_loss = r.loss if r.good else None
            self.log.add(self.id, r.step, f"{r.lr:.3e}", train_loss, val_loss, r.tokens, f"{r.seconds:.4f}")
            if val_loss is not None and fit is not None:
                seen = self.log.total("tokens")
                self.val_log.add(self.id, r.step, seen, fit["val_kl"], fit["val_nll"], fit["teacher_val_nll"],
                                 fit["val_ppl_ratio"])  # fmt: skip
        self.progress.done_steps += 1
        if val_loss is not None or self.progress.stopped:
            self.save(r.step)
        return self.progress.stopped

    def train(self, progress_bar: bool) -> None:
        train_loop(
            params=[p for _, p in self.params],
            opt=self.opt,
            optim=self.stage.optim,
            steps=self.steps,
            start=self.start,
            micro_batches=self.micro_batches,
            loss=self.loss,
            guard=self.guard,
            last_good=lambda: self.progress.last_good,
            after_step=self.after_step,
            comm=self.comm,
            device=self.device,
            desc=f"stage {self.id}",
            progress=progress_bar,
            train_mode=self.student.train,
        )
        if self.guard.skipped and self.lead and not self.progress.stopped:
            tqdm.write(f"stage {self.id}: {self.guard.skipped} step(s) skipped for a non-finite loss or gradient")

    def publish(self, run: RunFolder, teacher_dir) -> Path:
        """The whole student into ``after_stage{S}``, then the training state goes (rank 0 writes). A stage whose
        last validation loss is not finite has diverged: it is not published, and its state stays."""
        last = self.last_val
        if last is not None and not math.isfinite(last):
            raise MmmambaError(
                f"stage {self.id}: the validation loss is {last} at its last step, so the student diverged; nothing "
                f"was published (lower --lr-scale, then rerun into a new --out)"
            )
        self.student.eval()
        if self.layer_mode:
            _gather_owned(self.student, self.owners, self.comm)
        whole = _full_student(self.student, self.plain, self.comm, self.sharded)
        if self.lead:
            run.publish(f"stage{self.id}", whole.eval(), extra=lambda d: copy_tokenizer(teacher_dir, d))
            _drop_state(self.out)
            plot_losses(self.out)
        self.comm.barrier()
        return run.part(f"stage{self.id}")


def distill(
    teacher_dir,
    student_dir,
    data_dir,
    out_dir,
    cfg: DistillConfig,
    stop_after: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> Decoder | dict:
    """Run ``cfg.stages`` in order; resumes from ``out_dir`` if a previous run was interrupted.

    ``stop_after`` ends the run after that many optimizer steps in this call (to test resuming).
    ``dry_run`` checks everything and returns the estimate of memory, disk and time, writing nothing.
    Under ``torchrun`` every process runs this with the same arguments: the global batch is split
    between them (``cfg.parallel`` fsdp) or, in layer-local stages, the layers are (``layer``); only
    rank 0 writes files other than the sharded training state.
    """
    cfg.check()
    comm, device = init_from_env(cfg.device)
    comm = Comm(cfg.parallel)
    lead = comm.rank == 0
    data_parallel = cfg.parallel == "fsdp" or any(not STAGES[s].layer_local for s in cfg.stages)
    if comm.on and data_parallel and cfg.batch_size % comm.world:
        raise MmmambaError(f"--batch-size {cfg.batch_size}: give a multiple of the {comm.world} processes")
    out = Path(out_dir)
    check_paths(teacher_dir, student_dir, data_dir, out)
    settings = run_settings(cfg, teacher_dir, student_dir, data_dir)
    run = RunFolder(out, SETTINGS_FILE)
    holds_lock, refused = False, None
    if lead and not dry_run:
        try:
            run.__enter__()  # one writer: a second one is refused here, naming this one's PID
            holds_lock = True
        except MmmambaError as e:
            refused = str(e)
    refused = comm.broadcast_object(refused)  # every process stops, or every process sees the folder rank 0 made
    if refused is not None:
        raise MmmambaError(refused)
    try:
        return _distill(run, teacher_dir, student_dir, data_dir, cfg, settings, comm, device, stop_after, dry_run,
                        progress)  # fmt: skip
    finally:
        if holds_lock:
            run.__exit__(None, None, None)


def _distill(run: RunFolder, teacher_dir, student_dir, data_dir, cfg, settings, comm, device, stop_after, dry_run,
             progress):  # fmt: skip
    out, lead = run.out, comm.rank == 0
    run.check_settings(settings, paths=("teacher", "student"))
    writer = lead and not dry_run  # the lock holder; a dry run only reads, and deletes nothing
    pending = None
    if out.is_dir():
        if writer:
            run.recover([f"stage{s}" for s in cfg.stages])
        comm.barrier()
        pending = pending_state(out, cfg, writer)
        comm.barrier()
        log = out / "log.csv"
        if run.has_work() and (
            not log.is_file() or log.stat().st_size == 0
        ):  # the tokens seen so far are counted there
            raise MmmambaError(
                f"{log}: missing or empty, but the run holds finished work whose tokens it counts; "
                "restore the log or use a new --out"
            )
    if all_finished(out, cfg.stages) and not dry_run:
        if lead:
            if not (out / "loss.png").exists() and (out / "log.csv").is_file():
                plot_losses(out)
            tqdm.write(f"{out}: finished already (after_stage{cfg.stages[-1]} is complete); nothing to do")
        comm.barrier()
        return load_checkpoint(out / f"after_stage{cfg.stages[-1]}")
    prep = prepare(teacher_dir, student_dir, data_dir, out, cfg, progress and lead)
    if dry_run:
        per_step = time_steps(prep, cfg)
        seconds = sum(per_step[s] * cfg.steps[s] for s in cfg.stages)
        return prep.estimate | {"seconds": seconds, "seconds_per_step": per_step}
    if lead:
        run.save_settings(settings)
    comm.barrier()
    prep.teacher.to(device)
    prep.val = [b.to(device) for b in prep.val]
    student_src = Path(student_dir)
    state = Progress(last_good=str(student_dir), stop_after=stop_after)
    for stage_id in cfg.stages:
        if run.finished(f"stage{stage_id}"):
            student_src = run.part(f"stage{stage_id}")
            state.last_good = str(student_src)
            continue
        fresh = prep.student if student_src == Path(student_dir) else load_checkpoint(student_src)
        student = fresh.float().to(device)
        student.checkpoint_layers = cfg.checkpoint_activations
        kept = apply_auto_keep(prep.teacher, student, prep.val) if stage_id == 3 else None  # between stages 2 and 3
        if kept is not None and lead:
            tqdm.write(f"auto:{len(kept)}: keeping layers {kept} as attention (largest stage-2 error)")
        mine = pending if pending is not None and pending["extra"].get("stage") == stage_id else None
        pending = None if mine is not None else pending
        stage = StageRun(stage_id, student, prep, cfg, data_dir, out, comm, device, mine, state)
        stage.train(progress)
        if state.stopped:
            comm.barrier()
            return student
        student_src = stage.publish(run, teacher_dir)
        state.last_good = str(student_src)
    if lead and not (out / "loss.png").exists():
        plot_losses(out)
    comm.barrier()
    return load_checkpoint(student_src)
