"""A decoder-only VLM teacher made from a pretrained LLM (Fuyu / SOLO style), and its two-phase training.

``graft_vision``: an LLM checkpoint folder → a VLM checkpoint folder. ``<img>``, ``<IMG_CONTEXT>`` and
``</img>`` join the tokenizer (their embedding rows start at the mean row), and an image front-end
(random) turns patches into tokens spliced in at the placeholders. On text the grafted model gives the
LLM's logits unchanged (the new vocabulary rows only add columns).

``tune_vlm_teacher``: phase ``embed`` trains only the image front-end, the LLM frozen, on the task
suite; phase ``all`` trains everything on the task suite with text data mixed into every step (a share
of the loss), so that the LLM's language survives. Both phases resume; the report holds the task
suite's test accuracy and the text perplexity before and after.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..checks import MAX_STEPS
from ..data.conversations import Batch, Example, collate, encode_sample, pack, read_split
from ..data.hf_tokenizer import HFTokenizer
from ..data.images import ImageProcessor
from ..data.scenes import CELL, IMAGE_SIZE
from ..data.text_corpus import is_text_corpus, text_examples
from ..data.tokenizer import ByteTokenizer, ChatTokenizer, load_tokenizer
from ..errors import MmmambaError
from ..evaluation.tasks import predict, score
from ..formats import load_checkpoint, save_checkpoint
from ..formats.gguf import write_tokenizer
from ..io import check_checkpoint_output, folder_digest, read_json, write_json_atomic
from ..models import Decoder, VisionConfig
from ..models.sizing import check_fits
from ..training.loop import StepReport, train_loop
from ..training.losses import masked_ce, next_token_loss
from ..training.optim import NonFiniteGuard, OptimConfig, make_adamw
from ..training.run import RunFolder, RunLog
from ..training.state import batch_indices, load_state, save_state

VOCAB_TABLES = ("embed_tokens.weight", "lm_head.weight")


@dataclass
class GraftConfig:
    """The image front-end put in front of the LLM (defaults: the task suite's 32-pixel images)."""

    style: str = "fuyu"  # "fuyu": one linear patch projection; "internvl": conv + pixel shuffle + MLP
    image_size: int = IMAGE_SIZE
    patch_size: int = CELL
    downsample_ratio: float = 1.0  # "internvl": 0.5 merges 2×2 patches into one token
    seed: int = 0

    def vision(self) -> VisionConfig:
        if self.style not in ("fuyu", "internvl"):
            raise MmmambaError(f"--vision {self.style!r}: use 'fuyu' or 'internvl'")
        try:
            return VisionConfig(
                self.image_size, self.patch_size, style=self.style, downsample_ratio=self.downsample_ratio
            )
        except MmmambaError as e:
            raise MmmambaError(f"{self._flags()}: {e}") from None

    def _flags(self) -> str:
        return f"--image-size {self.image_size} --patch-size {self.patch_size}"


def graft_vision(llm_dir, out, cfg: GraftConfig, replace: bool = True) -> Decoder:
    """Write ``out``: the LLM at ``llm_dir`` with an image front-end and the image tokens. Returns the model."""
    out = check_checkpoint_output(Path(out))
    vision = cfg.vision()
    llm = load_checkpoint(llm_dir).float()
    old = llm.config
    if old.vision is not None:
        raise MmmambaError(f"--llm {llm_dir}: already has an image front-end; give a text-only LLM")
    if "mamba2" in old.mixers:
        raise MmmambaError(f"--llm {llm_dir}: has Mamba-2 layers; graft onto the attention model, then convert")
    if old.text_vocab_size or old.special_embeddings:
        raise MmmambaError(f"--llm {llm_dir}: has a split text/special embedding; not supported by graft")
    tok = load_tokenizer(llm_dir)
    if isinstance(tok, HFTokenizer):
        added = tok.add_image_tokens()
    elif isinstance(tok, ByteTokenizer):  # has the image tokens already
        added = []
    else:
        raise MmmambaError(f"--llm {llm_dir}: tokenizer kind {tok.source!r} cannot take new tokens")
    span = tok.image_span_ids()
    vocab = max(old.vocab_size, max(span) + 1)
    try:  # every size checked (and the memory it needs) before anything is allocated
        cfg_vlm = dataclasses.replace(old, vocab_size=vocab, vision=vision, image_token_id=span[1])
    except MmmambaError as e:
        raise MmmambaError(f"{cfg._flags()} on --llm {llm_dir}: {e}") from None
    check_fits(cfg_vlm, f"{cfg._flags()} on --llm {llm_dir}")
    torch.manual_seed(cfg.seed)
    vlm = Decoder(cfg_vlm)
    state = vlm.state_dict()
    for name, tensor in llm.state_dict().items():
        if name in VOCAB_TABLES:  # (vocab, hidden): append rows, new tokens start at the mean row
            mean = tensor.mean(0)
            grown = torch.cat([tensor, mean.expand(vocab - tensor.shape[0], -1)])
            grown[added] = mean
            tensor = grown
        state[name] = tensor
    vlm.load_state_dict(state)
    save_checkpoint(vlm, out, extra=_tokenizer_writer(tok), replace=replace)
    n_vision = sum(p.numel() for p in vlm.vision.parameters())
    print(
        f"wrote {out}: {llm_dir} + a {cfg.style} image front-end ({n_vision / 1e6:.2f} M parameters, "
        f"{vision.tokens_per_tile} tokens per {cfg.image_size}-pixel image); vocabulary {old.vocab_size} → {vocab}"
    )
    return vlm


@dataclass
class TunePhase:
    """One phase of the teacher's training: which parameters move, at what rate, on what mix."""

    name: str
    steps: int
    trainable: str  # "vision": the image front-end only; "all": every parameter
    lr: float
    text_weight: float  # share of the step's loss on the text data (0: task suite only)


@dataclass
class TuneConfig:
    embed_steps: int = 300
    all_steps: int = 1500
    batch_size: int = 32  # task-suite samples a step
    text_batch_size: int = 8  # text samples a step (phase "all")
    embed_lr: float = 1e-3
    all_lr: float = 5e-5
    text_weight: float = 0.3
    eval_every: int = 250
    val_limit: int = 256  # val samples scored at each evaluation
    seed: int = 0
    device: str = "cpu"
    allow_outside_images: bool = False
    pack: bool = False  # a step's suite and text samples in one packed row: one forward, the same loss

    def phases(self) -> list[TunePhase]:
        return [
            TunePhase("embed", self.embed_steps, "vision", self.embed_lr, 0.0),
            TunePhase("all", self.all_steps, "all", self.all_lr, self.text_weight),
        ]

    FLAGS = {"all_steps": "--steps", "all_lr": "--lr"}  # the CLI's names where they differ from the field's

    def flag(self, name: str) -> str:
        return self.FLAGS.get(name, "--" + name.replace("_", "-"))

    def check(self) -> None:
        for name in ("embed_steps", "all_steps", "batch_size", "text_batch_size", "eval_every", "val_limit"):
            v = getattr(self, name)
            low = 0 if name.endswith("_steps") else 1
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_STEPS:
                raise MmmambaError(f"{self.flag(name)} {v}: give a whole number between {low} and {MAX_STEPS}")
        for name in ("embed_lr", "all_lr"):
            if not 0 < getattr(self, name) <= 1:
                raise MmmambaError(f"{self.flag(name)} {getattr(self, name)}: give a rate above 0, at most 1")
        if not 0 <= self.text_weight < 1:
            raise MmmambaError(f"--text-weight {self.text_weight}: give a share in [0, 1)")


@dataclass
class TuneData:
    suite_train: list[Example]
    suite_val: list  # Samples (scored by greedy answers)
    suite_test: list
    text_train: list[Example]
    text_val: list[Example]
    text_test: list[Example]


def _text_split(folders, split: str, tok, images, model: Decoder, allow_outside: bool, limit=None) -> list[Example]:
    """A split of every text folder: `data text` windows (every token a target) or chat answers."""
    out: list[Example] = []
    for folder in folders:
        if is_text_corpus(folder):
            out += text_examples(folder, split, model.config.vocab_size, model.config.max_position, limit)
        else:
            samples = read_split(folder, split, allow_outside, limit)
            out += [encode_sample(s, tok, images, model.config.max_position) for s in samples]
    return out


def load_tune_data(data_dir, text_dirs, tok, model: Decoder, cfg: TuneConfig) -> TuneData:
    """Everything read and tokenised (each line checked) before the first step."""
    for folder in text_dirs:  # before the suite's long encode: a wrong --text fails at once, named as --text
        if not (is_text_corpus(folder) or (Path(folder) / "train.jsonl").is_file()):
            raise MmmambaError(
                f"--text {folder}: not a `mmmamba data text` corpus nor a chat folder with train.jsonl; check the path"
            )
    images = ImageProcessor(model.config.vision)
    allow, limit = cfg.allow_outside_images, model.config.max_position
    train = read_split(data_dir, "train", allow)
    val = read_split(data_dir, "val", allow, cfg.val_limit)
    test = read_split(data_dir, "test", allow)
    if len(train) < cfg.batch_size:
        raise MmmambaError(f"--data {data_dir}: {len(train)} train samples, fewer than --batch-size {cfg.batch_size}")
    suite = [encode_sample(s, tok, images, limit) for s in tqdm(train, desc="encode suite", unit="sample")]
    for s in val + test:
        encode_sample(s, tok, images, limit)  # every image readable, every sample fits, before the first step
    splits = [_text_split(text_dirs, split, tok, images, model, allow) for split in ("train", "val", "test")]
    if text_dirs and cfg.text_weight > 0 and len(splits[0]) < cfg.text_batch_size:
        raise MmmambaError(f"--text: {len(splits[0])} train samples, fewer than --text-batch-size")
    return TuneData(suite, val, test, *splits)


@torch.no_grad()
def text_perplexity(
    model: Decoder, examples: list[Example], device, batch_size: int = 8, progress: bool = True
) -> float | None:
    """exp(mean next-token loss over the examples' targets), or None without examples."""
    if not examples:
        return None
    model.eval()
    one = torch.ones((), device=device)
    nll, count = 0.0, 0
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="text perplexity", unit="batch", disable=not progress, leave=False):
        batch = collate(examples[start : start + batch_size], 0).to(device)
        logits = model(batch.input_ids, batch.pixel_values).logits
        nll += masked_ce(logits, batch.input_ids, batch.loss_mask, one).item()
        count += int(batch.loss_mask[:, 1:].sum())
    return math.exp(nll / max(count, 1))


def _set_trainable(model: Decoder, phase: TunePhase) -> list[torch.nn.Parameter]:
    for name, p in model.named_parameters():
        p.requires_grad_(phase.trainable == "all" or name.startswith("vision."))
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class WeightedBatch:
    """A micro-batch and its share of the step's loss (``train_loop`` reads ``counts`` and ``totals``).
    A packed one (``tune --pack``) holds samples of both parts, so each target carries its own weight."""

    batch: Batch
    weight: float
    target_weight: torch.Tensor | None = None  # (1, L): the weight of the target token at each position

    def counts(self) -> torch.Tensor:
        return self.batch.counts()

    def to(self, device) -> WeightedBatch:
        w = None if self.target_weight is None else self.target_weight.to(device)
        return WeightedBatch(self.batch.to(device), self.weight, w)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.batch.input_ids

    @property
    def totals(self):
        return self.batch.totals

    @totals.setter
    def totals(self, value) -> None:
        self.batch.totals = value


def step_pieces(data: TuneData, phase: TunePhase, cfg: TuneConfig, step: int, pad_id: int) -> list[WeightedBatch]:
    """The step's task-suite batch, plus (phase with text) its text batch; weights 1 − w and w. With
    ``cfg.pack`` both are one packed row whose targets carry those weights over each part's target count."""
    suite = [data.suite_train[i] for i in batch_indices(len(data.suite_train), cfg.batch_size, cfg.seed, step)]
    parts = [(suite, 1.0)]
    if phase.text_weight > 0 and data.text_train:
        idx = batch_indices(len(data.text_train), cfg.text_batch_size, cfg.seed + 1, step)
        parts = [(suite, 1.0 - phase.text_weight), ([data.text_train[i] for i in idx], phase.text_weight)]
    if not cfg.pack:
        return [WeightedBatch(collate(examples, pad_id), w) for examples, w in parts]
    batch = pack([e for examples, _ in parts for e in examples])
    weights, start = [], 0
    for examples, w in parts:  # each part's share over its own targets, as pack() masked them
        n = sum(len(e.ids) for e in examples)
        targets = int(batch.loss_mask[0, start : start + n].sum())
        weights.append(torch.full((n,), w / max(targets, 1), dtype=torch.float64))
        start += n
    return [WeightedBatch(batch, 1.0, torch.cat(weights)[None])]


def piece_loss(model: Decoder, piece: WeightedBatch) -> torch.Tensor:
    """The piece's mean next-token loss over its own targets, times its weight: every part keeps its share
    whatever its token count (512-token text windows would otherwise drown a few answer tokens)."""
    b = piece.batch
    if piece.target_weight is not None:  # packed: the parts' shares are in the targets' own weights
        return next_token_loss(
            model, b.input_ids, b.pixel_values, b.loss_mask, weight=piece.target_weight, cu_seqlens=b.cu_seqlens
        )
    return piece.weight * next_token_loss(model, b.input_ids, b.pixel_values, b.loss_mask, b.loss_mask[:, 1:].sum())


def _run_phase(run: RunFolder, log: RunLog, model, tok, data: TuneData, phase: TunePhase, cfg: TuneConfig) -> None:
    """Train one phase into ``out/state_<name>`` (resumable) and write ``out/after_<name>``."""
    out = run.out
    device, state_dir = cfg.device, out / f"state_{phase.name}"
    params = _set_trainable(model, phase)
    optim = OptimConfig(lr=phase.lr)
    opt = make_adamw(model.named_parameters(), optim)
    resumed = load_state(state_dir, model, opt, phase.steps)  # its settings: the run's tune_config.json, checked before
    start = 0 if resumed is None else resumed[0]

    def micro_batches(step: int) -> list[WeightedBatch]:
        return [piece.to(device) for piece in step_pieces(data, phase, cfg, step, tok.pad_id)]

    def after_step(r: StepReport) -> bool:
        if r.step % cfg.eval_every == 0 or r.step == phase.steps:
            val = score(data.suite_val, predict(model, tok, data.suite_val, progress=False))
            acc, families = val["mean_accuracy"], val["per_family"]
            ppl = text_perplexity(model, data.text_val[: cfg.val_limit], device, progress=False)
            lowest = min(families, key=families.get)
            tqdm.write(
                f"{phase.name} step {r.step}: loss {r.loss:.4f}, val accuracy {acc:.3f} "
                f"(lowest: {lowest} {families[lowest]:.3f}), text val ppl {ppl}"
            )
            log.add(phase.name, r.step, f"{r.lr:.3e}", f"{r.loss:.5f}", f"{acc:.4f}", ppl or "")
            with (out / "tune_val_families.jsonl").open("a") as f:  # per family: levers chosen on val, not test
                f.write(json.dumps({"phase": phase.name, "step": r.step, "per_family": families}) + "\n")
            save_state(state_dir, model, opt, r.step)
        return False

    train_loop(
        params=params,
        opt=opt,
        optim=optim,
        steps=phase.steps,
        start=start,
        micro_batches=micro_batches,
        loss=lambda piece: piece_loss(model, piece),
        guard=NonFiniteGuard(f"teacher phase {phase.name}"),
        last_good=lambda: f"{state_dir}",
        after_step=after_step,
        device=device,
        desc=f"teacher {phase.name}",
        train_mode=model.train,
    )
    model.eval()
    run.publish(phase.name, model, extra=_tokenizer_writer(tok))


def _tokenizer_writer(tok: ChatTokenizer):
    return tok.save if isinstance(tok, ByteTokenizer) else (lambda folder: write_tokenizer(tok.hf, folder))


def tune_vlm_teacher(init_dir, data_dir, text_dirs: list, out, cfg: TuneConfig) -> dict:
    """Train a grafted VLM (``graft_vision``) in its phases; ``out`` becomes the trained teacher."""
    cfg.check()
    out = check_checkpoint_output(Path(out))
    model = load_checkpoint(init_dir).float()
    if model.config.vision is None:
        raise MmmambaError(f"--init {init_dir}: has no image front-end; make one with `mmmamba teacher graft`")
    if "mamba2" in model.config.mixers:
        raise MmmambaError(f"--init {init_dir}: has Mamba-2 layers; a teacher is all attention")
    text_dirs = [Path(d) for d in text_dirs]
    settings = {
        "init": str(Path(init_dir).resolve()),
        "data": str(Path(data_dir).resolve()),
        "text": [str(d.resolve()) for d in text_dirs],
        **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("device", "eval_every", "val_limit", "pack")},
        "data_identity": [folder_digest(d, DATA_FILES) for d in [Path(data_dir), *text_dirs]],
    }
    if (out / "config.json").is_file() and not (out / "tune_config.json").is_file():
        raise MmmambaError(
            f"--out {out}: holds a model that no `teacher tune` run started (no tune_config.json); its weights "
            "would be replaced, so tune into a new folder"
        )
    with RunFolder(out, "tune_config.json", what="teacher run") as run:  # one writer
        return _tune(run, model, init_dir, data_dir, text_dirs, cfg, settings)


DATA_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "corpus.json", "suite.json", "meta.json")


LOG_COLUMNS = ("phase", "step", "lr", "loss", "val_accuracy", "text_val_ppl")


def _tune(run: RunFolder, model, init_dir, data_dir, text_dirs, cfg: TuneConfig, settings: dict) -> dict:
    out = run.out
    run.check_settings(settings)  # before the data's long encode, as the finished check
    if (out / "teacher_report.json").is_file():  # written last: the run is finished
        print(f"{out}: finished already; its report is {out / 'teacher_report.json'}")
        return read_json(out / "teacher_report.json", "teacher_report.json")
    tok = load_tokenizer(init_dir)
    data = load_tune_data(data_dir, text_dirs, tok, model, cfg)
    model.to(cfg.device)
    run.save_settings(settings)
    log = run.log("tune_log.csv", LOG_COLUMNS, text=("phase",))
    log.start()
    before = out / "text_before.json"
    if not before.is_file():  # the LLM's own text perplexity, measured once before any training
        write_json_atomic(before, {"text_test_ppl": text_perplexity(model, data.text_test, cfg.device)})
    t0 = time.time()
    for phase in cfg.phases():
        if run.finished(phase.name):
            model = load_checkpoint(run.part(phase.name)).float().to(cfg.device)
            continue
        if phase.steps:
            _run_phase(run, log, model, tok, data, phase, cfg)
    model.eval()
    suite = score(data.suite_test, predict(model, tok, data.suite_test))
    report = {
        "init": str(init_dir),
        "data": str(data_dir),
        "text": [str(d) for d in text_dirs],
        "phases": [dataclasses.asdict(p) for p in cfg.phases()],
        "suite_test": suite,
        "text_test_ppl_before": read_json(before, "text_before.json")["text_test_ppl"],
        "text_test_ppl_after": text_perplexity(model, data.text_test, cfg.device),
        "seconds": round(time.time() - t0, 1),
    }
    save_checkpoint(model, out, extra=_tokenizer_writer(tok))
    write_json_atomic(out / "teacher_report.json", report)
    print(
        f"wrote {out}: task-suite test accuracy {suite['mean_accuracy']:.3f}; text perplexity "
        f"{report['text_test_ppl_before']} → {report['text_test_ppl_after']}"
    )
    return report
