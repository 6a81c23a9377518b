"""``mmmamba report``: RESULTS.md tables, a PNG chart and quality.json from run results.

A run result is the ``result.json`` that ``python -m mmmamba.experiments.ablations`` writes (name, group, mean and
per-family accuracy, the commands that made it); the teacher row comes from an ``eval`` JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..checks import real, whole
from ..errors import MmmambaError
from ..io import read_json, read_regular, write_atomic, write_json_atomic, write_text_atomic

GROUP_TITLES = {
    "headline": "Teacher, linear and hybrid",
    "stages": "Stage ablation (mmMamba-linear, mimic init, equal total steps)",
    "init": "Initialisation ablation (mmMamba-linear, stages 1+2+3)",
    "kept": "Number of attention layers kept",
    "placement": "Placement of the kept attention layers (as many kept as hybrid_every4 or fewer)",
}

# The paper's rows (SPEC §5): MME, POPE, TextVQA, SQA-I; "vs teacher" = the mean of the four ratios.
PAPER_TEACHER = (1433.5, 87.6, 66.0, 94.8)
PAPER = {  # run name: (attention layers kept, or None for any, the four scores)
    "linear": (0, (1303.5, 85.2, 47.7, 79.2)),
    "keep_2": (2, (1318.4, 86.3, 48.4, 79.9)),
    "keep_4": (4, (1329.1, 86.8, 51.5, 82.8)),
    "hybrid_every4": (8, (1371.1, 86.7, 55.1, 86.9)),
    "stages_1": (0, (969.8, 70.6, 13.5, 40.8)),
    "stages_3": (0, (1188.4, 83.0, 40.0, 63.4)),
    "stages_13": (0, (1263.1, 84.0, 42.5, 77.1)),
    "init_scratch": (0, (1214.0, 83.1, 40.0, 67.4)),
    "init_inherit": (0, (1222.6, 84.0, 41.9, 73.3)),
}


def paper_ratio(row: dict) -> float | None:
    """The paper's model/teacher ratio for this configuration, when the row is the paper's configuration."""
    if row["name"] == "teacher":
        return 1.0
    kept, scores = PAPER.get(row["name"], (None, None))
    if scores is None or len(row.get("keep_attention", [])) != kept:
        return None
    return sum(m / t for m, t in zip(scores, PAPER_TEACHER)) / len(scores)


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text_ppl(row: dict) -> float | None:
    text = row.get("text")
    ppl = text.get("perplexity") if isinstance(text, dict) else None
    return ppl if _real(ppl) and ppl > 0 else None


def _accuracy(v) -> bool:
    return _real(v) and 0 <= v <= 1


def check_eval(obj: dict, f) -> dict:
    """An eval result: a mean accuracy in [0, 1] and per-family accuracies."""
    fam = obj.get("per_family")
    if not _accuracy(obj.get("mean_accuracy")) or not isinstance(fam, dict) or not fam:
        raise MmmambaError(f"{f}: needs 'mean_accuracy' (0..1) and a non-empty 'per_family' object; not an eval JSON")
    if not all(isinstance(k, str) and _accuracy(v) for k, v in fam.items()):
        raise MmmambaError(f"{f}: 'per_family' must map family names to accuracies in 0..1")
    return obj


def read_results(paths) -> list[dict]:
    rows = []
    for p in map(Path, paths):
        f = p / "result.json" if p.is_dir() else p
        if not f.is_file():
            raise MmmambaError(f"{p}: no result.json; pass run folders of the ablation grid or their JSON files")
        row = check_eval(read_json(f, "run result"), f)
        if not isinstance(row.get("name"), str) or not isinstance(row.get("group"), str):
            raise MmmambaError(f"{f}: needs string 'name' and 'group'; pass result.json files of the ablation grid")
        if row["group"] not in GROUP_TITLES:
            raise MmmambaError(
                f"{f}: group {row['group']!r} is none of {', '.join(GROUP_TITLES)}; pass result.json files "
                "of the ablation grid"
            )
        if not re.fullmatch(r"[\w.:+-]{1,80}", row["name"]):  # it names a table row and a chart bar
            raise MmmambaError(
                f"{f}: run name {json.dumps(row['name'])[:90]} is not 1-80 letters, digits or . _ : + -; rename the run"
            )
        if any(r["name"] == row["name"] for r in rows):
            raise MmmambaError(f"{f}: run {row['name']!r} is given twice in --runs; name each run once")
        commands = row.get("commands", [])
        if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
            raise MmmambaError(f"{f}: 'commands' must be a list of strings")
        for key in ("keep_attention", "stages"):
            if not isinstance(row.get(key, []), list):
                raise MmmambaError(f"{f}: '{key}' must be a list")
        try:  # the budget numbers, checked as every number read from a file is
            if row.get("steps"):
                if not isinstance(row["steps"], list):
                    raise MmmambaError(f"steps must be a list of step counts, got {row['steps']!r}")
                [whole(n, "steps", 0) for n in row["steps"]]
            for key in ("tokens", "seconds"):
                if row.get(key) is not None:
                    real(row[key], key, 0)
            text = row.get("text")
            if text is not None and not isinstance(text, dict):
                raise MmmambaError(f"text must be an object, got {text!r}")
            for key in ("perplexity", "teacher_perplexity"):
                if isinstance(text, dict) and key in text:
                    real(text[key], f"text.{key}", 0, low_open=True)
        except MmmambaError as e:
            raise MmmambaError(f"{f}: {e}; pass result.json files of the ablation grid") from None
        row.setdefault("commands", [])
        rows.append(row)
    return rows


def _table(rows: list[dict], families: list[str], teacher: dict) -> list[str]:
    with_text = any(_text_ppl(r) is not None for r in rows)
    with_paper = any(paper_ratio(r) is not None and r["name"] != "teacher" for r in rows)
    extra = (["text ppl"] if with_text else []) + (["paper vs teacher"] if with_paper else [])
    head = "| run | kept attention | stages | init | mean | vs teacher | " + " | ".join(families + extra) + " |"
    lines = [head, "|" + "---|" * (6 + len(families) + len(extra))]
    for r in rows:
        cells = [f"{r['per_family'].get(f, float('nan')):.2f}" for f in families]
        if with_text:
            ppl = _text_ppl(r)
            cells.append("-" if ppl is None else f"{ppl:.2f}")
        if with_paper:
            paper = paper_ratio(r)
            cells.append("-" if paper is None else f"{paper:.3f}")
        kept = ",".join(map(str, r.get("keep_attention", []))) or "none"
        stages = "+".join(f"S{s}" for s in r.get("stages", [])) or "-"
        ratio = r["mean_accuracy"] / teacher["mean_accuracy"]
        lines.append(
            f"| {r['name']} | {kept} | {stages} | {r.get('init', '-')} | {r['mean_accuracy']:.3f} | "
            f"{ratio:.3f} | {' | '.join(cells)} |"
        )
    return lines


def _budget(row: dict) -> str:
    """What a run cost: optimizer steps per stage, trained tokens and wall time, as far as it recorded them."""
    parts = []
    if row.get("steps"):
        parts.append("steps " + "+".join(str(n) for n in row["steps"]))
    if row.get("tokens"):
        parts.append(f"{row['tokens'] / 1e6:.2f} M tokens")
    parts.append(f"{row.get('seconds', '?')} s")
    return ", ".join(parts)


def write_report(run_paths, teacher_eval, out, notes=None, chart=None, quality=None) -> dict:
    rows = read_results(run_paths)
    teacher = check_eval(read_json(teacher_eval, "teacher eval JSON"), teacher_eval)
    if teacher["mean_accuracy"] == 0:
        raise MmmambaError(f"{teacher_eval}: the teacher's mean accuracy is 0; evaluate the right teacher")
    notes_text = None
    if notes:
        try:
            notes_text = read_regular(notes, "notes file", 16 * 1024**2).decode("utf-8")
        except UnicodeDecodeError:
            raise MmmambaError(f"--notes {notes}: not UTF-8 text; re-save it as UTF-8") from None
        except MmmambaError as e:
            raise MmmambaError(f"--notes {e}") from None
    families = list(teacher["per_family"])
    by_name = {r["name"]: r for r in rows}
    teacher_row = {"name": "teacher", "keep_attention": ["all"], "stages": [], "init": "-", **teacher}
    text = next((r["text"] for r in rows if _text_ppl(r) is not None and "teacher_perplexity" in r["text"]), None)
    if text is not None and "text" not in teacher_row:  # the teacher's own perplexity, scored beside each run
        teacher_row["text"] = {"perplexity": text["teacher_perplexity"]}
    lines = [
        "# Results",
        "",
        "Test split of the built-in task suite; exact-match accuracy; `mean` is the mean over",
        "task families. Generated by `mmmamba report`; the commands of every row are listed at the end.",
        "`text ppl`: perplexity on held-out real text, where the runs scored it. `paper vs teacher`: the",
        "paper's row for the same configuration (SPEC §5), the mean of its MME / POPE / TextVQA / SQA-I",
        "ratios to HoVLE's; shown only where the number of kept layers matches the paper's.",
        "",
    ]
    for group, title in GROUP_TITLES.items():
        mine = [r for r in rows if r["group"] == group]
        if group == "headline":
            mine = [teacher_row, *mine]
        elif group in ("stages", "init") and "linear" in by_name:
            mine = [*mine, by_name["linear"]]
        elif group in ("kept", "placement") and "linear" in by_name:
            mine = [by_name["linear"], *(r for r in rows if r["name"] == "hybrid_every4"), *mine]
        if len(mine) > (1 if group != "headline" else 1):
            lines += [f"## {title}", "", *_table(mine, families, teacher), ""]
    if notes_text is not None:
        lines += [notes_text.rstrip(), ""]
    lines += ["## Commands", ""]
    for r in rows:
        lines += [
            f"- **{r['name']}** ({_budget(r)}):",
            "  ```",
            *[f"  {c}" for c in r["commands"]],
            "  ```",
        ]
    write_text_atomic(out, "\n".join(lines) + "\n")
    q = {"teacher": teacher["mean_accuracy"], **{r["name"]: r["mean_accuracy"] for r in rows}}
    if "hybrid_every4" in q:
        q["hybrid"] = q["hybrid_every4"]
    if quality:
        write_json_atomic(quality, q)
    if chart:
        _chart(rows, teacher, chart)
    return q


def _chart(rows, teacher, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [g for g in GROUP_TITLES if any(r["group"] == g for r in rows)]
    rows = sorted(rows, key=lambda r: order.index(r["group"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(rows) + 2), 3.8))
    colors = plt.cm.tab10.colors
    bars = ax.bar(
        range(len(rows)), [r["mean_accuracy"] for r in rows], color=[colors[order.index(r["group"])] for r in rows]
    )
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)  # a 0.000 row shows as a number, not as a gap
    ax.axhline(teacher["mean_accuracy"], color="k", ls="--", lw=1, label=f"teacher {teacher['mean_accuracy']:.3f}")
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean test accuracy")
    ax.set_ylim(0, 1.12)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
