"""``landscape plane A B C``: the loss on the plane through three models, other models projected onto it."""

from __future__ import annotations

import argparse

from landscape import directions, surface
from landscape.cli.common import load_same_architecture, marker_label
from landscape.cli.surface import (MARGIN, RESOLUTION, add_evaluation_args, axis_labels, check_outputs, evaluate,
                                   load_sources, writing)
from landscape.operators import resolve_device
from landscape.cli import SUMMARIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plane",
        help=SUMMARIES["plane"],
        description="The plane through models A, B, C [G18]: u = B - A, v = (C - A) orthogonalized against u, "
        "both normalized, so the axes are Euclidean distances in parameter space. Models given with --project "
        "(e.g. every client) are drawn at their projection, with their distance to the plane. BatchNorm "
        "statistics are model A's at every point with --bn eval; --bn recalibrate re-estimates them per point. "
        "Example: landscape plane global.pt client0.pt client1.pt --project client*.pt --html plane.html",
    )
    p.add_argument("models", nargs=3, metavar="CKPT", help="the three models A, B, C spanning the plane")
    p.add_argument("--project", nargs="+", default=[], metavar="CKPT", help="more models to project onto the plane")
    p.add_argument("--resolution", type=RESOLUTION, default=21, metavar="N", help="points per axis (default: 21, [C22])")
    p.add_argument("--margin", type=MARGIN, default=surface.MARGIN, metavar="M",
                   help=f"grid margin beyond the models, as a fraction of their larger extent (default: {surface.MARGIN})")
    add_evaluation_args(p)
    p.set_defaults(run=run, data_parallel=True)


def run(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    check_outputs(args)
    with writing(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    ckpts = load_same_architecture([*args.models, *args.project], args)
    params = [directions.trainable_parameters(c.build_model()) for c in ckpts]
    plane = directions.plane_through(*params[:3])
    markers = surface.plane_markers(plane, [(marker_label(c), c.role, p) for c, p in zip(ckpts, params)])
    axes = surface.covering_axes([m["coords"] for m in markers], args.resolution, args.margin, equal=True)
    for m in markers[3:]:
        print(f"{m['label']:<12} at ({m['coords'][0]:.4g}, {m['coords'][1]:.4g}), {m['distance']:.4g} off the plane")
    sources, full = load_sources(args, ckpts[0])
    return evaluate(args, ckpts[0], plane.directions, axes, "plane", plane.origin, markers,
                    axis_labels(["u", "v"], plane.directions), ckpts, sources, full,
                    {"rule": "cover", "margin": args.margin, "models": len(markers), "equal": True})
