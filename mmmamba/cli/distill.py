"""`mmmamba distill`: distil a converted student from its teacher."""

from __future__ import annotations

from ..checks import MAX_BATCH, MAX_TEMPERATURE, MIN_TEMPERATURE
from ..errors import MmmambaError
from .args import COUNT, MAX_STEPS, OUTSIDE_HELP, SEED, float_in, int_in, reads_folder, reads_model, resolve_device


def add_distill(sub) -> None:
    """``distill``."""
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
        "--batch-size", type=int_in(1, MAX_BATCH), default=16,
        help="samples a step (over every process and micro-batch)",
    )  # fmt: skip
    p.add_argument("--eval-every", type=COUNT, default=100, help="validate on the val split every N steps")
    p.add_argument(
        "--val-limit", type=COUNT, default=128,
        help="val samples each validation scores (teacher and student forwards: lower it on a CPU)",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=float_in(MIN_TEMPERATURE, MAX_TEMPERATURE), default=1.0, help="stage-3 KL temperature"
    )
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
        "--micro-batch", type=int_in(1, MAX_BATCH), default=None, help="samples per forward per process (accumulation)"
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
    p.set_defaults(func=cmd_distill, resumable=True)


def cmd_distill(args) -> None:
    from ..distill.config import DistillConfig
    from ..distill.trainer import distill
    from ..io import human_bytes

    try:  # the flags' text into the config; its own check() holds the rules (stages 1-3 in order, step range)
        stages = [int(s) for s in args.stages.split(",")]
        steps = [int(s) for s in args.steps_per_stage.split(",")]
    except ValueError:
        stages, steps = [], []
    if len(steps) == 1:
        steps *= len(stages)
    if not stages or len(steps) != len(stages):
        raise MmmambaError(
            f"--stages {args.stages} / --steps-per-stage {args.steps_per_stage}: give stages from 1,2,3 "
            f"in order and one step count (1..{MAX_STEPS}), or one per stage"
        )
    cfg = DistillConfig(
        stages=stages,
        steps=dict(zip(stages, steps)),
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        val_limit=args.val_limit,
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
    ).check()
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
    from ..io import check_output_dir

    check_output_dir(args.out)  # a name the system refuses, before anything looks inside it
    done_before = all_finished(args.out, stages)  # then distill checks the settings and says it is finished
    distill(args.teacher, args.student, args.data, args.out, cfg)
    if not done_before:
        print(f"wrote {args.out}/after_stage{stages[-1]} (log.csv, loss.png beside it)")
