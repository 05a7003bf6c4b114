"""The ``landscape`` command: argparse front end over the library.

Each subcommand lives in its own module here with ``add_parser(subparsers)`` and
``run(args) -> int``; ``run`` turns flags into explicit library arguments (it never
passes ``args`` down). A :class:`~landscape.errors.LandscapeError` becomes a single
``error: ...`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from landscape import __version__
from landscape.errors import LandscapeError

# Subcommand modules, in the order `landscape --help` lists them.
COMMANDS = ["hessian", "models", "download", "surface", "plane", "view", "flatness", "train", "demo", "figures"]


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss landscapes and Hessian spectra of federated models.",
    )
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"landscape.cli.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``landscape`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LandscapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
