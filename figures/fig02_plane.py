"""[C22] Fig. 2 style: the loss on the plane through the global model and two clients, clients projected.

The input is a plane result of ``landscape plane`` (axes in Euclidean units of parameter
space [G18]); every model given with ``--project`` is drawn at its projection, and its
distance to the plane is listed::

    landscape plane runs/fedavg/checkpoints/global_r000200.pt runs/fedavg/clients/r000200_c0003.pt \\
        runs/fedavg/clients/r000200_c0007.pt --project runs/fedavg/clients/r000200_c*.pt --out plane.npz
    landscape figures fig02 plane.npz --out fig02.png

Writes an image (PNG, PDF or SVG by suffix) with the panels of ``--styles`` (filled contours
with the models marked, by default, as in [C22] Fig. 2) and, with ``--html``, an interactive
view. ``--value test/accuracy`` draws the test accuracy when the plane was evaluated with
``--sources train,test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from landscape.figures import common
from landscape import surface
from landscape.errors import LandscapeError
from landscape.files import writing
from landscape.plots import interactive, static


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    parser = common.make_parser(__doc__, prog)
    parser.add_argument("plane", help="a result of `landscape plane --out`")
    parser.add_argument("--out", default="fig02_plane.png", metavar="IMAGE",
                        help="image file, .png, .pdf or .svg (default: fig02_plane.png)")
    parser.add_argument("--html", metavar="HTML", help="also write an interactive view")
    parser.add_argument("--value", default="train/loss", help="the value to draw (default: train/loss)")
    parser.add_argument("--styles", nargs="+", default=["filled"], choices=static.STYLES,
                        help="panels to draw (default: filled)")
    args = parser.parse_args(argv)
    inputs = [common.Input("plane", Path(args.plane))]
    out = common.check_suffix(args.out, static.SUFFIXES, "--out", inputs)
    html = common.check_suffix(args.html, (".html",), "--html", inputs) if args.html else None
    result = surface.load_result(args.plane)
    if result["kind"] != "plane":
        raise LandscapeError(f"{args.plane} is a {result['kind']} result; Fig. 2 draws the result of "
                             "`landscape plane A B C --project ...`")
    for m in result["markers"]:
        print(f"{m['label']:<14} {m.get('role') or '':<8} at ({m['coords'][0]:.4g}, {m['coords'][1]:.4g}), "
              f"{m['distance']:.4g} off the plane")
    with writing(out, html):
        written = [static.plot_surface(result, out, value=args.value, styles=args.styles)]
        if html is not None:
            written.append(interactive.write_html(result, html, value=args.value))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    common.run_script(main)
