"""Distillation curves against tokens seen: held-out perplexity over the teacher's and per-token KL.

    python -m mmmamba.experiments.curves --runs linear=runs/smol/linear/run hybrid4=runs/smol/hybrid4/run \\
        --out runs/smol/curves.png [--table runs/smol/curves.md]

Reads each run folder's ``val.csv`` (written by ``mmmamba distill`` at every validation of stage 3)
and draws both curves for every run on one figure; ``--table`` writes the same points as Markdown.
A target line (``--target NAME=RATIO``) marks the perplexity ratio a run should reach.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from ..distill.validation import val_log
from ..errors import MmmambaError
from ..io import write_atomic, write_text_atomic


def read_curves(runs: dict[str, Path]) -> dict[str, list[dict]]:
    curves = {}
    for name, folder in runs.items():
        rows = val_log(Path(folder)).rows()
        if not rows:
            raise MmmambaError(f"{folder}: no val.csv rows (does the run include stage 3 with validation?)")
        curves[name] = [{k: float(v) for k, v in r.items()} for r in rows]
    return curves


def plot(curves: dict[str, list[dict]], out: Path, targets: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in curves.items():
        tokens = [r["tokens_seen"] / 1e6 for r in rows]
        (line,) = ax_ppl.plot(tokens, [r["val_ppl_ratio"] for r in rows], "o-", ms=3, label=name)
        ax_kl.plot(tokens, [r["val_kl"] for r in rows], "o-", ms=3, color=line.get_color(), label=name)
        if name in targets:
            ax_ppl.axhline(targets[name], ls="--", lw=0.8, color=line.get_color())
    ax_ppl.set_ylabel("perplexity / teacher's (val)")
    ax_kl.set_ylabel("KL(teacher ‖ student), nats/token (val)")
    for ax in (ax_ppl, ax_kl):
        ax.set_xlabel("tokens seen, millions (all stages)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(out, lambda p: p.write_bytes(buf.getvalue()))


def table(curves: dict[str, list[dict]]) -> str:
    lines = ["| run | stage-3 step | tokens seen (M) | val ppl / teacher | val KL nats/token |"]
    lines.append("|---|---|---|---|---|")
    for name, rows in curves.items():
        for r in rows:
            millions, ratio, kl = r["tokens_seen"] / 1e6, r["val_ppl_ratio"], r["val_kl"]
            lines.append(f"| {name} | {int(r['step'])} | {millions:.1f} | {ratio:.3f} | {kl:.3f} |")
    return "\n".join(lines) + "\n"


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise MmmambaError(f"{flag} {item!r}: give NAME=VALUE")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_FOLDER (a `mmmamba distill --out` folder)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--table", type=Path, help="also write the points as a Markdown table")
    p.add_argument("--target", nargs="*", default=[], help="NAME=RATIO: a run's target perplexity ratio")
    args = p.parse_args(argv)
    try:
        runs = {k: Path(v) for k, v in _pairs(args.runs, "--runs").items()}
        targets = {}
        for k, v in _pairs(args.target, "--target").items():
            try:
                targets[k] = float(v)
            except ValueError:
                raise MmmambaError(f"--target {k}={v}: give a number") from None
        curves = read_curves(runs)
    except MmmambaError as e:
        print(f"error: {e}", flush=True)
        return 2
    plot(curves, args.out, targets)
    if args.table:
        write_text_atomic(args.table, table(curves))
    print(table(curves), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
