"""``landscape hessian CKPT``: top eigenvalues, trace and spectral density of the loss Hessian."""

from __future__ import annotations

import argparse
import sys

import torch

from landscape import distributed, hessian
from landscape.cli import SUMMARIES, common
from landscape.checkpoint import Checkpoint
from landscape.data import Dataset
from landscape.files import check_outputs
from landscape.plots import IMAGE_SUFFIXES
from landscape.operators import CURVATURES, resolve_device, resolve_dtype


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hessian",
        help=SUMMARIES["hessian"],
        description="Top-k eigenvalues (Lanczos or power iteration) with exact residuals of the loss Hessian, "
        "the generalized Gauss-Newton matrix or the empirical Fisher, optionally the trace (Hutchinson/Hutch++), "
        "the spectral density (SLQ) and lambda_max of every layer. Any loss (--loss), any block of parameters "
        "(--params). Example: landscape hessian run/global_final.pt --top-k 5 --trace --out h.json")
    p.add_argument("checkpoint", help="checkpoint file (or plain state_dict with --model)")
    p.add_argument("--top-k", type=common.integer(1), default=5, metavar="K", help="number of eigenvalues (default: 5)")
    p.add_argument("--method", choices=["lanczos", "power"], default="lanczos",
                   help="lanczos (fast, default) or power iteration with deflation (the papers' method)")
    p.add_argument("--tol", type=common.TOLERANCE, default=1e-3,
                   help="stop when every eigenvalue's certified relative error is at most tol: the bound "
                   "residual^2/gap where the gap to the neighbours is resolved, else the residual (default: 1e-3)")
    p.add_argument("--vector-tol", type=common.TOLERANCE, default=None,
                   help="also stop only when ||Hv - lambda v|| <= vector-tol |lambda| for every pair, for accurate "
                   "eigenvectors (default: none; with --save-eigenvectors: --tol)")
    p.add_argument("--max-iter", type=common.integer(1), default=None,
                   help="Lanczos basis size / power iterations per eigenvalue (default: auto / 100; [C22] used 20)")
    p.add_argument("--trace", action="store_true", help="also estimate the trace")
    p.add_argument("--trace-method", choices=["hutchinson", "hutch++"], default="hutchinson")
    p.add_argument("--trace-samples", type=common.integer(1), default=200, help="trace budget in products (default: 200)")
    p.add_argument("--density", action="store_true", help="also estimate the spectral density (SLQ)")
    p.add_argument("--density-steps", type=common.integer(1), default=80, help="Lanczos steps per SLQ probe (default: 80)")
    p.add_argument("--density-runs", type=common.integer(1), default=1, help="SLQ probes (default: 1)")
    p.add_argument("--curvature", choices=list(CURVATURES), default="hessian",
                   help="hessian, ggn (generalized Gauss-Newton J^T H_loss J) or fisher (empirical Fisher) "
                   "(default: hessian)")
    p.add_argument("--block-size", type=common.integer(1), default=None, metavar="B",
                   help="vectors per block product (one vmapped graph): Hutchinson probes, Hutch++ columns and SLQ "
                   "runs go B at a time (the same estimates), Lanczos takes min(B, top-k) start vectors; memory grows "
                   "with B (default: 1 on CPU; measured on the model on other devices, Lanczos then blocked only "
                   "where that pays)")
    p.add_argument("--per-layer", action="store_true",
                   help="also lambda_max of each layer's parameter block alone (a table and 'per_layer' in the JSON)")
    common.add_objective_args(p)
    common.add_data_args(p, default_samples=None)
    common.add_compute_args(p)
    common.add_model_args(p)
    p.add_argument("--out", metavar="JSON", help="write the result as JSON")
    p.add_argument("--save-eigenvectors", metavar="PT",
                   help="save the eigenvectors (named tensors) for `landscape surface --directions-file`")
    p.add_argument("--plot", metavar="PNG", help="draw the spectral density (implies --density)")
    p.set_defaults(run=run, data_parallel=True)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype)
    outputs = {"--out": (args.out, [".json"]), "--save-eigenvectors": (args.save_eigenvectors, [".pt"]),
               "--plot": (args.plot, IMAGE_SUFFIXES)}
    check_outputs(outputs, common.inputs(args))
    ckpt = common.load_checkpoint(args.checkpoint, args)
    loss = common.loss_of(args)
    dataset = common.load_data(args.data, ckpt, args, args.num_samples)
    model = ckpt.build_model()
    with common.rank0_writing(args.out, args.save_eigenvectors, args.plot):
        return _analyze(args, ckpt, dataset, model, device, dtype, loss)


def _analyze(args: argparse.Namespace, ckpt: Checkpoint, dataset: Dataset, model: torch.nn.Module,
             device: torch.device, dtype: torch.dtype, loss: object) -> int:
    report = hessian.analyze(
        model, dataset, top_k=args.top_k, method=args.method, tol=args.tol, max_iter=args.max_iter,
        trace=args.trace, trace_method=args.trace_method, trace_budget=args.trace_samples,
        density=args.density or args.plot is not None, density_steps=args.density_steps,
        density_runs=args.density_runs, batch_size=args.batch_size, dtype=dtype, device=device,
        seed=args.seed, progress=sys.stderr.isatty(), loss=loss, curvature=args.curvature,
        params=args.params, ignore_index=args.ignore_index, per_layer=args.per_layer, block_size=args.block_size,
        vector_tol=args.vector_tol if args.vector_tol is not None or not args.save_eigenvectors else args.tol,
    )
    if not distributed.is_main():  # rank 0 prints and writes for all
        return 0
    result = report.to_json(ckpt.describe(), dataset.spec)
    print(format_table(result, len(dataset)))
    if args.out:
        report.save(args.out, ckpt.describe(), dataset.spec)
        print(f"wrote {args.out}")
    if args.save_eigenvectors:
        hessian.save_eigenvectors(args.save_eigenvectors, report, ckpt.sha256)
        print(f"wrote {args.save_eigenvectors}")
    if args.plot:
        from landscape.plots.static import plot_density

        grid, dens = hessian.density_curve(report.density)
        plot_density(grid, dens, result["eigenvalues"], args.plot)
        print(f"wrote {args.plot}")
    return 0


def format_table(result: dict, num_samples: int) -> str:
    """The human-readable summary printed to the terminal."""
    s, objective = result["metadata"]["settings"], result["metadata"]["objective"]
    what = {"hessian": "Hessian", "ggn": "generalized Gauss-Newton matrix", "fisher": "empirical Fisher"}
    lines = [
        f"{what[s['curvature']]} of the mean {objective['loss']} over {num_samples} samples "
        f"({result['num_params']:,} parameters{', ' + s['params'] if s['params'] else ''}, "
        f"loss {result['loss']:.4f}, {s['dtype']}, {s['device']})",
        f"{'#':>4}  {'eigenvalue':>14}  {'+- bound':>10}  {'rel.':>8}  {'by':<8}  {'residual':>10}  converged",
    ]
    rows = zip(result["eigenvalues"], result["eigenvalue_bounds"], result["certified_by"], result["residuals"],
               result["converged"])
    for i, (lam, bound, how, res, ok) in enumerate(rows, 1):
        rel = bound / abs(lam) if lam else float("inf")
        lines.append(f"{i:>4}  {lam:>14.6g}  {bound:>10.3g}  {rel:>8.2g}  {how:<8}  {res:>10.3g}  {'yes' if ok else 'NO'}")
    lines.append(f"lambda_max = {result['lambda_max']:.6g}")
    if result["lambda_max_over_lambda_5"] is not None:
        lines.append(f"lambda_max / lambda_5 = {result['lambda_max_over_lambda_5']:.4g}")
    if "trace" in result:
        lines.append(f"trace = {result['trace']:.6g} +- {result['trace_stderr']:.3g} (standard error)")
    for layer in result.get("per_layer") or []:
        lines.append(f"  lambda_max of {layer['block']:<24} {layer['lambda_max']:>12.6g}  ({layer['num_params']:,} "
                     f"parameters{'' if layer['converged'] else ', NOT converged'})")
    lines.append(f"{result['num_matvecs']} matrix-vector products ({s['method']}, {s['curvature']}, "
                 f"mode {s['hvp_mode']}), {result['seconds']:.2f} s")
    return "\n".join(lines)
