"""Everything a distillation run reads, loaded and checked before the first step: the teacher and the
student (a conversion of this teacher), the data folders (pooled or weighted), the validation batches,
and an estimate of memory, disk and time (``distill --dry-run``). Nothing here writes."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..data.conversations import Batch, Example, check_images_match, collate, encode_sample, read_split
from ..data.images import image_processor
from ..data.mixture import parse_sources, shares
from ..data.text_corpus import check_corpus_vocab, is_text_corpus, text_examples
from ..data.tokenizer import ChatTokenizer, load_tokenizer
from ..errors import MmmambaError
from ..formats import load_checkpoint
from ..io import (
    DISTILL_SETTINGS,
    check_free_space,
    check_output_dir,
    folder_digest,
    free_bytes,
    human_bytes,
    machine_memory,
    overlap,
    resolved,
    same_or_inside,
)
from ..models import Decoder, DecoderConfig
from .auto_keep import RANKS
from .config import DistillConfig
from .stages import STAGES, select_trainable, stage_loss

SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
    "layer_overrides",
)  # fmt: skip


def batches(examples, idx_lists, pad_id, device) -> list[Batch]:
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
        key = resolved(d)
        if key in seen:
            raise MmmambaError(f"--data {d}: given twice (also as {seen[key]}); name each folder once")
        seen[key] = str(d)
    return dirs


RUN_FILES = ("log.csv", "val.csv", "loss.png", DISTILL_SETTINGS)  # what a run folder holds besides checkpoints


def check_paths(teacher_dir, student_dir, data_dir, out: Path) -> None:
    check_output_dir(out)
    out = Path(out)
    for name in RUN_FILES:  # a run writes these as files, and each stage an after_stageS folder
        if (out / name).exists() and not (out / name).is_file():
            raise MmmambaError(f"--out {out}: {out / name} is not a file; remove it or distil into a new folder")
    for stage in out.glob("after_stage*") if out.is_dir() else []:
        if not stage.is_dir():
            raise MmmambaError(f"--out {out}: {stage} is not a checkpoint folder; remove it or use a new --out")
    named = [("--teacher", teacher_dir), ("--student", student_dir)] + [("--data", d) for d in data_dirs(data_dir)]
    for flag, p in named:
        what = overlap(out, p)
        if what == "is":
            raise MmmambaError(f"--out {out} is the {flag[2:]} folder; distil into a new folder")
        if what == "lies inside" and Path(p).is_dir():  # the run would change a folder it reads (and its digest)
            raise MmmambaError(f"--out {out}: lies inside the {flag[2:]} folder {p}; distil into a folder outside it")
        if Path(p).exists() and same_or_inside(p, out) and Path(p).resolve().parent == out.resolve():
            if Path(p).name.startswith("after_stage"):
                raise MmmambaError(f"{flag} {p} would be overwritten by this run's {Path(p).name}; copy it elsewhere")
    if out.is_dir() and not (out / DISTILL_SETTINGS).exists():  # not a run folder (or one that lost its settings)
        inputs = {resolved(p) for _, p in named if Path(p).exists()}
        foreign = sorted(  # a training state alone is checked (and taken up) by the trainer
            e.name for e in out.iterdir()
            if not e.name.startswith((".", "train_state", "state_")) and resolved(e) not in inputs
        )  # fmt: skip
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise MmmambaError(
                f"--out {out}: holds {shown} but no {DISTILL_SETTINGS}, so it is no distillation run to resume; "
                "distil into a new or empty folder (or restore the run's settings file)"
            )


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
            check_corpus_vocab(folder, tok, vocab)
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
    val = batches(
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
    (batch,) = batches(prep.train, [list(range(cfg.batch_size))], prep.tok.pad_id, cfg.device)
    per_loss: dict[str, float] = {}
    out = {}
    for s in cfg.stages:
        stage = STAGES[s]
        if stage.loss not in per_loss:
            params = select_trainable(student, stage)
            t0 = time.perf_counter()
            if params:
                stage_loss(stage.with_options(**cfg_loss_args(cfg)), prep.teacher, student, batch).backward()
            per_loss[stage.loss] = time.perf_counter() - t0
            student.zero_grad(set_to_none=True)
        out[s] = per_loss[stage.loss] * 1.3  # + optimizer step and data
    return out


def data_identity(data_dir) -> list[str]:
    """What a resume must find again: a digest per ``--data`` folder of the files a run reads (splits,
    corpus.json / suite.json), so that a resume with other data is refused."""
    return [folder_digest(d, DATA_FILES) for d in data_dirs(data_dir)]


DATA_FILES = ("train.jsonl", "val.jsonl", "corpus.json", "suite.json", "meta.json")


def cfg_loss_args(cfg: DistillConfig) -> dict:
    """The run's loss options, as ``StageConfig.with_options`` takes them."""
    return {"temperature": cfg.temperature, "ce_weight": cfg.ce_weight}
