"""Run distillation stages in order: one command, a progress bar per stage, validation on the val
split, CSV log + loss-curve PNG, a full checkpoint after every stage, and exact resume.

Output folder:
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
import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.conversations import Batch, Example, check_images_match, collate, encode_sample, read_split
from ..data.conversations import pack as pack_examples
from ..data.images import image_processor
from ..data.mixture import MixtureSampler, parse_sources, shares
from ..data.text_corpus import is_text_corpus, text_examples
from ..data.tokenizer import ChatTokenizer, copy_tokenizer, load_tokenizer
from ..errors import MmmambaError
from ..formats import load_checkpoint, save_checkpoint
from ..io import (
    RunLock,
    check_free_space,
    check_output_dir,
    folder_digest,
    free_bytes,
    human_bytes,
    machine_memory,
    read_json,
    recover_dir,
    remove_tree,
    same_or_inside,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from ..models import Decoder, DecoderConfig
from ..ops.ssd import BACKENDS as SSD_BACKENDS
from ..training.loop import StepReport, train_loop
from ..training.optim import NonFiniteGuard, make_adamw
from ..training.parallel import MODES, Comm, init_from_env, layer_owners, shard_fsdp
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
from .auto_keep import RANKS, apply_auto_keep
from .losses import kl_to_teacher, mamba_layers
from .stages import STAGES, StageConfig, select_trainable
from .stages import stage_loss as _stage_loss
from .validation import ValLog, target_nll, tokens_logged

MAX_STEPS = 10_000_000
SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
    "layer_overrides",
)  # fmt: skip


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


# settings that may differ between a run and its resume (the loss of every step stays the same)
RESUMABLE_WITH_OTHER = ("max_bad_steps", "micro_batch", "parallel", "device", "ssd_backend", "checkpoint_activations")


def check_config(cfg: DistillConfig) -> None:
    """Every setting in range, before anything is read."""
    stages = list(cfg.stages)
    if not stages or any(s not in STAGES for s in stages) or stages != sorted(set(stages)):
        raise MmmambaError(f"--stages {stages}: give stages from 1,2,3, in order, each once")
    for s in stages:
        n = cfg.steps.get(s)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_STEPS:
            raise MmmambaError(f"stage {s}: {n} steps; give a whole number of steps between 1 and {MAX_STEPS}")
    positive = {"batch_size": 1 << 16, "eval_every": MAX_STEPS, "val_limit": 1 << 24, "max_bad_steps": MAX_STEPS}
    for name, high in positive.items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= high:
            raise MmmambaError(f"{name.replace('_', '-')} {v}: give a whole number between 1 and {high}")
    if cfg.micro_batch is not None and (
        isinstance(cfg.micro_batch, bool) or not isinstance(cfg.micro_batch, int) or not 1 <= cfg.micro_batch <= 1 << 16
    ):
        raise MmmambaError(f"--micro-batch {cfg.micro_batch}: give a whole number between 1 and {1 << 16}")
    if cfg.parallel not in MODES:
        raise MmmambaError(f"--parallel {cfg.parallel}: use one of {', '.join(MODES)}")
    if cfg.ssd_backend is not None and cfg.ssd_backend not in SSD_BACKENDS:
        raise MmmambaError(f"--ssd-backend {cfg.ssd_backend}: use one of {', '.join(SSD_BACKENDS)}")
    for name, low_open in (("temperature", True), ("lr_scale", True), ("ce_weight", False)):
        v = getattr(cfg, name)
        bad = not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (low_open and v == 0)
        if bad:
            need = "a finite number above 0" if low_open else "a finite number, 0 or more"
            raise MmmambaError(f"--{name.replace('_', '-')} {v}: give {need}")


def stage_loss(stage: StageConfig, cfg: DistillConfig, teacher: Decoder, student: Decoder, batch: Batch):
    """The stage's loss on one batch with this run's loss options (temperature, CE weight)."""
    stage = stage.with_options(temperature=cfg.temperature, ce_weight=cfg.ce_weight)
    return _stage_loss(stage, teacher, student, batch)


class Logger:
    def __init__(self, out: Path):
        self.path = out / "log.csv"
        if not self.path.exists():
            write_text_atomic(self.path, "stage,step,lr,train_loss,val_loss,tokens,seconds\n")

    def truncate(self, stage: int, step: int) -> None:
        """Forget rows past (stage, step): the steps a resumed run will take again."""
        rows = self.path.read_text().splitlines(keepends=True)
        keep = rows[:1] + [r for r in rows[1:] if _row_key(r) <= (stage, step)]
        if len(keep) != len(rows):
            write_text_atomic(self.path, "".join(keep))

    def row(self, stage: int, step: int, lr: float, train: float | None, val: float | None, tokens=0, seconds=0.0):
        """One step; ``tokens`` real tokens in it and its wall ``seconds`` give the run's tokens/s per stage."""
        with self.path.open("a") as f:
            fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731
            csv.writer(f).writerow([stage, step, f"{lr:.3e}", fmt(train), fmt(val), tokens, f"{seconds:.4f}"])


def _row_key(row: str) -> tuple[int, int]:
    try:
        stage, step = row.split(",")[:2]
        return int(stage), int(step)
    except ValueError:
        return (0, 0)


def plot_losses(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in csv.DictReader((out / "log.csv").open()) if r.get("stage", "").isdigit()]
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(out / "loss.png", lambda p: p.write_bytes(buf.getvalue()))


def _batches(examples, idx_lists, pad_id, device) -> list[Batch]:
    return [collate([examples[i] for i in idx], pad_id).to(device) for idx in idx_lists]


@dataclass
class Prepared:
    """Everything a run needs, loaded and checked before the first step."""

    teacher: Decoder
    student: Decoder
    tok: ChatTokenizer
    train: list[Example]
    val: list[Batch]
    estimate: dict
    sizes: list[int] = field(default_factory=list)  # train samples per --data folder, in order


def data_dirs(data_dir) -> list:
    """``--data``: one folder, or several whose train samples are pooled (e.g. a chat set and a text corpus);
    ``DIR:WEIGHT`` weights a folder (``data/mixture.py``); the folders are returned without weights."""
    dirs = parse_sources(data_dir)[0]
    if not dirs:
        raise MmmambaError("--data: name at least one data folder")
    seen: dict[Path, str] = {}
    for d in dirs:
        key = Path(d).resolve()
        if key in seen:
            raise MmmambaError(f"--data {d}: given twice (also as {seen[key]}); name each folder once")
        seen[key] = str(d)
    return dirs


def _check_paths(teacher_dir, student_dir, data_dir, out: Path) -> None:
    check_output_dir(out)
    named = [("--teacher", teacher_dir), ("--student", student_dir)] + [("--data", d) for d in data_dirs(data_dir)]
    for flag, p in named:
        if same_or_inside(out, p) and Path(out).resolve() == Path(p).resolve():
            raise MmmambaError(f"--out {out} is the {flag[2:]} folder; distil into a new folder")
        if Path(p).exists() and same_or_inside(p, out) and Path(p).resolve().parent == out.resolve():
            if Path(p).name.startswith("after_stage"):
                raise MmmambaError(f"{flag} {p} would be overwritten by this run's {Path(p).name}; copy it elsewhere")


def check_pair(teacher: Decoder, student_cfg: DecoderConfig, teacher_dir, student_dir) -> None:
    """The student must be a conversion of this teacher: same shapes, same front-end, some Mamba-2."""
    if "mamba2" in teacher.config.mixers:
        raise MmmambaError(
            f"--teacher {teacher_dir} is already a converted student (it has Mamba-2 layers); "
            "pass the original attention teacher"
        )
    for name in SHAPE_FIELDS:
        a, b = getattr(teacher.config, name), getattr(student_cfg, name)
        if a != b:
            raise MmmambaError(
                f"--student {student_dir}: {name} {b} differs from the teacher's {a}; "
                f"convert this teacher (`mmmamba convert --teacher {teacher_dir}`)"
            )
    if (teacher.config.vision is None) != (student_cfg.vision is None) or (
        teacher.config.vision is not None and asdict(teacher.config.vision) != asdict(student_cfg.vision)
    ):
        raise MmmambaError(f"--student {student_dir}: its image front-end differs from the teacher's; convert again")
    if "mamba2" not in student_cfg.mixers and not student_cfg.conversion.get("auto_keep"):
        raise MmmambaError(f"--student {student_dir}: has no Mamba-2 layers; convert the teacher first")
    rank = student_cfg.conversion.get("auto_rank", "error")
    if student_cfg.conversion.get("auto_keep") and rank not in RANKS:
        raise MmmambaError(
            f"--student {student_dir}: config.json conversion.auto_rank {rank!r} is not one of {', '.join(RANKS)}; "
            "fix it or convert again"
        )


def _chat_examples(data_dir, teacher: Decoder, teacher_dir, tok: ChatTokenizer, cfg: DistillConfig, progress: bool):
    """Train and val examples of a chat / task-suite folder, images and lengths checked."""
    train_samples = read_split(data_dir, "train", cfg.allow_outside_images)
    val_samples = read_split(data_dir, "val", cfg.allow_outside_images, cfg.val_limit)
    check_images_match(train_samples + val_samples, teacher.config.vision, f"--teacher {teacher_dir}")
    images = image_processor(teacher.config.vision)
    limit = teacher.config.max_position

    def enc(samples, what):
        quiet = not progress or len(samples) < 5000  # a bar only where the check takes a while
        bar = tqdm(samples, desc=f"check {what}", unit="sample", disable=quiet, leave=False)
        return [encode_sample(s, tok, images, limit) for s in bar]

    return enc(train_samples, "train"), enc(val_samples, "val")


def prepare(teacher_dir, student_dir, data_dir, out: Path, cfg: DistillConfig, progress: bool = True) -> Prepared:
    """Load and check everything the run will need; nothing is written."""
    device = cfg.device
    teacher = load_checkpoint(teacher_dir).float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = load_checkpoint(student_dir).float()
    student.set_backends(ssd=cfg.ssd_backend)
    check_pair(teacher, student.config, teacher_dir, student_dir)
    tok = load_tokenizer(teacher_dir)
    limit = teacher.config.max_position
    train, val_examples, sizes = [], [], []
    for folder in data_dirs(data_dir):  # pooled: uniformly by sample, or as DIR:WEIGHT says (data/mixture.py)
        if is_text_corpus(folder):  # `mmmamba data text`: token windows, every token a target
            vocab = teacher.config.vocab_size
            train += text_examples(folder, "train", vocab, limit)
            val_examples += text_examples(folder, "val", vocab, limit, cfg.val_limit)
        else:
            t, v = _chat_examples(folder, teacher, teacher_dir, tok, cfg, progress)
            train, val_examples = train + t, val_examples + v
        sizes.append(len(train) - sum(sizes))
    if len(train) < cfg.batch_size:
        raise MmmambaError(
            f"--batch-size {cfg.batch_size}: the train split has only {len(train)} samples; lower the batch size"
        )
    val = _batches(
        val_examples,
        [range(i, min(i + cfg.batch_size, len(val_examples))) for i in range(0, len(val_examples), cfg.batch_size)],
        tok.pad_id,
        device,
    )
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))  # loaded: exact counts
    longest = max(len(e.ids) for e in train + val_examples)
    ckpt_bytes = 4 * n_s
    need_disk = ckpt_bytes * 4  # one checkpoint + the training state (weights, two Adam moments)
    check_free_space(out, need_disk, "one checkpoint and the training state")
    act = cfg.batch_size * longest * (teacher.config.hidden_size * teacher.config.num_layers * 24)
    logits = cfg.batch_size * longest * teacher.config.vocab_size * 4 * 4
    memory = 4 * (n_t + 4 * n_s) + act + logits
    if memory > machine_memory() and not str(device).startswith("cuda"):
        raise MmmambaError(
            f"the run needs about {human_bytes(memory)} of memory, the machine has {human_bytes(machine_memory())}; "
            "lower --batch-size"
        )
    estimate = {
        "teacher_params": n_t,
        "student_params": n_s,
        "train_samples": len(train),
        "data_shares": [round(x, 4) for x in shares(sizes, parse_sources(data_dir)[1])],
        "val_samples": len(val_examples),
        "longest_sequence": longest,
        "memory_bytes": memory,
        "disk_bytes": need_disk,
        "free_disk_bytes": free_bytes(out),
    }
    teacher.to(device)
    return Prepared(teacher, student, tok, train, val, estimate, sizes)


def time_steps(prep: Prepared, cfg: DistillConfig) -> dict[int, float]:
    """Seconds per step of each stage, measured on one batch (the student is not changed)."""
    student = copy.deepcopy(prep.student).to(cfg.device)
    (batch,) = _batches(prep.train, [list(range(cfg.batch_size))], prep.tok.pad_id, cfg.device)
    per_loss: dict[str, float] = {}
    out = {}
    for s in cfg.stages:
        stage = STAGES[s]
        if stage.loss not in per_loss:
            params = select_trainable(student, stage)
            t0 = time.perf_counter()
            if params:
                stage_loss(stage, cfg, prep.teacher, student, batch).backward()
            per_loss[stage.loss] = time.perf_counter() - t0
            student.zero_grad(set_to_none=True)
        out[s] = per_loss[stage.loss] * 1.3  # + optimizer step and data
    return out


def _check_settings(out: Path, settings: dict) -> None:
    f = out / "distill_config.json"
    if not f.exists():
        return
    try:
        old = read_json(f, "run settings file")
    except MmmambaError as e:
        if _has_work(out):
            raise MmmambaError(
                f"{e}; the run folder holds finished work, so restore the file or distil into a new --out"
            ) from None
        return  # nothing to protect: it is rewritten
    old.setdefault("data_identity", settings.get("data_identity"))  # a run recorded before data identities
    if old != settings:
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff == ["data_identity"]:
            raise MmmambaError(
                f"{out}: holds a run on other data (the --data files differ from the ones it started with, "
                f"{f.name}); resume with the same --data or distil into a new --out"
            )
        raise MmmambaError(
            f"{out}: holds a run with other settings ({', '.join(diff)} differ in {f.name}); "
            "use the same settings or a new --out"
        )


def _has_work(out: Path) -> bool:
    return (out / STATE_FILE).exists() or any(out.glob("after_stage*"))


def _finished(out: Path, stage_id: int) -> bool:
    return (out / f"after_stage{stage_id}" / "config.json").is_file()


def _pending_state(out: Path, cfg: DistillConfig, lead: bool = True) -> dict | None:
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


def _rank_slice(idx: list[int], comm: Comm, cfg: DistillConfig, stage: StageConfig) -> list[int]:
    """This process's samples of the global batch: a contiguous block (data-parallel), or all of them
    (layer-parallel: every process sees the whole batch for its own layers)."""
    if comm.mode == "layer":
        return idx
    per = len(idx) // comm.world
    return idx[comm.rank * per : (comm.rank + 1) * per]


def _micro_batches(examples, idx: list[int], cfg: DistillConfig, pad_id: int, device, limit: int) -> list[Batch]:
    """This process's samples in micro-batches of ``cfg.micro_batch``; packed, a micro-batch becomes as
    many rows (of one sample or more) as keep each row within ``limit`` tokens (the model's max_position)."""
    size = cfg.micro_batch or len(idx)
    groups = [idx[i : i + size] for i in range(0, len(idx), size)]
    if not cfg.pack:
        return _batches(examples, groups, pad_id, device)
    rows: list[list[int]] = []
    for g in groups:
        rows.append([])
        for i in g:
            if rows[-1] and sum(len(examples[j].ids) for j in rows[-1]) + len(examples[i].ids) > limit:
                rows.append([])
            rows[-1].append(i)
    return [pack_examples([examples[i] for i in r]).to(device) for r in rows]


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
    check_config(cfg)
    comm, device = init_from_env(cfg.device)
    comm = Comm(cfg.parallel)
    lead = comm.rank == 0
    data_parallel = cfg.parallel == "fsdp" or any(not STAGES[s].layer_local for s in cfg.stages)
    if comm.on and data_parallel and cfg.batch_size % comm.world:
        raise MmmambaError(f"--batch-size {cfg.batch_size}: give a multiple of the {comm.world} processes")
    out = Path(out_dir)
    _check_paths(teacher_dir, student_dir, data_dir, out)
    settings = asdict(cfg) | {"teacher": str(teacher_dir), "student": str(student_dir)}
    settings = {k: v for k, v in settings.items() if k not in RESUMABLE_WITH_OTHER}
    settings["steps"] = {str(k): v for k, v in settings["steps"].items()}
    folders, weights = parse_sources(data_dir)
    if any(w != 1 for w in weights):  # recorded only when weighted: unweighted runs resume as before
        settings["data_weights"] = {str(d): w for d, w in zip(folders, weights)}
    settings["data_identity"] = data_identity(data_dir)
    lock = RunLock(out) if lead and not dry_run else None
    refused = None
    if lock is not None:
        try:
            lock.acquire()  # one writer: a second one is refused here, naming this one's PID
        except MmmambaError as e:
            lock, refused = None, str(e)
    refused = comm.broadcast_object(refused)  # every process stops, or every process sees the folder rank 0 made
    if refused is not None:
        raise MmmambaError(refused)
    try:
        return _distill(teacher_dir, student_dir, data_dir, out, cfg, settings, comm, device, stop_after, dry_run,
                        progress)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def data_identity(data_dir) -> list[str]:
    """What a resume must find again: a digest per ``--data`` folder of the files a run reads (splits,
    corpus.json / suite.json), so that a resume with other data is refused."""
    return [folder_digest(d, DATA_FILES) for d in data_dirs(data_dir)]


DATA_FILES = ("train.jsonl", "val.jsonl", "corpus.json", "suite.json", "meta.json")


def all_finished(out, stages) -> bool:
    """Every stage of the run has its checkpoint: a rerun has nothing left to do."""
    return all(_finished(Path(out), s) for s in stages)


def _distill(teacher_dir, student_dir, data_dir, out: Path, cfg, settings, comm, device, stop_after, dry_run, progress):
    lead = comm.rank == 0
    _check_settings(out, settings)
    writer = lead and not dry_run  # the lock holder; a dry run only reads, and deletes nothing
    if out.is_dir():
        if writer:
            for s in cfg.stages:
                recover_dir(out / f"after_stage{s}")
        comm.barrier()
        pending = _pending_state(out, cfg, writer)
        comm.barrier()
    else:
        pending = None
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
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "distill_config.json", settings, digits=None)
    comm.barrier()
    teacher, tok, train, val = prep.teacher.to(device), prep.tok, prep.train, prep.val
    val = [b.to(device) for b in val]
    logger = Logger(out) if lead else None
    val_log = ValLog(out) if lead else None
    done_steps = 0

    student_src, last_good = Path(student_dir), str(student_dir)
    for stage_id in cfg.stages:
        finished = out / f"after_stage{stage_id}"
        if _finished(out, stage_id):
            student_src = last_good = finished
            continue
        fresh = prep.student if student_src == Path(student_dir) else load_checkpoint(student_src)
        student = fresh.float().to(device)
        student.checkpoint_layers = cfg.checkpoint_activations
        kept = apply_auto_keep(teacher, student, val) if stage_id == 3 else None  # the step between stages 2 and 3
        if kept is not None and lead:
            tqdm.write(f"auto:{len(kept)}: keeping layers {kept} as attention (largest stage-2 error)")
        base = STAGES[stage_id]
        layer_mode = comm.on and cfg.parallel == "layer" and base.layer_local
        owners = layer_owners(mamba_layers(student), comm.world) if layer_mode else {}
        if layer_mode and len(owners) < comm.world:
            raise MmmambaError(f"--parallel layer: {len(owners)} Mamba-2 layers for {comm.world} processes; use fsdp")
        own = [i for i, r in owners.items() if r == comm.rank] if layer_mode else None
        stage = base.with_options(
            cfg.lr_scale, cfg.train_o_proj, cfg.train_mlp, temperature=cfg.temperature, ce_weight=cfg.ce_weight,
            layers=own,
        )  # fmt: skip
        comm.mode = "layer" if layer_mode else "fsdp"
        comm.grad_scale = float(comm.world) if comm.on and not layer_mode else 1.0
        comm.local_params = layer_mode
        params = select_trainable(student, stage)
        if not params:
            raise MmmambaError(f"{student_src}: no Mamba-2 layers to train; convert the teacher first")
        opt = make_adamw(params, stage.optim)
        steps = cfg.steps[stage_id]
        start, extra = 0, {}
        if pending is not None and pending["extra"].get("stage") == stage_id:
            if "dcp" in pending:
                start, extra = load_sharded_state(pending, student, opt, steps)
            else:
                start, extra = apply_state(pending, student, opt, out / STATE_FILE, steps)
            pending = None
            last_good = f"{_state_files(out)[0]} (stage {stage_id}, step {start})"
        sharded = comm.on and not layer_mode
        plain = student
        if sharded:  # FSDP2: shard the trainable units, move the optimizer state onto the shards
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            osd = full_optimizer_state(student, opt) if start else None
            plain = copy.deepcopy(student) if lead else student
            if base.layer_local:  # the losses call each mixer's ``mix`` and nothing else of the student
                shard_fsdp(comm, [student.layers[i].mixer for i in mamba_layers(student)], "mix")
            else:
                shard_fsdp(comm, list(student.layers), root=student)
            params = select_trainable(student, stage)
            opt = make_adamw(params, stage.optim)
            if osd is not None:
                set_optimizer_state_dict(student, opt, osd, options=StateDictOptions(full_state_dict=True))
        if lead:
            logger.truncate(stage_id, start)
            val_log.truncate(stage_id, start)
        guard = NonFiniteGuard(
            f"stage {stage_id}", cfg.max_bad_steps, extra.get("skipped", 0), extra.get("in_a_row", 0)
        )
        seed = cfg.seed + 1000 * stage_id
        sampler = MixtureSampler(prep.sizes, parse_sources(data_dir)[1], cfg.batch_size, seed)

        def micro_batches(step: int) -> list[Batch]:
            idx = sampler.indices(step)  # noqa: B023
            mine = _rank_slice(idx, comm, cfg, stage)  # noqa: B023
            return _micro_batches(train, mine, cfg, tok.pad_id, device, teacher.config.max_position)

        def save(step: int) -> None:
            nonlocal last_good
            counters = {"stage": stage_id, "skipped": guard.skipped, "in_a_row": guard.in_a_row}  # noqa: B023
            if comm.on:
                if layer_mode:  # noqa: B023
                    _gather_owned(student, owners, comm)  # noqa: B023
                save_sharded_state(out, student, opt, step, counters, comm)  # noqa: B023
                if lead:
                    (out / STATE_FILE).unlink(missing_ok=True)
            else:
                save_state(out, student, opt, step, counters)  # noqa: B023
                if (out / DCP_DIR).exists():
                    remove_tree(out / DCP_DIR)
            last_good = f"{_state_files(out)[0]} (stage {stage_id}, step {step})"  # noqa: B023

        def after_step(r: StepReport) -> bool:
            nonlocal done_steps
            val_loss = fit = None
            if r.step % cfg.eval_every == 0 or r.step == steps:  # noqa: B023
                student.eval()  # noqa: B023
                with torch.no_grad(), autocast:  # noqa: B023
                    losses = [stage_loss(stage, cfg, teacher, student, b) for b in val]  # noqa: B023
                    if layer_mode:  # noqa: B023 - each process holds its layers' share of the loss
                        losses = [comm.sum(v.detach().reshape(1)) for v in losses]
                    val_loss = sum(float(v) for v in losses) / len(val)
                    fit = target_nll(teacher, student, val) if stage.loss is kl_to_teacher else None  # noqa: B023
            if lead:
                logger.row(stage_id, r.step, r.lr, r.loss if r.good else None, val_loss, r.tokens, r.seconds)  # noqa: B023
                if val_loss is not None and fit is not None:
                    val_log.add(stage_id, r.step, tokens_logged(logger.path), val_loss, fit)  # noqa: B023
            done_steps += 1
            stop = stop_after is not None and done_steps >= stop_after
            if val_loss is not None or stop:
                save(r.step)
            return stop

        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))
        train_loop(
            params=[p for _, p in params],
            opt=opt,
            optim=stage.optim,
            steps=steps,
            start=start,
            micro_batches=micro_batches,
            loss=lambda batch: stage_loss(stage, cfg, teacher, student, batch),  # noqa: B023
            guard=guard,
            last_good=lambda: last_good,  # noqa: B023
            after_step=after_step,
            comm=comm,
            device=device,
            desc=f"stage {stage_id}",
            progress=progress,
            train_mode=student.train,
        )
        if stop_after is not None and done_steps >= stop_after:
            comm.barrier()
            return student
        if guard.skipped and lead:
            tqdm.write(f"stage {stage_id}: {guard.skipped} step(s) skipped for a non-finite loss or gradient")
        student.eval()
        if layer_mode:
            _gather_owned(student, owners, comm)
        whole = _full_student(student, plain, comm, sharded)
        if lead:
            save_checkpoint(whole.eval(), finished, extra=lambda d: copy_tokenizer(teacher_dir, d))
            _drop_state(out)
            plot_losses(out)
        comm.barrier()
        student_src = last_good = finished
    if lead and not (out / "loss.png").exists():
        plot_losses(out)
    comm.barrier()
    return load_checkpoint(student_src)
