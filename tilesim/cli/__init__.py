"""`tilesim ...`: a thin shell over the Python API.

One module per subcommand in this package; each has ``add_parser(subparsers)`` that registers
its arguments and sets ``func``. Every subcommand has --help, and --json for machines where it
prints results. A user mistake (bad config, bad assembly, bad argument) prints one line on
stderr and exits with status 2; nothing here prints a traceback for one.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from tilesim import __version__
from tilesim.errors import InputError, TilesimError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def print_json(obj) -> None:
    """Write ``obj`` to stdout as indented JSON."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def read_text(path: str) -> str:
    """A text file's contents; InputError (one line) if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None


SUBCOMMANDS = ("check", "asm", "systolic", "dram", "exec", "run", "compare", "sweep")
"""Modules of tilesim.cli that register subcommands, in --help order."""


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = _Parser(prog="tilesim", description="Cycle-level simulator of AI inference accelerators.")
    p.add_argument("--version", action="version", version=f"tilesim {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"tilesim.cli.{name}").add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TilesimError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
