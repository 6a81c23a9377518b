"""Turn ``mmmamba bench speed`` results into one table (markdown) and one plot (PNG).

    mmmamba bench report --runs results/speed/*.json --out results/speed/report

Rows from several runs are merged (a later run replaces an earlier one's row for the same model
and context). The plot has next-token latency and peak memory against context, log scale.
"""

from __future__ import annotations

from pathlib import Path

from ..checks import real, text, whole
from ..errors import MmmambaError
from ..io import check_output_file, inputs, read_json, write_atomic, write_text_atomic
from .usage import bench_parser

NAMES = {"hf": "teacher, HF transformers", "teacher": "teacher, mmmamba", "linear": "mmmamba-linear"}
NAMES["hybrid"] = "mmmamba-hybrid every:4"


ROW = {"model": str, "context": int, "prefill_s": float, "decode_ms": float, "floor_ms": float}
ROW |= {"tokens_per_s": float, "cache_bytes": float, "peak_gb": float}
BATCH_ROW = {"model": str, "context": int, "batch": int, "step_ms": float, "tokens_per_s": float}
TRAIN_ROW = {"stage": str, "batch": int, "seq_len": int, "step_ms": float, "tokens_per_s": float, "peak_gb": float}
MAX_RESULT_BYTES = 64 * 1024**2


def _checked(row, keys: dict, where: str, measured: bool = True) -> dict:
    """A result row with the keys the table shows, each of its type (numbers finite, >= 0; floor_ms > 0)."""
    if not isinstance(row, dict):
        raise MmmambaError(f"{where}: expected an object, got {row!r:.40}")
    for key, kind in keys.items():
        if not measured and kind is float:
            continue  # a row with an "error" shows no measurements
        if key not in row:
            raise MmmambaError(f"{where}: {key!r} is missing")
        v = row[key]
        if kind is str:
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise MmmambaError(f"{where}: {key} must be a name, got {v!r:.40}")
            text(str(v), f"{where} {key}")
        elif kind is int:
            whole(v, f"{where}: {key}", 1)
        else:
            real(v, f"{where}: {key}", 0, low_open=key == "floor_ms")
    return row


def load_runs(paths: list[str]) -> tuple[dict, dict, list[dict], list[dict]]:
    rows: dict[tuple[str, int], dict] = {}
    batch: dict[tuple[str, int], dict] = {}
    train: list[dict] = []
    meta: dict = {}
    for path in paths:
        fix = "; not a `mmmamba bench speed` result, give its speed.json"
        data = read_json(path, "speed.json", max_bytes=MAX_RESULT_BYTES)
        try:
            found = data.get("rows")
            if not isinstance(found, list):
                raise MmmambaError(f"{path}: no 'rows' list")
            device, bandwidth = data.get("device"), data.get("bandwidth")
            if not isinstance(device, str):
                raise MmmambaError(f"{path}: 'device' must be a string, got {device!r:.40}")
            real(bandwidth, f"{path}: bandwidth", 0, low_open=True)
            for i, r in enumerate(found):
                if _checked(r, ROW, f"{path}: rows[{i}]", "error" not in r) and "error" not in r:
                    rows[(r["model"], r["context"])] = r
            more = data.get("batch", [])
            if not isinstance(more, list):
                raise MmmambaError(f"{path}: 'batch' must be a list")
            for i, b in enumerate(more):
                if isinstance(b, dict) and b and "error" not in b:
                    batch[(b["model"], b["context"])] = _checked(b, BATCH_ROW, f"{path}: batch[{i}]")
            t = data.get("train") or []
            if not isinstance(t, list):
                raise MmmambaError(f"{path}: 'train' must be a list")
            for i, r in enumerate(t):
                _checked(r, TRAIN_ROW, f"{path}: train[{i}]", "error" not in r)
                if "error" in r and not isinstance(r["error"], str):
                    raise MmmambaError(f"{path}: train[{i}]: error must be a string")
        except MmmambaError as e:
            raise MmmambaError(f"{e}{fix}") from None
        meta = {"device": device, "bandwidth": bandwidth}
        train = t or train
    if not rows:
        raise MmmambaError("no measured rows in the given runs")
    return meta, rows, list(batch.values()), train


def markdown(meta: dict, rows: dict, batch: list[dict], train: list[dict]) -> str:
    lines = [
        f"Device: {meta['device']}, measured copy bandwidth {meta['bandwidth'] / 1e12:.2f} TB/s.",
        "",
        "| model | context | prefill s | next-token ms | floor ms | ms / floor | tokens/s (256 new) | cache GB "
        "| peak GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(["hf", "teacher", "hybrid", "linear"])}
    for (model, context), r in sorted(rows.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 9))):
        lines.append(
            f"| {NAMES.get(model, model)} | {context} | {r['prefill_s']:.2f} | {r['decode_ms']:.2f} | "
            f"{r['floor_ms']:.2f} | {r['decode_ms'] / r['floor_ms']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['cache_bytes'] / 1e9:.2f} | {r['peak_gb']:.2f} |"
        )
    if batch:
        lines += ["", "| model | context | largest batch | step ms | tokens/s |", "|---|---|---|---|---|"]
        for b in sorted(batch, key=lambda b: order.get(b["model"], 9)):
            lines.append(
                f"| {NAMES.get(b['model'], b['model'])} | {b['context']} | {b['batch']} | {b['step_ms']:.1f} | "
                f"{b['tokens_per_s']:.0f} |"
            )
    if train:
        lines += ["", "| stage | batch × seq | step ms | tokens/s | peak GB |", "|---|---|---|---|---|"]
        for t in train:
            if "error" in t:
                lines.append(f"| {t['stage']} | {t['batch']} × {t['seq_len']} | {t['error']} | | |")
            else:
                lines.append(
                    f"| {t['stage']} | {t['batch']} × {t['seq_len']} | {t['step_ms']:.0f} | "
                    f"{t['tokens_per_s']:.0f} | {t['peak_gb']:.1f} |"
                )
    return "\n".join(lines) + "\n"


def plot(rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ms, ax_gb) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in ["hf", "teacher", "hybrid", "linear"]:
        pts = sorted((c, r) for (m, c), r in rows.items() if m == model)
        if not pts:
            continue
        ctx = [c for c, _ in pts]
        ax_ms.plot(ctx, [r["decode_ms"] for _, r in pts], "o-", label=NAMES[model])
        ax_gb.plot(ctx, [r["peak_gb"] for _, r in pts], "o-", label=NAMES[model])
    for ax, what in ((ax_ms, "next-token latency (ms)"), (ax_gb, "peak GPU memory (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_ms.legend(fontsize=8)
    fig.suptitle("HoVLE-scale models (32 layers, hidden 2048), bf16, batch 1")
    fig.tight_layout()
    write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> None:
    p = bench_parser("report", __doc__)
    p.add_argument("--runs", nargs="+", required=True, help="speed.json files from `mmmamba bench speed`")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.md and PREFIX.png")
    args = p.parse_args(argv)
    out = Path(args.out)
    inputs().add_files(args.runs, "--runs")
    for suffix in (".md", ".png"):  # before anything is read: writable, and not one of the runs
        check_output_file(out.with_suffix(suffix), "--out")
    meta, rows, batch, train = load_runs(args.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(meta, rows, batch, train)
    write_text_atomic(out.with_suffix(".md"), text)
    plot(rows, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
