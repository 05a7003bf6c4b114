"""``landscape figures [NAME ARGS...]``: list the paper's figure/table scripts, or run one.

The scripts live in the repository's ``figures/`` package (not in ``landscape``): they are
imported here only when the command runs, so ``landscape`` itself never depends on them.
"""

from __future__ import annotations

import argparse

from landscape.errors import LandscapeError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "figures",
        help="draw the papers' figures and tables from result files",
        description="Without NAME: list the figure/table scripts. With NAME: run that script on result files "
        "of the other commands; its options follow NAME (landscape figures NAME --help). Example: "
        "landscape figures table1 fedavg=h_fedavg.json fedsam=h_fedsam.json --out table1.md",
    )
    p.add_argument("name", nargs="?", help="the script to run (default: list them)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's inputs and options")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import figures
    except ModuleNotFoundError as exc:
        if exc.name != "figures":
            raise
        raise LandscapeError("the figure scripts (the figures/ folder of the landscape repository) are not "
                             "importable here; install from a checkout with `pip install -e .`") from None
    if args.name is None:
        for name in figures.SCRIPTS:
            print(f"{name:<8} {figures.summary(figures.load(name))}")
        print("\nrun one with: landscape figures NAME ARGS... (landscape figures NAME --help)")
        return 0
    try:
        return figures.load(args.name).main(args.args, f"landscape figures {args.name}")
    except SystemExit as exc:  # the script's parser: --help, or a bad flag already reported in one line
        return exc.code if isinstance(exc.code, int) else 2
