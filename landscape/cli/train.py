"""``landscape train``: federated training (FedAvg, FedAvgM, FedSAM, FedASAM, FedNSAM, + SWA).

Every field of :class:`landscape.train.config.TrainConfig` is a flag (named by :func:`landscape.train.config.flag`,
numbers checked against :data:`landscape.train.config.RANGES` where they are parsed); precedence is
defaults < saved config (``--resume``) < ``--preset`` < flags, merged by one function
(:func:`landscape.train.config.make_config`). ``--resume`` continues the run in ``--out`` from its
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

from landscape.cli import SUMMARIES, common
from landscape.errors import LandscapeError



def _fields() -> list[dataclasses.Field]:
    from landscape.train.config import TrainConfig

    return list(dataclasses.fields(TrainConfig))


def add_parser(sub: argparse._SubParsersAction) -> None:
    from landscape.train.config import BOOLS, RANGES, flag, help_of

    p = sub.add_parser(
        "train",
        help=SUMMARIES["train"],
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
    p.add_argument("--collective-timeout", type=common.number(0, 7 * 86400, low_open=True), default=1800.0,
                   metavar="SECONDS", help="under torchrun: how long a rank waits for the others at a round's "
                   "exchange before the job stops (rank 0 evaluates and saves meanwhile); with --flower-nodes: how "
                   "long the server waits for the nodes to connect and for a round's replies (default: 1800)")
    p.add_argument("--flower-nodes", type=common.integer(1), default=None, metavar="N",
                   help="train in Flower's simulation runtime with N virtual SuperNodes that train the sampled "
                   "clients, --engine on each (needs pip install -e '.[flower]'; see docs/flower.md); the same run "
                   "folder as in one process (default: no Flower)")
    g = p.add_argument_group("training configuration (stored in every checkpoint)")
    for f in _fields():
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_of(f.name)}
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
    from landscape.train.config import make_config, preset
    from landscape.run_folder import RunFolder
    from landscape.train.folder import stored_config
    from landscape.train.run import train

    if args.list_presets:
        print(list_presets())
        return 0
    if not args.out:
        raise LandscapeError("name the run folder with --out DIR (e.g. --out runs/fedavg-cifar100)")
    flags = {f.name: getattr(args, f.name) for f in _fields() if getattr(args, f.name) is not None}
    out = Path(args.out)
    if args.trust_stored_factory and not args.resume:
        raise LandscapeError("--trust-stored-factory only applies with --resume", fix="drop it, or add --resume")
    named = {*(preset(args.preset) if args.preset else {}), *flags}  # what the user names here
    saved = stored_config(out, named=named, trust_stored_factory=args.trust_stored_factory) if args.resume else None
    cfg = make_config(args.preset, saved, **flags)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        if args.flower_nodes is not None:
            from landscape.train.flower import simulate

            result = simulate(cfg, out, num_nodes=args.flower_nodes, timeout=args.collective_timeout,
                              data_dir=args.data_dir, device=args.device, engine=args.engine, resume=args.resume,
                              progress=progress)
        else:
            result = train(cfg, out, data_dir=args.data_dir, device=args.device, engine=args.engine,
                           resume=args.resume, progress=progress, collective_timeout=args.collective_timeout)
    except KeyboardInterrupt as exc:
        if not getattr(exc, "reported_by_another_rank", False):  # under torchrun: one rank says it
            print(f"interrupted: the last completed round is saved; continue with "
                  f"`landscape train --out {out} --resume`", file=sys.stderr)
        raise
    if not result.writer:  # under torchrun rank 0 prints the summary
        return 0
    run = RunFolder(out)
    metrics = run.metrics()
    last = metrics[-1] if metrics else {}
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ("train_loss", "test_loss", "test_acc", "swa_test_acc")
                        if isinstance(last.get(k), (int, float)))
    print(f"trained {result.config.algorithm} for {result.round} rounds: {summary}")
    print(f"global model: {run.global_checkpoint(result.round)}")
    if result.swa.weights is not None:
        print(f"SWA model ({result.swa.num_models} collected): {run.swa_checkpoint}")
    tracked = [m["curvature"] for m in metrics if isinstance(m.get("curvature"), dict)]
    if tracked and isinstance(last.get("time"), (int, float)) and last["time"] > 0:
        seconds = sum(float(c.get("seconds", 0.0)) for c in tracked)
        print(f"curvature tracked at {len(tracked)} rounds: {seconds:.2f} s, {100 * seconds / last['time']:.1f}% of "
              f"the run's {last['time']:.1f} s; lambda_max of the global model now "
              f"{tracked[-1]['global_lambda_max']:.4g}")
    return 0
