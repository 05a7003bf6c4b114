"""``landscape surface CKPT``: the loss on a line, grid or volume around a checkpoint (or from A to B)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

from landscape import data, directions, distributed, files, surface
from landscape.checkpoint import Checkpoint
from landscape.cli import SUMMARIES, common
from landscape.errors import LandscapeError
from landscape.objective import Objective
from landscape.operators import resolve_device, resolve_dtype
from landscape.plots import IMAGE_SUFFIXES

SOURCES = ("train", "test", "clients")
DEFAULT_SOURCES = ("train", "test")
DEFAULT_INTERVAL = (-0.5, 1.5)
#: Coordinates beyond this many direction units leave every sensible model (and float32) behind.
MAX_COORDINATE = 1e4
#: Points per axis: at least 2 (a line needs two ends), at most 10,000.
RESOLUTION = common.integer(2, 10_000)
#: Grid margins beyond the models, as a fraction of the extent they cover.
MARGIN = common.number(0, 100)
KIND_OF_DIM = {1: "line", 2: "grid", 3: "volume"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "surface",
        help=SUMMARIES["surface"],
        description="Evaluate loss and accuracy of the train/test/client data on a grid w + a*d1 + b*d2 "
        "(filter-normalized random [Li18], Hessian eigenvector or trajectory-PCA directions), or on the line "
        "from CKPT to --to B. Resumable: rerunning with the same --out continues an interrupted run. "
        "Example: landscape surface run/global.pt --dim 2 --resolution 21 --out s.npz --html s.html",
    )
    p.add_argument("checkpoint", help="checkpoint file (or plain state_dict with --model): the centre")
    p.add_argument("--dim", type=int, choices=[1, 2, 3], default=2, help="1 line, 2 grid, 3 volume (default: 2)")
    p.add_argument("--resolution", type=RESOLUTION, default=21, metavar="N", help="points per axis (default: 21, [C22])")
    p.add_argument("--range", type=common.number(0, MAX_COORDINATE, low_open=True), default=None, metavar="R",
                   help="each axis is linspace(-R, R, N) in direction units (default: a grid covering the "
                   "--trajectory with --margin on each side, else R = 1.0)")
    p.add_argument("--margin", type=MARGIN, default=None, metavar="M",
                   help="the default grid's margin beyond the --trajectory on each side, as a fraction of its "
                   f"extent along each axis (default: {surface.MARGIN})")
    p.add_argument("--directions", choices=["random", "eigen", "pca"], default="random",
                   help="random: Gaussian, filter-normalized [Li18]; eigen: top Hessian eigenvectors (unit); "
                   "pca: principal directions of --trajectory (default: random)")
    p.add_argument("--directions-file", metavar="PT", help="load directions saved by --save-directions or "
                   "`landscape hessian --save-eigenvectors` (overrides --directions)")
    p.add_argument("--save-directions", metavar="PT", help="save the directions used")
    p.add_argument("--to", metavar="CKPT_B", help="evaluate the line from CKPT (0) to CKPT_B (1) instead")
    p.add_argument("--interval", type=common.number(-MAX_COORDINATE, MAX_COORDINATE), nargs=2, default=None,
                   metavar=("START", "STOP"),
                   help="coordinates of the --to line, extrapolating beyond both models (default: -0.5 1.5)")
    p.add_argument("--trajectory", nargs="+", metavar="CKPT", help="checkpoints along training for --directions pca")
    p.add_argument("--normalization", choices=list(directions.NORMALIZATIONS), default="filter",
                   help="random directions: filter (per-filter norms of the weights, [Li18]) or none")
    p.add_argument("--perturb-bias-norm", action="store_true",
                   help="move biases and normalization parameters too (default: zeroed, [Li18])")
    p.add_argument("--orthogonalize", action="store_true",
                   help="orthogonalize random directions (the cosines are reported either way)")
    p.add_argument("--eigen-tol", type=common.TOLERANCE, default=1e-3,
                   help="eigen directions: relative residual ||Hv - lambda v|| / |lambda| of each eigenvector, "
                   "and eigenvalue error (default: 1e-3)")
    add_evaluation_args(p)
    p.set_defaults(run=run, data_parallel=True)


def add_evaluation_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``surface`` and ``plane``: sources, BN, batching, outputs, data/compute/model."""
    p.add_argument("--sources", type=parse_sources, default=None, metavar="LIST",
                   help="comma-separated data sources evaluated at every point: train, test (the test split of "
                   "the data set), clients (each client's own data; needs a partition in the checkpoint) "
                   "(default: train,test)")
    p.add_argument("--bn", choices=list(surface.BN_MODES), default="eval",
                   help="BatchNorm statistics: eval (stored) or recalibrate (re-estimated at every point on a "
                   "fixed subset of the training data) (default: eval)")
    p.add_argument("--bn-samples", type=common.integer(1), default=512, metavar="N",
                   help="training samples for --bn recalibrate (default: 512)")
    p.add_argument("--points-per-batch", type=common.integer(1), default=None, metavar="K",
                   help="grid points per (vmapped) forward pass (default: by memory)")
    p.add_argument("--precision", choices=list(surface.PRECISIONS), default="float32",
                   help="arithmetic of the float32 evaluation: float32 (no TF32 on a GPU either), tf32 (matrix "
                   "products and convolutions in TF32; a GPU only) or bf16 (bfloat16 autocast, also on a CPU); a "
                   "reduced one also evaluates a few points in float32 and reports the difference (default: float32)")
    p.add_argument("--out", metavar="NPZ", help="result file, written as the run goes; an existing one of the "
                   "same run is continued")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out exists (the old file is "
                   "replaced only once the new result is complete)")
    p.add_argument("--html", metavar="HTML", help="write an interactive (offline) HTML view")
    p.add_argument("--png", metavar="IMAGE", help="write a static plot, its format by suffix: .png, or vector "
                   ".pdf / .svg for a paper")
    common.add_objective_args(p, params=False)
    common.add_data_args(p, default_samples=None)
    common.add_compute_args(p)
    common.add_model_args(p)


def parse_sources(text: str) -> tuple[str, ...]:
    """argparse type of ``--sources``: a comma-separated subset of :data:`SOURCES`."""
    wanted = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not wanted or any(s not in SOURCES for s in wanted):
        raise argparse.ArgumentTypeError(f"takes a comma-separated subset of {', '.join(SOURCES)}, got {text!r}")
    return wanted


def load_sources(args: argparse.Namespace, ckpt: Checkpoint) -> tuple[dict[str, data.Dataset], data.Dataset]:
    """The data sources named by ``--sources`` and the full training set (for calibration)."""
    wanted = args.sources or DEFAULT_SOURCES
    full = common.load_data(args.data, ckpt, args, None)
    recorded = common.recorded(ckpt, args)
    sources: dict[str, data.Dataset] = {}
    if "train" in wanted:
        sources["train"] = full.sample(args.num_samples, args.seed)
    if "test" in wanted:
        test = recorded.test(of=full)
        if test is None:
            if args.sources is not None:
                raise LandscapeError(f"the data {full.spec} has no test split; drop 'test' from --sources")
            print("note: the data set has no test split; evaluating the training data only", file=sys.stderr)
        else:
            sources["test"] = test.sample(args.num_samples, args.seed)
    if "clients" in wanted:
        for k in range(recorded.num_clients(full)):
            sources[f"client {k}"] = recorded.client(k, full).sample(args.num_samples, args.seed)
    return sources, full


def evaluate(
    args: argparse.Namespace,
    ckpt: Checkpoint,
    dirs: directions.Directions,
    axes: list[np.ndarray],
    kind: str,
    origin: dict | None,
    markers: list[dict[str, Any]],
    axis_labels: list[str],
    checkpoints: list[Checkpoint],
    sources: dict[str, data.Dataset],
    full: data.Dataset,
    grid: dict[str, Any],
) -> int:
    """Run the evaluation with the shared flags, print a summary, draw what was asked.

    ``grid`` says how the axes were chosen (recorded as ``metadata["grid"]``).
    """
    start = time.perf_counter()
    result = surface.evaluate(
        ckpt.build_model(), dirs, axes, sources, kind=kind, origin=origin, axis_labels=axis_labels, markers=markers,
        bn=args.bn, calibration=full.sample(args.bn_samples, args.seed) if args.bn == "recalibrate" else None,
        batch_size=args.batch_size, points_per_batch=args.points_per_batch, dtype=resolve_dtype(args.dtype),
        precision=args.precision,
        device=resolve_device(args.device), out=args.out, overwrite=args.overwrite,
        metadata={"checkpoints": [c.describe() for c in checkpoints], "grid": grid}, progress=sys.stderr.isatty(),
        loss=common.loss_of(args), ignore_index=args.ignore_index,
    )
    if not distributed.is_main():  # rank 0 prints and writes for all
        return 0
    print(format_summary(result, time.perf_counter() - start))
    for key, count in result["metadata"]["nonfinite"].items():
        if count:
            print(f"warning: {count} points have a non-finite {key} (recorded as NaN/inf, drawn as gaps)",
                  file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}")
    draw(result, args.html, args.png)
    return 0


def axis_labels(names: list[str], dirs: directions.Directions) -> list[str]:
    """Axis labels that say their unit: ``"alpha (filter-normalized units)"``, ``"u (Euclidean distance)"``."""
    return [f"{name} ({dirs.unit})" for name in names]


def draw(result: dict[str, Any], html: str | None, png: str | None) -> None:
    """Write the HTML and static views (the drawing lives in :mod:`landscape.plots`)."""
    if html:
        from landscape.plots.interactive import write_html

        write_html(result, html)
        print(f"wrote {html}")
    if png:
        from landscape.plots.static import plot_surface

        plot_surface(result, png)
        print(f"wrote {png}")


def format_summary(result: dict[str, Any], seconds: float) -> str:
    """Per source: the value at the grid point nearest the origin (the checkpoint; model A of a line or
    plane) and the range over the grid."""
    meta = result["metadata"]
    shape = "x".join(str(n) for n in meta["shape"])
    how = meta.get("evaluation") or {}
    way = f", {how['path']} path, {how['layout'].replace('_', '-')}" if {"path", "layout"} <= set(how) else ""
    pieces = f" on {meta['samples_per_forward']} samples" if meta.get("samples_per_forward") else ""
    lines = [
        f"{result['kind']} {shape} ({meta['directions']['kind']} directions, {meta['num_done']} of "
        f"{int(np.prod(meta['shape']))} points, {meta['points_per_batch']} per forward{pieces}{way}, {seconds:.1f} s)",
        f"{'source':<12} {'loss at 0':>12} {'min loss':>10} {'max loss':>10} {'acc at 0':>10}",
    ]
    origin = tuple(int(np.argmin(np.abs(a))) for a in result["axes"])
    for source in meta["sources"]:
        loss, acc = result["values"][f"{source}/loss"], result["values"].get(f"{source}/accuracy")
        finite = loss[np.isfinite(loss)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"), float("nan"))
        shown = f"{acc[origin]:>10.3f}" if acc is not None else f"{'-':>10}"
        lines.append(f"{source:<12} {loss[origin]:>12.4f} {lo:>10.4f} {hi:>10.4f} {shown}")
    error = meta.get("precision_error")
    if error:
        lines.append(f"{meta['precision']} vs float32 at {len(error['points'])} points: the loss differs by at most "
                     f"{error['max_abs_loss']:.3g} ({error['max_rel_loss']:.3g} relative)")
    return "\n".join(lines)


def check_outputs(args: argparse.Namespace, extra: dict[str, tuple[str | None, list[str]]] | None = None) -> None:
    """The outputs of ``surface`` / ``plane``, checked against each other and the inputs before any work."""
    files.check_outputs({"--out": (args.out, [".npz"]), "--html": (args.html, [".html"]),
                         "--png": (args.png, list(IMAGE_SUFFIXES)), **(extra or {})}, common.inputs(args))


@contextmanager
def writing(args: argparse.Namespace, *more: str | None) -> Iterator[None]:
    """Lock ``--out`` (kept when interrupted: it is resumable) and write the other outputs as one
    (rank 0 alone under torchrun)."""
    with ExitStack() as stack:
        if not distributed.is_main():
            yield
            return
        if args.out:
            stack.enter_context(files.exclusive(args.out))
        stack.enter_context(files.writing(args.html, args.png, *more))
        yield


def run(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    if args.to and (args.directions_file or args.trajectory):
        raise LandscapeError("--to (interpolation) cannot be combined with --directions-file or --trajectory")
    if args.interval is not None and not args.to:
        raise LandscapeError("--interval sets the coordinates of the --to line", fix="add --to CKPT_B or drop --interval")
    if args.margin is not None and (args.range is not None or args.to or args.directions_file
                                    or args.directions != "pca"):
        raise LandscapeError("--margin sets the grid around a --trajectory of --directions pca; with --range, "
                             "--to or other directions there is none", where="landscape surface",
                             fix="drop --margin (--range R sets the grid)")
    args.interval = args.interval or DEFAULT_INTERVAL
    if not args.interval[0] < args.interval[1]:
        raise LandscapeError(f"--interval must have START < STOP, got {args.interval[0]:g} {args.interval[1]:g}")
    check_outputs(args, {"--save-directions": (args.save_directions, [".pt"])})
    with writing(args, args.save_directions):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    ckpt = common.load_checkpoint(args.checkpoint, args)
    sources, full = load_sources(args, ckpt)
    model = ckpt.build_model()
    params = directions.trainable_parameters(model)
    checkpoints, markers = [ckpt], [{"label": common.marker_label(ckpt), "role": ckpt.role, "coords": None, "distance": 0.0}]
    if args.to:
        ckpt_a, ckpt_b = common.load_same_architecture([args.checkpoint, args.to], args)
        dirs = directions.interpolation(params, directions.trainable_parameters(ckpt_b.build_model()))
        axes = [surface.interval_axis(args.interval[0], args.interval[1], args.resolution)]
        markers = [
            {"label": f"A: {common.marker_label(ckpt_a)}", "role": ckpt_a.role, "coords": [0.0], "distance": 0.0},
            {"label": f"B: {common.marker_label(ckpt_b)}", "role": ckpt_b.role, "coords": [1.0], "distance": 0.0},
        ]
        return evaluate(args, ckpt, dirs, axes, "line", None, markers, axis_labels(["interpolation"], dirs),
                        [ckpt_a, ckpt_b], sources, full, {"rule": "interval"})
    names = ["alpha", "beta", "gamma"][: args.dim]
    if args.directions_file:
        dirs = directions.load_directions(args.directions_file, params)
        if len(dirs) < args.dim:
            raise LandscapeError(f"{args.directions_file} holds {len(dirs)} directions; --dim {args.dim} needs {args.dim}")
        dirs.vectors = dirs.vectors[: args.dim]
    elif args.directions == "random":
        dirs = directions.random_directions(
            model, args.dim, seed=args.seed, normalization=args.normalization,
            ignore=() if args.perturb_bias_norm else ("bias", "norm"), orthogonal=args.orthogonalize,
        )
        if "cosines" in dirs.info:
            worst = max(abs(c) for i, row in enumerate(dirs.info["cosines"]) for c in row[:i])
            print(f"largest |cosine| between the random directions: {worst:.2e}"
                  f"{' (orthogonalized)' if args.orthogonalize else ''}")
    elif args.directions == "eigen":
        train = sources.get("train", full)
        objective = Objective(model, train.batches(args.batch_size), resolve_dtype(args.dtype),
                              resolve_device(args.device), loss=common.loss_of(args), ignore_index=args.ignore_index)
        dirs = directions.eigen_directions(objective, args.dim, seed=args.seed, tol=args.eigen_tol)
        print("Hessian eigenvalues of the directions: " + ", ".join(f"{e:.4g}" for e in dirs.info["eigenvalues"]))
    elif args.directions == "pca":
        if not args.trajectory:
            raise LandscapeError("--directions pca needs --trajectory CKPT... (checkpoints along training)")
        traj = common.load_same_architecture([args.checkpoint, *args.trajectory], args)[1:]
        if all(c.round is not None for c in traj):  # the path is drawn in this order
            traj.sort(key=lambda c: c.round)
        dirs, projected = directions.pca_directions(
            params, [directions.trainable_parameters(c.build_model()) for c in traj], num=args.dim
        )
        checkpoints += traj
        markers += [
            {"label": f"round {c.round}" if c.round is not None else common.marker_label(c), "role": "trajectory",
             "coords": coords, "distance": distance}
            for c, (coords, distance) in zip(traj, projected)
        ]
        print("explained variance: " + ", ".join(f"{e:.3f}" for e in dirs.info["explained_variance"]))
        names = [f"PC {i + 1}, {100 * e:.1f}% of variance" for i, e in enumerate(dirs.info["explained_variance"])]
    else:
        raise LandscapeError(f"unknown --directions {args.directions!r}")
    markers[0]["coords"] = [0.0] * args.dim
    axes, grid = surface.surface_axes([m["coords"] for m in markers], args.resolution, args.range, args.margin)
    if grid["rule"] == "cover":
        print("grid: " + " x ".join(f"{a[0]:.4g}..{a[-1]:.4g}" for a in axes)
              + f" (covers the {len(markers)} models with margin {grid['margin']:g}; --range R sets +-R)")
    if args.save_directions and distributed.is_main():
        directions.save_directions(args.save_directions, dirs, {"name": ckpt.model_name, "kwargs": ckpt.model_kwargs})
        print(f"wrote {args.save_directions}")
    return evaluate(args, ckpt, dirs, axes, KIND_OF_DIM[args.dim], None, markers, axis_labels(names, dirs),
                    checkpoints, sources, full, grid)
