"""Benchmark (issue 14): the analyses on 1 and N processes under torchrun, speed-up and parallel efficiency.

Workloads (the FedSAM CIFAR CNN ``cnn``, C=10, seed 0, on synthetic CIFAR-shaped data):

- ``hessian``: ``landscape hessian --top-k 5`` (Lanczos, tol 1e-3) on ``--samples`` (2048) samples, one
  batch; the time is the analysis' own (``seconds`` in its JSON: loading and process start excluded);
- ``surface``: ``landscape surface --resolution 21`` (441 points, filter-normalized random directions)
  on ``--surface-samples`` (512) training samples; the time is the one its summary prints.

Each runs through the command line as a user runs it: ``python -m landscape ...`` with all threads and
with one thread (the per-device rate: what each torchrun rank gets on a CPU), then ``torchrun
--nproc-per-node N -m landscape ...`` (127.0.0.1, gloo, one thread per rank) for every N of
``--nprocs``. Speed-up is against one process with one thread (same resources per worker; parallel
efficiency = speed-up / N) and, in its own column, against one process with all threads. The
machine may be shared: each row reports the 1-minute load average before it and the CPU the *other*
processes of the machine used during it (busy CPU from /proc/stat minus this benchmark's own), in cores.

``--rates`` also measures, on one thread, the per-device rates of ResNet-18-GN (C=100) that
``docs/distributed-analysis.md`` models a 51x51 surface and a top-50 spectrum on full CIFAR-100 with:
forward samples/s and Hessian-vector product samples/s (cached mode, as a rank of 6,250 samples uses).
On a GPU pass ``--device cuda`` (N = 1 and the GPU count by default).

Measured on the shared 2-core CPU of this project: the table and the model built on it are in
``docs/distributed-analysis.md`` (Hessian 2.20x on 2 processes on a quiet machine, 1.52x while others
used 1.1-1.5 cores; surface 1.82x).

Run:  python bench/scale.py --rates              (about 30 minutes on a quiet 2-core CPU)
      python bench/scale.py --workloads hessian --nprocs 2
      python bench/scale.py --rates-only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from landscape import checkpoint, models
from landscape.objective import Objective
from landscape.operators import HessianOperator

#: The Hessian target of issue 14 on 2 CPU processes, against one process with one thread.
TARGET = 1.6


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU-seconds of the whole machine, CPU-seconds of this process's finished children)."""
    busy = float("nan")
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except (OSError, ValueError, IndexError):
        pass
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, ru.ru_utime + ru.ru_stime


def launch(nproc: int, threads: int, args: list[str], cwd: Path) -> tuple[str, float, float, float]:
    """Run ``landscape ARGS`` on ``nproc`` processes: (stdout, wall s, load before, others' cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    if nproc == 1:
        cmd = [sys.executable, "-m", "landscape", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(port), "-m", "landscape", *args]
    load = os.getloadavg()[0]
    busy0, ours0 = cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    busy1, ours1 = cpu_seconds()
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    others = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall
    return proc.stdout, wall, load, others


def analysis_seconds(workload: str, stdout: str, folder: Path) -> float:
    if workload == "hessian":
        return float(json.loads((folder / "h.json").read_text())["seconds"])
    found = re.search(r"per forward, ([0-9.]+) s\)", stdout)
    if not found:
        sys.exit(f"no time in the surface summary:\n{stdout}")
    return float(found.group(1))


def command(workload: str, ckpt: Path, args: argparse.Namespace, folder: Path) -> list[str]:
    common = [str(ckpt), "--device", args.device]
    if workload == "hessian":
        return ["hessian", *common, "--data", f"synthetic:n={args.samples}", "--top-k", "5", "--out",
                str(folder / "h.json")]
    (folder / "s.npz").unlink(missing_ok=True)  # a fresh surface every time, not a continued one
    return ["surface", *common, "--data", f"synthetic:n={args.surface_samples}", "--sources", "train",
            "--resolution", str(args.resolution), "--out", str(folder / "s.npz")]


def rates(device: torch.device) -> None:
    """Per-device rates of ResNet-18-GN (C=100) on CIFAR-shaped inputs, one thread on a CPU."""
    torch.manual_seed(0)
    model = models.build("resnet18-gn", num_classes=100).to(device).eval()
    n_fwd, n_hvp = (64, 32) if device.type == "cpu" else (1024, 512)
    x = torch.randn(n_fwd, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (n_fwd,), device=device)

    def timed(fn, repeats: int = 3) -> float:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.no_grad():
        fwd = timed(lambda: model(x))
    obj = Objective(model, [(x[:n_hvp], y[:n_hvp])], device=device)
    start = time.perf_counter()
    op = HessianOperator(obj, mode="cached", check_determinism=False)
    v = torch.randn(obj.num_params, device=device)
    op @ v  # builds the kept graph of the gradient
    graph = time.perf_counter() - start
    hvp = timed(lambda: op @ v, repeats=2)
    print(f"\nper-device rates, resnet18-gn (C=100, {obj.num_params:,} parameters), {device}, "
          f"{torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.1f}:")
    print(f"  forward         {n_fwd / fwd:10.1f} samples/s   (batch {n_fwd})")
    print(f"  gradient graph  {n_hvp / graph:10.1f} samples/s   (built once per analysis, with the first product)")
    print(f"  Hessian-vector  {n_hvp / hvp:10.1f} samples/s   (cached mode, batch {n_hvp})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="hessian,surface", help="comma-separated subset of hessian,surface")
    parser.add_argument("--nprocs", default=None, help="comma-separated process counts (default: 2 on a CPU, "
                        "the GPU count on a GPU)")
    parser.add_argument("--samples", type=int, default=2048, help="Hessian samples (default: 2048)")
    parser.add_argument("--surface-samples", type=int, default=512, help="surface samples (default: 512)")
    parser.add_argument("--resolution", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rates", action="store_true", help="also the per-device rates of ResNet-18-GN")
    parser.add_argument("--rates-only", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    if args.rates_only:
        rates(device)
        return
    cores = os.cpu_count() or 1
    nprocs = [int(n) for n in (args.nprocs or str(2 if device.type == "cpu" else torch.cuda.device_count())).split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        ckpt = checkpoint.save(checkpoint.from_model(models.build("cnn", num_classes=10), "cnn", {"num_classes": 10},
                                                     role="global"), folder / "cnn.pt")
        print(f"torch {torch.__version__}, {device}, {cores} CPU cores; speed-up vs 1 process x 1 thread "
              f"(efficiency = speed-up / N) and vs 1 process x all threads")
        print(f"{'workload':<34} {'procs':>5} {'thr/proc':>8} {'seconds':>8} {'wall':>7} {'speed-up':>8} "
              f"{'effic.':>6} {'vs all-thr':>10} {'load 1m':>7} {'others':>6}")
        verdicts = []
        for workload in args.workloads.split(","):
            name = (f"hessian top-5, cnn, {args.samples}" if workload == "hessian"
                    else f"surface {args.resolution}x{args.resolution}, cnn, {args.surface_samples}")
            runs = [(1, cores if device.type == "cpu" else 1)] + ([(1, 1)] if device.type == "cpu" else [])
            runs += [(n, 1) for n in nprocs if n > 1]
            secs: dict[tuple[int, int], float] = {}
            rows = []
            for nproc, threads in runs:
                stdout, wall, load, others = launch(nproc, threads, command(workload, ckpt, args, folder), folder)
                secs[nproc, threads] = analysis_seconds(workload, stdout, folder)
                rows.append((nproc, threads, wall, load, others))
            base, all_threads = secs.get((1, 1), secs[runs[0]]), secs[runs[0]]
            for nproc, threads, wall, load, others in rows:
                t = secs[nproc, threads]
                print(f"{name:<34} {nproc:>5} {threads:>8} {t:>8.1f} {wall:>7.1f} {base / t:>8.2f} "
                      f"{base / t / nproc:>6.2f} {all_threads / t:>10.2f} {load:>7.1f} {others:>6.2f}", flush=True)
            if workload == "hessian" and device.type == "cpu" and 2 in nprocs:
                speed = secs[1, 1] / secs[2, 1]
                verdicts.append(f"{'PASS' if speed >= TARGET else 'FAIL'}: hessian {speed:.2f}x on 2 processes vs "
                                f"1 process x 1 thread (target >= {TARGET}x at 2048 samples)")
        print("\n".join(verdicts))
    if args.rates:
        rates(device)


if __name__ == "__main__":
    main()
