"""``landscape flatness GLOBAL --clients CKPT...``: flatness distance between a global model and its clients."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from landscape import data, distributed, flatness
from landscape.checkpoint import Checkpoint
from landscape.cli import SUMMARIES, common
from landscape.cli.common import load_same_architecture, marker_label
from landscape.errors import LandscapeError
from landscape.files import check_outputs
from landscape.operators import CURVATURES, resolve_device, resolve_dtype
from landscape.plots import IMAGE_SUFFIXES

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flatness",
        help=SUMMARIES["flatness"],
        description="Flatness-distance metrics (reconstructions of FedNSAM [L26]) at a global model x with client "
        "losses f_i on each client's own train data and f = sum_i (n_i/N) f_i: the flatness distance (default: "
        "lambda_max of f at x over the mean of lambda_max of f_i at the client model x_i), the perturbation distance "
        "mean_i ||eps_i - eps|| at x and mean_i ||eps_i(x_i) - eps(x)|| with per-client cosines, the sharpness gap "
        "at x and the sharpness of f at x against f_i at x_i (first-order and ascent), lambda_max of "
        "f_i at x_i against f at x_i and at x, and ||x_i - x||. Each client's data is rebuilt from the partition "
        "its checkpoint records, or read from --client-data; --num-samples takes a seeded subset of each client's "
        "data (the clients are then weighted by the samples used). Example: landscape flatness run/global.pt "
        "--clients run/client_*.pt --rho 0.05 --out flat.json --png flat.png",
    )
    p.add_argument("checkpoint", help="the global model's checkpoint (or plain state_dict with --model)")
    p.add_argument("--clients", nargs="+", required=True, metavar="CKPT", help="the client models' checkpoints")
    p.add_argument("--client-data", nargs="+", metavar="SPEC",
                   help="each client's own data, one per --clients entry in the same order (.npz/.pt files with x "
                   "and y, or data specs); default: rebuilt from the partition recorded in each client checkpoint")
    p.add_argument("--rho", type=common.number(0, 1e3, low_open=True), default=flatness.RHO,
                   help=f"perturbation radius (default: {flatness.RHO}, FedNSAM's rho [L26])")
    p.add_argument("--ascent-steps", type=common.integer(0, 10_000), default=flatness.NUM_ASCENT_STEPS, metavar="N",
                   help=f"projected-gradient-ascent steps of the sharpness estimate (default: {flatness.NUM_ASCENT_STEPS})")
    p.add_argument("--tol", type=common.TOLERANCE, default=1e-3,
                   help="eigensolver tolerance for lambda_max, ||Hv - lambda v|| <= tol |lambda| (default: 1e-3)")
    common.add_objective_args(p)
    p.add_argument("--curvature", choices=list(CURVATURES), default="hessian",
                   help="the matrix of the lambda_max comparison: hessian, ggn or fisher (default: hessian)")
    common.add_data_args(p, default_samples=None)
    common.add_compute_args(p)
    common.add_model_args(p)
    p.add_argument("--out", metavar="JSON", help="write the metrics and their metadata as JSON")
    p.add_argument("--png", metavar="PNG", help="draw the per-client bar charts (.png or .pdf)")
    p.set_defaults(run=run, data_parallel=True)


def load_client_data(args: argparse.Namespace, clients: list[Checkpoint]) -> list[data.Dataset]:
    """Each client's own training data: from --client-data, else from its checkpoint's partition."""
    if args.client_data is not None:
        sets = [data.load(spec, args.data_dir).sample(args.num_samples, args.seed) for spec in args.client_data]
        for ds, ckpt in zip(sets, clients):
            common.check_labels(ds, ckpt, args.loss, args.ignore_index)
        return sets
    full_sets: dict[str, data.Dataset] = {}
    out = []
    for ckpt in clients:
        if ckpt.client_id is None or not ckpt.data.get("partition"):
            raise LandscapeError(
                f"{ckpt.path} records no client id and partition, so its data cannot be rebuilt; "
                "pass each client's data with --client-data FILE... (one per --clients entry)"
            )
        key = json.dumps([args.data, {k: v for k, v in ckpt.data.items() if k != "partition"}], sort_keys=True, default=str)
        if key not in full_sets:  # clients of one federation share one data set: load it once
            full_sets[key] = common.load_data(args.data, ckpt, args, None)
        out.append(common.recorded(ckpt, args).client(full=full_sets[key]).sample(args.num_samples, args.seed))
    return out


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype)
    if args.client_data is not None and len(args.client_data) != len(args.clients):
        raise LandscapeError(
            f"--client-data names {len(args.client_data)} data sets for {len(args.clients)} --clients; give one per client"
        )
    check_outputs({"--out": (args.out, [".json"]), "--png": (args.png, list(IMAGE_SUFFIXES))}, common.inputs(args))
    with common.rank0_writing(args.out, args.png):
        return _measure(args, device, dtype)


def _measure(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> int:
    ckpts = load_same_architecture([args.checkpoint, *args.clients], args)
    global_ckpt, clients = ckpts[0], ckpts[1:]
    datasets = load_client_data(args, clients)
    start = time.perf_counter()
    metrics = flatness.flatness_metrics(
        global_ckpt.build_model(), [c.build_model() for c in clients], [d.batches(args.batch_size) for d in datasets],
        rho=args.rho, num_ascent_steps=args.ascent_steps, tol=args.tol, seed=args.seed, dtype=dtype, device=device,
        loss=common.loss_of(args), ignore_index=args.ignore_index, params=args.params, curvature=args.curvature,
    )
    if not distributed.is_main():  # rank 0 prints and writes for all
        return 0
    labels = [marker_label(c) for c in clients]
    report = flatness.FlatnessResult(
        metrics=metrics,
        clients=[{"label": lab, "num_samples": len(d), "data": d.spec, "sha256": c.sha256}
                 for lab, d, c in zip(labels, datasets, clients)],
        checkpoints={"global": global_ckpt.describe(), "clients": [c.describe() for c in clients]},
        settings={"rho": args.rho, "num_ascent_steps": args.ascent_steps, "tol": args.tol, "seed": args.seed,
                  "dtype": args.dtype, "device": str(device), "batch_size": args.batch_size,
                  "num_samples": args.num_samples, "data": args.data, "client_data": args.client_data,
                  "loss": args.loss, "ignore_index": args.ignore_index, "params": args.params,
                  "curvature": args.curvature, "num_processes": getattr(distributed.current(), "size", 1)},
        seconds=time.perf_counter() - start,
    )
    result = report.to_json()
    print(format_table(result, str(global_ckpt.path)))
    if args.out:
        report.save(args.out)
        print(f"wrote {args.out}")
    if args.png:
        from landscape.plots.static import plot_flatness

        plot_flatness(result["metrics"], args.png, labels)
        print(f"wrote {args.png}")
    return 0


def format_table(result: dict[str, Any], global_path: str) -> str:
    """The human-readable summary printed to the terminal."""
    m = result["metrics"]
    pd, sg, lm, dist = m["perturbation_distance"], m["sharpness_gap"], m["lambda_max"], m["parameter_distances"]
    lp, ls = m["local_perturbation_distance"], m["sharpness_local_global"]
    s = result["metadata"]["settings"]
    steps = sg["num_ascent_steps"]
    lines = [
        f"Flatness distance at {global_path}: {len(result['clients'])} clients, rho {pd['rho']:g}, "
        f"{steps} ascent steps, {s['dtype']}, {s['device']} (reconstructions of [L26])",
        f"{'client':<10} {'samples':>7} {'weight':>6} {'cos(g_i,g)':>10} {'|eps_i-eps|':>11} {'S1 f_i':>9} "
        f"{'Sasc f_i':>9} {'lmax f_i@x_i':>12} {'lmax f@x_i':>10} {'|x_i-x|':>9} {'rel.':>6}",
    ]
    for i, c in enumerate(result["clients"]):
        lines.append(
            f"{c['label']:<10} {c['num_samples']:>7} {pd['weights'][i]:>6.3f} {pd['cosines'][i]:>10.4f} "
            f"{pd['client_distances'][i]:>11.4g} {sg['client_first_order'][i]:>9.4g} {sg['client_ascent'][i]:>9.4g} "
            f"{lm['local_at_client'][i]:>12.5g} {lm['global_at_client'][i]:>10.5g} {dist['distances'][i]:>9.4g} "
            f"{dist['relative'][i]:>6.2%}"
        )
    lines += [
        f"flatness distance lambda_max(f at x) / mean_i lambda_max(f_i at x_i) = {m['flatness_distance']['value']:.5g}"
        "  (1: local flatness carried over to the global model; the default, see docs/flatness.md)",
        f"perturbation distance D = mean_i ||eps_i - eps|| = {pd['distance']:.5g}  "
        f"(D/rho = {pd['distance'] / pd['rho']:.4f}, 0: aligned, 2: opposite)",
        f"sharpness at x: global f {sg['global_first_order']:.5g} (first-order), "
        f"{sg['global_ascent']:.5g} ({steps}-step ascent); "
        f"gap mean_i S(f_i) - S(f) = {sg['gap_first_order']:.5g} (first-order), {sg['gap_ascent']:.5g} (ascent)",
        f"lambda_max of f at the global model x = {lm['global_at_global']:.5g}"
        + ("" if lm["converged"] else f"  (WARNING: not every eigenvalue met tol {lm['tol']:g})"),
        "between the client models x_i and the global model x:",
        f"  local perturbation distance D_loc = mean_i ||eps_i(x_i) - eps(x)|| = {lp['distance']:.5g}  "
        f"(D_loc/rho = {lp['distance'] / lp['rho']:.4f}); mean_i cos(grad f_i(x_i), grad f(x)) = "
        f"{lp['mean_cosine']:.4f}",
        f"  sharpness S_f(x) - mean_i S(f_i at x_i) = {ls['difference_first_order']:.5g} (first-order), "
        f"{ls['difference_ascent']:.5g} (ascent); S_f(x) / mean_i S(f_i at x_i) = {ls['ratio_first_order']:.4g} "
        f"(first-order), {ls['ratio_ascent']:.4g} (ascent)",
        f"  lambda_max f at x - mean_i lambda_max f_i at x_i = {lm['global_minus_local']:.5g}",
        f"losses at x: global f {sg['global_loss']:.5g}, clients {', '.join(f'{v:.4g}' for v in sg['client_losses'])}",
        f"{result['metadata']['seconds']:.2f} s",
    ]
    return "\n".join(lines)
