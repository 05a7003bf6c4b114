"""[C22] Fig. 2 style: the loss on the plane through the global model and two clients, clients projected.

The input is a plane result of ``landscape plane`` (axes in Euclidean units of parameter
space [G18]); every model given with ``--project`` is drawn at its projection, and its
distance to the plane is listed::

    landscape plane runs/fedavg/checkpoints/global_r000200.pt runs/fedavg/clients/r000200_c0003.pt \\
        runs/fedavg/clients/r000200_c0007.pt --project runs/fedavg/clients/r000200_c*.pt --out plane.npz
    landscape figures fig02 plane.npz --out fig02.png

Writes an image in every ``--out`` format (PNG and vector PDF by default) with the panels of
``--styles`` (filled contours with the models marked, by default, as in [C22] Fig. 2) and, with
``--html``, an interactive view. ``--value test/accuracy`` draws the test accuracy when the plane was evaluated with
``--sources train,test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from landscape.figures import common, make, runs
from landscape import surface
from landscape.errors import LandscapeError
from landscape.files import writing
from landscape.plots import interactive, static

STEM = "fig02_plane"


def outputs(plan: make.Plan) -> list[make.Output]:
    """The plane through FedAvg's last global model (alpha = 0) and two of its clients, the others projected."""
    spec = runs.c22(plan.mode, "fedavg")
    result = plan.result(f"plane_{spec.name}.npz")
    first, second, *others = plan.clients(spec)
    step = ("plane", plan.final(spec), first, second, "--project", *others, "--out", result, "--overwrite",
            *plan.surface())
    files = (*plan.files(STEM), plan.out / f"{STEM}.html")
    return [make.Output("fig02", "fig02", (spec,), (step,), (result, "--out", *files[:2], "--html", files[2]), files)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    parser = common.make_parser(__doc__, prog)
    parser.add_argument("plane", nargs="?", help="a result of `landscape plane --out` (none with --quick or --paper)")
    common.add_make_args(parser)
    common.add_image_outputs(parser, STEM)
    parser.add_argument("--html", metavar="HTML", help="also write an interactive view")
    parser.add_argument("--value", default="train/loss", help="the value to draw (default: train/loss)")
    parser.add_argument("--styles", nargs="+", default=["filled"], choices=static.STYLES,
                        help="panels to draw (default: filled)")
    args = parser.parse_args(argv)
    code = common.made(args, __name__)
    if code is not None:
        return code
    inputs = [common.Input("plane", Path(args.plane))]
    outs = common.image_outputs(args.out, STEM, inputs)
    html = common.check_suffix(args.html, (".html",), "--html", inputs) if args.html else None
    result = surface.load_result(args.plane)
    if result["kind"] != "plane":
        raise LandscapeError(f"{args.plane} is a {result['kind']} result; Fig. 2 draws the result of "
                             "`landscape plane A B C --project ...`")
    for m in result["markers"]:
        print(f"{m['label']:<14} {m.get('role') or '':<8} at ({m['coords'][0]:.4g}, {m['coords'][1]:.4g}), "
              f"{m['distance']:.4g} off the plane")
    with writing(*outs, html):
        written = common.save_images(static.surface_figure(result, args.value, args.styles), outs)
        if html is not None:
            written.append(interactive.write_html(result, html, value=args.value))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    common.run_script(main)
