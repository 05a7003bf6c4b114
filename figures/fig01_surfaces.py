"""[C22] Fig. 1: loss surfaces of the global models of several algorithms, side by side on one z scale.

Inputs are 2D surface results of ``landscape surface`` (``--dim 2``; [C22] used 21 x 21 grids
of filter-normalized random directions [Li18]), one per algorithm (and alpha)::

    landscape surface runs/fedavg/checkpoints/global_r020000.pt --dim 2 --resolution 21 --out s_fedavg.npz
    landscape surface runs/fedasam/checkpoints/global_r020000.pt --dim 2 --resolution 21 --out s_fedasam.npz
    landscape figures fig01 FedAvg=s_fedavg.npz FedASAM=s_fedasam.npz --out fig01.png

Writes an image in every ``--out`` format (PNG and vector PDF by default) with a 3D surface per
input, all on the same z range and color scale (log10 when the values span more than a factor
100, as in :mod:`landscape.plots.static`), and an interactive HTML with the surfaces on a slider
(same color scale). ``--value`` picks what is drawn, e.g. ``test/loss`` when the surfaces were
evaluated with ``--sources train,test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from landscape.figures import common, make, runs
from landscape import surface
from landscape.errors import LandscapeError
from landscape.files import writing
from landscape.plots import interactive, static

MAX_COLUMNS = 4
STEM = "fig01_surfaces"
#: The algorithms of the made figure (alpha = 0), by label.
ALGORITHMS = {"FedAvg": "fedavg", "FedSAM": "fedsam", "FedASAM": "fedasam"}


def load_surfaces(inputs: Sequence[common.Input], value: str) -> list[dict[str, Any]]:
    """The surface results, checked to be 2D grids holding ``value``.

    Raises:
        LandscapeError: a file that is not a 2D grid result or lacks ``value``.
    """
    results = []
    for item in inputs:
        result = surface.load_result(item.path)
        if result["kind"] != "grid":
            raise LandscapeError(f"{item.label}: {item.path} is a {result['kind']} result; Fig. 1 draws 2D "
                                 "surfaces around a model (landscape surface CKPT --dim 2)")
        if value not in result["values"]:
            raise LandscapeError(f"{item.label}: no value '{value}' in {item.path}; it holds "
                                 f"{', '.join(result['values'])}")
        results.append(result)
    return results


@static.styled
def draw(results: Sequence[dict[str, Any]], labels: Sequence[str], value: str) -> Figure:
    """One 3D panel per surface with shared z limits and colors, one colorbar; saved by suffix."""
    levels = static.contour_levels(np.concatenate([static.finite_or_nan(r["values"][value]).ravel() for r in results]))
    columns = min(len(results), MAX_COLUMNS)
    rows = -(-len(results) // columns)
    fig = Figure(figsize=(4.2 * columns + 1, 3.8 * rows), layout="constrained")
    for i, (result, label) in enumerate(zip(results, labels)):
        ax = fig.add_subplot(rows, columns, i + 1, projection="3d")
        x, y = (np.asarray(a, dtype=np.float64) for a in result["axes"])
        mappable = static.draw_surface3d(ax, x, y, static.finite_or_nan(result["values"][value]), levels,
                                         [*static.axis_labels(result), value])
        ax.set_title(label)
    log = static.use_log_scale(levels)
    static.add_colorbar(fig, mappable, fig.axes, static.value_label(value, log), log=False, pad=0.1)
    fig.suptitle(f"{static.value_label(value)} around each model")
    return fig


def outputs(plan: make.Plan) -> list[make.Output]:
    """The train loss around FedAvg's, FedSAM's and FedASAM's global models at alpha = 0."""
    specs = {label: runs.c22(plan.mode, algorithm) for label, algorithm in ALGORITHMS.items()}
    results = {label: plan.result(f"surface_{s.name}.npz") for label, s in specs.items()}
    steps = tuple(("surface", plan.final(s), "--dim", "2", "--sources", "train", "--out", results[label], "--overwrite",
                   *plan.surface()) for label, s in specs.items())
    files = (*plan.files(STEM), plan.out / f"{STEM}.html")
    args = (*(make.Labeled(label, r) for label, r in results.items()), "--out", *files[:2], "--html", files[2])
    return [make.Output("fig01", "fig01", tuple(specs.values()), steps, args, files)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    parser = common.make_parser(__doc__, prog)
    common.add_inputs(parser, "2D results of `landscape surface --dim 2 --out`, labelled by algorithm")
    common.add_image_outputs(parser, STEM)
    parser.add_argument("--html", metavar="HTML", help="interactive view with a slider (default: the first --out "
                        "as .html)")
    parser.add_argument("--value", default="train/loss", help="the value to draw (default: train/loss)")
    args = parser.parse_args(argv)
    code = common.made(args, __name__)
    if code is not None:
        return code
    inputs = common.parse_inputs(args.inputs)
    outs = common.image_outputs(args.out, STEM, inputs)
    html = common.check_suffix(args.html or outs[0].with_suffix(".html"), (".html",), "--html", inputs)
    results = load_surfaces(inputs, args.value)
    labels = [item.label for item in inputs]
    with writing(*outs, html):
        written = [*common.save_images(draw(results, labels, args.value), outs),
                   interactive.write_html(results, html, value=args.value, labels=labels)]
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    common.run_script(main)
