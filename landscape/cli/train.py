"""``landscape train``: federated training (FedAvg, FedAvgM, FedSAM, FedASAM, FedNSAM, + SWA).

Every field of :class:`landscape.train.config.TrainConfig` is a flag (named by :func:`landscape.train.config.flag`,
numbers checked against :data:`landscape.train.config.RANGES` where they are parsed); precedence is
defaults < ``--preset`` < flags. ``--resume`` continues the run in ``--out`` from its
``config.json`` and refuses flags that change it; a model factory or a path outside the run
folder that the file names is used only when the user names it again (or, for the factory,
passes ``--trust-stored-factory``): a file is not the user's say-so to run code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from landscape.cli import common
from landscape.errors import LandscapeError

#: Help text per TrainConfig field (its flag is landscape.train.config.flag(field)).
HELP = {
    "algorithm": "fedavg, fedavgm, fedsam, fedasam or fednsam (default: fedavg)",
    "dataset": "training data: cifar10, cifar100, digits, synthetic[:n=..,classes=..,shape=3x32x32] or a "
               ".npz/.pt file with x and y (default: cifar100)",
    "model": "architecture from `landscape models` or package.module:factory (default: one that fits the "
             "data: cnn for 32x32 images such as CIFAR, mlp otherwise, e.g. digits)",
    "model_kwargs": "JSON keyword arguments for the model; num_classes etc. are filled in from the data",
    "num_clients": "number of clients K (default: 100 on CIFAR, 20 on digits)",
    "samples_per_client": "training samples per client (default: 500 on CIFAR, 65 on digits)",
    "alpha": "total Dirichlet concentration [H19] (alpha/C per class): 0 = one class per client, "
             "large = iid (default: 0)",
    "split_file": "a published split, CSV rows user_id,image_id,class (replaces --alpha)",
    "clients_per_round": "clients sampled per round (default: 5)",
    "num_rounds": "communication rounds T (default: 20000)",
    "lr": "client learning rate (default: 0.01)",
    "batch_size": "client batch size (default: 64)",
    "local_epochs": "local epochs E per round (default: 1)",
    "weight_decay": "client weight decay (default: 4e-4)",
    "client_momentum": "client SGD momentum, reset every round (default: 0)",
    "augment": "random crop (pad 4) + horizontal flip on the device, for images (default: off; on in the "
               "CIFAR presets)",
    "rho": "SAM/ASAM/FedNSAM neighbourhood size (default: 0.05 SAM, 0.5 ASAM, 0.05 FedNSAM)",
    "eta": "ASAM offset in T = |w| + eta (default: 0.2)",
    "asam_variant": "kwon (T = |w| + eta on weights, 1 on biases) or davda54 (T = |w| everywhere)",
    "bn_first_pass_only": "update BatchNorm statistics only in SAM's first forward pass",
    "server_lr": "FedAvgM server learning rate eta_s (default: 1.0)",
    "server_momentum": "FedAvgM server momentum beta (default: 0.9)",
    "gamma": "FedNSAM momentum / Nesterov extrapolation gamma (default: 0.85)",
    "perturbation": "FedNSAM perturbation: global_momentum (default) or local_sam",
    "fednsam_reference_momentum": "reproduce the FedNSAM reference code's m = (1+gamma) Delta (a known defect)",
    "fednsam_extrapolate_buffers": "extrapolate normalization buffers like weights (FedNSAM reference code)",
    "swa": "server-side SWA with the cyclic client learning rate [C22]",
    "swa_start": "fraction of the rounds after which SWA starts (default: 0.75)",
    "swa_gamma1": "SWA cycle's highest learning rate gamma1 (default: 1e-2)",
    "swa_gamma2": "SWA cycle's lowest learning rate gamma2 (default: 1e-4)",
    "swa_cycle": "SWA cycle length c in rounds (default: 20; 10 on CIFAR-10)",
    "swa_collect_early": "collect the SWA model right after the highest-lr round (fedsam code's behaviour)",
    "seed": "seed of the partition, the initial model, the cohorts and all client streams (default: 0)",
    "eval_every": "evaluate on the test set every K rounds (default: 100; always at the end)",
    "save_every": "save the global (and SWA) model every K rounds (default: 1000; always at the end)",
    "save_clients_every": "save the local models of the sampled clients every K rounds (default: 0 = never)",
    "dtype": "weights in float32 (default) or float64",
    "bf16": "bfloat16 autocast for the forward passes",
}


def _fields() -> list[dataclasses.Field]:
    from landscape.train.config import TrainConfig

    return list(dataclasses.fields(TrainConfig))


def add_parser(sub: argparse._SubParsersAction) -> None:
    from landscape.train.config import BOOLS, RANGES, flag

    p = sub.add_parser(
        "train",
        help="federated training: FedAvg, FedAvgM, FedSAM, FedASAM, FedNSAM (+SWA)",
        description="Train a federated model and write self-describing checkpoints. Example: landscape train "
        "--algorithm fedasam --dataset cifar100 --data-dir DIR --alpha 0 --clients-per-round 5 --rounds 20000 "
        "--out runs/NAME. Quick offline demo: landscape train --preset digits-demo --out runs/demo",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (config, metrics.jsonl, checkpoints/, clients/)")
    p.add_argument("--preset", metavar="NAME", help="start from a paper setting (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (its config.json)")
    p.add_argument("--trust-stored-factory", action="store_true",
                   help="with --resume: import and call the package.module:factory that the run's config.json "
                   "names as its model, i.e. run that code; only for run folders you trust (naming the same "
                   "--model again does the same)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding CIFAR in its python format")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--engine", choices=["sequential", "batched", "auto"], default="auto",
                   help="sequential reference loop or batched cohort (vmap) engine; auto = the faster one as measured: batched on "
                   "CUDA, and on CPU for models without convolutions (default: auto)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with ETA (default: when stderr is a terminal)")
    g = p.add_argument_group("training configuration (stored in every checkpoint)")
    for f in _fields():
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": HELP.get(f.name, "")}
        rng = RANGES.get(f.name)
        if f.name in BOOLS:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "model_kwargs":
            kwargs.update(type=common.parse_json_object, metavar="JSON")
        elif rng is not None and rng.integer:
            kwargs.update(type=common.integer(int(rng.low), None if rng.high is None else int(rng.high)), metavar="N")
        elif rng is not None:
            kwargs.update(type=common.number(rng.low, rng.high, high_open=rng.high_open), metavar="X")
        else:
            kwargs.update(metavar=f.name.upper())
        g.add_argument(flag(f.name), **kwargs)
    p.set_defaults(run=run)


def list_presets() -> str:
    """The presets as ``name  description`` lines."""
    from landscape.train.config import PRESETS

    width = max(len(n) for n in PRESETS)
    return "\n".join(f"{name:<{width}}  {desc}" for name, (desc, _) in PRESETS.items())


def run(args: argparse.Namespace) -> int:
    from landscape.train.config import TrainConfig, preset
    from landscape.train.folder import global_path, read_metrics, stored_config, swa_path
    from landscape.train.run import train

    if args.list_presets:
        print(list_presets())
        return 0
    if not args.out:
        raise LandscapeError("name the run folder with --out DIR (e.g. --out runs/fedavg-cifar100)")
    overrides = {f.name: getattr(args, f.name) for f in _fields() if getattr(args, f.name) is not None}
    out = Path(args.out)
    given = {**(preset(args.preset) if args.preset else {}), **overrides}  # what the user names here
    if args.trust_stored_factory and not args.resume:
        raise LandscapeError("--trust-stored-factory only applies with --resume", fix="drop it, or add --resume")
    values: dict[str, Any] = {}
    if args.resume:
        values = stored_config(out, named=set(given), trust_stored_factory=args.trust_stored_factory)
    values.update(given)
    cfg = TrainConfig.from_dict(values)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        result = train(cfg, out, data_dir=args.data_dir, device=args.device, engine=args.engine,
                       resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        print(f"interrupted: the last completed round is saved; continue with "
              f"`landscape train --out {out} --resume`", file=sys.stderr)
        raise
    metrics = read_metrics(out / "metrics.jsonl")
    last = metrics[-1] if metrics else {}
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ("train_loss", "test_loss", "test_acc", "swa_test_acc")
                        if isinstance(last.get(k), (int, float)))
    print(f"trained {result.config.algorithm} for {result.round} rounds: {summary}")
    print(f"global model: {global_path(out, result.round)}")
    if result.swa.weights is not None:
        print(f"SWA model ({result.swa.num_models} collected): {swa_path(out)}")
    return 0
