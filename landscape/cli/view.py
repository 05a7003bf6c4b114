"""``landscape view RESULT``: draw a saved surface result as interactive HTML and a static image."""

from __future__ import annotations

import argparse
from pathlib import Path

from landscape import surface
from landscape.cli.surface import draw


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view",
        help="turn a saved surface result into HTML and PNG",
        description="Draw a result file of `landscape surface` / `landscape plane` (complete or partial). "
        "Without --html/--png both are written next to RESULT. Example: landscape view s.npz --html s.html",
    )
    p.add_argument("result", help="a .npz result file")
    p.add_argument("--html", metavar="HTML", help="interactive offline HTML view")
    p.add_argument("--png", metavar="PNG", help="static plot (.png or .pdf)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = surface.load_result(args.result)
    html, png = args.html, args.png
    if html is None and png is None:
        html, png = str(Path(args.result).with_suffix(".html")), str(Path(args.result).with_suffix(".png"))
    draw(result, html, png)
    return 0
