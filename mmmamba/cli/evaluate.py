"""`mmmamba eval` (a model on a data set or benchmark) and `mmmamba report` (tables of runs)."""

from __future__ import annotations

from pathlib import Path

from ..checks import MAX_BATCH
from ..errors import MmmambaError
from .args import OUTSIDE_HELP, int_in, reads_folder, reads_model, resolve_device, side_output


def add_eval(sub) -> None:
    """``eval``."""
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
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=64, help="samples answered together")
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


def add_report(sub) -> None:
    """``report``."""
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


def cmd_eval(args) -> None:
    from ..data.conversations import check_images_match, read_split
    from ..data.text_corpus import is_text_corpus
    from ..data.tokenizer import check_fits_model, load_tokenizer
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
        from ..formats.loading import load_config

        max_tokens = load_config(args.model).max_position
        read_choices(args.choices, load_tokenizer(args.model), max_tokens)  # every item, before any model runs
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
    check_fits_model(tok, model.config.vocab_size, args.model)
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
    from ..data.text_corpus import check_corpus_vocab, read_text_split
    from ..data.tokenizer import check_fits_model, load_tokenizer
    from ..evaluation.text import evaluate_text, print_text_report
    from ..formats import load_checkpoint, load_config
    from ..io import write_json_atomic

    cfg = load_config(args.model)
    tok = load_tokenizer(args.model)
    check_fits_model(tok, cfg.vocab_size, args.model)
    check_corpus_vocab(args.data, tok, cfg.vocab_size)  # before any model is loaded
    windows = read_text_split(args.data, args.split, cfg.vocab_size)[: args.limit]
    longest = max(map(len, windows), default=0)
    if longest > cfg.max_position:
        raise MmmambaError(
            f"--data {Path(args.data) / args.split}.jsonl: a window of {longest} tokens, more than the model's "
            f"max_position {cfg.max_position}; rebuild the corpus with --seq-len {cfg.max_position} or less"
        )
    model = load_checkpoint(args.model).float().to(device)
    teacher = None if args.teacher is None else load_checkpoint(args.teacher).float().to(device)
    batch = min(args.batch_size, 8)  # full-vocabulary log-probabilities of whole windows
    report = evaluate_text(
        model, tok, args.data, args.split, teacher, batch, args.limit, args.cloze_items, args.choices
    )
    print_text_report(report, f"{args.model} on {args.data} [{args.split}]")
    if args.json:
        write_json_atomic(args.json, report)


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
