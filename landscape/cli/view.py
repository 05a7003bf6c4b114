"""``landscape view RESULT...``: draw saved surface results as interactive HTML and static images."""

from __future__ import annotations

import argparse
from pathlib import Path

from landscape import surface
from landscape.cli.surface import draw
from landscape.errors import LandscapeError
from landscape.files import check_outputs, writing
from landscape.plots import IMAGE_SUFFIXES
from landscape.cli import SUMMARIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view",
        help=SUMMARIES["view"],
        description="Draw result files of `landscape surface` / `landscape plane` (complete or partial). "
        "Without --html/--png both are written next to the (first) RESULT. Several results of one kind "
        "(rounds, algorithms) share one HTML page with a slider; the static image shows the first. "
        "Example: landscape view fedavg.npz fedsam.npz --labels FedAvg FedSAM --html surfaces.html",
    )
    p.add_argument("results", nargs="+", metavar="RESULT", help=".npz result files")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="slider labels, one per result "
                   "(default: the round, else the checkpoint name)")
    p.add_argument("--html", metavar="HTML", help="interactive offline HTML view")
    p.add_argument("--png", metavar="IMAGE", help="static plot of the first result, its format by suffix: .png, "
                   "or vector .pdf / .svg for a paper")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.labels is not None and len(args.labels) != len(args.results):
        raise LandscapeError(f"--labels names {len(args.labels)} results but {len(args.results)} were given")
    html, png = args.html, args.png
    if html is None and png is None:
        first = Path(args.results[0])
        html, png = str(first.with_suffix(".html")), str(first.with_suffix(".png"))
    check_outputs({"--html": (html, [".html"]), "--png": (png, list(IMAGE_SUFFIXES))}, args.results)
    results = [surface.load_result(path) for path in args.results]
    with writing(html, png):
        return _draw(results, html, png, args.labels)


def _draw(results: list[dict], html: str | None, png: str | None, labels: list[str] | None) -> int:
    if len(results) == 1:
        draw(results[0], html, png)
        return 0
    from landscape.plots.interactive import write_html

    if html:
        write_html(results, html, labels=labels)
        print(f"wrote {html} ({len(results)} surfaces on a slider)")
    if png:
        draw(results[0], None, png)
    return 0
