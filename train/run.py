"""The training loop: config -> data and partition -> rounds -> checkpoints, metrics, resume.

Reads top to bottom: :func:`train` sets up (or resumes) a run, then :func:`_loop` runs one
round per iteration through an engine (:mod:`landscape.train.engine`). What it writes, and where, is
the run folder of :mod:`landscape.run_folder` (its layout), written through :mod:`landscape.train.folder`.

Every random stream derives from (seed, round, client id), so a resumed run repeats exactly
what the uninterrupted run would have done: bit for bit on the CPU.

One process writes a run folder at a time (``OUT/.lock``, see :func:`landscape.files.exclusive`).
Everything that can refuse a config (the data, the partition, the model and one forward pass on
one sample) runs before the folder is touched. A folder whose first round never completed is
started again as if it were new (:func:`landscape.train.folder.never_completed`); a killed run is
continued with ``resume``. Under torchrun (``WORLD_SIZE > 1``) the ranks split every round's cohort and
rank 0 alone writes and prints (:mod:`landscape.train.distributed`); one process joins no process group.
Through Flower this loop runs in the ServerApp and the nodes train the rounds (:mod:`landscape.train.flower`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape import checkpoint, data, models, partition, splits
from landscape.errors import LandscapeError, os_error, user_code
from landscape.files import exclusive, write_json
from landscape.operators import resolve_device
from landscape.run_folder import RunFolder
from landscape.train import algorithms, distributed, folder, schedule, swa
from landscape.train.config import TrainConfig
from landscape.train.track import CurvatureTracker
from landscape.train.engine import STREAM_INIT, Engine, FederatedData, derive_seed, evaluate, make_engine, sample_cohort


@dataclass
class Federation:
    """The data side of a run: training set, test set, partition and the checkpoint data spec."""

    train: data.Dataset
    test: data.Dataset | None
    parts: list[np.ndarray]
    spec: dict[str, Any]


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, completed rounds, final server and SWA state."""

    out: Path
    round: int
    state: Any
    swa: swa.SWAState
    config: TrainConfig
    writer: bool = True  # under torchrun only rank 0 writes (the others' swa is empty)


def load_federation(cfg: TrainConfig, data_dir: str | None = None) -> tuple[TrainConfig, Federation]:
    """Load the data, fill in the federation defaults and split the training set.

    Returns the resolved config (num_clients, samples_per_client and model kwargs filled in).

    Raises:
        LandscapeError: missing data (with how to get it), a federation larger than the data,
            more clients per round than clients, a bad split file.
    """
    spec = data.parse_spec(cfg.dataset)
    spec["split"] = "train"
    train_ds = data.load(spec, data_dir)
    test_ds = None if spec["dataset"] == "file" else data.load({**spec, "split": "test"}, data_dir)
    name = str(spec["dataset"])
    labels = train_ds.y.numpy()
    num_clients, per_client = partition.default_federation(name, labels)
    if cfg.split_file:
        split = splits.read_split_file(cfg.split_file, labels, train_ds.names)
        parts = split.parts
        pspec = {"num_clients": len(parts), "samples_per_client": None, "alpha": None, "seed": cfg.seed,
                 "split_file": str(Path(cfg.split_file).expanduser().resolve()),
                 "split_sha256": split.sha256, "split_format": split.format}
        cfg = cfg.replace(num_clients=len(parts))
    else:
        cfg = cfg.replace(num_clients=cfg.num_clients or num_clients,
                          samples_per_client=cfg.samples_per_client or per_client)
        parts = partition.partition(labels, cfg.num_clients, cfg.samples_per_client, cfg.alpha, cfg.seed,
                                    train_ds.num_classes, cfg.partition)
        pspec = {"num_clients": cfg.num_clients, "samples_per_client": cfg.samples_per_client,
                 "alpha": cfg.alpha, "seed": cfg.seed, "num_classes": train_ds.num_classes,
                 "scheme": cfg.partition}
    if cfg.model is None:
        cfg = cfg.replace(model=models.default_for(train_ds.x.shape[1:]))
    cfg = cfg.replace(model_kwargs=_model_kwargs(cfg, train_ds))
    dspec = {"dataset": name, "split": "train",
             **{k: v for k, v in train_ds.spec.items() if k not in ("dataset", "split")}, "partition": pspec}
    return cfg, Federation(train_ds, test_ds, parts, dspec)


def _model_kwargs(cfg: TrainConfig, ds: data.Dataset) -> dict[str, Any]:
    """The user's model kwargs, plus num_classes / in_features / in_channels / image_size from the data."""
    params = inspect.signature(models.resolve(cfg.model)).parameters
    kwargs = dict(cfg.model_kwargs)
    shape = tuple(ds.x.shape[1:])
    guesses = {"num_classes": ds.num_classes, "in_features": int(np.prod(shape))}
    if len(shape) == 3:
        guesses.update(in_channels=shape[0], image_size=shape[-1])
    for key, value in guesses.items():
        if key in params and key not in kwargs:
            kwargs[key] = value
    return kwargs


def build_model(cfg: TrainConfig) -> nn.Module:
    """The initial model, its random init seeded by (seed, INIT) without touching the global RNG.

    Raises:
        LandscapeError: kwargs the factory rejects (whatever it raises, as one line).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, 0, -1, STREAM_INIT))
        model = models.build(cfg.model, **cfg.model_kwargs)
    return model.to(getattr(torch, cfg.dtype))


def check_model_fits(model: nn.Module, ds: data.Dataset, dtype: torch.dtype, name: str = "the model") -> None:
    """One forward pass on one sample, in eval mode: the model must take the data's inputs and
    give a score per class (so a mismatch stops the run before anything is written, not in round 1).

    Raises:
        LandscapeError: the model fails on an input of the data's shape, or its output is not
            ``(1, C)`` with at least the data's C classes.
    """
    x = ds.x[:1].to(dtype)
    shape = "x".join(map(str, ds.x.shape[1:]))
    was_training = model.training
    model.eval()  # no BatchNorm statistics change, no dropout draws
    try:
        with torch.no_grad(), user_code(f"model '{name}' on one input of shape {shape} from the data set "
                                        f"{ds.spec.get('dataset', '?')}",
                                        fix="choose a --model (and --model-kwargs) that fits the --dataset"):
            scores = model(x)
    finally:
        model.train(was_training)
    if not (isinstance(scores, torch.Tensor) and scores.ndim == 2 and scores.shape[0] == 1
            and scores.shape[1] >= ds.num_classes):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise LandscapeError(f"the model maps one input of shape {shape} to {got}, not to (1, {ds.num_classes}) "
                             f"class scores", fix="choose a --model (and --model-kwargs) that fits the --dataset")


def recompute_batchnorm(model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor,
                        batch_size: int = 256) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics recomputed for ``weights`` over ``x`` (cumulative average).

    SWA averages parameters only [C22]; the averaged model needs its own statistics. Models
    without BatchNorm are returned unchanged.
    """
    if not models.batchnorm_layers(model):
        return weights
    clone = copy.deepcopy(model)
    clone.load_state_dict(weights)
    for _, m in models.batchnorm_layers(clone):
        m.reset_running_stats()
        m.momentum = None
    clone.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            clone(x[i : i + batch_size])
    return {k: v.detach().clone() for k, v in clone.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def _checkpoint(cfg: TrainConfig, fed: Federation, weights: dict[str, torch.Tensor], round: int, role: str,
                client_id: int | None = None, metadata: dict[str, Any] | None = None) -> checkpoint.Checkpoint:
    state = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
    return checkpoint.Checkpoint(model_name=cfg.model, model_kwargs=dict(cfg.model_kwargs), state_dict=state,
                                 config=cfg.to_dict(), round=round, role=role, client_id=client_id,
                                 data=json.loads(json.dumps(fed.spec)), metadata=dict(metadata or {}))


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError that names no file (a failed ``write()`` does not)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class Setup:
    """What a run trains with, built from its config (:func:`set_up`).

    Attributes:
        cfg: the resolved config (num_clients, model kwargs filled in).
        fed: the data side.
        model: the initial model.
        data: the training data on the device.
        engine: the engine that trains a block of clients.
    """

    cfg: TrainConfig
    fed: Federation
    model: nn.Module
    data: FederatedData
    engine: Engine


def set_up(cfg: TrainConfig, data_dir: str | None, device: torch.device, engine: str) -> Setup:
    """Everything that can refuse a config: the data and the partition, the model and one forward
    pass on one sample, the engine (the server and every Flower node build the same from one config).

    Raises:
        LandscapeError: as :func:`load_federation`, :func:`build_model`, :func:`check_model_fits` and
            :func:`~landscape.train.engine.make_engine`.
    """
    cfg, fed = load_federation(cfg, data_dir)
    model = build_model(cfg)
    dtype = getattr(torch, cfg.dtype)
    check_model_fits(model, fed.train, dtype, cfg.model)
    fdata = FederatedData.build(fed.train.x, fed.train.y, fed.parts, device, dtype, cfg.augment,
                                data.black_pixel(fed.train))
    return Setup(cfg, fed, model, fdata, make_engine(engine, model, fdata, cfg, device))


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    data_dir: str | None = None,
    device: str | torch.device | None = None,
    engine: str = "auto",
    resume: bool = False,
    progress: bool = False,
    on_round: Callable[[int, dict[str, Any]], None] | None = None,
    collective_timeout: float = 1800.0,
    remote: Callable[[Engine, TrainConfig, dict[str, Any]], Any] | None = None,
) -> RunResult:
    """Train ``cfg`` into the run folder ``out`` (see :mod:`landscape.train.folder` for its layout).

    Args:
        cfg: the configuration; unresolved fields (num_clients, model kwargs) are filled from the data.
        out: the run folder.
        data_dir: folder holding CIFAR (``landscape download cifar100 --data-dir DIR``).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA when present).
        engine: ``sequential``, ``batched`` or ``auto`` (batched on CUDA, sequential on CPU).
        resume: continue the run in ``out``; ``cfg`` must equal the stored config.
        progress: show a tqdm progress bar with ETA.
        on_round: called as ``on_round(round, metrics)`` after every round (for tests and tools; on rank 0).
        collective_timeout: under torchrun, the seconds a rank waits for the others at an exchange.
        remote: ``remote(engine, resolved config, data spec)`` returns the runner whose
            ``run_round`` trains the clients elsewhere (Flower's nodes, :mod:`landscape.train.flower`);
            the loop, the checks and the files stay those of one process.

    Raises:
        LandscapeError: bad settings or data, a model that does not fit the data (all before
            ``out`` is touched); another process writing ``out``; an existing run without
            ``resume`` (a run whose first round never completed is started again instead); with
            ``resume``, such a run, a config that differs from the stored one, or a damaged
            ``state.pt``; a diverging run (NaN / inf loss: the last good model stays saved).
            Under torchrun also a lost rank or SIGTERM, through Flower a failed node (the last
            completed round stays saved).
        OSError: a failed write (full disk, ...); the folder stays resumable.
    """
    out = Path(out)
    kwargs = dict(data_dir=data_dir, device=device, engine=engine, resume=resume, progress=progress, on_round=on_round,
                  remote=remote)
    if distributed.world_size() <= 1:
        return _train(cfg, out, **kwargs)
    if remote is not None:
        raise LandscapeError("training under torchrun and through Flower at once", fix="use one of the two")
    ranks = distributed.join(collective_timeout)
    with ranks.session():
        return _train(cfg, out, **kwargs, ranks=ranks)


def _train(cfg: TrainConfig, out: Path, *, data_dir: str | None, device: str | torch.device | None, engine: str,
           resume: bool, progress: bool, on_round: Callable[[int, dict[str, Any]], None] | None,
           remote: Callable[[Engine, TrainConfig, dict[str, Any]], Any] | None = None, ranks: Any = None) -> RunResult:
    """:func:`train` in one process (``ranks`` None) or on one rank of several."""
    if ranks is not None:
        dev = ranks.connect(device)
    else:
        dev = device if isinstance(device, torch.device) else resolve_device(device)
    writer = ranks is None or ranks.writer
    setup = set_up(cfg, data_dir, dev, engine)  # before the folder is touched
    cfg, fed, model, fdata, runner = setup.cfg, setup.fed, setup.model, setup.data, setup.engine
    dtype = getattr(torch, cfg.dtype)
    if ranks is not None:
        runner = distributed.DistributedEngine(runner, ranks, dev)
    if remote is not None:
        runner = remote(runner, cfg, fed.spec)
    algo = algorithms.from_config(cfg)
    weights = {k: v.detach().to(dev).clone() for k, v in model.state_dict().items()}
    initial = algo.init(weights, runner.param_names)
    if resume and not RunFolder(out).is_run():  # checked before the lock, which creates the folder
        raise LandscapeError(f"nothing to resume in {out} (no config.json); start it without --resume")
    if out.exists() and not out.is_dir():
        raise LandscapeError("--out is a file, not a folder", where=out, fix="give a folder for the run")

    # One writer per run folder (rank 0 under torchrun): what it holds is read and decided on under
    # the lock. A folder this call creates is removed again if the run cannot even be set up in it.
    new = [p for p in (out, *out.parents) if not p.exists()]
    state, swa_state, start_round, elapsed = initial, swa.SWAState(), 0, 0.0
    with contextlib.ExitStack() as stack:
        if writer:
            try:
                stack.enter_context(exclusive(out, folder=True))
            except OSError as exc:
                folder.remove_new_folders(new)
                if exc.filename is None:
                    exc.filename = str(out / ".lock")
                raise os_error(exc, "cannot create or lock the run folder") from None
            folder.remove_partial_writes(out)
            folder.keep_split_file(out, fed.spec)
            if resume:
                start_round, state, swa_state, elapsed = _resume(out, cfg, dev, initial)
            else:
                try:
                    _start(out, cfg, fed, runner, dev, initial)
                except BaseException:
                    folder.remove_new_folders(new)
                    raise
        if ranks is not None:  # the round and server state to start from, as rank 0 read them
            start_round, server = ranks.from_writer((start_round, state.to_dict()), dev)
            state = type(initial).from_dict(server)
        test = None
        if fed.test is not None and writer:
            test = (fed.test.x.to(device=dev, dtype=dtype), fed.test.y.to(dev))
        state, swa_state = _loop(cfg, out, fed, fdata, runner, algo, model, test, start_round, state, swa_state,
                                 elapsed, progress, on_round, ranks)
    return RunResult(out, cfg.num_rounds, state, swa_state, cfg, writer)


def _start(out: Path, cfg: TrainConfig, fed: Federation, runner: Any, dev: torch.device, initial: Any) -> None:
    """Set up a new run: config.json, the round-0 model, then state.pt (what --resume needs)."""
    run = RunFolder(out)
    config_file = run.config_file
    holds_run = any(p.exists() for p in (run.config_file, run.state_file, run.metrics_file))
    if holds_run and not folder.never_completed(out):
        raise LandscapeError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if holds_run:  # a set-up or first round cut short: nothing in it to keep, start over
        folder.remove_run_files(out)
    try:
        write_json(config_file, {"config": cfg.to_dict(), "data": fed.spec,
                               "run": {"device": str(dev), "engine": runner.name, "torch": torch.__version__}})
        checkpoint.save(_checkpoint(cfg, fed, initial.weights, 0, "global"), RunFolder(out).global_checkpoint(0))
        folder.save_state(out, cfg, 0, initial, swa.SWAState(), 0.0)
    except BaseException:  # a failed set-up (a full disk) leaves no half-made run behind
        folder.remove_run_files(out)
        raise


def _resume(out: Path, cfg: TrainConfig, dev: torch.device, initial: Any) -> tuple[int, Any, swa.SWAState, float]:
    """The stored state of the run in ``out`` after checking it is this config's and has a round to continue."""
    if folder.never_completed(out):
        raise LandscapeError(f"the first round of the run in {out} never completed, so there is nothing to resume",
                             fix="start it again without --resume")
    if not RunFolder(out).state_file.exists():
        raise LandscapeError(f"{out} logs rounds but has no state.pt; the run cannot be resumed",
                             fix="start a new run with another --out")
    stored = TrainConfig.from_dict(folder.read_config(out))
    diff = folder.config_difference(stored, cfg)
    if diff:
        raise LandscapeError(
            f"--resume with a different config ({'; '.join(diff[:4])}); drop those flags to continue "
            f"the run in {out}, or start a new run with another --out"
        )
    start_round, state, swa_state, elapsed = folder.load_state(out, dev, cfg, initial)
    if start_round < cfg.num_rounds:  # a complete run is left as it is
        folder.truncate_metrics(out, start_round)
    return start_round, state, swa_state, elapsed


def _client_inputs(fdata: FederatedData) -> torch.Tensor:
    """The inputs held by the clients (the data SWA's BatchNorm statistics are recomputed on)."""
    return fdata.x[torch.cat(fdata.client_indices).to(fdata.x.device)]


def _due(period: int, r: int, last: int) -> bool:
    return r == last or (period > 0 and r % period == 0)


def _loop(cfg: TrainConfig, out: Path, fed: Federation, fdata: FederatedData, runner: Any, algo: Any,
          model: nn.Module, test: tuple[torch.Tensor, torch.Tensor] | None, start_round: int, state: Any,
          swa_state: swa.SWAState, elapsed: float, progress: bool,
          on_round: Callable[[int, dict[str, Any]], None] | None, ranks: Any = None) -> tuple[Any, swa.SWAState]:
    """One iteration per round; (round, state, swa) is only advanced once a round is fully logged.

    Under torchrun (``ranks``) every rank trains, rank 0 alone checks, logs and saves the round.
    """
    from tqdm.auto import tqdm

    writer = ranks is None or ranks.writer
    # Ctrl-C, and the runner's failures (a lost rank, a failed Flower node): the last completed round is saved.
    stops: tuple[type[BaseException], ...] = (KeyboardInterrupt, *runner.failures)

    T = cfg.num_rounds
    tracker = CurvatureTracker(model, fdata, cfg.track_every, cfg.track_samples, cfg.seed)
    good = (start_round, state, swa_state)
    t_start = time.perf_counter() - elapsed
    last_state_write = time.perf_counter()
    metrics_file = RunFolder(out).metrics_file
    bar = tqdm(total=T, initial=start_round, disable=not (progress and writer), unit="round", dynamic_ncols=True,
               desc=f"{cfg.algorithm}")
    try:
        with open(metrics_file, "a") if writer else contextlib.nullcontext() as log:
            for t in range(start_round, T):
                R = t + 1
                lr = schedule.client_lr(cfg, t)
                cohort = sample_cohort(cfg.seed, t, cfg.num_clients, cfg.clients_per_round, cfg.cohort_sampling)
                keep = cfg.save_clients_every > 0 and R % cfg.save_clients_every == 0
                tracked = tracker.due(R)
                t0 = time.perf_counter()
                result = runner.run_round(algo, state, t, cohort, lr, keep_clients=keep or tracked)
                round_time = time.perf_counter() - t0
                if not writer:  # the other ranks only train: rank 0 checks, logs and saves the round
                    state = result.state
                    continue
                if not math.isfinite(result.train_loss) or not all(
                    bool(torch.isfinite(v).all()) for v in result.state.weights.values() if v.is_floating_point()
                ):
                    _diverged(cfg, out, fed, good, R, result.train_loss, time.perf_counter() - t_start)
                new_swa = swa_state
                if swa.is_collection_round(cfg, t):
                    new_swa = swa.collect(swa_state, result.state.weights, result.state.param_names)
                record: dict[str, Any] = {"round": R, "train_loss": result.train_loss, "lr": lr,
                                          "time": round(time.perf_counter() - t_start, 4),
                                          "round_time": round(round_time, 4), "clients": list(cohort)}
                if test is not None and _due(cfg.eval_every, R, T):
                    record["test_loss"], record["test_acc"] = evaluate(model, result.state.weights, *test, bf16=cfg.bf16)
                    if new_swa.weights is not None:
                        sw = recompute_batchnorm(model, new_swa.weights, _client_inputs(fdata))
                        record["swa_test_loss"], record["swa_test_acc"] = evaluate(model, sw, *test, bf16=cfg.bf16)
                if tracked:
                    record["curvature"] = tracker.measure(result.state.weights, result.client_weights)
                if keep:
                    for k, w in result.client_weights.items():
                        meta = {"train_loss": result.client_losses[k], "lr": lr}
                        checkpoint.save(_checkpoint(cfg, fed, w, R, "client", k, meta), RunFolder(out).client_checkpoint(R, k))
                with _writing(metrics_file):
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                state, swa_state = result.state, new_swa
                good = (R, state, swa_state)
                if _due(cfg.save_every, R, T) or time.perf_counter() - last_state_write > 300:
                    _save_round(cfg, out, fed, model, fdata, R, state, swa_state, record,
                                time.perf_counter() - t_start, write_global=_due(cfg.save_every, R, T))
                    last_state_write = time.perf_counter()
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.4g}" for k in ("train_loss", "test_acc") if k in record})
                if on_round is not None:
                    on_round(R, record)
    except stops:  # Ctrl-C, a lost rank or SIGTERM under torchrun, a failed Flower node: the last round is kept
        if writer:
            R, s, w = good
            folder.save_state(out, cfg, R, s, w, time.perf_counter() - t_start)
        bar.close()
        raise
    bar.close()
    return state, swa_state


def _save_round(cfg: TrainConfig, out: Path, fed: Federation, model: nn.Module, fdata: FederatedData, R: int,
                state: Any, swa_state: swa.SWAState, record: dict[str, Any], elapsed: float,
                write_global: bool = True) -> None:
    """Global checkpoint, SWA checkpoint, then state.pt (last: it refers to the others)."""
    meta = {k: v for k, v in record.items() if k != "clients"}
    meta["algorithm"] = cfg.algorithm
    if write_global:
        checkpoint.save(_checkpoint(cfg, fed, state.weights, R, "global", metadata=meta), RunFolder(out).global_checkpoint(R))
        if swa_state.weights is not None:
            weights = recompute_batchnorm(model, swa_state.weights, _client_inputs(fdata))
            checkpoint.save(_checkpoint(cfg, fed, weights, R, "swa",
                                        metadata={**meta, "swa_num_models": swa_state.num_models}),
                            RunFolder(out).swa_checkpoint)
    folder.save_state(out, cfg, R, state, swa_state, elapsed)


def _diverged(cfg: TrainConfig, out: Path, fed: Federation, good: tuple[int, Any, swa.SWAState], R: int,
              loss: float, elapsed: float) -> None:
    """Save the last good round and stop with a one-line error."""
    r, state, swa_state = good
    path = RunFolder(out).global_checkpoint(r)
    checkpoint.save(_checkpoint(cfg, fed, state.weights, r, "global", metadata={"diverged_at": R}), path)
    folder.save_state(out, cfg, r, state, swa_state, elapsed)
    raise LandscapeError(
        f"training diverged at round {R} (train loss {loss}); stopped, the last good model (round {r}) is "
        f"{path}; lower --lr (or --rho) and start a new run"
    )
