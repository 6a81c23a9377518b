"""The benchmarks' own argument parsers, as ``mmmamba bench ACTION --help`` shows them: the right usage
line, the module docstring as plain text (no reST markup), and every option's default."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (it holds example commands) and "(default: …)" after each option."""


def plain(doc: str) -> str:
    """A docstring without reST literal markup: ``x`` -> x."""
    return (doc or "").replace("``", "")


def bench_parser(action: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"mmmamba bench {action}", description=plain(doc), formatter_class=HelpFormatter, allow_abbrev=False
    )
