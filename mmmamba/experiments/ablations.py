"""The paper's result rows and ablations on one teacher: convert → distil → eval, one run per row.

    python -m mmmamba.experiments.ablations --teacher models/tiny-teacher --data runs/suite --out runs/ablations \
        --runs linear hybrid_every4 ... [--total-steps 4000] [--jobs 4]

Each run writes OUT/NAME/result.json (accuracy, per family, steps, trained tokens, wall time, the
equivalent CLI commands); a rerun skips finished rows, and ``--start-within S`` starts no row after
S seconds (a device budget);
`mmmamba report --runs OUT/* --out RESULTS.md` turns them into tables and a chart.
Stage ablations keep the total number of optimizer steps equal: the steps are split over the
stages a row runs in the ratio 1 : 1 : 2 (stage 1 : stage 2 : stage 3; ``--stage-shares`` changes it).

Grids: ``tiny`` (the 4-layer shipped teacher: 1 or 2 layers kept) and ``deep`` (a deep teacher such as
the 30-layer grafted SmolLM2 VLM of recipes/deep_vlm.sh: 2, 4 and 8 kept, six placements of
8 (auto:8 ranked by error and by relative error among them), five stage sets, three inits).
``--text DIR`` also scores each run's perplexity on a held-out text corpus (`mmmamba data text`), so
that the report shows what the language kept.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmmamba.data.mixture import parse_source

TINY_RUNS = {
    # name: (group, --keep-attention, --init, stages)
    "linear": ("headline", "none", "mimic", (1, 2, 3)),
    "hybrid_every4": ("headline", "every:4", "mimic", (1, 2, 3)),
    "stages_1": ("stages", "none", "mimic", (1,)),
    "stages_2": ("stages", "none", "mimic", (2,)),
    "stages_3": ("stages", "none", "mimic", (3,)),
    "stages_12": ("stages", "none", "mimic", (1, 2)),
    "stages_13": ("stages", "none", "mimic", (1, 3)),
    "stages_23": ("stages", "none", "mimic", (2, 3)),
    "init_scratch": ("init", "none", "scratch", (1, 2, 3)),
    "init_inherit": ("init", "none", "inherit", (1, 2, 3)),
    "keep_every2": ("kept", "every:2", "mimic", (1, 2, 3)),
    "keep_head2": ("placement", "head:2", "mimic", (1, 2, 3)),
    "keep_tail2": ("placement", "tail:2", "mimic", (1, 2, 3)),
    "keep_tailinter2": ("placement", "TAIL_INTERLEAVED:2", "mimic", (1, 2, 3)),
    "keep_auto2": ("placement", "auto:2", "mimic", (1, 2, 3)),
    "keep_auto1": ("placement", "auto:1", "mimic", (1, 2, 3)),
}
DEEP_RUNS = {  # the paper's tables at real depth (SPEC §5): 8 kept is the paper's hybrid
    "linear": ("headline", "none", "mimic", (1, 2, 3)),
    "hybrid_every4": ("headline", "INTERLEAVED:8", "mimic", (1, 2, 3)),
    "keep_2": ("kept", "INTERLEAVED:2", "mimic", (1, 2, 3)),
    "keep_4": ("kept", "INTERLEAVED:4", "mimic", (1, 2, 3)),
    "keep_tailinter8": ("placement", "TAIL_INTERLEAVED:8", "mimic", (1, 2, 3)),
    "keep_head8": ("placement", "head:8", "mimic", (1, 2, 3)),
    "keep_tail8": ("placement", "tail:8", "mimic", (1, 2, 3)),
    "keep_auto8": ("placement", "auto:8", "mimic", (1, 2, 3)),
    "keep_autorel8": ("placement", "AUTO_RELATIVE:8", "mimic", (1, 2, 3)),  # auto:8 --auto-rank relative
    "stages_1": ("stages", "none", "mimic", (1,)),
    "stages_3": ("stages", "none", "mimic", (3,)),
    "stages_13": ("stages", "none", "mimic", (1, 3)),
    "stages_23": ("stages", "none", "mimic", (2, 3)),
    "init_scratch": ("init", "none", "scratch", (1, 2, 3)),
    "init_inherit": ("init", "none", "inherit", (1, 2, 3)),
}
GRIDS = {"tiny": TINY_RUNS, "deep": DEEP_RUNS}
RUNS = {**TINY_RUNS, **DEEP_RUNS}
WEIGHTS = {1: 1, 2: 1, 3: 2}


def resolve_keep(spec: str, num_layers: int) -> str:
    """INTERLEAVED:K: K layers from layer 0 at a stride of layers // K (0, 4, …, 28 of 30 for K = 8);
    TAIL_INTERLEAVED:K: the same pattern anchored at the last layer (1, 3 of 4; 1, 5, …, 29 of 30)."""
    for name in ("INTERLEAVED:", "TAIL_INTERLEAVED:"):
        if spec.startswith(name):
            k = int(spec.split(":")[1])
            if not 1 <= k <= num_layers:
                raise SystemExit(f"{spec}: needs 1 <= K <= {num_layers} layers")
            stride = -(-num_layers // k)  # ceil: 8 of 30 → 0, 4, …, 28, as every:4
            stride = stride if stride * (k - 1) < num_layers else num_layers // k
            first = 0 if name == "INTERLEAVED:" else num_layers - 1 - stride * (k - 1)
            return ",".join(str(first + stride * j) for j in range(k))
    return spec


def split_steps(stages, total: int, weights: dict[int, float] = WEIGHTS) -> list[int]:
    w = sum(weights[s] for s in stages)
    return [int(total * weights[s] // w) for s in stages]


def parse_shares(text: str) -> dict[int, float]:
    """``--stage-shares 1,1,2`` → {1: 1, 2: 1, 3: 2}: each stage's share of the total steps."""
    try:
        shares = [float(x) for x in text.split(",")]
    except ValueError:
        shares = []
    if len(shares) != 3 or any(not x > 0 for x in shares):
        raise SystemExit(f"--stage-shares {text!r}: give three shares above 0, e.g. 1,1,2")
    return dict(zip((1, 2, 3), shares))


def _log_rows(log_csv: Path) -> list[dict]:
    """The distillation log's training steps (rows with ``tokens``); none before the log exists."""
    if not log_csv.exists():
        return []
    with log_csv.open() as f:
        return [row for row in csv.DictReader(f) if row.get("tokens")]


def _trained_tokens(log_csv: Path) -> int | None:
    """Tokens the student trained on: the sum of the distillation log's per-step ``tokens``."""
    return sum(int(row["tokens"]) for row in _log_rows(log_csv)) if log_csv.exists() else None


def row_steps(name: str, args) -> int:
    """A row's distillation steps over all its stages."""
    stages = GRIDS[args.grid][name][3]
    return sum(split_steps(stages, args.total_steps, parse_shares(getattr(args, "stage_shares", "1,1,2"))))


def watch_rows(names: list[str], args, stop: threading.Event) -> None:
    """``--progress`` with rows side by side: one bar (with an ETA) over every row's distillation steps,
    read from their log.csv files every two seconds until ``stop`` is set."""
    from tqdm import tqdm

    logs = [Path(args.out) / n / "run" / "log.csv" for n in names]
    total = sum(row_steps(n, args) for n in names)
    with tqdm(total=total, unit="step", desc=f"distilling {len(names)} rows side by side", dynamic_ncols=True) as bar:
        while True:
            bar.update(min(total, sum(len(_log_rows(log)) for log in logs)) - bar.n)
            if stop.wait(2):
                break


class RowFailed(Exception):
    """A row's command failed (side by side, most often: the GPU ran out of memory)."""


def job_env(args) -> dict:
    """The environment of a row's commands: no progress bars, and CPU threads split between the rows
    that run side by side (``--jobs``), so that N processes do not each start one thread per core."""
    env = dict(os.environ) if shows_progress(args) else {**os.environ, "TQDM_DISABLE": "1"}
    threads = max(1, (os.cpu_count() or 1) // max(1, getattr(args, "jobs", 1)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, str(threads))  # a value the caller set wins
    return env


def shows_progress(args) -> bool:
    """``--progress`` with one row at a time: each command's output (progress bars too) on the console as well."""
    return bool(getattr(args, "progress", False)) and getattr(args, "jobs", 1) == 1


def run_logged(cmd: list[str], log, env: dict, echo: bool) -> int:
    """Run ``cmd`` with its output appended to ``log``; with ``echo`` also shown on the console as it comes."""
    if not echo:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    import codecs

    decode = codecs.getincrementaldecoder("utf-8")("replace")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 4096), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(decode.decode(chunk))
        log.flush()
        return proc.wait()


def run_one(name: str, args) -> dict | None:
    """One row: its result (computed now or read back), or None when ``args.start_by`` (a wall-clock
    time) has passed before the row could start."""
    group, keep, init, stages = GRIDS[args.grid][name]
    out = Path(args.out) / name
    result_file = out / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    if args.start_by is not None and time.time() > args.start_by:
        print(f"{name:<18} not started: --start-within passed", flush=True)
        return None
    cfg = json.loads((Path(args.teacher) / "config.json").read_text())
    keep = resolve_keep(keep, cfg["num_layers"])
    steps = split_steps(stages, args.total_steps, parse_shares(getattr(args, "stage_shares", "1,1,2")))
    mm = [sys.executable, "-m", "mmmamba"]
    keep_args = ["--keep-attention", keep]
    if keep.startswith("AUTO_RELATIVE:"):  # auto:K ranked by relative error (convert --auto-rank relative)
        keep_args = ["--keep-attention", "auto:" + keep.split(":")[1], "--auto-rank", "relative"]
    convert = ["convert", "--teacher", args.teacher, *keep_args, "--init", init, "--out", f"{out}/student"]
    commands = [
        [*convert, *shlex.split(args.convert_args)],
        [
            "distill",
            "--teacher",
            args.teacher,
            "--student",
            f"{out}/student",
            "--data",
            *args.data,
            "--out",
            f"{out}/run",
            "--stages",
            ",".join(map(str, stages)),
            "--steps-per-stage",
            ",".join(map(str, steps)),
            "--batch-size",
            str(args.batch_size),
            "--lr-scale",
            str(args.lr_scale),
            "--eval-every",
            str(args.eval_every),
            *shlex.split(args.distill_args),
        ],
        [
            "eval",
            "--model",
            f"{out}/run/after_stage{stages[-1]}",
            "--data",
            parse_source(args.data[0])[0],  # DIR:WEIGHT → DIR
            "--split",
            "test",
            "--json",
            f"{out}/eval.json",
            "--answers",
            f"{out}/answers.jsonl",
        ],
    ]
    if args.text:  # perplexity and KL to the teacher on held-out real text
        text = ["eval", "--model", f"{out}/run/after_stage{stages[-1]}", "--data", args.text, "--split", "test"]
        commands.append(
            [*text, "--teacher", args.teacher, "--limit", str(args.text_windows), "--json", f"{out}/text.json"]
        )
    t0 = time.time()
    retry = (out / "stdout.log").exists()  # an earlier attempt failed: keep its log, resume its work
    out.mkdir(parents=True, exist_ok=True)
    command_seconds = []
    with (out / "stdout.log").open("a" if retry else "w") as log:
        for c in commands:
            if c[0] == "convert" and (out / "student" / "config.json").exists():
                command_seconds.append(0.0)  # converted before; `distill` resumes from its own saved state
                continue
            t_command = time.time()
            log.write(f"\n+ mmmamba {' '.join(c)}\n")
            log.flush()
            if shows_progress(args):
                print(f"== {name}: mmmamba {c[0]} (log: {out / 'stdout.log'})", flush=True)
            rc = run_logged(mm + c, log, job_env(args), shows_progress(args))
            command_seconds.append(round(time.time() - t_command, 1))
            if rc:
                raise RowFailed(f"{name}: `mmmamba {c[0]}` exited with {rc}; its output is in {out / 'stdout.log'}")
    report = json.loads((out / "eval.json").read_text())
    student_cfg = json.loads((out / "run" / f"after_stage{stages[-1]}" / "config.json").read_text())
    result = {
        "name": name,
        "group": group,
        "keep_attention": student_cfg["conversion"].get("keep_attention", []),
        "init": init,
        "stages": list(stages),
        "steps": steps,
        "seconds": round(time.time() - t0, 1),  # convert + distil + eval
        "command_seconds": command_seconds,  # one per command, in order
        "tokens": _trained_tokens(out / "run" / "log.csv"),
        "commands": ["mmmamba " + " ".join(c) for c in commands],
        **report,
    }
    if args.text:
        result["text"] = json.loads((out / "text.json").read_text())["text"]
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name:<18} {report['mean_accuracy']:.3f}  ({result['seconds']:.0f} s)", flush=True)
    return result


def _attempt(name: str, args, attempt: int) -> dict | None | RowFailed:
    try:
        return run_one(name, args)
    except RowFailed as err:
        print(f"{name:<18} failed (attempt {attempt}): {err}", flush=True)
        return err


def run_rows(names: list[str], args) -> tuple[list[dict], list[str], list[str]]:
    """Run ``names`` ``args.jobs`` at a time. A failed row is tried again (``args.retries`` times) once
    the others have finished, with half as many rows side by side each time: a row that ran out of GPU
    memory beside the others resumes from its last saved state. Returns (results in the order of
    ``names``, rows not started before ``--start-within``, rows that failed every attempt)."""
    done: dict[str, dict | None] = {}
    pending, jobs = list(names), args.jobs
    for attempt in range(args.retries + 1):
        run_args = argparse.Namespace(**{**vars(args), "jobs": jobs})
        stop = threading.Event()
        watcher = None
        if getattr(args, "progress", False) and jobs > 1:
            watcher = threading.Thread(target=watch_rows, args=(pending, run_args, stop), daemon=True)
            watcher.start()
        with ThreadPoolExecutor(jobs) as pool:
            outcomes = list(pool.map(functools.partial(_attempt, args=run_args, attempt=attempt + 1), pending))
        stop.set()
        if watcher is not None:
            watcher.join()
        done.update({n: r for n, r in zip(pending, outcomes) if not isinstance(r, RowFailed)})
        pending = [n for n, r in zip(pending, outcomes) if isinstance(r, RowFailed)]
        if not pending:
            break
        jobs = max(1, jobs // 2)
    results = [done[n] for n in names if done.get(n) is not None]
    left_out = [n for n in names if n in done and done[n] is None]
    return results, left_out, pending


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, nargs="+", help="distillation data; the first is the task suite scored")
    p.add_argument("--out", required=True)
    p.add_argument("--grid", default="tiny", choices=list(GRIDS), help="which table of runs (see above)")
    p.add_argument("--runs", nargs="*", default=None, choices=list(RUNS), help="default: every run of --grid")
    p.add_argument("--text", default=None, help="a `mmmamba data text` folder: each run's test perplexity too")
    p.add_argument("--text-windows", type=int, default=200, help="text test windows scored per run")
    p.add_argument("--total-steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--stage-shares", default="1,1,2", help="the stages' shares of --total-steps (S1,S2,S3; default 1,1,2)"
    )
    p.add_argument("--lr-scale", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--distill-args", default="", help="more distill flags, e.g. '--pack --ssd-backend fla'")
    p.add_argument("--convert-args", default="", help="more convert flags for every row, e.g. '--conv-kernel 4'")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (small models leave a GPU idle)")
    p.add_argument(
        "--progress", action="store_true",
        help="with --jobs 1: show each command's output and progress bars on the console too (always in "
        "stdout.log); with more: one bar over every row's distillation steps",
    )  # fmt: skip
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="tries again of a failed row, after the others, with half as many side by side (default 1)",
    )
    p.add_argument("--teacher-eval", default=None, help="teacher's eval JSON: print a comparison table at the end")
    p.add_argument(
        "--start-within",
        type=float,
        default=None,
        help="seconds from now after which no new row starts (a device budget); rows left out are listed",
    )
    args = p.parse_args()
    args.start_by = None if args.start_within is None else time.time() + args.start_within
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more rows side by side")
    if args.retries < 0:
        p.error(f"--retries {args.retries}: give 0 (no retry) or more")
    args.runs = list(GRIDS[args.grid]) if args.runs is None else args.runs
    unknown = [r for r in args.runs if r not in GRIDS[args.grid]]
    if unknown:
        p.error(f"--runs {unknown} are not in --grid {args.grid}: {list(GRIDS[args.grid])}")
    results, left_out, failed = run_rows(args.runs, args)
    if left_out:
        print(f"not started (--start-within): {' '.join(left_out)}", flush=True)
    if args.teacher_eval:
        teacher = json.loads(Path(args.teacher_eval).read_text())
        rows = [{"name": "teacher", **teacher}, *results]
        families = list(teacher["per_family"])
        print(f"\n{'model':<16}{'mean':>7}{'vs teacher':>12}  " + " ".join(f"{f[:9]:>9}" for f in families))
        for r in rows:
            ratio = f"{r['mean_accuracy'] / teacher['mean_accuracy']:.3f}" if teacher["mean_accuracy"] else "-"
            print(
                f"{r['name']:<16}{r['mean_accuracy']:>7.3f}{ratio:>12}  "
                + " ".join(f"{r['per_family'][f]:>9.2f}" for f in families)
            )
    if failed:
        raise SystemExit(f"failed after {args.retries + 1} attempt(s): {' '.join(failed)} (see each row's stdout.log)")


if __name__ == "__main__":
    main()
