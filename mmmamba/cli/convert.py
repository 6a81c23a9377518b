"""`mmmamba convert`: seed a Mamba-2 student from an attention teacher."""

from __future__ import annotations

from pathlib import Path

from ..errors import MmmambaError
from .args import SEED, add_overwrite, int_in, reads_model, shard_size


def add_convert(sub) -> None:
    """``convert``."""
    from ..convert import INITS
    from ..convert.layer_spec import HELP

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
        "--gate-order", default="auto", choices=["auto", "norm-first", "gate-first"],
        help="the mixer's output: norm-first = RMSNorm(y)·SiLU(gate) (the paper's, the released mmMamba's; "
        "`export --format mmmamba-official` needs it); gate-first = RMSNorm(y·SiLU(gate)) (Mamba-2's: `export "
        "--format granite-hybrid` and every serving engine need it); auto (default) = gate-first for a text-only "
        "teacher, norm-first for a teacher with a vision stem (docs/SERVING.md)",
    )  # fmt: skip
    p.add_argument("--seed", type=SEED, default=0, help="random seed for the new parameters")
    p.add_argument("--max-shard-size", default="2GB", help="split the safetensors above this size (e.g. 500MB)")
    p.add_argument("--dry-run", action="store_true", help="check inputs and output, estimate memory, write nothing")
    add_overwrite(p)
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> None:
    import torch

    from ..convert import convert_to_mamba
    from ..convert.layer_spec import parse_auto, parse_keep_attention
    from ..data.tokenizer import TOKENIZER_FILES, copy_tokenizer, load_tokenizer
    from ..formats import load_checkpoint, save_checkpoint
    from ..formats.loading import load_config
    from ..io import check_checkpoint_output, check_new_output, overlap

    reads_model("--teacher", args.teacher)
    out = check_checkpoint_output(args.out)
    what = overlap(out, args.teacher)
    if what is not None:
        raise MmmambaError(f"--out {out} {what} the teacher {args.teacher}; write the student to a new folder")
    check_new_output(out, "--out", args.overwrite, "student")
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
    if Path(args.teacher).is_file() or any((Path(args.teacher) / n).exists() for n in TOKENIZER_FILES):
        load_tokenizer(args.teacher)  # the student carries it: one that does not load is refused now, not at first use
    if args.dry_run:
        _convert_estimate(args, cfg, keep, out)
        return
    torch.manual_seed(args.seed)
    teacher = load_checkpoint(args.teacher)
    student = convert_to_mamba(teacher, keep, init=args.init, mamba=_mamba_options(args, cfg))
    student.config.conversion["teacher"] = str(args.teacher)
    if auto is not None:
        student.config.conversion["auto_keep"] = auto
        student.config.conversion["auto_rank"] = args.auto_rank or "error"
    save_checkpoint(student, out, max_shard, extra=lambda d: copy_tokenizer(args.teacher, d), replace=args.overwrite)
    order = student.config.mamba["gate_order"]
    print(f"wrote {args.out}: {kept_summary(student.config.mixers, auto, args.auto_rank)} (init {args.init}, {order})")


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


def default_gate_order(teacher_cfg) -> str:
    """``--gate-order auto``: gate-first (the order every serving engine runs) for a text-only teacher, whose
    student ``export --format granite-hybrid`` can serve; norm-first (the paper's, the released mmMamba's)
    for a teacher with a vision stem, which no engine serves. At equal budget the two orders measured within
    noise of each other (docs/SERVING.md, "Which to choose")."""
    return "norm-first" if teacher_cfg.vision is not None else "gate-first"


def _mamba_options(args, teacher_cfg) -> dict:
    """The Mamba-2 options ``convert`` stores in the student's config."""
    order = default_gate_order(teacher_cfg) if args.gate_order == "auto" else args.gate_order
    return {"conv_kernel": args.conv_kernel, "gate_order": order}


def _convert_estimate(args, cfg, keep, out) -> None:
    """--dry-run: what convert would write, the memory and time it needs; nothing is written."""
    import dataclasses

    from ..convert.layer_spec import parse_auto
    from ..io import check_free_space, free_bytes, human_bytes
    from ..models.sizing import check_fits, parameter_count

    mixers = ["attention" if i in keep else "mamba2" for i in range(cfg.num_layers)]
    student = dataclasses.replace(cfg, mixers=mixers, mamba=_mamba_options(args, cfg))
    need = check_fits(cfg, args.teacher) + check_fits(student, "the student")
    disk = 4 * parameter_count(student)
    check_free_space(out, disk, "the student checkpoint")
    seconds = 2 + parameter_count(student) / 2e8  # load + seed + write, dominated by disk speed
    kept = kept_summary(mixers, parse_auto(args.keep_attention, cfg.num_layers), args.auto_rank)
    print(
        f"dry run: {args.teacher} -> {out}: {kept}; memory ~ {human_bytes(need)}, disk {human_bytes(disk)} "
        f"({human_bytes(free_bytes(out))} free), time ~ {seconds:.0f} s; nothing written"
    )
