"""The ``mmmamba`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import errno
import math
import sys
from pathlib import Path

from ..errors import MmmambaError

PLANNED: dict[str, str] = {}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, "(default: …)", unless the help already says it or there is none."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        d = action.default
        shown = not (d is None or d is False or d is argparse.SUPPRESS or action.required)
        if shown and action.option_strings and "default" not in text.lower() and "%(default)" not in text:
            default = ",".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text = f"{text} (default: {str(default).replace('%', '%%')})".strip()
        return text


class Parser(argparse.ArgumentParser):
    """argparse with no prefix matching (``--steps`` is not ``--steps-per-stage``), one-line errors (exit 2)
    under the sub-command's own name, defaults shown in --help, and required options listed as required."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._required = None

    def add_argument(self, *args, **kwargs):
        if kwargs.get("required") and args and args[0].startswith("-"):
            if self._required is None:
                self._required = self.add_argument_group("required arguments")
            return self._required.add_argument(*args, **kwargs)
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def int_in(low: int, high: int):
    """An argparse type: a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{v} is outside {low}..{high}")
        return v

    return parse


def float_in(low: float, high: float, low_open: bool = False):
    """An argparse type: a finite number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            v = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
            side = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text!r} is outside {side}{low}, {high}]")
        return v

    return parse


MAX_STEPS = 10_000_000
COUNT = int_in(1, MAX_STEPS)
SEED = int_in(0, 2**63 - 1)


def resolve_device(text: str | None) -> str:
    """--device: cpu, cuda, cuda:N or mps, present on this machine; None picks cuda when available."""
    import torch

    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise MmmambaError(f"--device {text!r}: unknown device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MmmambaError(f"--device {text}: no CUDA device on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MmmambaError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MmmambaError(f"--device {text}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise MmmambaError(f"--device {text}: {dev.type} is not supported; use cpu, cuda or cuda:N")
    return str(dev)


def resolve_dtype(name: str, device: str):
    """``--dtype``: float32 | bfloat16, or auto = bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def check_text(text: str, flag: str) -> str:
    """A command-line string must be valid UTF-8 (undecodable bytes arrive as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MmmambaError(f"{flag}: not valid UTF-8 text; pass the text in UTF-8") from None
    return text


def parse_size(text: str) -> int:
    """'2GB', '500MB', '64KB' or a byte count → bytes."""
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    t = text.strip().upper()
    for unit, scale in units.items():
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * scale)
    if t.isdigit():
        return int(t)
    raise MmmambaError(f"size {text!r}: write it like 2GB, 500MB or 64KB")


def shard_size(text: str) -> int:
    n = parse_size(text)
    if not 1024 <= n <= 1024**4:
        raise MmmambaError(f"--max-shard-size {text}: give a size between 1KB and 1024GB")
    return n


def reads_model(flag: str, path) -> None:
    """Register a model's files (a folder's config, weights, tokenizer; or a .gguf) as this command's input."""
    from ..formats.checkpoint import checkpoint_files
    from ..io import inputs

    if path is not None:
        inputs().add_files(checkpoint_files(path), flag)


DATA_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "suite.json", "corpus.json", "meta.json")


def reads_folder(flag: str, path, whole: bool = False) -> None:
    """Register a data folder as this command's input: its splits, meta files and images (``whole``: every
    file in it, e.g. a benchmark as released). A new file beside them, such as a run's output, is not one."""
    from ..io import inputs

    if path is None:
        return
    if whole:
        inputs().add_folder(path, flag)
        return
    inputs().add_files([Path(path) / name for name in DATA_FILES], flag)
    inputs().add_folder(Path(path) / "images", flag)


def check_outputs_in(out, names, flag: str = "--out") -> None:
    """The files a command will write into folder ``out`` replace none of its inputs."""
    from ..io import inputs

    for name in names:
        inputs().check_output(Path(out) / name, f"{flag} {out} ({name})")


def cmd_convert(args) -> None:
    import torch

    from ..convert import convert_to_mamba
    from ..convert.layer_spec import parse_auto, parse_keep_attention
    from ..data.tokenizer import copy_tokenizer
    from ..formats import load_checkpoint, save_checkpoint
    from ..formats.loading import load_config
    from ..io import check_output_dir, same_or_inside

    reads_model("--teacher", args.teacher)
    out = check_output_dir(args.out)
    if same_or_inside(args.teacher, out):
        what = "is" if Path(out).resolve() == Path(args.teacher).resolve() else "contains"
        raise MmmambaError(f"--out {out} {what} the teacher {args.teacher}; write the student to a new folder")
    max_shard = shard_size(args.max_shard_size)
    cfg = load_config(args.teacher)
    if "mamba2" in cfg.mixers:
        raise MmmambaError(
            f"--teacher {args.teacher} is already a converted student (it has Mamba-2 layers); pass the original"
        )
    keep = parse_keep_attention(args.keep_attention, cfg.num_layers)
    auto = parse_auto(args.keep_attention, cfg.num_layers)
    if args.auto_rank is not None and auto is None:
        raise MmmambaError(f"--auto-rank {args.auto_rank}: only with --keep-attention auto:K; drop it")
    if args.dry_run:
        _convert_estimate(args, cfg, keep, out)
        return
    torch.manual_seed(args.seed)
    teacher = load_checkpoint(args.teacher)
    student = convert_to_mamba(teacher, keep, init=args.init, mamba=_mamba_options(args))
    student.config.conversion["teacher"] = str(args.teacher)
    if auto is not None:
        student.config.conversion["auto_keep"] = auto
        student.config.conversion["auto_rank"] = args.auto_rank or "error"
    save_checkpoint(student, out, max_shard, extra=lambda d: copy_tokenizer(args.teacher, d))
    print(f"wrote {args.out}: {kept_summary(student.config.mixers, auto, args.auto_rank)} (init {args.init})")


def kept_summary(mixers: list[str], auto: int | None, rank: str | None) -> str:
    """Which layers the student keeps as attention, as the converted config says; with auto:K, that distill
    chooses them after stage 2."""
    kept = [i for i, kind in enumerate(mixers) if kind == "attention"]
    now = f"{mixers.count('mamba2')} Mamba-2 layers, attention kept at {kept or 'none'}"
    if auto is None:
        return now
    return (
        f"{now} for now: auto:{auto} keeps the {auto} layer(s) with the largest stage-2 {rank or 'error'} as "
        "attention, chosen by `mmmamba distill` after stage 2 (it prints them)"
    )


def _mamba_options(args) -> dict:
    """The Mamba-2 options ``convert`` stores in the student's config."""
    return {"conv_kernel": args.conv_kernel, "gate_order": args.gate_order}


def _convert_estimate(args, cfg, keep, out) -> None:
    """--dry-run: what convert would write, the memory and time it needs; nothing is written."""
    import dataclasses

    from ..convert.layer_spec import parse_auto
    from ..formats.checkpoint import check_fits, parameter_count
    from ..io import check_free_space, free_bytes, human_bytes

    mixers = ["attention" if i in keep else "mamba2" for i in range(cfg.num_layers)]
    student = dataclasses.replace(cfg, mixers=mixers, mamba=_mamba_options(args))
    need = check_fits(cfg, args.teacher) + check_fits(student, "the student")
    disk = 4 * parameter_count(student)
    check_free_space(out, disk, "the student checkpoint")
    seconds = 2 + parameter_count(student) / 2e8  # load + seed + write, dominated by disk speed
    kept = kept_summary(mixers, parse_auto(args.keep_attention, cfg.num_layers), args.auto_rank)
    print(
        f"dry run: {args.teacher} -> {out}: {kept}; memory ~ {human_bytes(need)}, disk {human_bytes(disk)} "
        f"({human_bytes(free_bytes(out))} free), time ~ {seconds:.0f} s; nothing written"
    )


def cmd_data_make(args) -> None:
    from ..data.suite import make_suite
    from ..io import check_free_space, check_output_dir

    sizes = {"train": args.train, "val": args.val, "test": args.test}
    try:
        recall = tuple(int(k) for k in args.recall_images.split(","))
    except ValueError:
        recall = ()
    if not recall or any(not 1 <= k <= 8 for k in recall):
        raise MmmambaError(f"--recall-images {args.recall_images!r}: give image counts from 1 to 8, e.g. 2,3,4")
    family_train = _family_sizes(args.family_train or [])
    out = check_output_dir(args.out)
    n = 8 * sum(sizes.values()) + sum(family_train.values())  # up to 8 families
    check_free_space(out, 2048 * n, "the task suite")  # ~2 KB per PNG
    make_suite(out, args.seed, sizes, recall, family_train)
    more = f", train {family_train}" if family_train else ""
    print(f"wrote {args.out}: train/val/test JSONL + images (seed {args.seed}, per family {sizes}{more})")


def _family_sizes(items: list[str]) -> dict[str, int]:
    """``--family-train reverse=32000`` (repeatable) -> {"reverse": 32000}, each checked."""
    from ..data.tasks import FAMILIES

    out: dict[str, int] = {}
    for item in items:
        family, _, n = item.partition("=")
        if family not in FAMILIES or not n.isdigit() or not 1 <= int(n) <= 1_000_000 or family in out:
            raise MmmambaError(
                f"--family-train {item!r}: give FAMILY=N once per family, N from 1 to 1000000, "
                f"FAMILY one of {', '.join(FAMILIES)}"
            )
        out[family] = int(n)
    return out


def cmd_data_text(args) -> None:
    from ..data.text_corpus import build_text_corpus, collect_files
    from ..data.tokenizer import load_tokenizer
    from ..io import check_free_space, check_output_dir, inputs, same_or_inside

    out = check_output_dir(args.out)
    files = collect_files(args.inputs)
    inputs().add_files(files, "--inputs")
    reads_model("--tokenizer", args.tokenizer)
    check_outputs_in(out, ["train.jsonl", "val.jsonl", "test.jsonl", "corpus.json"])
    for f in files:
        if out.exists() and same_or_inside(f, out):
            raise MmmambaError(f"--out {out}: holds the input {f}; write the corpus to a new folder")
    if args.val_frac + args.test_frac >= 1:
        raise MmmambaError(f"--val-frac {args.val_frac} + --test-frac {args.test_frac}: leave some text for training")
    check_free_space(out, 12 * sum(f.stat().st_size for f in files), "the text corpus")
    tok = load_tokenizer(args.tokenizer)
    info = build_text_corpus(
        args.inputs, out, tok, args.tokenizer, args.seq_len, args.val_frac, args.test_frac, args.seed, args.min_tokens,
        near_duplicate=args.near_duplicate,
    )  # fmt: skip
    sizes = ", ".join(f"{k} {v['chunks']} chunks / {v['tokens']} tokens" for k, v in info["splits"].items())
    dup = len(info["dropped_near_duplicates"])
    docs = f"{info['documents']} documents ({dup} near-duplicates dropped)"
    print(f"wrote {out}: {docs} -> {sizes} (seq_len {args.seq_len})")


def cmd_data_self_distill(args) -> None:
    from ..data.tokenizer import load_tokenizer
    from ..formats import load_checkpoint
    from ..infer import SamplingConfig
    from ..infer.self_distill import read_prompts, self_distill
    from ..io import check_output_dir, inputs, same_or_inside

    reads_model("--teacher", args.teacher)
    inputs().add_file(args.prompts, "--prompts")
    out = check_output_dir(args.out)
    check_outputs_in(out, ["train.jsonl", "val.jsonl", "test.jsonl", "meta.json"])
    if Path(args.teacher).exists() and same_or_inside(args.teacher, out):
        raise MmmambaError(f"--out {out} is or contains the teacher {args.teacher}; write the data to a new folder")
    if args.val_frac + args.test_frac >= 1:
        raise MmmambaError(f"--val-frac {args.val_frac} + --test-frac {args.test_frac}: leave some for training")
    prompts = read_prompts(args.prompts)
    device = resolve_device(args.device)
    tok = load_tokenizer(args.teacher)
    teacher = load_checkpoint(args.teacher).to(device=device, dtype=resolve_dtype(args.dtype, device)).eval()
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    meta = self_distill(
        teacher, tok, prompts, out, args.teacher, args.max_new_tokens, args.batch_size, sampling,
        args.val_frac, args.test_frac, args.seed, cut_to_train=args.cut_to_train,
    )  # fmt: skip
    cut = f", {meta['cut_kept_in_train']} cut answers kept in train" if args.cut_to_train else ""
    print(
        f"wrote {out}: {meta['kept']} of {meta['prompts']} prompts answered by {args.teacher} on {device} "
        f"({meta['dropped_unfinished']} unfinished, {meta['dropped_empty']} empty dropped{cut}); "
        f"splits {meta['splits']}"
    )


def cmd_data_teacher_text(args) -> None:
    from ..data.tokenizer import load_tokenizer
    from ..formats import load_checkpoint
    from ..infer.teacher_text import TeacherTextConfig, plan_rows, write_teacher_text
    from ..io import check_output_dir, same_or_inside

    out = check_output_dir(args.out)
    for flag, src in (("--teacher", args.teacher), ("--prefixes", args.prefixes), ("--prompts", args.prompts)):
        if src is not None and Path(src).exists() and same_or_inside(src, out):
            raise MmmambaError(f"--out {out} is or contains {flag} {src}; write the teacher text to a new folder")
    cfg = TeacherTextConfig(
        args.prefix_tokens, args.new_tokens, args.text_rows, args.per_prompt, args.batch_size, args.temperature,
        args.top_p, args.candidates, args.seed, args.val_frac, args.test_frac, args.decode,
    )  # fmt: skip
    cfg.check()
    device = resolve_device(args.device)
    tok = load_tokenizer(args.teacher)
    teacher = load_checkpoint(args.teacher).to(device=device, dtype=resolve_dtype(args.dtype, device)).eval()
    rows = plan_rows(args.prefixes, args.prompts, tok, cfg, teacher.config.vocab_size)
    sources = {"teacher": args.teacher, "prefixes": args.prefixes, "prompts": args.prompts}
    info = write_teacher_text(teacher, tok, rows, out, cfg, sources)
    t = info["teacher_text"]
    sizes = ", ".join(f"{k} {v['chunks']} rows / {v['tokens']} tokens" for k, v in info["splits"].items())
    speed = f" ({t['new_tokens_per_s_this_call']:.0f} new tokens/s)" if t["new_tokens_per_s_this_call"] else ""
    print(f"wrote {out}: {t['rows']} rows, {t['new_tokens']} teacher tokens{speed} -> {sizes}")


def cmd_import_gguf(args) -> None:
    import torch

    from ..formats.gguf import import_gguf, open_gguf
    from ..io import check_free_space, check_output_dir, human_bytes, same_or_inside

    reads_model("file", args.file)
    out = check_output_dir(args.out)
    if same_or_inside(args.file, out):
        raise MmmambaError(f"--out {out} is or contains {args.file}; write the checkpoint to a new folder")
    open_gguf(args.file)  # a missing or foreign file is refused before any work
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    check_free_space(out, 8 * Path(args.file).stat().st_size * dtype.itemsize, "the dequantized checkpoint")
    model = import_gguf(args.file, out, dtype, shard_size(args.max_shard_size))
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    print(
        f"wrote {out}: {model.config.conversion['source']} {n / 1e6:.1f} M parameters, {model.config.num_layers} "
        f"layers, dequantized to {args.dtype} ({human_bytes(size)}), tokenizer and chat template from the file"
    )


def cmd_teacher_graft(args) -> None:
    from ..io import same_or_inside
    from ..teacher.vlm import GraftConfig, graft_vision

    reads_model("--llm", args.llm)
    if same_or_inside(args.llm, args.out):
        raise MmmambaError(f"--out {args.out} is or contains the LLM {args.llm}; write the VLM to a new folder")
    cfg = GraftConfig(args.vision, args.image_size, args.patch_size, args.downsample_ratio, args.seed)
    graft_vision(args.llm, args.out, cfg)


def cmd_teacher_tune(args) -> None:
    from ..io import same_or_inside
    from ..teacher.vlm import TuneConfig, tune_vlm_teacher

    reads_model("--init", args.init)
    for flag, folder in [("--data", args.data)] + [("--text", t) for t in args.text]:
        reads_folder(flag, folder)
    for flag, folder in [("--init", args.init), ("--data", args.data)] + [("--text", t) for t in args.text]:
        if same_or_inside(folder, args.out):
            raise MmmambaError(f"--out {args.out} is or contains {flag} {folder}; train into a new folder")
    cfg = TuneConfig(
        embed_steps=args.embed_steps,
        all_steps=args.steps,
        batch_size=args.batch_size,
        text_batch_size=args.text_batch_size,
        embed_lr=args.embed_lr,
        all_lr=args.lr,
        text_weight=args.text_weight,
        eval_every=args.eval_every,
        seed=args.seed,
        device=resolve_device(args.device),
        allow_outside_images=args.allow_outside_images,
        pack=args.pack,
    )
    tune_vlm_teacher(args.init, args.data, args.text, args.out, cfg)


def cmd_teacher_train(args) -> None:
    from ..teacher.train import train_teacher

    reads_folder("--data", args.data)
    device = resolve_device(args.device)
    train_teacher(
        args.preset,
        args.data,
        args.out,
        args.seed,
        args.steps,
        args.eval_every,
        device,
        allow_outside=args.allow_outside_images,
    )


def cmd_eval(args) -> None:
    from ..data.conversations import check_images_match, read_split
    from ..data.text_corpus import is_text_corpus
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.evaluate import evaluate
    from ..evaluation.freeform import print_freeform
    from ..evaluation.tasks import print_table
    from ..formats import load_checkpoint
    from ..io import check_output_file, check_outputs_distinct, inputs, write_json_atomic, write_jsonl_atomic

    reads_model("--model", args.model)
    reads_model("--teacher", args.teacher)
    reads_folder("--data", args.data, whole=args.benchmark is not None)
    if args.choices is not None:
        inputs().add_file(args.choices, "--choices")
    check_outputs_distinct([("--json", args.json), ("--answers", args.answers)])
    if args.json:
        check_output_file(args.json, "--json")
    if args.answers:
        check_output_file(args.answers, "--answers")
        if args.benchmark is not None or is_text_corpus(args.data):
            raise MmmambaError(f"--answers {args.answers}: only for task-suite or chat data (with --split); drop it")
    if args.choices is not None and not Path(args.choices).is_file():
        what = "is not a regular file" if Path(args.choices).exists() else "no such file"
        raise MmmambaError(f"--choices {args.choices}: {what}; give a JSONL of {{context, choices, label}}")
    if args.choices is not None:
        from ..evaluation.text import read_choices

        read_choices(args.choices)  # every item checked before any model is run
    device = resolve_device(args.device)
    if args.benchmark is not None:
        for flag, value in (("--teacher", args.teacher), ("--choices", args.choices)):
            if value is not None:
                raise MmmambaError(f"{flag} {value}: not used with --benchmark {args.benchmark}; drop it")
        return eval_benchmark(args, device)
    if is_text_corpus(args.data):
        return eval_text(args, device)
    samples = read_split(args.data, args.split, args.allow_outside_images, args.limit)
    model = load_checkpoint(args.model).float().to(device)
    tok = load_tokenizer(args.model)
    check_images_match(samples, model.config.vision, f"--model {args.model}")
    teacher = None if args.teacher is None else load_checkpoint(args.teacher).float().to(device)
    report = evaluate(
        model, tok, samples, args.max_new_tokens, args.batch_size, teacher, args.agreement_tokens,
        keep_answers=bool(args.answers),
    )  # fmt: skip
    answers = report.pop("answers", None)
    title = f"{args.model} on {args.data} [{args.split}], answers up to {report['max_new_tokens']} tokens"
    print_table(report, title)
    print_freeform(report["free_form"])
    if args.choices is not None:
        from ..evaluation.text import choice_scores, read_choices

        report["choices"] = {"model": choice_scores(model, tok, read_choices(args.choices), args.batch_size)}
        print(f"  {args.choices}: acc {report['choices']['model']['acc']:.3f}")
    if args.json:
        write_json_atomic(args.json, report)
    if answers is not None:
        write_jsonl_atomic(args.answers, answers)
        wrong = sum(not r["correct"] for r in answers)
        print(f"  answers: {args.answers} ({wrong} of {len(answers)} wrong)")


def eval_benchmark(args, device) -> None:
    """``mmmamba eval --benchmark NAME``: one of the paper's benchmarks from files held locally."""
    from ..data.conversations import check_images_match
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.benchmarks import print_benchmark, read_benchmark, score_benchmark
    from ..evaluation.tasks import predict
    from ..formats import load_checkpoint
    from ..io import write_json_atomic

    samples, info = read_benchmark(args.benchmark, args.data, args.split, args.limit)
    model = load_checkpoint(args.model).float().to(device)
    check_images_match(samples, model.config.vision, f"--model {args.model}")
    answers = predict(model, load_tokenizer(args.model), samples, args.batch_size, args.max_new_tokens or 16)
    report = score_benchmark(args.benchmark, samples, info, answers)
    print_benchmark(report)
    if args.json:
        write_json_atomic(args.json, report)


def eval_text(args, device) -> None:
    """``mmmamba eval`` on a ``mmmamba data text`` corpus: perplexity, KL to --teacher, multiple choice."""
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.text import evaluate_text, print_text_report
    from ..formats import load_checkpoint
    from ..io import write_json_atomic

    model = load_checkpoint(args.model).float().to(device)
    tok = load_tokenizer(args.model)
    teacher = None if args.teacher is None else load_checkpoint(args.teacher).float().to(device)
    batch = min(args.batch_size, 8)  # full-vocabulary log-probabilities of whole windows
    report = evaluate_text(
        model, tok, args.data, args.split, teacher, batch, args.limit, args.cloze_items, args.choices
    )
    print_text_report(report, f"{args.model} on {args.data} [{args.split}]")
    if args.json:
        write_json_atomic(args.json, report)


def cmd_distill(args) -> None:
    from ..distill.trainer import DistillConfig, distill
    from ..io import human_bytes

    try:
        stages = [int(s) for s in args.stages.split(",")]
        steps = [int(s) for s in args.steps_per_stage.split(",")]
    except ValueError:
        stages, steps = [], []
    if len(steps) == 1:
        steps *= len(stages)
    bad = len(steps) != len(stages) or any(s not in (1, 2, 3) for s in stages) or stages != sorted(set(stages))
    if bad or not stages or any(not 1 <= n <= MAX_STEPS for n in steps):
        raise MmmambaError(
            f"--stages {args.stages} / --steps-per-stage {args.steps_per_stage}: give stages from 1,2,3 "
            f"in order and one step count (1..{MAX_STEPS}), or one per stage"
        )
    cfg = DistillConfig(
        stages=stages,
        steps=dict(zip(stages, steps)),
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        seed=args.seed,
        temperature=args.temperature,
        ce_weight=args.ce_weight,
        train_o_proj=args.train_o_proj,
        train_mlp=args.train_mlp,
        lr_scale=args.lr_scale,
        device=resolve_device(args.device),
        allow_outside_images=args.allow_outside_images,
        pack=args.pack,
        micro_batch=args.micro_batch,
        parallel=args.parallel,
        ssd_backend=args.ssd_backend,
        checkpoint_activations=args.checkpoint_activations,
    )
    reads_model("--teacher", args.teacher)
    reads_model("--student", args.student)
    for d in args.data:
        reads_folder("--data", d)
    if args.dry_run:
        e = distill(args.teacher, args.student, args.data, args.out, cfg, dry_run=True)
        print(
            f"dry run: teacher {e['teacher_params'] / 1e6:.2f} M / student {e['student_params'] / 1e6:.2f} M "
            f"parameters; {e['train_samples']} train / {e['val_samples']} val samples, images readable, longest "
            f"sequence {e['longest_sequence']} tokens; memory ~ {human_bytes(e['memory_bytes'])}, disk "
            f"{human_bytes(e['disk_bytes'])} ({human_bytes(e['free_disk_bytes'])} free), time ~ {e['seconds']:.0f} s "
            f"on {cfg.device}; nothing written"
        )
        if len(e["data_shares"]) > 1:
            print("batch shares of the --data folders: " + ", ".join(f"{x:.3f}" for x in e["data_shares"]))
        return
    from ..distill.trainer import all_finished

    done_before = all_finished(args.out, stages)  # then distill checks the settings and says it is finished
    distill(args.teacher, args.student, args.data, args.out, cfg)
    if not done_before:
        print(f"wrote {args.out}/after_stage{stages[-1]} (log.csv, loss.png beside it)")


def side_output(out, suffix: str) -> Path:
    """A side output's default: beside ``out``, named after it (``RESULTS.md`` -> ``RESULTS_chart.png``)."""
    out = Path(out)
    return out.with_name(out.stem + suffix)


def cmd_report(args) -> None:
    from ..experiments.report import write_report
    from ..io import check_output_file, check_outputs_distinct, inputs

    args.chart = args.chart or side_output(args.out, "_chart.png")
    args.quality = args.quality or side_output(args.out, "_quality.json")
    reads = inputs()
    reads.add_file(args.teacher_eval, "--teacher-eval")
    for run in args.runs:
        reads.add_file(Path(run) / "result.json" if Path(run).is_dir() else run, "--runs")
    if args.notes:
        reads.add_file(args.notes, "--notes")
    outputs = [("--out", args.out), ("--chart", args.chart), ("--quality", args.quality)]
    check_outputs_distinct(outputs)
    for flag, path in outputs:
        check_output_file(path, flag)
    q = write_report(args.runs, args.teacher_eval, args.out, args.notes, args.chart, args.quality)
    print(
        f"wrote {args.out}: teacher {q['teacher']:.3f}, "
        + ", ".join(f"{k} {v:.3f}" for k, v in q.items() if k in ("linear", "hybrid"))
    )


def _load_for_chat(args):
    from ..data.images import ImageProcessor
    from ..data.tokenizer import IMAGE_MARK, load_tokenizer
    from ..formats import load_checkpoint
    from ..infer import SamplingConfig

    prompt = check_text(getattr(args, "prompt", "") or "", "--prompt")
    if args.image is None and IMAGE_MARK in prompt:
        raise MmmambaError(f"--prompt contains {IMAGE_MARK} but no --image is given; add --image FILE or drop the mark")
    if args.image is not None and prompt.count(IMAGE_MARK) > 1:
        raise MmmambaError(f"--prompt has {prompt.count(IMAGE_MARK)} {IMAGE_MARK} marks for one --image; keep one")
    if args.image is not None and not Path(args.image).is_file():
        exists = Path(args.image).exists()
        what = "is a folder" if Path(args.image).is_dir() else "is not a regular file" if exists else "does not exist"
        raise MmmambaError(f"--image {args.image}: {what}; give an image file")
    model = load_checkpoint(args.model).float().eval()
    model.set_backends(ssd=args.ssd_backend)
    tok = load_tokenizer(args.model, args.chat_template)
    image = None
    if args.image:
        if model.config.vision is None:
            raise MmmambaError(f"{args.model} has no image front-end; drop --image")
        image = ImageProcessor(model.config.vision)(args.image)  # (n_tiles, C, S, S)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    return model, tok, image, sampling


class _Stream:
    """Prints byte-level tokens as they arrive, holding back incomplete UTF-8 sequences."""

    def __init__(self, tok):
        self.tok, self.ids, self.shown = tok, [], ""

    def __call__(self, token: int) -> None:
        if token in self.tok.stop_ids:
            return
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if not text.endswith("\ufffd"):
            print(text[len(self.shown) :], end="", flush=True)
            self.shown = text


def _prompt_text(tok, ids) -> str:
    """Prompt ids as text with every special token written out (``<|im_start|>``, each ``<IMG_CONTEXT>``)."""
    if getattr(tok, "hf", None) is not None:
        return tok.hf.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    from ..data.tokenizer import SPECIALS

    out, raw = [], bytearray()
    for i in map(int, ids):
        if i < 256:
            raw.append(i)
            continue
        out += [raw.decode("utf-8", errors="replace"), SPECIALS[i - 256]]
        raw = bytearray()
    return "".join([*out, raw.decode("utf-8", errors="replace")])


def cmd_generate(args) -> None:
    from ..data.images import attach_image
    from ..infer import generate

    device = resolve_device(args.device)
    model, tok, image, sampling = _load_for_chat(args)
    dtype = resolve_dtype(args.dtype, device)
    model = model.to(device, dtype)
    model.fuse_projections()  # inference only: one matmul per layer for q/k/v(/gate/Δ) and for gate/up
    if image is not None:
        image = image.to(dtype)
    text, counts = args.prompt, None
    if image is not None:
        text, counts = attach_image(text, image, model.config.vision)
    import time

    prompt = tok.user_turn(text, image_tokens=counts)
    if args.print_prompt:  # the exact text and token count the model would receive; nothing is generated
        print(_prompt_text(tok, prompt))
        print(f"-- {len(prompt)} tokens")
        return
    stream = _Stream(tok)
    times: list[float] = []

    def on_token(t) -> None:
        times.append(time.perf_counter())
        stream(int(t[0]))

    t0 = time.perf_counter()
    generate(
        model, [prompt], image, args.max_new_tokens, sampling, tok.stop_ids, tok.pad_id, args.prefill_chunk, on_token,
        args.decode,
    )  # fmt: skip
    print()
    print(generation_speed(len(prompt), t0, times), file=sys.stderr)


def generation_speed(prompt_tokens: int, t0: float, times: list[float]) -> str:
    """``(N tokens in T s: prefill of P tokens X s, then Y tokens/s)``; ``times``: when each token came."""
    if not times:
        return "(no tokens)"
    rate = f", then {(len(times) - 1) / (times[-1] - times[0]):.1f} tokens/s" if len(times) > 1 else ""
    return (
        f"({len(times)} tokens in {times[-1] - t0:.2f} s: prefill of {prompt_tokens} tokens and the first token "
        f"{times[0] - t0:.2f} s{rate})"
    )


CHAT_HELP = """commands (handled here, never sent to the model):
  /help          this list
  /image PATH    attach an image to your next message (the model sees it from that turn on)
  /reset         start a new conversation (the context is emptied)
  /quit          end the chat (an empty line or Ctrl-D too)
Ctrl-C stops an answer mid-way and starts a new conversation; Ctrl-C at the prompt ends the chat."""


def _chat_image(model, name, path: str):
    """An image for the next turn, or a one-line error (the chat goes on)."""
    from ..data.images import ImageProcessor

    if model.config.vision is None:
        raise MmmambaError(f"{name} has no image front-end; it cannot take an image")
    if not Path(path).is_file():
        raise MmmambaError(f"{path}: {'is a folder' if Path(path).is_dir() else 'does not exist'}; give an image file")
    return ImageProcessor(model.config.vision)(path)


def cmd_chat(args) -> None:
    from ..data.tokenizer import IMAGE_MARK
    from ..formats.checkpoint import cache_bytes
    from ..infer import ChatSession
    from ..io import human_bytes, machine_memory

    model, tok, image, sampling = _load_for_chat(args)
    length = min(args.max_context or model.config.max_position, model.config.max_position)
    need = cache_bytes(model.config, 1, length)
    if need > machine_memory() // 2:
        raise MmmambaError(
            f"--model {args.model}: a {length}-token cache needs {human_bytes(need)}, more than half this machine's "
            f"memory; pass a smaller --max-context"
        )
    chat = ChatSession(model, tok, sampling, length, args.decode)
    print(
        f"chat with {args.model} ({length}-token context): type a message; /help lists the commands, "
        "/quit or an empty line ends." + (" Image attached to your first message." if image is not None else "")
    )
    from ..checks import readable_stdin, scrub

    readable_stdin()
    while True:
        try:
            text, replaced = scrub(input("you> ").strip())
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if replaced:
            print(f"(your message held {replaced} byte(s) that are not UTF-8 text; each was replaced by U+FFFD)")
        if text in ("", "/quit", "/exit"):
            break
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command == "/help":
                print(CHAT_HELP)
            elif command == "/reset":
                chat.reset()
                print("(new conversation)")
            elif command == "/image":
                try:
                    image = _chat_image(model, args.model, rest.strip()) if rest.strip() else None
                    print(f"(image {rest.strip()} goes with your next message)" if image is not None else "(no image)")
                except MmmambaError as e:
                    print(f"(error: {e})")
            else:
                print(f"(unknown command {command}; /help lists them. To send text that starts with /, add a space)")
            continue
        if IMAGE_MARK in text and image is None:
            print(f"(no image for {IMAGE_MARK} here: attach one first with /image PATH; the mark is dropped)")
            text = text.replace(IMAGE_MARK, "").strip() or "?"
        print("model> ", end="", flush=True)
        stream = _Stream(tok)
        try:
            check_text(text, "message")
            answer = chat.ask(text, image, args.max_new_tokens, stream)
        except MmmambaError as e:
            print(f"\n(error: {e})")
            continue
        except KeyboardInterrupt:
            chat.reset()
            print("\n(answer stopped; a new conversation starts)")
            continue
        image = None
        print()
        note = "context was full: a new conversation started with this message; " if chat.restarted else ""
        print(f"  ({note}{len(answer)} tokens; context {chat.tokens + 1}/{length})", file=sys.stderr)


def _sampling_args(p) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (with tokenizer.json)")
    p.add_argument("--image", default=None, help="an image file for the (first) message")
    p.add_argument("--max-new-tokens", type=int_in(1, 1 << 20), default=64, help="answer at most this many tokens")
    p.add_argument("--temperature", type=float_in(0.0, 1e4), default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int_in(0, 1 << 24), default=0, help="0 = off")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="1 = off")
    p.add_argument("--seed", type=SEED, default=None, help="sampling seed (default: none, a fresh draw each run)")
    p.add_argument(
        "--decode", default="auto", choices=["auto", "eager", "graph", "compile"],
        help="decode step: auto = CUDA graph on CUDA, eager on CPU; compile = torch.compile + CUDA graph",
    )  # fmt: skip
    p.add_argument(
        "--ssd-backend", default="auto", choices=["auto", "torch", "fla"],
        help="Mamba-2 scan for the prompt: auto = fla on CUDA when installed, else PyTorch",
    )  # fmt: skip
    p.add_argument(
        "--chat-template", default=None, metavar="FILE|NAME",
        help="format prompts with this Jinja chat-template file, or a conversation template by name "
        "(internlm2-chat, Hermes-2, phi3-chat, vicuna_v1.1, internvl2_5) instead of the model's own",
    )  # fmt: skip


def cmd_info(args) -> None:
    for line in info_lines(args.model):
        print(line)


def info_lines(path) -> list[str]:
    """A checkpoint in a few readable lines: size and dtype, layers and mixers, attention and Mamba-2 shapes,
    the decode cache, the image front-end, how it was converted."""
    from ..formats import load_checkpoint
    from ..formats.checkpoint import cache_bytes, checkpoint_files
    from ..io import human_bytes

    model = load_checkpoint(path)
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    files = checkpoint_files(path)
    disk = sum(f.stat().st_size for f in files)
    n_attn, n_mamba = cfg.mixers.count("attention"), cfg.mixers.count("mamba2")
    kind = "Transformer" if not n_mamba else "linear (Mamba-2)" if not n_attn else "hybrid"
    lines = [
        f"{path}: {kind}, {n / 1e6:.2f} M parameters, {'/'.join(dtypes)}, {human_bytes(disk)} on disk "
        f"({len(files)} files)",
        f"  layers      {cfg.num_layers}: " + " ".join("A" if k == "attention" else "M" for k in cfg.mixers)
        + f"  ({n_attn} attention, {n_mamba} Mamba-2)",
        f"  shape       hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
        f"max_position {cfg.max_position}",
        f"  attention   heads {cfg.num_heads} q / {cfg.num_kv_heads} kv, head_dim {cfg.head_dim}, "
        f"rope_theta {cfg.rope_theta:g}",
    ]  # fmt: skip
    if n_mamba:
        m = cfg.mamba2_config()
        state = cfg.num_heads * cfg.head_dim * cfg.head_dim
        lines.append(
            f"  Mamba-2     state {cfg.num_heads} heads x {cfg.head_dim} x {cfg.head_dim} = {state} values a layer "
            f"({human_bytes(4 * state)} in float32), conv kernel {m.conv_kernel}, scan chunk {m.chunk_size}"
        )
    lines.append(
        f"  decode cache (batch 1): {human_bytes(cache_bytes(cfg, 1, 1))} at 1 token, "
        f"{human_bytes(cache_bytes(cfg, 1, cfg.max_position))} at max_position (float32)"
    )
    if cfg.vision is not None:
        v = cfg.vision
        lines.append(
            f"  vision      {v.image_size}-pixel tiles, {v.patch_size}-pixel patches, {v.tokens_per_tile} tokens a "
            f"tile, up to {v.max_tiles} tiles"
        )
    print("mixers: " + " ".join("A" if k == "attention" else "M" for k in cfg.mixers) + "  (A attention, M Mamba-2)")
    for group in cfg.layer_overrides:  # layers configured apart from the defaults above (e.g. HoVLE's holistic stack)
        own = ", ".join(f"{k} {v}" for k, v in group.items() if k != "layers")
        print(f"layers {group['layers'][0]}-{group['layers'][-1]}: {own}")
    if cfg.conversion:
        lines.append("  conversion  " + ", ".join(f"{k} {v}" for k, v in cfg.conversion.items()))
    return lines


def cmd_export(args) -> None:
    from ..data.tokenizer import TOKENIZER_FILES, copy_tokenizer
    from ..formats import load_checkpoint
    from ..io import check_output_dir, same_or_inside

    reads_model("--model", args.model)
    out = check_output_dir(args.out)
    if same_or_inside(out, args.model):
        raise MmmambaError(f"--out {out}: inside the model folder {args.model}; write the export elsewhere")
    check_outputs_in(out, ["config.json", "model.safetensors", *TOKENIZER_FILES])
    if args.mamba_expand is not None and args.format != "granite-hybrid":
        raise MmmambaError(f"--mamba-expand {args.mamba_expand}: only for --format granite-hybrid; drop it")
    model = load_checkpoint(args.model)
    if args.format == "granite-hybrid":
        from ..formats.granite import export_granite, write_granite_tokenizer

        export_granite(model, out, args.mamba_expand, write_granite_tokenizer(args.model, out))
    else:
        from ..formats.official import export_official

        export_official(model, out)
        copy_tokenizer(args.model, out)
    print(f"wrote {out}: {args.model} in the {args.format} layout")


def cmd_import_granite(args) -> None:
    from ..formats import save_checkpoint
    from ..formats.checkpoint import read_model_config
    from ..formats.granite import ARCH, load_granite
    from ..io import check_output_dir, same_or_inside

    out = check_output_dir(args.out)
    if same_or_inside(args.folder, out):
        raise MmmambaError(f"--out {out} is or contains {args.folder}; write the checkpoint to a new folder")
    raw, ours = read_model_config(args.folder)
    if ours or raw.get("architectures") != [ARCH]:
        raise MmmambaError(f"{args.folder}: not a {ARCH} folder (its config.json names another architecture)")
    from ..data.tokenizer import copy_tokenizer

    model = load_granite(args.folder, raw)
    save_checkpoint(model, out, extra=lambda d: copy_tokenizer(args.folder, d))
    kinds = " ".join("A" if k == "attention" else "M" for k in model.config.mixers)
    print(f"wrote {out}: {args.folder} ({kinds}; A attention, M Mamba-2 gate-first)")


OUTSIDE_HELP = "read image paths that leave the data folder (.. or absolute); refused by default"


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..convert import INITS
    from ..convert.layer_spec import HELP

    parser = Parser(
        prog="mmmamba",
        description="Turn a decoder-only Transformer into a Mamba-2 (linear) or Mamba-2/attention (hybrid) "
        "model by seeding Mamba-2 from attention and distilling, then run it fast.",
    )
    parser.add_argument("--version", action="version", version=f"mmmamba {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="seed a Mamba-2 student from an attention teacher checkpoint")
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder")
    p.add_argument("--out", required=True, help="folder to write the student checkpoint to")
    p.add_argument("--keep-attention", default="none", help=f"layers kept as attention: {HELP}")
    p.add_argument(
        "--auto-rank", default=None, choices=["error", "relative"],
        help="with auto:K, what ranks the layers after stage 2: error (default) = each mixer's MSE to its teacher "
        "attention output, which favours layers that write large outputs (in SmolLM2 the deepest); relative = that "
        "MSE over the output's mean square, which did better on a 30-layer teacher and worse on the 4-layer toy "
        "(RESULTS.md)",
    )  # fmt: skip
    p.add_argument("--init", default="mimic", choices=INITS, help="mixer initialisation (paper ablation)")
    p.add_argument(
        "--conv-kernel", type=int_in(1, 64), default=2,
        help="causal conv kernel size (paper: 2; 4 answered exact offsets better at 4 and 30 layers, RESULTS.md)",
    )  # fmt: skip
    p.add_argument(
        "--gate-order", default="norm-first", choices=["norm-first", "gate-first"],
        help="the mixer's output: norm-first = RMSNorm(y)·SiLU(gate) (the paper's, the released mmMamba's); "
        "gate-first = RMSNorm(y·SiLU(gate)) (Mamba-2's: `export --format granite-hybrid` needs it, docs/SERVING.md)",
    )  # fmt: skip
    p.add_argument("--seed", type=SEED, default=0, help="random seed for the new parameters")
    p.add_argument("--max-shard-size", default="2GB", help="split the safetensors above this size (e.g. 500MB)")
    p.add_argument("--dry-run", action="store_true", help="check inputs and output, estimate memory, write nothing")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("data", help="data sets: the built-in task suite, a text corpus, a teacher-answered chat set")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dsub.add_parser("make", help="generate train/val/test JSONL + PNG scenes (deterministic for a seed)")
    p.add_argument("--out", required=True, help="folder to write the suite to")
    p.add_argument("--seed", type=SEED, default=0, help="the data set's random seed")
    p.add_argument("--train", type=int_in(1, 1_000_000), default=4000, help="training samples per family")
    p.add_argument("--val", type=int_in(1, 100_000), default=40, help="validation samples per family")
    p.add_argument("--test", type=int_in(1, 100_000), default=100, help="test samples per family")
    p.add_argument("--recall-images", default="2,3,4", help="image counts of the multi-image recall family")
    p.add_argument(
        "--family-train", action="append", metavar="FAMILY=N",
        help="another train size for one family (repeatable), e.g. reverse=32000: more distinct samples of a "
        "hard family; val and test do not change",
    )  # fmt: skip
    p.set_defaults(func=cmd_data_make)

    p = dsub.add_parser("text", help="plain text / Markdown / HTML files -> tokenised text corpus (train/val/test)")
    p.add_argument("--inputs", nargs="+", required=True, help="files and folders (.txt .md .rst .html .htm)")
    p.add_argument("--out", required=True, help="folder to write train/val/test.jsonl + corpus.json to")
    p.add_argument("--tokenizer", required=True, help="model folder (or .gguf) whose tokenizer to use")
    p.add_argument("--seq-len", type=int_in(8, 1 << 20), default=512, help="tokens per chunk")
    p.add_argument("--min-tokens", type=int_in(1, 1 << 20), default=32, help="drop shorter chunks")
    p.add_argument(
        "--near-duplicate", type=float_in(0.0, 2.0, low_open=True), default=0.3,
        help="drop a document when this share of its 8-word shingles is in one kept document (above 1: keep all)",
    )  # fmt: skip
    p.add_argument("--val-frac", type=float_in(0.0, 0.9), default=0.05, help="share of documents for val")
    p.add_argument("--test-frac", type=float_in(0.0, 0.9), default=0.05, help="share of documents for test")
    p.add_argument("--seed", type=SEED, default=0, help="which documents go to val and test")
    p.set_defaults(func=cmd_data_text)
    p = dsub.add_parser("self-distill", help="answer prompts with the teacher -> chat JSONL (train/val/test)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder (or .gguf)")
    p.add_argument("--prompts", required=True, help=".txt (one prompt a line) or .jsonl ({'prompt': ...})")
    p.add_argument("--out", required=True, help="folder to write train/val/test.jsonl + meta.json to")
    p.add_argument("--max-new-tokens", type=int_in(1, 1 << 20), default=256, help="longer answers are dropped")
    p.add_argument(
        "--cut-to-train", action="store_true",
        help="keep answers cut by --max-new-tokens in the train split (marked cut) instead of dropping them",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int_in(1, 1 << 16), default=32, help="prompts answered together")
    p.add_argument("--temperature", type=float_in(0.0, 1e4), default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int_in(0, 1 << 24), default=0, help="0 = off")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="1 = off")
    p.add_argument("--val-frac", type=float_in(0.0, 0.9), default=0.05, help="share of answered prompts for val")
    p.add_argument("--test-frac", type=float_in(0.0, 0.9), default=0.1, help="share of answered prompts for test")
    p.add_argument("--seed", type=SEED, default=0, help="sampling and split seed")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 on CUDA")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_data_self_distill)

    p = dsub.add_parser(
        "teacher-text",
        help="the teacher continues train-document prefixes and answers prompts (top-p) -> text corpus",
    )
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder (or .gguf)")
    p.add_argument("--prefixes", default=None, help="a `mmmamba data text` corpus: prefixes from its train split")
    p.add_argument("--prompts", default=None, help="prompts file (.txt/.jsonl) or chat folder (its train split)")
    p.add_argument("--out", required=True, help="folder to write train/val/test.jsonl + corpus.json to")
    p.add_argument("--text-rows", type=int_in(0, 1 << 31), default=1000, help="rows from corpus prefixes")
    p.add_argument("--prefix-tokens", type=int_in(1, 1 << 20), default=64, help="tokens of real text per row")
    p.add_argument("--new-tokens", type=int_in(1, 1 << 20), default=192, help="tokens the teacher writes per row")
    p.add_argument("--per-prompt", type=int_in(1, 1 << 16), default=1, help="answers per prompt")
    p.add_argument("--batch-size", type=int_in(1, 1 << 16), default=256, help="rows decoded at once")
    p.add_argument("--temperature", type=float_in(0.0, 1e4, low_open=True), default=1.0)
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=0.95)
    p.add_argument(
        "--candidates", type=int_in(1, 1 << 24), default=1024,
        help="top tokens sorted for top-p; a row whose nucleus is larger is sorted in full (exact either way)",
    )  # fmt: skip
    p.add_argument("--val-frac", type=float_in(0.0, 0.9), default=0.02, help="share of source documents/prompts")
    p.add_argument("--test-frac", type=float_in(0.0, 0.9), default=0.02, help="share of source documents/prompts")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--decode", default="auto", choices=["auto", "eager", "graph", "compile"], help="auto: CUDA graph")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 on CUDA")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_data_teacher_text)

    p = sub.add_parser("import", help="bring a model in from another format (gguf: a llama.cpp file; granite-hybrid)")
    isub = p.add_subparsers(dest="action", required=True, metavar="FORMAT")
    p = isub.add_parser("gguf", help="dequantize a .gguf file into a checkpoint folder (weights + tokenizer)")
    p.add_argument("file", help="the .gguf file (Llama or Qwen2; F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the weights")
    p.add_argument("--max-shard-size", default="2GB", help="split the safetensors above this size (e.g. 500MB)")
    p.set_defaults(func=cmd_import_gguf)
    p = isub.add_parser("granite-hybrid", help="a GraniteMoeHybrid folder (e.g. from `export --format granite-hybrid`)")
    p.add_argument("folder", help="the folder (config.json, safetensors, tokenizer files)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.set_defaults(func=cmd_import_granite)

    p = sub.add_parser("teacher", help="teacher VLMs: train the embedded one, or graft and tune one from an LLM")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = tsub.add_parser("train", help="train a teacher preset on the task suite (resumes from --out)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small"], help="model size and training budget")
    p.add_argument("--data", required=True, help="task-suite folder from `mmmamba data make`")
    p.add_argument("--out", required=True, help="checkpoint folder (training state is kept here too)")
    p.add_argument("--steps", type=COUNT, default=None, help="override the preset's number of steps")
    p.add_argument("--eval-every", type=COUNT, default=500, help="validate (and save the training state) every N steps")
    p.add_argument("--seed", type=SEED, default=0, help="initialisation and data order")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)
    p.set_defaults(func=cmd_teacher_train)
    p = tsub.add_parser(
        "graft",
        help="a pretrained LLM folder -> a decoder-only VLM (Fuyu/SOLO style): image tokens and a patch embedding",
    )
    p.add_argument("--llm", required=True, help="text-only LLM checkpoint folder (e.g. from `mmmamba import gguf`)")
    p.add_argument("--out", required=True, help="new VLM checkpoint folder (its image front-end is untrained)")
    p.add_argument("--vision", default="fuyu", choices=["fuyu", "internvl"], help="patch embedding style")
    p.add_argument("--image-size", type=int_in(1, 4096), default=32, help="tile side in pixels (task suite: 32)")
    p.add_argument("--patch-size", type=int_in(1, 1024), default=8, help="patch side in pixels (task suite: 8)")
    p.add_argument(
        "--downsample-ratio",
        type=float_in(0.0, 1.0, low_open=True),
        default=1.0,
        help="internvl: 0.5 merges 2x2 patches into one token",
    )
    p.add_argument("--seed", type=SEED, default=0, help="the image front-end's initialisation")
    p.set_defaults(func=cmd_teacher_graft)
    p = tsub.add_parser(
        "tune",
        help="train a grafted VLM: the patch embedding alone first, then everything with text mixed in (resumable)",
    )
    p.add_argument("--init", required=True, help="VLM folder from `mmmamba teacher graft`")
    p.add_argument("--data", required=True, help="task-suite folder from `mmmamba data make`")
    p.add_argument("--text", nargs="*", default=[], help="text folders mixed into phase 2: `data text` or chat sets")
    p.add_argument("--out", required=True, help="the trained teacher's folder (states, logs and report inside)")
    p.add_argument("--embed-steps", type=int_in(0, MAX_STEPS), default=300, help="phase 1: patch embedding only")
    p.add_argument("--steps", type=int_in(0, MAX_STEPS), default=1500, help="phase 2: every parameter")
    p.add_argument("--batch-size", type=COUNT, default=32, help="task-suite samples a step")
    p.add_argument("--text-batch-size", type=COUNT, default=8, help="text samples a step in phase 2")
    p.add_argument("--embed-lr", type=float_in(0.0, 1.0, low_open=True), default=1e-3, help="phase 1 learning rate")
    p.add_argument("--lr", type=float_in(0.0, 1.0, low_open=True), default=5e-5, help="phase 2 learning rate")
    p.add_argument("--text-weight", type=float_in(0.0, 0.99), default=0.3, help="share of phase 2's loss on text")
    p.add_argument("--eval-every", type=COUNT, default=250, help="validate (and save the training state) every N steps")
    p.add_argument("--seed", type=SEED, default=0, help="data order")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--pack", action="store_true",
        help="each step's suite and text samples in one packed row (one forward and backward, the same loss)",
    )  # fmt: skip
    p.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)
    p.set_defaults(func=cmd_teacher_tune)

    p = sub.add_parser("eval", help="greedy answers: exact match per family, token F1, agreement with a teacher")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument(
        "--data", required=True,
        help="task-suite / chat folder (greedy answers), or a `mmmamba data text` corpus "
        "(perplexity, KL to --teacher, cloze multiple choice)",
    )  # fmt: skip
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to score")
    p.add_argument("--json", default=None, help="write {mean_accuracy, per_family, n, …} here")
    p.add_argument(
        "--answers", default=None,
        help="write every sample's question, reference, answer and whether it is right here (JSON lines)",
    )  # fmt: skip
    p.add_argument(
        "--choices", default=None,
        help='also score log-likelihood multiple choice: JSONL of {"context", "choices", "label"} (lm-eval style)',
    )  # fmt: skip
    p.add_argument(
        "--benchmark", default=None, choices=["mme", "pope", "textvqa", "scienceqa"],
        help="score one of the paper's benchmarks; --data is its folder as released (README: Paper benchmarks)",
    )  # fmt: skip
    p.add_argument("--cloze-items", type=int_in(0, 1 << 20), default=200, help="text corpus: cloze items made")
    p.add_argument("--batch-size", type=int_in(1, 1 << 16), default=64, help="samples answered together")
    p.add_argument(
        "--limit",
        type=int_in(1, 1 << 40),
        default=None,
        help="evaluate N samples: a suite split's spread evenly over it, a benchmark's first N",
    )
    p.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)
    p.add_argument(
        "--max-new-tokens", type=int_in(1, 1 << 20), default=None,
        help="answer cap (default: the longest reference answer in tokens + 4)",
    )  # fmt: skip
    p.add_argument("--teacher", default=None, help="also score greedy agreement with this model's answers")
    p.add_argument("--agreement-tokens", type=int_in(1, 1 << 20), default=16, help="N of first-N-token agreement")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("distill", help="distil a converted student from its teacher, stages 1-3 (resumable)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder")
    p.add_argument("--student", required=True, help="student folder from `mmmamba convert`")
    p.add_argument(
        "--data", required=True, nargs="+",
        help="chat / task-suite folder, or a `mmmamba data text` corpus (train/val.jsonl); several are pooled, "
        "uniformly by sample; DIR:WEIGHT draws each of DIR's samples WEIGHT times as often (plain DIR: 1)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="run folder: after_stageS/ checkpoints, log.csv, loss.png")
    p.add_argument("--stages", default="1,2,3", help="stages to run, in order (any subset of 1,2,3)")
    p.add_argument("--steps-per-stage", default="300,300,600", help="one count, or one per stage")
    p.add_argument(
        "--batch-size", type=int_in(1, 1 << 16), default=16, help="samples a step (over every process and micro-batch)"
    )
    p.add_argument("--eval-every", type=COUNT, default=100, help="validate on the val split every N steps")
    p.add_argument("--temperature", type=float_in(0.0, 1e4, low_open=True), default=1.0, help="stage-3 KL temperature")
    p.add_argument(
        "--ce-weight", type=float_in(0.0, 1e6), default=0.0, help="stage-3 weight of cross-entropy on answers"
    )
    p.add_argument("--train-o-proj", action="store_true", help="stage 3 also trains Wo (the paper freezes it)")
    p.add_argument("--train-mlp", action="store_true", help="stage 3 also trains the MLPs (the paper freezes them)")
    p.add_argument(
        "--lr-scale", type=float_in(0.0, 1e6, low_open=True), default=1.0, help="multiply the paper's learning rates"
    )
    p.add_argument("--seed", type=SEED, default=0, help="data order")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)
    p.add_argument("--dry-run", action="store_true", help="check everything, estimate memory/disk/time, write nothing")
    p.add_argument("--pack", action="store_true", help="pack each micro-batch into one row (cu_seqlens), no padding")
    p.add_argument(
        "--micro-batch", type=int_in(1, 1 << 16), default=None, help="samples per forward per process (accumulation)"
    )
    p.add_argument(
        "--parallel", choices=("fsdp", "layer"), default="fsdp",
        help="under torchrun: FSDP2 data-parallel, or layer-parallel for stages 1-2 (each rank owns some layers)",
    )  # fmt: skip
    p.add_argument(
        "--ssd-backend", default=None, choices=["auto", "torch", "fla"],
        help="the student's Mamba-2 scan (default: its config's, auto = fla on CUDA). fla's first use on a GPU "
        "autotunes for minutes (README); torch needs no warm-up",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-activations", action="store_true",
        help="recompute each student layer (stage 3) or mixer (stages 1-2) in backward, keeping only its input: "
        "less memory, about a third more compute; a resume may change it",
    )  # fmt: skip
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("report", help="RESULTS.md tables + PNG chart + quality.json from distillation runs")
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        help="run folders (or result.json files) of `python -m mmmamba.experiments.ablations`",
    )
    p.add_argument("--teacher-eval", required=True, help="the teacher's `mmmamba eval --json` file")
    p.add_argument("--out", required=True, help="the markdown file to write, e.g. runs/main/RESULTS.md")
    p.add_argument("--notes", default=None, help="markdown to include after the tables")
    p.add_argument("--chart", default=None, help="the PNG bar chart (default: OUT_chart.png, beside --out)")
    p.add_argument("--quality", default=None, help="mean accuracy per run (default: OUT_quality.json, beside --out)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("generate", help="answer one prompt (and image), streaming the tokens")
    _sampling_args(p)
    p.add_argument("--prompt", required=True, help="the user message (with --image, <image> marks where it goes)")
    p.add_argument(
        "--print-prompt", action="store_true", help="print the exact prompt text and its token count, then exit"
    )
    p.add_argument(
        "--prefill-chunk", type=int_in(1, 1 << 24), default=None, help="prefill the prompt in chunks of N tokens"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bfloat16 on CUDA, else float32"
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat; the state is kept between turns")
    _sampling_args(p)
    p.add_argument("--max-context", type=int_in(1, 1 << 24), default=None, help="tokens the session may hold")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="summarise a checkpoint: size, layers, which mixers")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "export", help="write a model in another layout (mmmamba-official: the released mmMamba; granite-hybrid: "
        "transformers' GraniteMoeHybrid, served by vLLM, SGLang, llama.cpp, MLX)",
    )  # fmt: skip
    p.add_argument("--format", required=True, choices=["mmmamba-official", "granite-hybrid"], help="target layout")
    p.add_argument(
        "--model", required=True,
        help="checkpoint folder (mmmamba-official: a HoVLE-structured model; granite-hybrid: a gate-first text "
        "student)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument(
        "--mamba-expand", type=int_in(1, 64), default=None,
        help="granite-hybrid: pad each Mamba-2 mixer with zero heads to expand × hidden channels (exact; llama.cpp "
        "needs 2). Default: the smallest that holds the heads",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="speed benchmarks (GPU): whole models, one layer's scan; tables and plots")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in (
        ("speed", "prefill, next-token latency, tokens/s, memory: HF teacher, our teacher, linear, hybrid (GPU)"),
        ("scan", "one layer's SSD scan and decode step: PyTorch vs fla (GPU)"),
        ("attention", "one layer's prefill attention over a long prompt: whole vs chunked, flash vs cuDNN (GPU)"),
        ("report", "merge speed.json runs into a markdown table and a PNG plot"),
    ):
        bp = bsub.add_parser(action, help=what, add_help=False)  # main() hands its arguments to the benchmark
        bp.set_defaults(func=cmd_bench, argv=[])

    for name, what in PLANNED.items():
        p = sub.add_parser(name, help=f"{what} — not yet available", add_help=True)
        p.set_defaults(func=lambda args, name=name: _not_yet(name))
    _name_leaves(parser)
    return parser


def cmd_bench(args) -> None:
    import importlib

    module = importlib.import_module(f"..bench.{args.action}", __package__)
    if args.action != "report" and "-h" not in args.argv and "--help" not in args.argv:
        import torch

        if not torch.cuda.is_available():
            raise MmmambaError(f"`mmmamba bench {args.action}` measures a CUDA GPU and none is visible; run it on one")
    try:
        module.main(args.argv)
    except SystemExit as e:  # the benchmark's own argparse: --help (0) or a usage error (2)
        if e.code not in (0, None):
            raise MmmambaError(f"bad arguments for `mmmamba bench {args.action}`; see --help") from None


def _not_yet(name: str) -> None:
    raise MmmambaError(f"`mmmamba {name}` is not yet available in this version: {PLANNED[name]}")


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a bad input is one line on stderr and exit code 2 (argparse's too)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in ("speed", "scan", "attention", "report"):
        args = argparse.Namespace(command="bench", action=argv[1], argv=argv[2:], func=cmd_bench)
        argv = None  # parsed by the benchmark itself
    try:
        if argv is not None:
            args = parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    from ..checks import safe_stdout
    from ..io import command_inputs

    safe_stdout()
    try:
        with command_inputs():  # what the handler reads; no output may replace it
            args.func(args)
    except MmmambaError as e:
        print(f"mmmamba {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk at a write that has no check of its own
        from ..io import is_disk_full

        if is_disk_full(e):
            print(f"mmmamba {args.command}: error: disk full ({e.strerror}); free space and rerun", file=sys.stderr)
            return 2
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = f"{e.filename}: " if e.filename else ""
            print(
                f"mmmamba {args.command}: error: {where}{e.strerror} (a read-only or protected location); "
                "choose a writable output path",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt:
        resumable = args.command == "distill" or (args.command == "teacher" and args.action in ("train", "tune"))
        then = "rerun the same command to resume" if resumable else "nothing half-written was left"
        print(f"mmmamba {args.command}: interrupted; {then}", file=sys.stderr)
        return 130
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments; an unknown one is reported under the sub-command that got it (``mmmamba eval: error``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Each sub-command's parser is recorded in the namespace it parses (the deepest one wins)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                sp.set_defaults(parser=sp)
                _name_leaves(sp)


if __name__ == "__main__":
    sys.exit(main())
