"""The ``mmmamba`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys

from ..errors import MmmambaError

PLANNED = {
    "bench": "speed benchmarks run on a GPU: python -m mmmamba.bench.speed --help",
}


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


def cmd_convert(args) -> None:
    import torch

    from ..convert import convert_to_mamba
    from ..convert.layer_spec import parse_auto, parse_keep_attention
    from ..data.tokenizer import copy_tokenizer
    from ..models import load_checkpoint

    torch.manual_seed(args.seed)
    teacher = load_checkpoint(args.teacher)
    keep = parse_keep_attention(args.keep_attention, teacher.config.num_layers)
    student = convert_to_mamba(teacher, keep, init=args.init, mamba={"conv_kernel": args.conv_kernel})
    student.config.conversion["teacher"] = str(args.teacher)
    auto = parse_auto(args.keep_attention, teacher.config.num_layers)
    if auto is not None:
        student.config.conversion["auto_keep"] = auto
    student.save_pretrained(args.out, parse_size(args.max_shard_size))
    copy_tokenizer(args.teacher, args.out)
    n_mamba = student.config.mixers.count("mamba2")
    print(f"wrote {args.out}: {n_mamba} Mamba-2 layers, attention kept at {keep or 'none'} (init {args.init})")


def cmd_data_make(args) -> None:
    from ..data.suite import make_suite

    sizes = {"train": args.train, "val": args.val, "test": args.test}
    make_suite(args.out, args.seed, sizes, tuple(int(k) for k in args.recall_images.split(",")))
    print(f"wrote {args.out}: train/val/test JSONL + images (seed {args.seed}, per family {sizes})")


def cmd_teacher_train(args) -> None:
    from ..training.teacher import train_teacher

    train_teacher(args.preset, args.data, args.out, args.seed, args.steps, args.eval_every, args.device)


def cmd_eval(args) -> None:
    from pathlib import Path

    from ..data.conversations import read_jsonl
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.tasks import predict, print_table, score, write_report
    from ..models import load_checkpoint

    model = load_checkpoint(args.model).float()
    tok = load_tokenizer(args.model)
    samples = read_jsonl(Path(args.data) / f"{args.split}.jsonl")[: args.limit]
    report = score(samples, predict(model, tok, samples, args.batch_size))
    print_table(report, f"{args.model} on {args.data} [{args.split}]")
    if args.json:
        write_report(report, args.json)


def cmd_distill(args) -> None:
    import torch

    from ..distill.trainer import DistillConfig, distill

    stages = [int(s) for s in args.stages.split(",")]
    steps = [int(s) for s in args.steps_per_stage.split(",")]
    if len(steps) == 1:
        steps *= len(stages)
    if len(steps) != len(stages) or any(s not in (1, 2, 3) for s in stages) or stages != sorted(set(stages)):
        raise MmmambaError(
            f"--stages {args.stages} / --steps-per-stage {args.steps_per_stage}: give stages from 1,2,3 "
            "in order and one step count, or one per stage"
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
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    distill(args.teacher, args.student, args.data, args.out, cfg)
    print(f"wrote {args.out}/after_stage{stages[-1]} (log.csv, loss.png beside it)")


def cmd_report(args) -> None:
    from ..evaluation.report import write_report

    q = write_report(args.runs, args.teacher_eval, args.out, args.notes, args.chart, args.quality)
    print(
        f"wrote {args.out}: teacher {q['teacher']:.3f}, "
        + ", ".join(f"{k} {v:.3f}" for k, v in q.items() if k in ("linear", "hybrid"))
    )


def _load_for_chat(args):
    from ..data.images import ImageProcessor
    from ..data.tokenizer import load_tokenizer
    from ..infer import SamplingConfig
    from ..models import load_checkpoint

    model = load_checkpoint(args.model).float().eval()
    tok = load_tokenizer(args.model)
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


def cmd_generate(args) -> None:
    import torch

    from ..data.images import attach_image
    from ..infer import generate

    model, tok, image, sampling = _load_for_chat(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    text, counts = args.prompt, None
    if image is not None:
        text, counts = attach_image(text, image, model.config.vision)
    stream = _Stream(tok)
    generate(
        model,
        [tok.user_turn(text, image_tokens=counts)],
        image,
        args.max_new_tokens,
        sampling,
        tok.stop_ids,
        tok.pad_id,
        args.prefill_chunk,
        lambda t: stream(int(t[0])),
        args.cuda_graph,
    )
    print()


def cmd_chat(args) -> None:
    from ..infer import ChatSession

    model, tok, image, sampling = _load_for_chat(args)
    chat = ChatSession(model, tok, sampling)
    print(
        "chat: type a message; /reset starts over, /quit or an empty line ends."
        + (" Image attached." if image is not None else "")
    )
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if text in ("", "/quit"):
            break
        if text == "/reset":
            chat.reset()
            continue
        print("model> ", end="", flush=True)
        chat.ask(text, image if chat.tokens == 0 else None, args.max_new_tokens, _Stream(tok))
        print()


def _sampling_args(p) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (with tokenizer.json)")
    p.add_argument("--image", default=None, help="an image file for the (first) turn")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


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


def cmd_export(args) -> None:
    from ..data.tokenizer import copy_tokenizer
    from ..io import check_output_dir, same_or_inside
    from ..models import load_checkpoint
    from ..models.official import export_official

    out = check_output_dir(args.out)
    if same_or_inside(out, args.model):
        raise MmmambaError(f"--out {out}: inside the model folder {args.model}; write the export elsewhere")
    export_official(load_checkpoint(args.model), out)
    copy_tokenizer(args.model, out)
    print(f"wrote {out}: {args.model} in the {args.format} layout")


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
    p.add_argument("--max-shard-size", default="2GB", help="split the safetensors above this size (e.g. 500MB)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("data", help="the built-in multimodal task suite")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dsub.add_parser("make", help="generate train/val/test JSONL + PNG scenes (deterministic for a seed)")
    p.add_argument("--out", required=True, help="folder to write the suite to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=4000, help="training samples per family")
    p.add_argument("--val", type=int, default=40, help="validation samples per family")
    p.add_argument("--test", type=int, default=100, help="test samples per family")
    p.add_argument("--recall-images", default="2,3,4", help="image counts of the multi-image recall family")
    p.set_defaults(func=cmd_data_make)

    p = sub.add_parser("teacher", help="the embedded teacher VLM")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = tsub.add_parser("train", help="train a teacher preset on the task suite (resumes from --out)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    p.add_argument("--data", required=True, help="task-suite folder from `mmmamba data make`")
    p.add_argument("--out", required=True, help="checkpoint folder (training state is kept here too)")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_teacher_train)

    p = sub.add_parser("eval", help="exact-match accuracy per task family, greedy decoding")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--data", required=True, help="task-suite folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", default=None, help="write {mean_accuracy, per_family, n, …} here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("distill", help="distil a converted student from its teacher, stages 1-3 (resumable)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder")
    p.add_argument("--student", required=True, help="student folder from `mmmamba convert`")
    p.add_argument("--data", required=True, help="task-suite / conversation folder (train.jsonl, val.jsonl)")
    p.add_argument("--out", required=True, help="run folder: after_stageS/ checkpoints, log.csv, loss.png")
    p.add_argument("--stages", default="1,2,3", help="stages to run, in order (any subset of 1,2,3)")
    p.add_argument("--steps-per-stage", default="300,300,600", help="one count, or one per stage")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=100, help="validate on the val split every N steps")
    p.add_argument("--temperature", type=float, default=1.0, help="stage-3 KL temperature")
    p.add_argument("--ce-weight", type=float, default=0.0, help="stage-3 weight of cross-entropy on answers")
    p.add_argument("--train-o-proj", action="store_true", help="stage 3 also trains Wo (the paper freezes it)")
    p.add_argument("--train-mlp", action="store_true", help="stage 3 also trains the MLPs (the paper freezes them)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply the paper's per-stage learning rates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("report", help="RESULTS.md tables + PNG chart + quality.json from distillation runs")
    p.add_argument(
        "--runs", nargs="+", required=True, help="run folders (or result.json files) of scripts/ablations.py"
    )
    p.add_argument("--teacher-eval", required=True, help="the teacher's `mmmamba eval --json` file")
    p.add_argument("--out", default="RESULTS.md")
    p.add_argument("--notes", default=None, help="markdown to include after the tables")
    p.add_argument("--chart", default="results/quality.png")
    p.add_argument("--quality", default="results/quality.json")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("generate", help="answer one prompt (and image), streaming the tokens")
    _sampling_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--prefill-chunk", type=int, default=None, help="prefill the prompt in chunks of N tokens")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cuda-graph", action="store_true", help="replay decode steps from a CUDA graph (all-Mamba-2)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat; the state is kept between turns")
    _sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="summarise a checkpoint: size, layers, which mixers")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="write a model in another layout (mmmamba-official: the released mmMamba)")
    p.add_argument("--format", required=True, choices=["mmmamba-official"], help="target layout")
    p.add_argument("--model", required=True, help="checkpoint folder (a HoVLE-structured teacher or student)")
    p.add_argument("--out", required=True, help="folder to write")
    p.set_defaults(func=cmd_export)

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
