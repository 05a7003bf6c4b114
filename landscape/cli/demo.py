"""``landscape demo``: the whole toolkit on the offline digits data, on a CPU, in a few minutes.

The demo is a scripted tour of the other commands: it prints each ``landscape ...``
command line before running it in this process, so what it does can be repeated (and
changed) by hand. It trains FedAvg, FedSAM and FedASAM on a 20-client digits federation
(preset ``digits-demo``), then for each final global model computes the top Hessian
eigenvalues and trace (as in [C22] Table 1), a 2D loss surface (as in [C22] Fig. 1),
the plane through the global model and two clients with every sampled client projected
on it, and the flatness distance between the global model and its clients ([L26]); last,
the figure scripts draw [C22] Fig. 1 (surfaces side by side, and on a slider in HTML) and
Table 1 from those results.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from landscape.cli.common import integer
from landscape.files import write_json
from landscape.run_folder import RunFolder

ALGORITHMS = ("fedavg", "fedsam", "fedasam")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and analyse FedAvg/FedSAM/FedASAM on the offline digits data",
                       description="Run the whole toolkit on the bundled digits data (CPU, a few minutes): "
                       "training, Hessian spectra, loss surfaces, planes and flatness, with an HTML view.")
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    p.add_argument("--rounds", type=integer(1), default=100, help="federated rounds per algorithm (default: 100)")
    p.add_argument("--resolution", type=integer(2, 1001), default=21,
                   help="surface grid points per axis (default: 21)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(run=run)


def _landscape(argv: list[str]) -> None:
    """Print and run one landscape command; stop the demo if it fails."""
    from landscape.cli import main
    from landscape.errors import LandscapeError

    print(f"\n$ landscape {shlex.join(argv)}", flush=True)
    if main(argv) != 0:
        raise LandscapeError(f"the demo step `landscape {shlex.join(argv)}` failed (see above)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = ["--device", args.device] if args.device else []
    summary = {}
    for algo in ALGORITHMS:
        run_dir = out / "runs" / algo
        run = RunFolder(run_dir)
        resume = ["--resume"] if run.is_run() else []  # a rerun continues, not repeats
        _landscape(["train", "--preset", "digits-demo", "--algorithm", algo, "--rounds", str(args.rounds),
                    "--save-clients-every", str(args.rounds), "--out", str(run_dir), *resume, *device])
        final = run.global_checkpoint(args.rounds)
        clients = [str(p) for p in run.client_checkpoints(args.rounds)]
        _landscape(["hessian", str(final), "--top-k", "5", "--trace", "--trace-samples", "100",
                    "--out", str(out / f"hessian_{algo}.json"), "--plot", str(out / f"density_{algo}.png"), *device])
        _landscape(["surface", str(final), "--dim", "2", "--resolution", str(args.resolution), "--range", "1",
                    "--out", str(out / f"surface_{algo}.npz"), "--png", str(out / f"surface_{algo}.png"),
                    "--overwrite", *device])
        _landscape(["flatness", str(final), "--clients", *clients, "--out", str(out / f"flatness_{algo}.json"),
                    "--png", str(out / f"flatness_{algo}.png"), *device])
        if algo == ALGORITHMS[0]:
            _landscape(["plane", str(final), clients[0], clients[1], "--project", *clients[2:],
                        "--resolution", str(args.resolution), "--out", str(out / "plane.npz"),
                        "--html", str(out / "plane.html"), "--png", str(out / "plane.png"), "--overwrite", *device])
        hess = json.loads((out / f"hessian_{algo}.json").read_text())
        flat = json.loads((out / f"flatness_{algo}.json").read_text())
        metrics = run.metrics()
        accuracy = next((m["test_acc"] for m in reversed(metrics) if "test_acc" in m), None)
        summary[algo] = {"test_accuracy": accuracy, "lambda_max": hess["lambda_max"],
                         "lambda_max/lambda_5": hess["lambda_max_over_lambda_5"], "trace": hess["trace"],
                         "flatness_distance": flat["metrics"]["perturbation_distance"]["distance"]}
    _landscape(["figures", "fig01", *[f"{a}={out / f'surface_{a}.npz'}" for a in ALGORITHMS],
                "--out", str(out / "fig01_surfaces.png"), "--html", str(out / "surfaces.html")])
    _landscape(["figures", "table1", *[f"{a}={out / f'hessian_{a}.json'}" for a in ALGORITHMS],
                "--out", str(out / "table1_hessian.md")])
    print("\nDigits federation, global model after", args.rounds, "rounds ([C22] Table 1 in miniature):")
    print(f"{'algorithm':<10} {'test acc':>9} {'lambda_max':>11} {'l_max/l_5':>10} {'trace':>9} {'flat. dist':>11}")
    for algo, row in summary.items():
        acc = f"{row['test_accuracy']:.3f}" if row["test_accuracy"] is not None else "-"
        print(f"{algo:<10} {acc:>9} {row['lambda_max']:>11.4g} {row['lambda_max/lambda_5']:>10.3g} "
              f"{row['trace']:>9.4g} {row['flatness_distance']:>11.3g}")
    write_json(out / "summary.json", summary)
    print(f"\nopen {out / 'surfaces.html'} and {out / 'plane.html'} in a browser; all results are in {out}/")
    return 0
