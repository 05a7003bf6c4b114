"""Benchmark: one federated round, batched cohort engine vs sequential engine (vs Flower).

Workload (issue #4): the CIFAR CNN of [C22] (100 classes, 815,332 parameters), 10 clients per
round x 8 local steps of batch 64 (512 CIFAR-shaped samples per client, random crop + flip on the
device), for FedAvg and FedSAM. Each (algorithm, engine) runs in a fresh subprocess so peak memory
is its own: ``torch.cuda.max_memory_allocated`` on a GPU, peak resident set size on the CPU.
Every measurement gets ``--warmup`` untimed rounds, then ``--rounds`` timed rounds.

Flower: when ``flwr[simulation]`` can be imported (from the environment, or from the folder
``$LANDSCAPE_FLWR_DIR``, default ``~/.cache/landscape/flwr``, filled by
``pip install --target ~/.cache/landscape/flwr "flwr[simulation]"`` so the project's own
environment is left alone), the same FedAvg round is run as a Flower simulation (10 NumPyClients
each running the same 8 SGD steps in plain PyTorch); otherwise the reason it was skipped is printed.

Run: ``python bench/train.py`` (``--device cuda`` on a GPU).

Measured with ``python bench/train.py --rounds 2 --warmup 1`` on the 2-core development machine
(shared with other jobs, load average ~8; no GPU was available), torch 2.13.0+cpu, flwr 1.41.0::

    algorithm  engine       rounds/s   s/round   peak MB  vs sequential
    fedavg     sequential      0.021    47.921       455          1.00x
    fedavg     batched         0.011    91.016      1237          0.53x
    fedavg     flower          0.048    20.905         -          2.29x
    fedsam     sequential      0.010    99.876       452          1.00x
    fedsam     batched         0.005   217.405      1293          0.46x

On the CPU the batched engine is slower for this CNN (vmapped convolutions become grouped
convolutions), so ``--engine auto`` picks the sequential engine there for models with
convolutions, and the batched one on CUDA and for convolution-free models (1.5x on the digits MLP). Flower runs its
clients in parallel Ray worker processes, which on a loaded shared machine also win a larger share
of the CPU; its peak memory is spread over those processes and not reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

FLWR_DIR = Path(os.environ.get("LANDSCAPE_FLWR_DIR", Path.home() / ".cache" / "landscape" / "flwr"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def federation(args: argparse.Namespace, device: torch.device):  # noqa: ANN201 - bench helper
    from landscape.train.config import TrainConfig
    from landscape.train.engine import FederatedData

    n = args.clients * args.steps * args.batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 100, (n,), generator=g)
    per = args.steps * args.batch
    parts = [np.arange(k * per, (k + 1) * per) for k in range(args.clients)]
    cfg = TrainConfig(dataset="synthetic", model="cnn", model_kwargs={"num_classes": 100}, num_clients=args.clients,
                      samples_per_client=per, clients_per_round=args.clients, batch_size=args.batch, local_epochs=1,
                      augment=True, rho=0.05, bf16=args.bf16)
    return cfg, FederatedData.build(x, y, parts, device, torch.float32, augment=True), x, y, parts


def worker(args: argparse.Namespace) -> dict:
    """Time ``args.rounds`` rounds of one engine in this process."""
    from landscape import models
    from landscape.train import algorithms
    from landscape.train.engine import make_engine

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg, data, *_ = federation(args, device)
    cfg = cfg.replace(algorithm=args.algorithm)
    model = models.build("cnn", num_classes=100)
    engine = make_engine(args.engine, model, data, cfg, device)
    algo = algorithms.from_config(cfg)
    state = algo.init({k: v.detach().to(device).clone() for k, v in model.state_dict().items()},
                      engine.param_names)
    cohort = list(range(args.clients))
    for t in range(args.warmup):
        state = engine.run_round(algo, state, t, cohort, cfg.lr).state
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for t in range(args.rounds):
        state = engine.run_round(algo, state, args.warmup + t, cohort, cfg.lr).state
    sync(device)
    seconds = (time.perf_counter() - start) / args.rounds
    return {"seconds_per_round": seconds, "peak_mb": peak_memory_mb(device)}


def flower_worker(args: argparse.Namespace) -> dict:
    """The same FedAvg round as a Flower simulation (10 NumPyClients, 8 SGD steps of 64 each)."""
    import flwr
    from flwr.client import NumPyClient
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    from landscape import models
    from landscape.train.engine import plan_client

    device = torch.device(args.device)
    cfg, data, x, y, parts = federation(args, device)
    template = models.build("cnn", num_classes=100).to(device)
    names = [k for k, _ in template.state_dict().items()]

    class Client(NumPyClient):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, parameters, config):  # noqa: ANN001, ANN201 - Flower's signature
            model = models.build("cnn", num_classes=100).to(device)
            model.load_state_dict({k: torch.as_tensor(v) for k, v in zip(names, parameters)})
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            for step in plan_client(data, 0, int(config.get("round", 0)), self.cid, cfg.batch_size, 1):
                xb, yb = data.batch([step])
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb[0]), yb[0]).backward()
                opt.step()
            return [v.detach().cpu().numpy() for v in model.state_dict().values()], len(parts[self.cid]), {}

    stamps: list[float] = []

    class TimedFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
            out = super().aggregate_fit(server_round, results, failures)
            stamps.append(time.perf_counter())
            return out

    initial = ndarrays_to_parameters([v.detach().cpu().numpy() for v in template.state_dict().values()])
    strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.clients,
                           min_available_clients=args.clients, initial_parameters=initial,
                           on_fit_config_fn=lambda r: {"round": r})
    num_rounds = args.warmup + args.rounds
    flwr.simulation.start_simulation(
        client_fn=lambda cid: Client(int(cid)).to_client(), num_clients=args.clients,
        config=flwr.server.ServerConfig(num_rounds=num_rounds), strategy=strategy,
        client_resources={"num_cpus": 1, "num_gpus": 1.0 if device.type == "cuda" else 0.0},
        ray_init_args={"include_dashboard": False, "num_cpus": os.cpu_count(), "log_to_driver": False},
    )
    timed = stamps[args.warmup - 1 :] if args.warmup else [stamps[0] - 0.0] + stamps
    seconds = (timed[-1] - timed[0]) / args.rounds
    return {"seconds_per_round": seconds, "peak_mb": float("nan"), "flwr": flwr.__version__}


def spawn(args: argparse.Namespace, algorithm: str, engine: str) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON or {'error': ...}."""
    cmd = [sys.executable, __file__, "--worker", "--algorithm", algorithm, "--engine", engine,
           "--device", args.device, "--rounds", str(args.rounds), "--warmup", str(args.warmup),
           "--clients", str(args.clients), "--steps", str(args.steps), "--batch", str(args.batch)]
    if args.bf16:
        cmd.append("--bf16")
    env = dict(os.environ)
    if engine == "flower" and FLWR_DIR.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(FLWR_DIR), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:160]}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--algorithms", nargs="+", default=["fedavg", "fedsam"])
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per measurement (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--steps", type=int, default=8, help="local steps per client")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--no-flower", action="store_true", help="skip the Flower simulation")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--algorithm", default="fedavg", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="batched", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(flower_worker(args) if args.engine == "flower" else worker(args)))
        return

    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# federated round: CIFAR CNN (815,332 params), {args.clients} clients x {args.steps} local steps x "
          f"batch {args.batch}, {args.rounds} timed rounds after {args.warmup} warm-up")
    print(f"# device {device} ({gpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', bf16 autocast' if args.bf16 else ''}")
    rows = []
    for algorithm in args.algorithms:
        for engine in ("sequential", "batched"):
            rows.append((algorithm, engine, spawn(args, algorithm, engine)))
        if algorithm == "fedavg":
            if args.no_flower:
                rows.append((algorithm, "flower", {"error": "skipped (--no-flower)"}))
            else:
                rows.append((algorithm, "flower", flower_status(args)))
    print(f"{'algorithm':<10} {'engine':<11} {'rounds/s':>9} {'s/round':>9} {'peak MB':>9} {'vs sequential':>14}")
    base = {a: r["seconds_per_round"] for a, e, r in rows if e == "sequential" and "seconds_per_round" in r}
    for algorithm, engine, r in rows:
        if "error" in r:
            print(f"{algorithm:<10} {engine:<11} {'-':>9} {'-':>9} {'-':>9} {'-':>14}  ({r['error']})")
            continue
        s = r["seconds_per_round"]
        ratio = f"{base[algorithm] / s:.2f}x" if algorithm in base else "-"
        mem = "-" if r["peak_mb"] != r["peak_mb"] else f"{r['peak_mb']:.0f}"
        print(f"{algorithm:<10} {engine:<11} {1 / s:>9.3f} {s:>9.3f} {mem:>9} {ratio:>14}")
    print("# peak MB: torch.cuda.max_memory_allocated on a GPU; peak resident set size of the process on the CPU")


def flower_status(args: argparse.Namespace) -> dict:
    """Run the Flower measurement when flwr[simulation] imports, else say why it is skipped."""
    env = dict(os.environ)
    if FLWR_DIR.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(FLWR_DIR), env.get("PYTHONPATH", "")])
    probe = subprocess.run([sys.executable, "-c", "import flwr, ray, flwr.simulation; print(flwr.__version__)"],
                           capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return {"error": f"skipped: flwr[simulation] not importable ({why}); "
                         f"pip install --target {FLWR_DIR} 'flwr[simulation]'"}
    return spawn(args, "fedavg", "flower")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
