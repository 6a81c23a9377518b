"""A training run's folder, one implementation for every trainer (distillation, teacher training, teacher
tuning): the settings it started with, its CSV log and plot, the checkpoints it publishes, and what is
finished and what is pending.

    run = RunFolder(out, settings_file="distill_config.json")
    log = run.log("log.csv", COLUMNS, key=("stage", "step"))
    with run:                               # one writer: a second process is refused, naming the holder
        run.check_settings(settings)        # a rerun with other settings or data is refused, before any work
        run.save_settings(settings)
        if not run.finished("stage1"):
            ...                             # train, ``log.add(...)``, save the training state
            run.publish("stage1", model, extra=copy_tokenizer)   # after_stage1/, written whole then renamed

Every write is atomic (``io.py``); a kill at any point leaves a folder that the same command resumes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import MmmambaError
from ..formats import save_checkpoint
from ..io import RunLock, read_json, recover_dir, write_atomic, write_json_atomic, write_text_atomic


class RunLog:
    """A run's CSV log at ``path``: ``columns``, one row per step (or validation). The ``key`` columns
    (whole numbers) order the rows, so that a resume can forget the rows past the step it resumes from.
    Every other column holds numbers, but for the ``text`` ones."""

    def __init__(self, path, columns: Sequence[str], key: Sequence[str] = ("step",), text: Sequence[str] = ()):
        self.path, self.columns, self.key, self.text = Path(path), tuple(columns), tuple(key), tuple(text)
        self._started = False

    def start(self) -> None:
        """Create the log with its header, unless it exists with one; a last line cut short by a kill is
        dropped, so that the next row starts a line of its own (checked once per RunLog)."""
        if self._started:
            return
        self._started = True
        if not self.path.exists() or self.path.stat().st_size == 0:  # an empty file: a kill before the header
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, ",".join(self.columns) + "\n")
            return
        text = self.path.read_bytes()
        header = text.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        if header != ",".join(self.columns) and "\n" in text.decode("utf-8", "replace"):
            raise MmmambaError(
                f"{self.path}: not this run's log (its first line is {header[:60]!r}, not the columns "
                f"{','.join(self.columns)}); restore the run's log or use a new --out"
            )
        if not text.endswith(b"\n"):
            kept = text[: text.rfind(b"\n") + 1] or (",".join(self.columns) + "\n").encode()
            write_atomic(self.path, lambda p: p.write_bytes(kept))

    def rows(self) -> list[dict]:
        """The well-formed rows: a line cut short by a kill, or edited by hand, is left out rather than
        stopping the plot or the token count of a run that is otherwise fine."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="", errors="replace") as f:
            return [r for r in csv.DictReader(f) if self._well_formed(r)]

    def _well_formed(self, row: dict) -> bool:
        if None in row or None in row.values():  # more or fewer cells than the header
            return False
        if not all(row.get(k, "").isdigit() for k in self.key):
            return False
        return all(not v or k in self.key or k in self.text or _is_number(v) for k, v in row.items())

    def truncate(self, *upto: int) -> None:
        """Forget rows whose key is past ``upto``: the steps a resumed run will take again."""
        if not self.path.is_file():
            return
        self.start()  # a last line cut short is dropped first
        lines = self.path.read_text(errors="replace").splitlines(keepends=True)  # a stray byte is one bad row
        header = lines[0].rstrip("\n").split(",") if lines else []
        at = [header.index(k) for k in self.key if k in header]
        keep = lines[:1] + [line for line in lines[1:] if _key(line, at) <= tuple(upto)]
        if len(keep) != len(lines):
            write_text_atomic(self.path, "".join(keep))

    def total(self, column: str) -> int:
        """The sum of a whole-number column over the rows that have it (e.g. the tokens trained on so far)."""
        return sum(int(r[column]) for r in self.rows() if r.get(column))

    def add(self, *values) -> None:
        """Append one row, values in column order (None is written empty; floats to 6 significant digits)."""
        self.start()
        with self.path.open("a") as f:
            csv.writer(f, lineterminator="\n").writerow([_cell(v) for v in values])  # as the header


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _same_path(a: str, b: str) -> bool:
    try:
        return a == b or Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def write_figure(path, fig) -> None:
    """A matplotlib figure as a PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(Path(path), lambda p: p.write_bytes(buf.getvalue()))


class RunFolder:
    """The folder ``out`` of one run. ``what`` names the run in messages ("run", "teacher run")."""

    def __init__(self, out, settings_file: str, what: str = "run"):
        self.out = Path(out)
        self.settings_file = self.out / settings_file
        self.what = what
        self._lock: RunLock | None = None

    # one writer -------------------------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        self._lock = RunLock(self.out).acquire()  # also removes temporaries a killed writer left
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # settings ---------------------------------------------------------------------------------------
    def check_settings(self, settings: dict, paths: Sequence[str] = ()) -> None:
        """Refuse a folder that holds a run started with other settings or on other data. An unreadable
        settings file is refused only when the folder holds work (else it is simply rewritten). The
        settings named in ``paths`` are input paths: one folder spelled two ways (``T/``, ``./T``, an
        absolute path) is the same setting."""
        f = self.settings_file
        if not f.exists():
            if any(self.out.glob("after_*")):  # published parts of a run whose settings are unknown
                raise MmmambaError(
                    f"{self.out}: holds finished work but no {f.name}, so its settings are unknown; restore the "
                    "file or use a new --out"
                )
            return
        try:
            old = read_json(f, "run settings file")
        except MmmambaError as e:
            if self.has_work():
                raise MmmambaError(
                    f"{e}; the run folder holds finished work, so restore the file or use a new --out"
                ) from None
            return
        old.setdefault("data_identity", settings.get("data_identity"))  # a run recorded before data identities
        for key in paths:
            if isinstance(old.get(key), str) and isinstance(settings.get(key), str):
                if _same_path(old[key], settings[key]):
                    old[key] = settings[key]
        if old == settings:
            return
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff == ["data_identity"]:
            raise MmmambaError(
                f"{self.out}: holds a {self.what} on other data (the data files differ from the ones it started "
                f"with, {f.name}); resume with the same data or use a new --out"
            )
        raise MmmambaError(
            f"{self.out}: holds a {self.what} with other settings ({', '.join(diff)} differ in {f.name}); "
            "use the same settings or a new --out"
        )

    def save_settings(self, settings: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.settings_file, settings, digits=None)

    # finished and pending ---------------------------------------------------------------------------
    def part(self, name: str) -> Path:
        """The folder a finished part of the run is published to: ``after_<name>``."""
        return self.out / f"after_{name}"

    def finished(self, name: str) -> bool:
        return (self.part(name) / "config.json").is_file()

    def recover(self, names: Sequence[str]) -> None:
        """Finish or undo publishing interrupted by a kill (the lock holder only)."""
        for name in names:
            recover_dir(self.part(name))

    def has_work(self) -> bool:
        """Anything a rerun would lose: a published part or a pending training state."""
        return any(self.out.glob("after_*")) or any(self.out.glob("train_state*")) or any(self.out.glob("state_*"))

    def publish(self, name: str, model, extra: Callable[[Path], None] | None = None) -> Path:
        """Write the model whole into ``after_<name>`` (tokenizer and all, via ``extra``), then rename it in."""
        folder = self.part(name)
        save_checkpoint(model, folder, extra=extra)
        return folder

    def log(
        self, name: str, columns: Sequence[str], key: Sequence[str] = ("step",), text: Sequence[str] = ()
    ) -> RunLog:
        """One of the run's CSV logs (``log.csv``, ``val.csv``, …)."""
        return RunLog(self.out / name, columns, key, text)


def _key(line: str, at: list[int]) -> tuple:
    fields = line.rstrip("\n").split(",")
    try:
        return tuple(int(fields[i]) for i in at)
    except (IndexError, ValueError):
        return ()
