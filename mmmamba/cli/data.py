"""`mmmamba data make|text|self-distill|teacher-text`: the data sets."""

from __future__ import annotations

from pathlib import Path

from ..checks import MAX_BATCH
from ..errors import MmmambaError
from .args import SEED, add_overwrite, check_outputs_in, float_in, int_in, reads_model, resolve_device, resolve_dtype

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")
SUITE_FILES = (*SPLIT_FILES, "images", "suite.json")  # what each command writes into its --out
CORPUS_FILES = (*SPLIT_FILES, "corpus.json")
CHAT_FILES = (*SPLIT_FILES, "meta.json")


def add_data(sub) -> None:
    """``data`` and its actions."""
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
    add_overwrite(p)
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
    add_overwrite(p)
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
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=32, help="prompts answered together")
    p.add_argument("--temperature", type=float_in(0.0, 1e4), default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int_in(0, 1 << 24), default=0, help="0 = off")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="1 = off")
    p.add_argument("--val-frac", type=float_in(0.0, 0.9), default=0.05, help="share of answered prompts for val")
    p.add_argument("--test-frac", type=float_in(0.0, 0.9), default=0.1, help="share of answered prompts for test")
    p.add_argument("--seed", type=SEED, default=0, help="sampling and split seed")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 on CUDA")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_overwrite(p)
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
    p.add_argument("--per-prompt", type=int_in(1, MAX_BATCH), default=1, help="answers per prompt")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=256, help="rows decoded at once")
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
    p.add_argument(
        "--sampler", default="sorted", choices=["sorted", "unsorted"],
        help="top-p by a sort of the candidates (sorted) or by bisection with no sort (unsorted); same distribution",
    )  # fmt: skip
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 on CUDA")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_data_teacher_text)


def cmd_data_make(args) -> None:
    from ..data.suite import make_suite
    from ..io import check_free_space, check_new_output, check_output_dir, write_dir_atomic

    sizes = {"train": args.train, "val": args.val, "test": args.test}
    try:
        recall = tuple(int(k) for k in args.recall_images.split(","))
    except ValueError:
        recall = ()
    if not recall or any(not 1 <= k <= 8 for k in recall):
        raise MmmambaError(f"--recall-images {args.recall_images!r}: give image counts from 1 to 8, e.g. 2,3,4")
    family_train = _family_sizes(args.family_train or [])
    out = check_output_dir(args.out)
    check_new_output(out, "--out", args.overwrite, "suite", SUITE_FILES, done="suite.json")
    n = 8 * sum(sizes.values()) + sum(family_train.values())  # up to 8 families
    check_free_space(out, 2048 * n, "the task suite")  # ~2 KB per PNG
    # written whole, then renamed in: a kill leaves nothing half-made, and a second writer is refused
    write_dir_atomic(
        out, lambda tmp: make_suite(tmp, args.seed, sizes, recall, family_train), _replaces(out, args.overwrite)
    )
    more = f", train {family_train}" if family_train else ""
    print(f"wrote {args.out}: train/val/test JSONL + images (seed {args.seed}, per family {sizes}{more})")


def _replaces(out: Path, overwrite: bool) -> bool:
    """Whether the finished folder may replace what ``out`` holds: with --overwrite, or an interrupted
    run's own files (``check_new_output`` let those through). Otherwise it is renamed in only onto
    nothing or an empty folder, so a second writer of one new folder is refused."""
    return bool(overwrite) or (out.is_dir() and any(out.iterdir()))


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
    from ..io import check_free_space, check_new_output, check_output_dir, inputs, same_or_inside, write_dir_atomic

    out = check_output_dir(args.out)
    check_new_output(out, "--out", args.overwrite, "corpus", CORPUS_FILES, done="corpus.json")
    files = collect_files(args.inputs)
    inputs().add_files(files, "--inputs")
    reads_model("--tokenizer", args.tokenizer)
    check_outputs_in(out, CORPUS_FILES)
    for f in files:
        if out.exists() and same_or_inside(f, out):
            raise MmmambaError(f"--out {out}: holds the input {f}; write the corpus to a new folder")
    if args.val_frac + args.test_frac >= 1:
        raise MmmambaError(f"--val-frac {args.val_frac} + --test-frac {args.test_frac}: leave some text for training")
    check_free_space(out, 12 * sum(f.stat().st_size for f in files), "the text corpus")
    tok = load_tokenizer(args.tokenizer)
    # written whole into a temporary sibling and renamed in, as `data make`'s suite is
    info = write_dir_atomic(out, lambda tmp: build_text_corpus(
        args.inputs, tmp, tok, args.tokenizer, args.seq_len, args.val_frac, args.test_frac, args.seed, args.min_tokens,
        near_duplicate=args.near_duplicate,
    ), replace=_replaces(out, args.overwrite))  # fmt: skip
    sizes = ", ".join(f"{k} {v['chunks']} chunks / {v['tokens']} tokens" for k, v in info["splits"].items())
    dup = len(info["dropped_near_duplicates"])
    docs = f"{info['documents']} documents ({dup} near-duplicates dropped)"
    print(f"wrote {out}: {docs} -> {sizes} (seq_len {args.seq_len})")


def cmd_data_self_distill(args) -> None:
    from ..data.text_corpus import split_sizes
    from ..data.tokenizer import load_tokenizer
    from ..formats import load_checkpoint
    from ..infer import SamplingConfig
    from ..infer.self_distill import read_prompts, self_distill
    from ..io import check_new_output, check_output_dir, inputs, same_or_inside, write_dir_atomic

    reads_model("--teacher", args.teacher)
    inputs().add_file(args.prompts, "--prompts")
    out = check_output_dir(args.out)
    check_new_output(out, "--out", args.overwrite, "chat set", CHAT_FILES, done="meta.json")
    check_outputs_in(out, CHAT_FILES)
    if Path(args.teacher).exists() and same_or_inside(args.teacher, out):
        raise MmmambaError(f"--out {out} is or contains the teacher {args.teacher}; write the data to a new folder")
    if args.val_frac + args.test_frac >= 1:
        raise MmmambaError(f"--val-frac {args.val_frac} + --test-frac {args.test_frac}: leave some for training")
    prompts = read_prompts(args.prompts)
    split_sizes(len(prompts), args.val_frac, args.test_frac, f"prompts in {args.prompts}")  # before any answer
    device = resolve_device(args.device)
    tok = load_tokenizer(args.teacher)
    teacher = load_checkpoint(args.teacher).to(device=device, dtype=resolve_dtype(args.dtype, device)).eval()
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    meta = write_dir_atomic(out, lambda tmp: self_distill(  # written whole into a temporary sibling, renamed in
        teacher, tok, prompts, tmp, args.teacher, args.max_new_tokens, args.batch_size, sampling,
        args.val_frac, args.test_frac, args.seed, cut_to_train=args.cut_to_train,
    ), replace=_replaces(out, args.overwrite))  # fmt: skip
    cut = f", {meta['cut_kept_in_train']} cut answers kept in train" if args.cut_to_train else ""
    print(
        f"wrote {out}: {meta['kept']} of {meta['prompts']} prompts answered by {args.teacher} on {device} "
        f"({meta['dropped_unfinished']} unfinished, {meta['dropped_empty']} empty dropped{cut}); "
        f"splits {meta['splits']}"
    )


def cmd_data_teacher_text(args) -> None:
    from ..data.tokenizer import load_tokenizer
    from ..formats import load_checkpoint
    from ..infer.teacher_text import PLAN_FILE, TeacherTextConfig, plan_rows, write_teacher_text
    from ..io import check_new_output, check_output_dir, same_or_inside

    out = check_output_dir(args.out)
    check_new_output(out, "--out", None, "teacher text", (*CORPUS_FILES, PLAN_FILE, "parts"))  # resumes its own
    if out.is_dir() and not (out / PLAN_FILE).exists() and any((out / f).exists() for f in CORPUS_FILES):
        raise MmmambaError(
            f"--out {out}: holds a corpus that no teacher-text run wrote (no {PLAN_FILE}); "
            "write the teacher text to a new folder"
        )
    if not args.prompts and not (args.prefixes and args.text_rows):
        raise MmmambaError("no rows to write: give --prefixes with --text-rows above 0, or --prompts")
    for flag, src in (("--teacher", args.teacher), ("--prefixes", args.prefixes), ("--prompts", args.prompts)):
        if src is not None and Path(src).exists() and same_or_inside(src, out):
            raise MmmambaError(f"--out {out} is or contains {flag} {src}; write the teacher text to a new folder")
    cfg = TeacherTextConfig(
        args.prefix_tokens, args.new_tokens, args.text_rows, args.per_prompt, args.batch_size, args.temperature,
        args.top_p, args.candidates, args.seed, args.val_frac, args.test_frac, args.decode, args.sampler,
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
