"""Pick one teacher among `mmmamba teacher tune` runs that differ in a setting (scripts/vlm_teacher_tables.sh
with several TUNE_LR): the highest validation accuracy at the last evaluation of phase `all`, among the
runs whose text validation perplexity then is no worse than the LLM's own (measured at the end of phase
`embed`, where only the image front-end has moved). The test split is not looked at; each run's test
accuracy is copied into the record for the report only.

    python scripts/pick_teacher.py --runs runs/deep/teacher_lr* --out runs/deep/teacher_choice.json \\
        --link runs/deep/teacher
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from ..errors import MmmambaError
from ..io import read_json, write_json_atomic


def last_row(rows: list[dict], phase: str) -> dict | None:
    rows = [r for r in rows if r["phase"] == phase]
    return rows[-1] if rows else None


def describe(run: Path) -> dict | None:
    """A finished run's validation record, or None when it did not finish."""
    if not (run / "teacher_report.json").is_file():
        return None
    with (run / "tune_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    end, llm = last_row(rows, "all"), last_row(rows, "embed")
    if end is None:
        return None
    ppl = float(end["text_val_ppl"]) if end["text_val_ppl"] else None
    llm_ppl = float(llm["text_val_ppl"]) if llm and llm["text_val_ppl"] else None
    report = read_json(run / "teacher_report.json", "teacher_report.json")
    return {
        "run": str(run),
        "settings": read_json(run / "tune_config.json", "tune_config.json"),
        "val_accuracy": float(end["val_accuracy"]),
        "text_val_ppl": ppl,
        "text_val_ppl_llm": llm_ppl,
        "keeps_text": ppl is None or llm_ppl is None or ppl <= llm_ppl,
        "test_accuracy_reported_only": report["suite_test"]["mean_accuracy"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="teacher tune run folders")
    ap.add_argument("--out", type=Path, required=True, help="the record of the choice (JSON)")
    ap.add_argument("--link", type=Path, help="make this path a symbolic link to the chosen run")
    args = ap.parse_args()
    done = []
    for run in args.runs:
        try:
            d = describe(run)
        except (OSError, KeyError, ValueError, MmmambaError) as e:  # a damaged run must not hide the others
            print(f"{run}: unreadable ({e}); left out", file=sys.stderr)
            continue
        if d is None:
            print(f"{run}: not finished; left out", file=sys.stderr)
        else:
            done.append(d)
    if not done:
        print(f"--runs: none of the {len(args.runs)} runs finished; nothing to pick", file=sys.stderr)
        return 2
    pool = [d for d in done if d["keeps_text"]] or done
    best = max(pool, key=lambda d: d["val_accuracy"])  # the first of equals: the order given
    write_json_atomic(args.out, {"rule": __doc__.split("\n\n")[0], "chosen": best["run"], "runs": done})
    for d in done:
        mark = "*" if d is best else " "
        print(
            f"{mark} {d['run']}: lr {d['settings'].get('all_lr')}, val accuracy {d['val_accuracy']:.3f}, "
            f"text val ppl {d['text_val_ppl']} (LLM {d['text_val_ppl_llm']})"
        )
    if args.link:
        tmp = args.link.with_name(args.link.name + ".tmp")
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(best["run"], args.link.parent))
        tmp.replace(args.link)  # atomic: the link appears whole
    return 0


if __name__ == "__main__":
    sys.exit(main())
