"""The training loop: config -> data and partition -> rounds -> checkpoints, metrics, resume.

Reads top to bottom: :func:`train` sets up (or resumes) a run, then :func:`_loop` runs one
round per iteration through an engine (:mod:`train.engine`). A run directory holds::

    OUT/config.json                      the resolved TrainConfig, the data spec, run options
    OUT/metrics.jsonl                    one JSON line per round
    OUT/checkpoints/global_r000000.pt    global model (role "global") at round 0, every
                                         save_every rounds and at the end
    OUT/checkpoints/swa.pt               the SWA model (role "swa"), once one model is collected
    OUT/clients/r000100_c0042.pt         local model of client 42 after round 100 (role "client"),
                                         for every sampled client when save_clients_every divides 100
    OUT/state.pt                         everything --resume needs (server state, SWA mean, round)

Every checkpoint is a :mod:`landscape.checkpoint` file carrying the model name and kwargs, the
config, the round, its role, the client id and the data spec with the partition, so the
analysis commands need nothing else. ``round`` counts completed aggregations (0 = initial model);
a client checkpoint of round R holds the local model trained from the global model of round R-1.

Every random stream derives from (seed, round, client id), so a resumed run repeats exactly
what the uninterrupted run would have done: bit for bit on the CPU. All files are written
atomically; ``state.pt`` is written last, after the checkpoints it refers to.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape import checkpoint, data, models
from landscape.errors import LandscapeError
from landscape.files import atomic_write, sha256, write_json
from landscape.operators import resolve_device
from train import algorithms, swa
from train.algorithms.fedavg import FedAvgState
from train.algorithms.fedavgm import FedAvgMState
from train.algorithms.fednsam import FedNSAMState
from train.config import TrainConfig
from train.engine import STREAM_INIT, FederatedData, derive_seed, evaluate, make_engine, sample_cohort

STATE_FORMAT = "landscape-train-state"
SERVER_STATES = {c.__name__: c for c in (FedAvgState, FedAvgMState, FedNSAMState)}


def global_path(out: Path, round: int) -> Path:
    """``OUT/checkpoints/global_r{round:06d}.pt``."""
    return Path(out) / "checkpoints" / f"global_r{round:06d}.pt"


def swa_path(out: Path) -> Path:
    """``OUT/checkpoints/swa.pt``."""
    return Path(out) / "checkpoints" / "swa.pt"


def client_path(out: Path, round: int, client_id: int) -> Path:
    """``OUT/clients/r{round:06d}_c{client_id:04d}.pt``."""
    return Path(out) / "clients" / f"r{round:06d}_c{client_id:04d}.pt"


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
    num_clients, per_client = data.default_federation(name, labels)
    if cfg.split_file:
        parts = data.read_split_file(cfg.split_file, labels)
        pspec = {"num_clients": len(parts), "samples_per_client": None, "alpha": None, "seed": cfg.seed,
                 "split_file": str(Path(cfg.split_file).expanduser().resolve()),
                 "split_sha256": sha256(Path(cfg.split_file).expanduser())}
        cfg = cfg.replace(num_clients=len(parts))
    else:
        cfg = cfg.replace(num_clients=cfg.num_clients or num_clients,
                          samples_per_client=cfg.samples_per_client or per_client)
        parts = data.partition(labels, cfg.num_clients, cfg.samples_per_client, cfg.alpha, cfg.seed,
                               train_ds.num_classes)
        pspec = {"num_clients": cfg.num_clients, "samples_per_client": cfg.samples_per_client,
                 "alpha": cfg.alpha, "seed": cfg.seed, "num_classes": train_ds.num_classes}
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
    """The initial model, its random init seeded by (seed, INIT) without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, 0, -1, STREAM_INIT))
        model = models.build(cfg.model, **cfg.model_kwargs)
    return model.to(getattr(torch, cfg.dtype))


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
# Saving and restoring
# ---------------------------------------------------------------------------------------------

def _checkpoint(cfg: TrainConfig, fed: Federation, weights: dict[str, torch.Tensor], round: int, role: str,
                client_id: int | None = None, metadata: dict[str, Any] | None = None) -> checkpoint.Checkpoint:
    state = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
    return checkpoint.Checkpoint(model_name=cfg.model, model_kwargs=dict(cfg.model_kwargs), state_dict=state,
                                 config=cfg.to_dict(), round=round, role=role, client_id=client_id,
                                 data=json.loads(json.dumps(fed.spec)), metadata=dict(metadata or {}))


def _save_state(out: Path, cfg: TrainConfig, round: int, state: Any, swa_state: swa.SWAState, elapsed: float) -> None:
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    fields["param_names"] = list(fields["param_names"])
    payload = {"format": STATE_FORMAT, "round": round, "config": cfg.to_dict(),
               "server": {"type": type(state).__name__, "fields": fields},
               "swa": {"weights": swa_state.weights, "num_models": swa_state.num_models}, "elapsed": elapsed}
    atomic_write(Path(out) / "state.pt", lambda tmp: torch.save(payload, tmp))


def _load_state(out: Path, device: torch.device) -> tuple[int, Any, swa.SWAState, float]:
    path = Path(out) / "state.pt"
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state file gets one line
        raise LandscapeError(f"cannot read {path} ({type(exc).__name__}); the run cannot be resumed") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise LandscapeError(f"{path} is not a training state file; the run cannot be resumed")
    fields = dict(payload["server"]["fields"])
    fields["param_names"] = tuple(fields["param_names"])
    state = SERVER_STATES[payload["server"]["type"]](**fields)
    s = payload["swa"]
    return int(payload["round"]), state, swa.SWAState(s["weights"], int(s["num_models"])), float(payload["elapsed"])


def _truncate_metrics(path: Path, round: int) -> None:
    """Keep the metric lines of rounds <= ``round`` (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["round"] <= round]
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


def config_difference(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Fields that differ, as ``name: a -> b``."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if da[k] != db[k]]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

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
) -> RunResult:
    """Train ``cfg`` into the run folder ``out`` (see the module docstring for its layout).

    Args:
        cfg: the configuration; unresolved fields (num_clients, model kwargs) are filled from the data.
        out: the run folder.
        data_dir: folder holding CIFAR (``landscape download cifar100 --data-dir DIR``).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA when present).
        engine: ``sequential``, ``batched`` or ``auto`` (batched on CUDA, sequential on CPU).
        resume: continue the run in ``out``; ``cfg`` must equal the stored config.
        progress: show a tqdm progress bar with ETA.
        on_round: called as ``on_round(round, metrics)`` after every round (for tests and tools).

    Raises:
        LandscapeError: bad settings or data, an existing run without ``resume``, a config that
            differs from the run being resumed, or a diverging run (NaN / inf loss: the last good
            model stays saved).
    """
    out = Path(out)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    cfg, fed = load_federation(cfg, data_dir)
    state_file, config_file = out / "state.pt", out / "config.json"
    if resume:
        if not state_file.exists():
            raise LandscapeError(f"nothing to resume in {out} (no state.pt); start it without --resume")
        stored = TrainConfig.from_dict(json.loads(config_file.read_text())["config"])
        diff = config_difference(stored, cfg)
        if diff:
            raise LandscapeError(
                f"--resume with a different config ({'; '.join(diff[:4])}); drop those flags to continue "
                f"the run in {out}, or start a new run with another --out"
            )
    elif state_file.exists() or config_file.exists():
        raise LandscapeError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    model = build_model(cfg)
    dtype = getattr(torch, cfg.dtype)
    fdata = FederatedData.build(fed.train.x, fed.train.y, fed.parts, dev, dtype, cfg.augment,
                                data.black_pixel(fed.train))
    runner = make_engine(engine, model, fdata, cfg, dev)
    algo = algorithms.get(cfg.algorithm)

    if resume:
        start_round, state, swa_state, elapsed = _load_state(out, dev)
        _truncate_metrics(out / "metrics.jsonl", start_round)
    else:
        weights = {k: v.detach().to(dev).clone() for k, v in model.state_dict().items()}
        state, swa_state, start_round, elapsed = algo.init(weights, runner.param_names, cfg), swa.SWAState(), 0, 0.0
        out.mkdir(parents=True, exist_ok=True)
        write_json(config_file, {"config": cfg.to_dict(), "data": fed.spec,
                                 "run": {"device": str(dev), "engine": runner.name, "torch": torch.__version__}})
        checkpoint.save(_checkpoint(cfg, fed, state.weights, 0, "global"), global_path(out, 0))
        _save_state(out, cfg, 0, state, swa_state, 0.0)

    test = None
    if fed.test is not None:
        test = (fed.test.x.to(device=dev, dtype=dtype), fed.test.y.to(dev))
    state, swa_state = _loop(cfg, out, fed, fdata, runner, algo, model, test, start_round, state, swa_state,
                             elapsed, progress, on_round)
    return RunResult(out, cfg.num_rounds, state, swa_state, cfg)


def _client_inputs(fdata: FederatedData) -> torch.Tensor:
    """The inputs held by the clients (the data SWA's BatchNorm statistics are recomputed on)."""
    return fdata.x[torch.cat(fdata.client_indices).to(fdata.x.device)]


def _due(period: int, r: int, last: int) -> bool:
    return r == last or (period > 0 and r % period == 0)


def _loop(cfg: TrainConfig, out: Path, fed: Federation, fdata: FederatedData, runner: Any, algo: Any,
          model: nn.Module, test: tuple[torch.Tensor, torch.Tensor] | None, start_round: int, state: Any,
          swa_state: swa.SWAState, elapsed: float, progress: bool,
          on_round: Callable[[int, dict[str, Any]], None] | None) -> tuple[Any, swa.SWAState]:
    """One iteration per round; (round, state, swa) is only advanced once a round is fully logged."""
    from tqdm.auto import tqdm

    T = cfg.num_rounds
    good = (start_round, state, swa_state)
    t_start = time.perf_counter() - elapsed
    last_state_write = time.perf_counter()
    metrics_file = out / "metrics.jsonl"
    bar = tqdm(total=T, initial=start_round, disable=not progress, unit="round", dynamic_ncols=True,
               desc=f"{cfg.algorithm}")
    try:
        with open(metrics_file, "a") as log:
            for t in range(start_round, T):
                R = t + 1
                lr = swa.client_lr(cfg, t)
                cohort = sample_cohort(cfg.seed, t, cfg.num_clients, cfg.clients_per_round)
                keep = cfg.save_clients_every > 0 and R % cfg.save_clients_every == 0
                t0 = time.perf_counter()
                result = runner.run_round(algo, state, t, cohort, lr, keep_clients=keep)
                round_time = time.perf_counter() - t0
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
                if keep:
                    for k, w in result.client_weights.items():
                        meta = {"train_loss": result.client_losses[k], "lr": lr}
                        checkpoint.save(_checkpoint(cfg, fed, w, R, "client", k, meta), client_path(out, R, k))
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
    except KeyboardInterrupt:
        R, s, w = good
        _save_state(out, cfg, R, s, w, time.perf_counter() - t_start)
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
        checkpoint.save(_checkpoint(cfg, fed, state.weights, R, "global", metadata=meta), global_path(out, R))
        if swa_state.weights is not None:
            weights = recompute_batchnorm(model, swa_state.weights, _client_inputs(fdata))
            checkpoint.save(_checkpoint(cfg, fed, weights, R, "swa", metadata={**meta, "swa_num_models": swa_state.num_models}),
                            swa_path(out))
    _save_state(out, cfg, R, state, swa_state, elapsed)


def _diverged(cfg: TrainConfig, out: Path, fed: Federation, good: tuple[int, Any, swa.SWAState], R: int,
              loss: float, elapsed: float) -> None:
    """Save the last good round and stop with a one-line error."""
    r, state, swa_state = good
    path = global_path(out, r)
    checkpoint.save(_checkpoint(cfg, fed, state.weights, r, "global", metadata={"diverged_at": R}), path)
    _save_state(out, cfg, r, state, swa_state, elapsed)
    raise LandscapeError(
        f"training diverged at round {R} (train loss {loss}); stopped, the last good model (round {r}) is "
        f"{path}; lower --lr (or --rho) and start a new run"
    )
