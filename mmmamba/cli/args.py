"""What the sub-commands share: the parser class and its help format, argument types, --device and --dtype, and
the checks of a command's inputs and outputs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..checks import MAX_STEPS
from ..errors import MmmambaError


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, "(default: …)", unless the help already says it or there is none."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        d = action.default
        shown = not (d is None or d is False or d is argparse.SUPPRESS or action.required)
        if shown and action.option_strings and "default" not in text.lower() and "%(default)" not in text:
            default = ",".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text = f"{text} (default: {str(default).replace('%', '%%')})".strip()
        return text


class Parser(argparse.ArgumentParser):
    """argparse with no prefix matching (``--steps`` is not ``--steps-per-stage``), one-line errors (exit 2)
    under the sub-command's own name, defaults shown in --help, and required options listed as required."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._required = None

    def add_argument(self, *args, **kwargs):
        if kwargs.get("required") and args and args[0].startswith("-"):
            if self._required is None:
                self._required = self.add_argument_group("required arguments")
            return self._required.add_argument(*args, **kwargs)
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def int_in(low: int, high: int):
    """An argparse type: a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{v} is outside {low}..{high}")
        return v

    return parse


def float_in(low: float, high: float, low_open: bool = False):
    """An argparse type: a finite number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            v = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
            side = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text!r} is outside {side}{low}, {high}]")
        return v

    return parse


COUNT = int_in(1, MAX_STEPS)
SEED = int_in(0, 2**63 - 1)


def resolve_device(text: str | None) -> str:
    """--device: cpu, cuda, cuda:N or mps, present on this machine; None picks cuda when available."""
    import torch

    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise MmmambaError(f"--device {text!r}: unknown device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MmmambaError(f"--device {text}: no CUDA device on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MmmambaError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MmmambaError(f"--device {text}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise MmmambaError(f"--device {text}: {dev.type} is not supported; use cpu, cuda or cuda:N")
    return str(dev)


def resolve_dtype(name: str, device: str):
    """``--dtype``: float32 | bfloat16, or auto = bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def check_text(text: str, flag: str) -> str:
    """A command-line string must be valid UTF-8 (undecodable bytes arrive as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MmmambaError(f"{flag}: not valid UTF-8 text; pass the text in UTF-8") from None
    return text


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


def shard_size(text: str) -> int:
    n = parse_size(text)
    if not 1024 <= n <= 1024**4:
        raise MmmambaError(f"--max-shard-size {text}: give a size between 1KB and 1024GB")
    return n


def reads_model(flag: str, path) -> None:
    """Register a model's files (a folder's config, weights, tokenizer; or a .gguf) as this command's input."""
    from ..formats.checkpoint import checkpoint_files
    from ..io import inputs

    if path is not None:
        inputs().add_files(checkpoint_files(path), flag)


DATA_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "suite.json", "corpus.json", "meta.json")


def reads_folder(flag: str, path, whole: bool = False) -> None:
    """Register a data folder as this command's input: its splits, meta files and images (``whole``: every
    file in it, e.g. a benchmark as released). A new file beside them, such as a run's output, is not one."""
    from ..io import inputs

    if path is None:
        return
    if whole:
        inputs().add_folder(path, flag)
        return
    inputs().add_files([Path(path) / name for name in DATA_FILES], flag)
    inputs().add_folder(Path(path) / "images", flag)


def check_outputs_in(out, names, flag: str = "--out") -> None:
    """The files a command will write into folder ``out`` replace none of its inputs."""
    from ..io import inputs

    for name in names:
        inputs().check_output(Path(out) / name, f"{flag} {out} ({name})")


def side_output(out, suffix: str) -> Path:
    """A side output's default: beside ``out``, named after it (``RESULTS.md`` -> ``RESULTS_chart.png``)."""
    out = Path(out)
    return out.with_name(out.stem + suffix)


def add_overwrite(p) -> None:
    """``--overwrite`` for a command that writes a new folder."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out already holds (refused by default: nothing is lost by mistake)",
    )


OUTSIDE_HELP = "read image paths that leave the data folder (.. or absolute); refused by default"
