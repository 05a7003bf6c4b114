"""``landscape figures [NAME ARGS...]``: list the paper's figure/table scripts, run one, or run them all.

The scripts live in the repository's ``figures/`` folder, installed as :mod:`landscape.figures`;
they are imported only when the command runs (they pull in matplotlib and plotly).
``landscape figures all --quick --out DIR`` trains the runs every script needs and draws them all
(:mod:`landscape.figures.make`).
"""

from __future__ import annotations

import argparse
from landscape.cli import SUMMARIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "figures",
        help=SUMMARIES["figures"],
        description="Without NAME (or with --list): list the figure/table scripts. With NAME: run that script on "
        "result files of the other commands, or with --quick/--paper on runs it trains itself; its options follow "
        "NAME (landscape figures NAME --help). NAME all makes every figure and table. Examples: landscape figures "
        "table1 fedavg=h_fedavg.json fedsam=h_fedsam.json --out table1.md; landscape figures all --quick --out figs",
    )
    p.add_argument("--list", action="store_true", help="list the scripts and exit (the same as no NAME)")
    p.add_argument("name", nargs="?", help="the script to run, or all (default: list them)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's inputs and options")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from landscape import figures
    if args.name is None or args.list:
        for name in (*figures.SCRIPTS, figures.ALL):
            print(f"{name:<8} {figures.summary(figures.load(name))}")
        print("\nrun one with: landscape figures NAME ARGS... (landscape figures NAME --help)")
        return 0
    try:
        return figures.load(args.name).main(args.args, f"landscape figures {args.name}")
    except SystemExit as exc:  # the script's parser: --help, or a bad flag already reported in one line
        return exc.code if isinstance(exc.code, int) else 2
