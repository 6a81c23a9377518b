"""The ``mmmamba`` command line: one entry point, one sub-command per job.

Dispatch only: each command group's module (``convert``, ``data``, ``formats``, ``teacher``, ``evaluate``,
``distill``, ``run``, ``bench``) registers its sub-command(s), each with ``set_defaults(func=handler)``; the
shared argument helpers are in ``args``."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ..errors import MmmambaError
from . import bench, convert, data, distill, evaluate, formats, run, teacher
from .args import Parser

# The sub-commands, in the order --help lists them.
COMMANDS = (
    convert.add_convert,
    data.add_data,
    formats.add_import,
    teacher.add_teacher,
    evaluate.add_eval,
    distill.add_distill,
    evaluate.add_report,
    run.add_generate,
    run.add_chat,
    formats.add_info,
    formats.add_export,
    bench.add_bench,
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="mmmamba",
        description="Turn a decoder-only Transformer into a Mamba-2 (linear) or Mamba-2/attention (hybrid) "
        "model by seeding Mamba-2 from attention and distilling, then run it fast.",
    )
    parser.add_argument("--version", action="version", version=f"mmmamba {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    _name_leaves(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a bad input is one line on stderr and exit code 2 (argparse's too)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in bench.ACTIONS:
        args = argparse.Namespace(command="bench", action=argv[1], argv=argv[2:], func=bench.cmd_bench)
        argv = None  # parsed by the benchmark itself
    try:
        if argv is not None:
            args = parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    from ..checks import safe_stdout
    from ..io import command_inputs

    safe_stdout()
    name = " ".join(str(w) for w in (args.command, getattr(args, "action", None)) if w)  # e.g. "data make"
    try:
        with command_inputs():  # what the handler reads; no output may replace it
            args.func(args)
    except MmmambaError as e:
        print(f"mmmamba {name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout stopped early (`| head`): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as e:  # a full disk at a write that has no check of its own
        from ..io import is_disk_full

        if is_disk_full(e):
            print(f"mmmamba {name}: error: disk full ({e.strerror}); free space and rerun", file=sys.stderr)
            return 2
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = f"{e.filename}: " if e.filename else ""
            print(
                f"mmmamba {name}: error: {where}{e.strerror} (a read-only or protected location); "
                "choose a writable output path",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt:
        resumable = getattr(args, "resumable", False)  # set_defaults(resumable=True): distill, teacher train/tune
        then = "rerun the same command to resume" if resumable else "nothing half-written was left"
        print(f"mmmamba {name}: interrupted; {then}", file=sys.stderr)
        return 130
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments; an unknown one is reported under the sub-command that got it (``mmmamba eval: error``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Each sub-command's parser is recorded in the namespace it parses (the deepest one wins)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                sp.set_defaults(parser=sp)
                _name_leaves(sp)


if __name__ == "__main__":
    sys.exit(main())
