"""Files on disk, done one way everywhere: atomic writes, defensive reads, outputs checked before work.

- ``write_atomic`` writes a file under a temporary sibling name, flushes it to disk and renames it
  into place: a reader sees the old file or the new one, never half of one. A failed write (disk
  full, file-size limit) removes the temporary file and says so in one line.
- ``publish_dir`` moves a complete temporary folder into place; an existing folder is swapped out
  first and deleted only after the new one is in place. ``recover_dir`` undoes a swap that a kill
  interrupted (the old folder comes back) and removes leftover temporaries.
- ``read_json`` turns every malformed file (missing, a folder, empty, not UTF-8, not JSON, nested
  too deeply, the wrong shape) into one line naming the file.
- ``check_output_dir`` / ``check_output_file`` / ``check_free_space`` refuse an output that cannot
  be written before any work starts.
- ``CommandInputs`` (``command_inputs`` / ``inputs``): the files a command reads; no output check and
  no atomic write replaces one of them.
- ``RunLock``: one writer per run folder; the holder removes what a killed writer left.
- ``round_floats``: JSON numbers as people read them (6 significant digits).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

from .errors import MmmambaError

T = TypeVar("T")

MAX_JSON_BYTES = 512 * 1024**2  # a Hugging Face tokenizer.json is tens of MB; a config a few KB
MAX_LINE_BYTES = 32 * 1024**2  # one JSONL record: a 1M-token chunk with its text is about 12 MB
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
TMP_TAG, OLD_TAG = ".tmp-", ".old-"
JSON_DIGITS = 6  # significant digits of a float in a results file


def is_disk_full(e: BaseException) -> bool:
    """An error that means the disk (or a file-size or quota limit) is full, however it is wrapped."""
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return True
    text = str(e).lower()
    return any(s in text for s in ("no space left", "file too large", "disk quota", "enforce fail at inline_container"))


def disk_full_error(path, e: BaseException) -> MmmambaError:
    return MmmambaError(
        f"{path}: disk full while writing ({e.__class__.__name__}); free space and rerun "
        "(what was there before is intact)"
    )


def temp_sibling(path: Path, tag: str = TMP_TAG) -> Path:
    return path.with_name(f".{path.name}{tag}{uuid.uuid4().hex[:8]}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` writes the content to ``tmp``; it then replaces ``path`` in one rename. Missing parent
    folders are made first (callers check the path up front, e.g. ``check_output_file``)."""
    path = Path(path)
    inputs().check_output(path, "output")  # the one rule, whatever the caller checked before
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(path, obj, digits: int | None = JSON_DIGITS) -> None:
    """Floats rounded to ``digits`` significant digits (results read by people); ``digits=None`` writes
    them exactly (settings compared on resume, model configs)."""
    if digits is not None:
        obj = round_floats(obj, digits)
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl_atomic(path, records) -> None:
    """One JSON object a line (non-ASCII kept as is), written atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _siblings(final: Path, tag: str) -> list[Path]:
    prefix = f".{final.name}{tag}"
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix))


def recover_for_reading(final) -> None:
    """A reader's share of ``recover_dir``: a folder that a kill left swapped out (``final`` missing, its
    old copy aside) is renamed back so that it can be read; nothing is ever deleted (a reader may sit on
    a read-only mount, and temporaries belong to the writer, which removes them)."""
    final = Path(final)
    olds = _siblings(final, OLD_TAG)
    if olds and not final.exists():
        try:
            os.rename(olds[-1], final)
        except OSError as e:
            raise MmmambaError(
                f"{final}: missing, an interrupted save left it at {olds[-1]} and it cannot be renamed back "
                f"({e.strerror}); rename it back to {final.name}"
            ) from None


def recover_dir(final) -> None:
    """Finish or undo an interrupted ``publish_dir`` of ``final`` and remove leftover temporaries.

    A kill between the two renames leaves ``final`` missing and its old copy aside: the old copy
    comes back (the new one was never announced). Temporary folders are always incomplete work.
    """
    final = Path(final)
    olds = _siblings(final, OLD_TAG)
    if olds and not final.exists():
        os.rename(olds[-1], final)
        olds = olds[:-1]
    for leftover in olds + _siblings(final, TMP_TAG):
        remove_tree(leftover)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final``; an existing ``final`` is removed only afterwards."""
    old = None
    if final.exists():
        old = temp_sibling(final, OLD_TAG)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        remove_tree(old)


def publish_new_dir(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final`` only where nothing holds that name but an empty folder:
    the rename is atomic and refused by the system otherwise, so two writers of one new path never both win."""
    try:
        os.rename(tmp, final)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise MmmambaError(
            f"{final}: another process wrote this folder while this one ran; nothing was replaced (write to a new "
            "folder, or pass --overwrite)"
        ) from None
    _fsync_dir(final.parent)


def write_dir_atomic(final, write: Callable[[Path], T], replace: bool = True) -> T:
    """A whole folder: ``write(tmp)`` fills a temporary sibling, which is then renamed to ``final``
    (``publish_dir``; with ``replace=False``, ``publish_new_dir``); returns what ``write`` returned. On any
    failure or interrupt the temporary is removed and ``final`` is as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)  # what a killed writer left beside it
    tmp = temp_sibling(final)
    try:
        os.mkdir(tmp)
        result = write(tmp)
        (publish_dir if replace else publish_new_dir)(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise
    return result


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) a file or folder: the source stays untouched."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy, symlinks=True)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_json(path, what: str = "JSON file", kind: type | None = dict, max_bytes: int = MAX_JSON_BYTES):
    """Parse a JSON file; every way it can be wrong is a one-line error naming it."""
    path = Path(path)
    raw = read_regular(path, what, max_bytes)
    if not raw:
        raise MmmambaError(f"{path}: empty {what} (an interrupted write?); restore or re-create it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MmmambaError(f"{path}: not UTF-8 text (byte {e.start}); re-save the {what} as UTF-8") from None
    obj = parse_json(text, str(path), what)
    if kind is not None and not isinstance(obj, kind):
        raise MmmambaError(f"{path}: expected a JSON {_KIND_NAMES.get(kind, kind.__name__)}, got {_json_type(obj)}")
    return obj


def check_regular(path, what: str = "file") -> Path:
    """``path`` (links followed) is an existing regular file: not a folder, FIFO, device or socket."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MmmambaError(f"{path}: no such {what}; check the path") from None
    except OSError as e:
        raise MmmambaError(f"{path}: cannot read ({e.strerror or e}); check the path and its permissions") from None
    if stat.S_ISDIR(mode):
        raise MmmambaError(f"{path}: is a folder, expected a {what}; point at the file")
    if not stat.S_ISREG(mode):
        raise MmmambaError(f"{path}: is a {_special_kind(mode)}, not a regular file; give the {what} as a file")
    return path


def _special_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def open_regular(path, what: str = "file"):
    """A binary file object of a regular file, never blocking: checked before the open, opened with
    O_NONBLOCK and checked again on the descriptor (a FIFO swapped in between is refused too)."""
    path = check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise MmmambaError(f"{path}: cannot read ({e.strerror or e}); check the file's permissions") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise MmmambaError(f"{path}: is a {_special_kind(mode)}, not a regular file; give the {what} as a file")
    return os.fdopen(fd, "rb")


def read_regular(path, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; a larger one is refused without reading it all."""
    path = Path(path)
    with open_regular(path, what) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            data = b"" if size > max_bytes else f.read(max_bytes + 1)
        except OSError as e:
            raise MmmambaError(f"{path}: cannot read ({e.strerror or e}); check the file") from None
    if size > max_bytes or len(data) > max_bytes:
        raise MmmambaError(f"{path}: larger than {human_bytes(max_bytes)}, too large for a {what}; check the path")
    return data


_KIND_NAMES = {dict: "object", list: "array", str: "string"}


def _json_type(obj) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj), "a number"
    )


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str, where: str, what: str = "JSON"):
    """Parse JSON text; valid JSON that holds text no UTF-8 writer can encode (a lone ``\\ud800``) is refused."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise MmmambaError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}); fix the {what}") from None
    except RecursionError:
        raise MmmambaError(f"{where}: JSON nested too deeply; fix the {what}") from None
    except ValueError as e:  # e.g. an integer with thousands of digits
        raise MmmambaError(f"{where}: unreadable JSON value ({str(e).splitlines()[0]}); fix the {what}") from None
    if _ESCAPED_SURROGATE.search(text):  # only a \uD800-\uDFFF escape can put a surrogate in
        from .checks import encodable

        encodable(obj, where)
    return obj


def iter_jsonl(path: Path, what: str = "line", max_line: int = MAX_LINE_BYTES):
    """(``file:line``, record) for every non-blank line of a JSONL file (a regular file); a line that
    is too long, not UTF-8 or not JSON is an error naming it. A line is never read past ``max_line``."""
    with open_regular(path, "JSONL file") as f:
        n = 0
        while raw := f.readline(max_line + 1):
            n += 1
            where = f"{path}:{n}"
            if len(raw) > max_line:
                raise MmmambaError(
                    f"{where}: a line longer than {human_bytes(max_line)}; split the record or shorten its text"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MmmambaError(f"{where}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
            if line.strip():
                yield where, parse_json(line, where, what)


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent_chain(path: Path, flag: str) -> None:
    anchor = _first_existing(path.parent if not path.exists() else path)
    if anchor.exists() and not anchor.is_dir():
        raise MmmambaError(f"{flag} {path}: lies under {anchor}, which is a file; choose a path in a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise MmmambaError(f"{flag} {path}: {anchor} is not writable; choose a writable location")


def _check_name(path: Path, flag: str) -> None:
    """A path the system can name: not too long, no component that is not a folder (it may not exist)."""
    try:
        path.lstat()
    except FileNotFoundError:
        pass
    except OSError as e:  # a name too long, a component that is not a folder, ...
        raise MmmambaError(f"{flag} {path}: {e.strerror}; choose another path") from None


def check_output_dir(path, flag: str = "--out") -> Path:
    """An output folder: not a file, not under a file, not a dangling link, writable. Nothing is created."""
    path = Path(path)
    _check_name(path, flag)
    if path.is_symlink() and not path.is_dir():
        raise MmmambaError(
            f"{flag} {path}: is a dangling link or a link loop (to {os.readlink(path)}); remove it or choose another "
            "path"
        )
    if path.exists() and not path.is_dir():
        raise MmmambaError(f"{flag} {path}: is a file, expected a folder; choose another path")
    reader = inputs().reader_of(path) if path.is_dir() else None
    if reader is not None:
        raise MmmambaError(f"{flag} {path}: is a folder this command reads (through {reader}); write to a new folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise MmmambaError(f"{flag} {path}: the folder is not writable; choose a writable location")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise MmmambaError(f"{flag} {path}: its parent folder is not writable (needed to replace it safely)")
        return path
    _check_parent_chain(path, flag)
    return path


DISTILL_SETTINGS = "distill_config.json"  # what marks a distillation run folder (distill/trainer.py writes it)


def check_checkpoint_output(path, flag: str = "--out") -> Path:
    """A folder a checkpoint is written to: as ``check_output_dir``, and neither a distillation run folder
    nor one of its stage checkpoints, whose replacement would lose a run's work (and which ``distill``
    would then take for finished). A one-shot writer checks ``check_new_output`` too."""
    path = check_output_dir(path, flag)
    if path.is_symlink():  # written whole and renamed into place, the checkpoint would replace the link itself
        raise MmmambaError(
            f"{flag} {path}: is a link to a folder ({os.readlink(path)}); give the real folder's path instead"
        )
    if (path / DISTILL_SETTINGS).exists():
        raise MmmambaError(
            f"{flag} {path}: is a distillation run folder (it holds {DISTILL_SETTINGS}); write to a new folder"
        )
    if path.name.startswith("after_stage") and (path.parent / DISTILL_SETTINGS).exists():
        raise MmmambaError(f"{flag} {path}: is a stage checkpoint of the run in {path.parent}; write to a new folder")
    return path


def check_new_output(path, flag: str, overwrite: bool | None, what: str, ours=(), done: str | None = None) -> None:
    """A one-shot writer's output folder replaces one that already holds files only with ``--overwrite``, so
    that a mistyped path or a rerun with other settings loses nothing (``overwrite`` None: a command without
    that flag).

    ``ours`` names what this command itself writes into the folder and ``done`` the file it writes last: a
    folder that holds only ``ours`` and not ``done`` is an interrupted run of this command, taken up again.
    """
    path = Path(path)
    if overwrite or not path.is_dir():
        return
    names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))  # not: temp files, .DS_Store
    if not names:
        return
    if ours and set(names) <= set(ours) and (done is None or done not in names):
        return  # this command's own unfinished output
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    fix = "" if overwrite is None else ", or pass --overwrite to replace them"  # None: the command has no such flag
    raise MmmambaError(f"{flag} {path}: already holds files ({shown}); write the {what} to a new folder{fix}")


def check_output_file(path, flag: str = "--out") -> Path:
    """An output file: not a folder, not under a file, writable. Nothing is created."""
    path = Path(path)
    _check_name(path, flag)
    resolved(path)  # a link loop
    if path.is_dir():
        raise MmmambaError(f"{flag} {path}: is a folder, expected a file path; name a file")
    inputs().check_output(path, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise MmmambaError(f"{flag} {path}: the file is read-only; choose a writable location")
    _check_parent_chain(path.parent if path.is_file() else path, flag)  # an existing file is replaced
    return path


def free_bytes(path) -> int:
    try:
        return shutil.disk_usage(_first_existing(Path(path).absolute())).free
    except OSError:
        return 1 << 62


def check_free_space(path, need: int, what: str) -> None:
    free = free_bytes(path)
    if need > free:
        raise MmmambaError(
            f"{path}: {what} needs about {human_bytes(need)} of disk, only {human_bytes(free)} is free; free space"
        )


def machine_memory() -> int:
    """Bytes of memory this process may use: the physical memory, or a cgroup limit below it."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 1 << 40
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(f).read_text().strip())
        except (OSError, ValueError):
            continue
        total = min(total, limit)
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def resolved(path) -> Path:
    """``path`` with every link resolved; a link loop or a name the system refuses is a one-line error."""
    try:
        return Path(path).resolve()
    except RuntimeError:  # Python 3.11: "Symlink loop from ..."
        raise MmmambaError(f"{path}: a symlink loop; fix or remove the link") from None
    except OSError as e:
        raise MmmambaError(f"{path}: {e.strerror}; choose another path") from None


def same_or_inside(a, b) -> bool:
    """Whether path ``a`` is ``b`` or lies inside it (after resolving links)."""
    a, b = resolved(a), resolved(b)
    return a == b or b in a.parents


def overlap(out, source) -> str | None:
    """How folder ``out`` overlaps ``source``: "is", "contains" or "lies inside" it; None when apart."""
    if same_or_inside(source, out):
        return "is" if resolved(out) == resolved(source) else "contains"
    return "lies inside" if same_or_inside(out, source) else None


# ---- a command's inputs: an output never replaces a file the command reads ----


class CommandInputs:
    """The files one command reads, named as they are resolved (before any long work).

    ``check_output`` is the one rule: an output path may not resolve (through symlinks, ``..`` or a
    hard link) to a file the command reads, nor replace a file inside a folder read as a whole (a data
    folder). A new file beside the inputs is fine (``eval --json MODEL/test_eval.json``).
    """

    def __init__(self):
        self.files: dict[Path, str] = {}  # resolved file -> the flag that named it
        self.folders: dict[Path, str] = {}  # resolved folder read as a whole -> flag

    def add_file(self, path, flag: str) -> None:
        p = Path(path)
        if p.is_file():
            self.files.setdefault(p.resolve(), flag)

    def add_files(self, paths, flag: str) -> None:
        for p in paths:
            self.add_file(p, flag)

    def add_folder(self, path, flag: str) -> None:
        """A folder every file of which is input (a data set: JSONL splits, images, its meta files)."""
        p = Path(path)
        if p.is_dir():
            self.folders.setdefault(p.resolve(), flag)

    def reader_of(self, path) -> str | None:
        """The flag whose input ``path`` would overwrite, or None."""
        p = Path(path)
        try:
            real = p.resolve()
        except (OSError, RuntimeError):
            return None
        if real in self.files:
            return self.files[real]
        if not p.exists():
            return None
        for folder, flag in self.folders.items():
            if folder == real or folder in real.parents:
                return flag
        try:
            st = p.stat()
        except OSError:
            return None
        if st.st_nlink > 1:  # a hard link: the same bytes under another name
            key = (st.st_dev, st.st_ino)
            for f, flag in self._all_files():
                try:
                    s = f.stat()
                except OSError:
                    continue
                if (s.st_dev, s.st_ino) == key:
                    return flag
        return None

    def _all_files(self):
        yield from self.files.items()
        for folder, flag in self.folders.items():
            for root, _, names in os.walk(folder):
                for n in names:
                    yield Path(root) / n, flag

    def check_output(self, path, flag: str) -> None:
        reader = self.reader_of(path)
        if reader is not None:
            raise MmmambaError(
                f"{flag} {path}: is a file this command reads (through {reader}); write the output to another path"
            )


_NO_INPUTS = CommandInputs()
_INPUTS: ContextVar[CommandInputs] = ContextVar("mmmamba_command_inputs", default=_NO_INPUTS)


@contextmanager
def command_inputs():
    """The CLI runs each command inside this: its handler registers what it reads (``inputs()``), and
    every output check and atomic write refuses to replace one of those files."""
    token = _INPUTS.set(CommandInputs())
    try:
        yield _INPUTS.get()
    finally:
        _INPUTS.reset(token)


def inputs() -> CommandInputs:
    """The running command's inputs (an empty registry outside a command)."""
    return _INPUTS.get()


def check_outputs_distinct(outputs: list[tuple[str, object]]) -> None:
    """Two outputs of one command must not be one file (``--json X --answers X``)."""
    seen: dict[Path, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        real = resolved(path)
        if real in seen:
            raise MmmambaError(f"{flag} {path}: is also {seen[real]}; give each output its own path")
        seen[real] = flag


# ---- JSON numbers as people read them ----


def round_floats(obj, digits: int = JSON_DIGITS):
    """Every float in a JSON-able object rounded to ``digits`` significant digits (0.42500000000000004 ->
    0.425); integers, strings and non-finite numbers are kept as they are."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj


# ---- one writer per run folder ----


class RunLock:
    """An exclusive, non-blocking lock on a run folder (``fcntl.flock`` on ``FOLDER/.lock``), held while
    a command writes the folder. A second writer is refused in one line naming the holder's PID. The
    holder is the only process that may clean up: on taking the lock it removes the temporary files and
    folders an earlier writer left when it was killed mid-save (``.NAME.tmp-*``, in the folder and its
    direct sub-folders). Readers never take the lock and never delete.

        with RunLock(out, "--out"):
            ...  # train, save, log
    """

    NAME = ".lock"

    def __init__(self, folder, flag: str = "--out"):
        self.folder, self.flag = Path(folder), flag
        self._fd: int | None = None
        self._made = False

    def acquire(self) -> RunLock:
        import fcntl

        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._made = True
        path = self.folder / self.NAME
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise MmmambaError(f"{self.flag} {self.folder}: its lock file {path} is not a plain file; remove it")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise MmmambaError(
                f"{self.flag} {self.folder}: cannot create its lock file ({e.strerror}); choose a writable folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise MmmambaError(
                f"{self.flag} {self.folder}: another mmmamba process (PID {holder}) is writing this run folder; "
                "wait for it to finish or stop it, or use another folder"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder before us removed the file as we opened it: lock the one there now
            os.close(fd)
            return self.acquire()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self.remove_stale_temporaries()
        return self

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporaries of interrupted atomic writes (only the lock holder may call this)."""
        stale = lambda p: p.name.startswith(".") and TMP_TAG in p.name  # noqa: E731
        removed = [p for p in self.folder.iterdir() if stale(p)]
        for sub in self.folder.iterdir():
            if sub.is_dir() and not sub.is_symlink() and not stale(sub):
                removed += [p for p in sub.iterdir() if stale(p)]
        for p in removed:
            remove_tree(p)
        return removed

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # removed while still held: the folder keeps no trace of the lock (a waiter re-checks the inode)
            (self.folder / self.NAME).unlink()
        except OSError:
            pass  # a read-only or vanished folder: the file stays, harmless
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = None
        if self._made and not any(self.folder.iterdir()):
            self.folder.rmdir()  # nothing was written: leave no folder behind

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---- the identity of a data set, recorded with a run's settings ----

HASH_WHOLE_BELOW = 64 * 1024**2


def file_digest(path) -> str:
    """sha256 of a file's size and content; above 64 MB of its size, first and last 16 MB (cheap, and a
    different data set differs there)."""
    import hashlib

    p = Path(path)
    h = hashlib.sha256()
    size = p.stat().st_size
    h.update(str(size).encode())
    with p.open("rb") as f:
        if size <= HASH_WHOLE_BELOW:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(16 << 20))
            f.seek(size - (16 << 20))
            h.update(f.read(16 << 20))
    return h.hexdigest()


def folder_digest(folder, names) -> str:
    """One short digest of the named files of ``folder`` that exist (their names and contents)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(names):
        f = Path(folder) / name
        if f.is_file():
            h.update(f"{name}\0{file_digest(f)}\0".encode())
    return h.hexdigest()[:16]
