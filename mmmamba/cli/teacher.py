"""`mmmamba teacher train|graft|tune`: the teacher VLMs."""

from __future__ import annotations

from ..errors import MmmambaError
from .args import (
    COUNT,
    MAX_STEPS,
    OUTSIDE_HELP,
    SEED,
    add_overwrite,
    float_in,
    int_in,
    reads_folder,
    reads_model,
    resolve_device,
)


def add_teacher(sub) -> None:
    """``teacher`` and its actions."""
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
    p.set_defaults(func=cmd_teacher_train, resumable=True)
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
    add_overwrite(p)
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
    p.set_defaults(func=cmd_teacher_tune, resumable=True)


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


def cmd_teacher_graft(args) -> None:
    from ..io import check_checkpoint_output, check_new_output, overlap
    from ..teacher.vlm import GraftConfig, graft_vision

    reads_model("--llm", args.llm)
    what = overlap(args.out, args.llm)
    if what is not None:
        raise MmmambaError(f"--out {args.out} {what} the LLM {args.llm}; write the VLM to a new folder")
    check_new_output(check_checkpoint_output(args.out), "--out", args.overwrite, "VLM")
    cfg = GraftConfig(args.vision, args.image_size, args.patch_size, args.downsample_ratio, args.seed)
    graft_vision(args.llm, args.out, cfg, replace=args.overwrite)


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
