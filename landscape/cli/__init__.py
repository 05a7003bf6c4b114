"""The ``landscape`` command: argparse front end over the library.

Each subcommand lives in its own module here with ``add_parser(subparsers)`` and
``run(args) -> int``; ``run`` turns flags into explicit library arguments (it never
passes ``args`` down). Every failure a user can cause ends in this one place as a single
line ``error: <what> (<where>): <how to fix>`` and exit status 2, never a traceback:

- :class:`~landscape.errors.LandscapeError` from the library, printed as it is;
- ``OSError`` (full disk, permissions, a folder in the way) through :func:`~landscape.errors.os_error`;
- running out of memory, with the flags that lower it;
- argparse's own complaints (a wrong type, an unknown flag with the closest real one);
- anything else is a bug of ours: one line that says so and how to see the traceback
  (``LANDSCAPE_DEBUG=1``), so a user is never left with a screen of torch internals.

``landscape train`` under torchrun (``WORLD_SIZE > 1``): every rank runs it, and still one line is printed:
``landscape.train.distributed`` marks a failure of a distributed run with the rank that reports
it (``error: rank R of N: ...``) or as reported by another rank (exit 2, silent); what no rank
marked (a bad flag, an unreadable config) every rank hits alike, and rank 0 reports it.

Under ``torchrun`` (``WORLD_SIZE > 1``) the analysis commands (``hessian``, ``surface``,
``plane``, ``flatness``) join the process group first (:func:`landscape.distributed.start`)
and run data parallel; rank 0 alone prints (the other ranks' output goes nowhere, their
failures reach rank 0 through torchrun's store) and exits 1 with one line naming the rank
when another rank fails or dies.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from landscape import __version__
from landscape.errors import LandscapeError, os_error
from landscape.launch import launch_rank

#: The subcommands, in the order `landscape --help` lists them, with their one-line summaries: the
#: top-level help is built from these alone, so it imports no command module (nor torch).
SUMMARIES = {
    "hessian": "top eigenvalues, trace and spectral density of the loss Hessian (or GGN, Fisher)",
    "models": "list the registered models and their kwargs",
    "download": "download CIFAR-10/100 (python format) into a folder",
    "surface": "loss and accuracy on a line, grid or volume around a checkpoint",
    "plane": "loss on the plane through three models, with other models projected onto it",
    "view": "turn saved surface results into HTML and static images (PNG, PDF, SVG)",
    "flatness": "flatness distance, sharpness gap and local vs global lambda_max of a global model and its clients",
    "train": "federated training: FedAvg, FedAvgM, FedSAM, FedASAM, FedNSAM (+SWA)",
    "demo": "train and analyse FedAvg/FedSAM/FedASAM/FedNSAM on the offline digits data",
    "figures": "draw the papers' figures and tables from result files, or make them all",
}
COMMANDS = list(SUMMARIES)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose complaints are one ``error:`` line (exit 2), with the closest flag."""

    def error(self, message: str) -> NoReturn:
        if _other_rank():
            self.exit(2)
        if message.startswith("unrecognized arguments:"):
            message += _suggestion(self, message)
        error = LandscapeError(message, where=self.prog, fix=f"see `{self.prog} --help`")
        self.exit(2, f"error: {error}\n")


def _other_rank() -> bool:
    """Whether this process is a rank other than 0 of a torchrun job (rank 0 reports what all ranks hit alike)."""
    env = os.environ
    return env.get("WORLD_SIZE", "1").strip() not in ("", "0", "1") and env.get("RANK", "0").strip() not in ("", "0")


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """``(did you mean --rounds?)`` for an unknown flag close to a real one of the same command."""
    flags = [s for a in parser._actions for s in a.option_strings]
    for word in message.split(":", 1)[1].split():
        name = word.split("=")[0]
        if name.startswith("--"):
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
            close = close or [f for f in flags if f.startswith("--") and f[2:] in name[2:]][:1]
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def build_parser(only: str | None = "*") -> Parser:
    """The parser with every subcommand registered (``only="*"``), or with only the command
    ``only`` in full and the others as one-line entries (None: all one-line, for ``landscape --help``):
    a command module imports torch and its library, which the other commands need not pay for."""
    parser = Parser(prog="landscape", description="Loss landscapes and Hessian spectra of federated models.")
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in SUMMARIES.items():
        if only in ("*", name):
            importlib.import_module(f"landscape.cli.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is one), if any."""
    return next((word for word in argv if word in SUMMARIES), None)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; unknown flags are reported by the subcommand's parser (which knows its flags)."""
    parser = build_parser(_command(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    """Our warnings as one ``warning: ...`` line (not Python's two-line form with the source)."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``landscape`` console script: the exit status (0 ok, 2 bad input, 130 interrupted)."""
    with warnings.catch_warnings():
        # torch's own warnings (pickle protocols, zero-element tensors, ...) speak of its internals, not of
        # anything the user can act on; ours are one line each.
        warnings.filterwarnings("ignore", module=r"torch(\.|$)")
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        rank = launch_rank()
    except ValueError:  # a malformed RANK/WORLD_SIZE: the command itself reports it, in one line
        rank = 0
    try:
        with _only_rank0_prints(rank):
            args = parse(argv)
    except SystemExit as exc:  # --help, --version, or a bad flag already reported in one line
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "data_parallel", False):
        with _only_rank0_prints(rank):
            return _run_data_parallel(args)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt as exc:
        if _reports(exc):
            print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into one line
        if os.environ.get("LANDSCAPE_DEBUG"):
            raise
        if _reports(exc):
            rank_label = getattr(exc, "rank_label", None)
            print(f"error: {rank_label + ': ' if rank_label else ''}{describe(exc, args.command)}", file=sys.stderr)
        return 2


def _run_data_parallel(args: argparse.Namespace) -> int:
    """An analysis command (``hessian``, ``surface``, ``plane``, ``flatness``), data parallel under torchrun."""
    from landscape import distributed

    try:
        if distributed.launched():
            from landscape.operators import resolve_device

            distributed.start(resolve_device(args.device))
        code = int(args.run(args) or 0)
        distributed.stop()
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (Exception, distributed.Stopped) as exc:  # noqa: BLE001 - the one place that turns failures into one line
        if os.environ.get("LANDSCAPE_DEBUG"):
            raise
        if distributed.current() is not None and distributed.is_peer_failure(exc):
            if distributed.is_main():  # another rank failed or died: say which
                print(f"error: {distributed.describe_failure(exc, args.command)}", file=sys.stderr)
            return 1
        message = describe(exc, args.command)
        if not distributed.is_main():
            distributed.post_failure(str(message))
        print(f"error: {message}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _only_rank0_prints(rank: int):
    """Ranks other than 0 print nothing (unless ``LANDSCAPE_DEBUG``): rank 0 speaks for the job."""
    if rank == 0 or os.environ.get("LANDSCAPE_DEBUG"):
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _reports(exc: BaseException) -> bool:
    """Whether this process prints ``exc`` (under torchrun one rank does, see the module docstring)."""
    if getattr(exc, "reported_by_another_rank", False):
        return False
    return getattr(exc, "rank_label", None) is not None or not _other_rank()


def describe(exc: Exception, command: str) -> LandscapeError:
    """The one-line message for any failure of ``landscape COMMAND``."""
    import torch

    if isinstance(exc, LandscapeError):
        return exc
    if isinstance(exc, OSError):
        return os_error(exc, "cannot read or write a file")
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return LandscapeError("out of memory", where=f"landscape {command}",
                              fix="lower --batch-size (and --points-per-batch or --num-samples), or use a larger device")
    text = str(exc).splitlines()[0] if str(exc) else ""
    return LandscapeError(f"internal error, {type(exc).__name__}{': ' + text if text else ''}",
                          where=f"landscape {command}",
                          fix="please report it with the command line; LANDSCAPE_DEBUG=1 shows the traceback")
