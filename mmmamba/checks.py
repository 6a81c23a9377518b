"""Checks of single values, one set for every source: configs, file metadata, training states, reports.

A number read from a file gets the same treatment as one typed on the command line: ``whole``
(an integer, not a bool, a string or a float, inside a range) and ``real`` (a finite number inside a
range). Text that will be encoded (tokenised, printed, written as UTF-8) goes through ``text`` /
``encodable``: a lone surrogate (JSON's ``"\\ud800"``) is valid JSON but no valid UTF-8.

The messages name the value, not the file: callers prefix where it came from and the fix.
"""

from __future__ import annotations

import math
import numbers

from .errors import MmmambaError

MAX_STEPS = 10_000_000  # the most optimizer steps any run, stage or phase may take (the one definition)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 100.0  # the stage-3 KL temperature's range
MAX_BATCH = 1 << 16  # the most samples (or rows) in one batch of any command


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def whole(v, name: str, low: int | None = 1, high: int | None = None) -> int:
    """``v`` as an int in [low, high]; bools, strings and floats (even 4.0) are refused."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise MmmambaError(f"{name} must be a whole number, got {_show(v)}")
    v = int(v)
    if (low is not None and v < low) or (high is not None and v > high):
        span = f"{'-inf' if low is None else low}..{'inf' if high is None else high}"
        raise MmmambaError(f"{name} = {v} is outside {span}")
    return v


def real(v, name: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """``v`` as a finite float in [low, high] (or (low, high] with ``low_open``); bools and strings refused."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise MmmambaError(f"{name} must be a number, got {_show(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise MmmambaError(f"{name} must be finite, got {_show(v)}")
    if (low is not None and (f < low or (low_open and f == low))) or (high is not None and f > high):
        span = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise MmmambaError(f"{name} = {_show(v)} is outside {span}")
    return f


def flag(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise MmmambaError(f"{name} must be true or false, got {_show(v)}")
    return v


def _bad_char(s: str) -> int | None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def text(s: str, where: str) -> str:
    """``s`` if it encodes as UTF-8; else one line naming ``where`` and the offending character."""
    i = _bad_char(s)
    if i is not None:
        raise MmmambaError(
            f"{where}: holds an unpaired surrogate (U+{ord(s[i]):04X} at character {i}), which is not valid "
            "UTF-8 text; fix or remove that character"
        )
    return s


def encodable(obj, where: str) -> None:
    """Every string (keys too) in a parsed JSON value encodes as UTF-8."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            text(o, where)
        elif isinstance(o, dict):
            stack += list(o.keys()) + list(o.values())
        elif isinstance(o, list):
            stack += o


def scrub(s: str) -> tuple[str, int]:
    """Text typed by a user (chat): each character UTF-8 cannot encode (an undecodable byte read as a
    surrogate) replaced by U+FFFD, and how many were."""
    out = [c if not 0xD800 <= ord(c) <= 0xDFFF else "\ufffd" for c in s]
    n = sum(1 for a, b in zip(s, out) if a != b)
    return ("".join(out) if n else s), n


def readable_stdin() -> None:
    """Undecodable bytes on stdin arrive as surrogates (then ``scrub``) instead of a UnicodeDecodeError."""
    import sys

    if hasattr(sys.stdin, "reconfigure"):
        try:
            sys.stdin.reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # already read from, or not a text stream
            pass


MAX_MESSAGE_CHARS = 1 << 20  # one chat message read from a pipe or file (a terminal is read by input())


def check_stdin_open() -> None:
    import sys

    if sys.stdin is None or sys.stdin.closed:
        raise MmmambaError("stdin is closed; run chat in a terminal, or pipe messages into it")


def read_message(prompt: str, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """One line of stdin; EOFError at its end. A pipe or file is read at most ``max_chars`` a line, so an
    endless line (``< /dev/zero``) is one error instead of all the memory; a closed stdin is one error too."""
    import sys

    check_stdin_open()
    if sys.stdin.isatty():
        return input(prompt)
    print(prompt, end="", flush=True)
    line = sys.stdin.readline(max_chars + 1)
    if not line:
        raise EOFError
    if len(line) > max_chars:
        raise MmmambaError(f"stdin: a message longer than {max_chars} characters; shorten it or split it")
    return line.rstrip("\n")


def safe_stdout() -> None:
    """Printing never raises UnicodeEncodeError: what stdout cannot encode is written escaped."""
    import sys

    for stream in (sys.stdout,):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
