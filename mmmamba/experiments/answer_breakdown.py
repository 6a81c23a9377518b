"""Where the suite's hardest families go wrong, from `mmmamba eval --answers` files (RESULTS.md §2):
`position` split into the row and the column of the answer ("row R column C"), `reverse` by word length.

    python -m mmmamba.experiments.answer_breakdown results/deep_h200_2026-11-29c/teacher_answers.jsonl \\
        results/deep_h200_2026-11-29c/ablations/*/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def position_parts(rows: list[dict]) -> tuple[float, float, int]:
    """Share of `position` answers whose row and whose column are right, and their number."""
    rows = [r for r in rows if r["family"] == "position"]
    row_ok = col_ok = 0
    for r in rows:
        want, got = r["reference"].split(), r["answer"].split()
        if len(got) >= 4 and len(want) >= 4:
            row_ok += got[:2] == want[:2]
            col_ok += got[2:4] == want[2:4]
    n = max(len(rows), 1)
    return row_ok / n, col_ok / n, len(rows)


def reverse_by_length(rows: list[dict]) -> dict[int, tuple[float, int]]:
    """`reverse` accuracy for each word length: (share right, number)."""
    by = defaultdict(list)
    for r in rows:
        if r["family"] == "reverse":
            by[len(r["reference"])].append(bool(r["correct"]))
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(by.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("answers", nargs="+", type=Path, help="`eval --answers` JSON-lines files")
    args = ap.parse_args()
    for f in args.answers:
        try:
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            print(f"{f}: not a readable answers file ({e}); give `mmmamba eval --answers` output", file=sys.stderr)
            return 2
        name = f.parent.name if f.name == "answers.jsonl" else f.stem
        row, col, n = position_parts(rows)
        rev = ", ".join(f"{k}: {a:.2f} ({m})" for k, (a, m) in reverse_by_length(rows).items())
        print(f"{name}: position row {row:.2f} column {col:.2f} (n = {n}); reverse by length {rev or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
