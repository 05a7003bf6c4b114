"""Benchmark (issue #15, point 3): block products, and the solvers that use them, against single products.

Model and data as ``bench/hessian.py``: the FedSAM CIFAR CNN (``landscape.models.build("cnn",
num_classes=10)``, 815k parameters), seed 0, a few dozen SGD steps on ``synthetic:n=2048``, then
its seeded ``sample(--samples)`` (512) in batches of ``--batch-size`` (default: one batch), float32.

1. Products: the time per vector of ``HessianOperator.matmat`` on blocks of 1, 2, 4, 8, 16 random
   vectors (median of ``--reps`` calls after a warm-up call), in the "cached" and "forward" modes,
   with the speed-up per vector over block 1 (and the peak memory on CUDA). The block of 1 is the
   plain product (``op @ v``); larger blocks are one vmapped graph.
2. Solvers: wall time (the operator's set-up included) and products of top-5 and top-20 Lanczos
   (tol 1e-3) with ``block_size`` b (b start vectors, one block product per step of b vectors)
   against b = 1, the largest relative difference of the eigenvalues from the b = 1 run, and
   Hutch++ (``--hutchpp-budget`` products) with blocks of b columns against columns one at a time
   (the same estimate, so its difference is rounding).

Measured (2-core CPU shared with other jobs, load 6.6 rising to 15.7; 1 thread; torch 2.13.0; one run, so
ratios within about 20% are noise):

    mode   block  ms/vector  speed-up per vector
    cached     1     3863     1.00x
    cached     2     3959     0.98x
    cached     4     3326     1.16x
    cached     8     4572     0.84x
    cached    16     5112     0.76x
    forward    1     3598     1.00x
    forward    2     4989     0.72x
    forward    4     3725     0.97x
    forward    8     3517     1.02x
    forward   16     4214     0.85x

Solvers (same machine, load 4.1 falling to 3.0; ``--modes "" --solver-blocks 1,4``):

    solver          block  seconds  products  rel. diff vs b=1
    lanczos top-5       1     58.7        18  0
    lanczos top-5       4    137.0        33  1.0e-07
    lanczos top-20      1    348.2       137  0
    lanczos top-20      4    410.9       161  2.0e-04  (7 of 20 missed tol 1e-3 at the default max_iter 160)
    hutch++ 48          1     95.7        49  0        (48 products + the determinism check)
    hutch++ 48          4    110.1        49  9.1e-09  (the same estimate, float32 rounding)

A block product is no cheaper per vector on a CPU (the single product already keeps the cores busy;
blocks of 8-16 lose to memory traffic), hence ``default_block_size`` 1 there; on other devices the
operator measures it (``CurvatureOperator.calibrate_block_size``). Block Lanczos needs more products
(4 start vectors: 1.8x for the top 5, more than 1.2x for the top 20), so with the default block size
it is used only where a block product measured 2x cheaper per vector (``LANCZOS_BLOCK_SPEEDUP``).

Run:  python bench/block.py                          (CPU; the table above)
      python bench/block.py --device cuda --reps 10  (on a GPU)
      python bench/block.py --solver-blocks "" --json out.json   (products only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from hessian import git_state, trained_cnn  # noqa: E402  (bench/hessian.py)
from landscape.eigen import lanczos  # noqa: E402
from landscape.objective import Objective  # noqa: E402
from landscape.operators import HessianOperator, resolve_device  # noqa: E402
from landscape.trace import hutchpp  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def product_times(objective: Objective, mode: str, blocks: list[int], reps: int) -> list[dict]:
    """Seconds per vector of a block product of each size (median of ``reps`` after a warm-up)."""
    op = HessianOperator(objective, mode=mode, check_determinism=False)
    g = torch.Generator().manual_seed(0)
    rows = []
    for b in blocks:
        op.block_size = b
        V = torch.randn(b, op.shape[0], generator=g).to(objective.device)
        op.matmat(V)  # warm-up (and, for the cached mode, the graph)
        if objective.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(objective.device)
        times = []
        for _ in range(reps):
            sync(objective.device)
            t0 = time.perf_counter()
            op.matmat(V)
            sync(objective.device)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(objective.device) / 2**30 if objective.device.type == "cuda" else None
        r = {"mode": mode, "block": b, "seconds_per_vector": statistics.median(times) / b, "peak_gib": peak,
             "vmapped": op._vmap_blocks is not False}
        r["speedup_per_vector"] = (rows[0] if rows else r)["seconds_per_vector"] / r["seconds_per_vector"]
        rows.append(r)
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{r['mode']:>8} {r['block']:>5} {1e3 * r['seconds_per_vector']:>10.1f} "
              f"{r['speedup_per_vector']:>8.2f}x {peak:>9}" + ("" if r["vmapped"] else "  (row by row)"), flush=True)
    return rows


def solver_times(objective_of, ks: list[int], blocks: list[int], budget: int) -> list[dict]:
    """Wall time and products of top-k Lanczos and of Hutch++ per block size b (b = 1 first: the reference)."""
    rows = []
    for k in ks:
        ref = None
        for b in blocks:
            op = HessianOperator(objective_of(), block_size=b)
            t0 = time.perf_counter()
            res = lanczos(op, k, tol=1e-3, block_size=b, seed=0)
            sync(op.device)
            seconds = time.perf_counter() - t0
            values = res.eigenvalues.double().cpu()
            ref = values if ref is None else ref
            rows.append({"solver": f"lanczos top-{k}", "block": b, "seconds": seconds, "products": op.num_matvecs,
                         "converged": all(res.converged),
                         "max_rel_diff_vs_b1": float(((values - ref).abs() / ref.abs()).max())})
            show(rows[-1])
    ref = None
    for b in blocks:
        op = HessianOperator(objective_of(), block_size=b)
        t0 = time.perf_counter()
        res = hutchpp(op, budget, seed=1, block_size=b)
        sync(op.device)
        seconds = time.perf_counter() - t0
        ref = res.trace if ref is None else ref
        rows.append({"solver": f"hutch++ {budget}", "block": b, "seconds": seconds, "products": op.num_matvecs,
                     "converged": True, "max_rel_diff_vs_b1": abs(res.trace - ref) / abs(ref)})
        show(rows[-1])
    return rows


def show(r: dict) -> None:
    print(f"{r['solver']:>16} {r['block']:>5} {r['seconds']:>8.1f} {r['products']:>8} "
          f"{r['max_rel_diff_vs_b1']:>17.2e}" + ("" if r["converged"] else "  NOT converged"), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=None, help="batch size of the data (default: one batch)")
    ap.add_argument("--blocks", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 2, 4, 8, 16])
    ap.add_argument("--modes", type=lambda s: [x for x in s.split(",") if x], default=["cached", "forward"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",") if x], default=[5, 20])
    ap.add_argument("--solver-blocks", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 4, 8],
                    help="block sizes of the solver runs, 1 first (empty: no solver runs)")
    ap.add_argument("--hutchpp-budget", type=int, default=48)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, train, _ = trained_cnn(args.train_steps, 0.01)
    batches = train.sample(args.samples).batches(args.batch_size)

    def objective_of() -> Objective:
        return Objective(model, batches, torch.float32, device)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# block products, CIFAR CNN, {args.samples} samples, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {load}, code {git_state()}", flush=True)
    print(f"{'mode':>8} {'block':>5} {'ms/vector':>10} {'speed-up':>9} {'peak GiB':>9}", flush=True)
    products = [r for mode in args.modes for r in product_times(objective_of(), mode, args.blocks, args.reps)]
    if args.solver_blocks:
        print(f"{'solver':>16} {'block':>5} {'seconds':>8} {'products':>8} {'rel. diff vs b=1':>17}", flush=True)
    solvers = solver_times(objective_of, args.ks, args.solver_blocks, args.hutchpp_budget) if args.solver_blocks else []
    print(f"# load after: {os.getloadavg() if hasattr(os, 'getloadavg') else None}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": str(device), "torch": torch.__version__, "platform": platform.platform(),
            "threads": torch.get_num_threads(), "code": git_state(), "load_before": load,
            "products": products, "solvers": solvers}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
