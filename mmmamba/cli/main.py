"""The ``mmmamba`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys

from ..errors import MmmambaError

PLANNED = {
    "distill": "three-stage distillation of a converted student (issue #4)",
    "eval": "task accuracy of a checkpoint on a data split (issue #3)",
    "generate": "generate an answer to a prompt and an optional image (issue #6)",
    "chat": "interactive multi-turn chat that keeps its state between turns (issue #6)",
    "bench": "prefill / decode speed and memory benchmarks (issue #6)",
    "data": "generate the built-in multimodal task suite (issue #3)",
    "teacher": "train the embedded teacher VLM (issue #3)",
    "report": "tables and charts from distillation runs (issue #4)",
}


def cmd_convert(args) -> None:
    import torch

    from ..convert import convert_to_mamba
    from ..convert.layer_spec import parse_keep_attention
    from ..models import load_checkpoint

    torch.manual_seed(args.seed)
    teacher = load_checkpoint(args.teacher)
    keep = parse_keep_attention(args.keep_attention, teacher.config.num_layers)
    student = convert_to_mamba(teacher, keep, init=args.init, mamba={"conv_kernel": args.conv_kernel})
    student.config.conversion["teacher"] = str(args.teacher)
    student.save_pretrained(args.out)
    n_mamba = student.config.mixers.count("mamba2")
    print(f"wrote {args.out}: {n_mamba} Mamba-2 layers, attention kept at {keep or 'none'} (init {args.init})")


def cmd_info(args) -> None:
    from ..models import load_checkpoint

    model = load_checkpoint(args.model)
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model}: {n / 1e6:.2f} M parameters, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"heads {cfg.num_heads}/{cfg.num_kv_heads} (q/kv), head_dim {cfg.head_dim}, vocab {cfg.vocab_size}"
    )
    print("mixers: " + " ".join("A" if k == "attention" else "M" for k in cfg.mixers) + "  (A attention, M Mamba-2)")
    if cfg.conversion:
        print(f"conversion: {cfg.conversion}")


def build_parser() -> argparse.ArgumentParser:
    from ..convert import INITS
    from ..convert.layer_spec import HELP

    parser = argparse.ArgumentParser(
        prog="mmmamba",
        description="Turn a decoder-only Transformer into a Mamba-2 (linear) or Mamba-2/attention (hybrid) "
        "model by seeding Mamba-2 from attention and distilling, then run it fast.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="seed a Mamba-2 student from an attention teacher checkpoint")
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder")
    p.add_argument("--out", required=True, help="folder to write the student checkpoint to")
    p.add_argument("--keep-attention", default="none", help=f"layers kept as attention: {HELP}")
    p.add_argument("--init", default="mimic", choices=INITS, help="mixer initialisation (paper ablation)")
    p.add_argument("--conv-kernel", type=int, default=2, help="causal conv kernel size (paper: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the new parameters")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="summarise a checkpoint: size, layers, which mixers")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.set_defaults(func=cmd_info)

    for name, what in PLANNED.items():
        p = sub.add_parser(name, help=f"{what} — not yet available", add_help=True)
        p.set_defaults(func=lambda args, name=name: _not_yet(name))
    return parser


def _not_yet(name: str) -> None:
    raise MmmambaError(f"`mmmamba {name}` is not yet available in this version: {PLANNED[name]}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MmmambaError as e:
        print(f"mmmamba {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
