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
    OUT/split.csv                        a copy of --split-file, which the checkpoints point at

Every checkpoint is a :mod:`landscape.checkpoint` file carrying the model name and kwargs, the
config, the round, its role, the client id and the data spec with the partition, so the
analysis commands need nothing else. ``round`` counts completed aggregations (0 = initial model);
a client checkpoint of round R holds the local model trained from the global model of round R-1.

Every random stream derives from (seed, round, client id), so a resumed run repeats exactly
what the uninterrupted run would have done: bit for bit on the CPU. All files are written
atomically; ``state.pt`` is written last, after the checkpoints it refers to.

One process writes a run folder at a time (``OUT/.lock``, see :func:`landscape.files.exclusive`).
Everything that can refuse a config (the data, the partition, the model and one forward pass on
one sample) runs before the folder is touched. A folder whose first round never completed (no
``state.pt``, or only the round-0 one and no logged round) is started again as if it were new;
a killed run is continued with ``resume``. Nothing read from the folder runs code: ``state.pt``
is loaded with ``weights_only`` and checked against the model before it is used, and
:func:`stored_config` is how the command line gets a config back (with the model factories and
the paths it names refused unless the user names them again).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape import checkpoint, data, models
from landscape.errors import LandscapeError, os_error, user_code
from landscape.files import atomic_write, exclusive, is_inside, save_torch, sha256, write_json
from landscape.operators import resolve_device
from train import algorithms, swa
from train.config import TrainConfig
from train.engine import STREAM_INIT, FederatedData, derive_seed, evaluate, make_engine, sample_cohort

STATE_FORMAT = "landscape-train-state"


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
    """The initial model, its random init seeded by (seed, INIT) without touching the global RNG.

    Raises:
        LandscapeError: kwargs the factory rejects (whatever it raises, as one line).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, 0, -1, STREAM_INIT))
        model = models.build(cfg.model, **cfg.model_kwargs)
    return model.to(getattr(torch, cfg.dtype))


def check_model_fits(model: nn.Module, ds: data.Dataset, dtype: torch.dtype) -> None:
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
        with torch.no_grad(), user_code(f"model on one input of shape {shape} from the data",
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
# Saving and restoring
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


def _save_state(out: Path, cfg: TrainConfig, round: int, state: Any, swa_state: swa.SWAState, elapsed: float) -> None:
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    fields["param_names"] = list(fields["param_names"])
    payload = {"format": STATE_FORMAT, "round": round, "config": cfg.to_dict(),
               "server": {"type": type(state).__name__, "fields": fields},
               "swa": {"weights": swa_state.weights, "num_models": swa_state.num_models}, "elapsed": elapsed}
    save_torch(Path(out) / "state.pt", payload)


def _read_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The raw payload of a state file (tensors and plain containers only), or one line."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except OSError as exc:
        raise os_error(exc, "cannot read the training state") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable state file gets one line
        raise LandscapeError(f"cannot read {path} ({type(exc).__name__}); the run cannot be resumed",
                             fix="continue from a copy of the folder, or start a new run with another --out") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise LandscapeError(f"{path} is not a training state file; the run cannot be resumed",
                             fix="start a new run with another --out")
    return payload


def _same_tensors(found: Any, expected: dict[str, torch.Tensor]) -> str | None:
    """Why ``found`` is not a dict of tensors named, shaped and typed like ``expected`` (None if it is)."""
    if not isinstance(found, dict) or set(found) != set(expected):
        return "its tensors are not the model's"
    for k, v in expected.items():
        f = found[k]
        if not isinstance(f, torch.Tensor) or f.shape != v.shape or f.dtype != v.dtype:
            return f"'{k}' is not a {v.dtype} tensor of shape {tuple(v.shape)}"
    return None


def _state_problem(payload: dict[str, Any], cfg: TrainConfig, expected: Any) -> str | None:
    """What is wrong with a state payload for this config and model (None: nothing)."""
    r = payload.get("round")
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= cfg.num_rounds:
        return f"round {r!r} is not a round of this run"
    if payload.get("config") != cfg.to_dict():
        return "it was written by another config"
    server = payload.get("server")
    kind = type(expected).__name__
    if not isinstance(server, dict) or server.get("type") != kind:
        found = server.get("type") if isinstance(server, dict) else None
        return f"server state type {found!r} is not {kind}, the state of {cfg.algorithm}"
    fields = server.get("fields")
    names = [f.name for f in dataclasses.fields(expected)]
    if not isinstance(fields, dict) or sorted(fields) != sorted(names):
        return f"the server state does not hold exactly {', '.join(names)}"
    for name in names:
        want, got = getattr(expected, name), fields[name]
        if name == "param_names":
            if got != list(want):
                return "its parameter names are not the model's"
        elif name == "round":
            if got != r:
                return f"the server state is of round {got!r}, not {r}"
        elif isinstance(want, dict):
            problem = _same_tensors(got, want)
            if problem:
                return f"server {name}: {problem}"
        else:
            return f"unexpected server field {name}"
    sw = payload.get("swa")
    if not isinstance(sw, dict) or isinstance(sw.get("num_models"), bool) or not isinstance(sw.get("num_models"), int):
        return "its SWA state is malformed"
    if (sw.get("weights") is None) != (sw["num_models"] == 0) or sw["num_models"] < 0:
        return "its SWA model count does not match its SWA weights"
    if sw["weights"] is not None:
        problem = _same_tensors(sw["weights"], expected.weights)
        if problem:
            return f"SWA weights: {problem}"
    e = payload.get("elapsed")
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not (math.isfinite(e) and e >= 0):
        return f"elapsed time {e!r} is not a duration"
    return None


def _load_state(out: Path, device: torch.device, cfg: TrainConfig, expected: Any) -> tuple[int, Any, swa.SWAState, float]:
    """The round, server state, SWA state and elapsed time stored in ``OUT/state.pt``.

    ``expected`` is the freshly initialized server state: the stored one must have its type and
    every tensor its name, shape and dtype, so a damaged or foreign file is one line here, not
    a traceback from inside the engine.
    """
    path = Path(out) / "state.pt"
    payload = _read_state(path, device)
    problem = _state_problem(payload, cfg, expected)
    if problem:
        raise LandscapeError(f"{path} does not fit this run ({problem}); the run cannot be resumed",
                             fix="continue from a copy of the folder, or start a new run with another --out")
    fields = dict(payload["server"]["fields"])
    fields["param_names"] = tuple(fields["param_names"])
    state = type(expected)(**fields)
    s = payload["swa"]
    return payload["round"], state, swa.SWAState(s["weights"], s["num_models"]), float(payload["elapsed"])


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; lines that do not parse (a write cut by a kill or a
    full disk, a hand edit) are left out."""
    return [record for _, record in _metric_lines(Path(path))]


def _metric_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise os_error(exc, "cannot read the metrics log") from None
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        r = record.get("round") if isinstance(record, dict) else None
        if isinstance(r, int) and not isinstance(r, bool):
            out.append((line, record))
    return out


def _truncate_metrics(path: Path, round: int) -> None:
    """Keep the metric lines of rounds <= ``round`` that parse (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    keep = [line for line, record in _metric_lines(path) if record["round"] <= round]
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


def _logged_a_round(out: Path) -> bool:
    """Whether ``metrics.jsonl`` records a completed round."""
    return any(record["round"] >= 1 for record in read_metrics(Path(out) / "metrics.jsonl"))


def read_config(out: str | Path) -> dict[str, Any]:
    """The TrainConfig fields stored in ``OUT/config.json`` (checked as :class:`TrainConfig` does).

    Raises:
        LandscapeError: no such file, or one that is not JSON, lacks its ``config`` or holds
            options a config cannot have; one line each.
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        raise LandscapeError(f"nothing to resume in {out} (no config.json); start it without --resume")
    try:
        stored = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise os_error(exc, "cannot read the run's config") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise LandscapeError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}); the run cannot be resumed",
                             fix="restore the file, or start a new run with another --out") from None
    values = stored.get("config") if isinstance(stored, dict) else None
    if not isinstance(values, dict):
        raise LandscapeError(f"{path} has no 'config' object; the run cannot be resumed",
                             fix="restore the file, or start a new run with another --out")
    try:
        TrainConfig.from_dict(values)
    except LandscapeError as exc:
        raise LandscapeError(f"{path} holds an invalid config: {exc}") from None
    return dict(values)


def stored_config(out: str | Path, *, named: Collection[str] = (), trust_stored_factory: bool = False) -> dict[str, Any]:
    """The config of the run in ``out``, for resuming it, with nothing in it used on the file's word.

    A file is not the user's say-so. A ``package.module:factory`` model in ``config.json`` is
    code that building the model would import and run: it is refused unless the user names it
    again (``model`` in ``named``) or passes ``trust_stored_factory``. A split file or a data
    path (``dataset`` as a file, or its ``dir=``) is read only if it lies inside the run folder
    or the user names it again. Registered model names and data set names are always fine.

    Args:
        out: the run folder.
        named: the TrainConfig fields the user gives again (on the command line or through a
            preset); their stored values are replaced, so they are not checked.
        trust_stored_factory: run the stored model factory (for run folders one trusts).

    Raises:
        LandscapeError: a damaged config.json (see :func:`read_config`), or a stored factory or
            path that needs the user's say-so, with the flag that gives it.
    """
    values = read_config(out)
    path = Path(out) / "config.json"
    model = values.get("model", TrainConfig.model)
    if ":" in model and "model" not in named and not trust_stored_factory:
        raise LandscapeError(
            f"{path} names the model factory '{model}', code that resuming would import and run",
            fix=f"if you trust this run folder, pass --model {model} (or --trust-stored-factory)")
    split = values.get("split_file")
    if split is not None and "split_file" not in named and not is_inside(split, Path(out)):
        raise LandscapeError(f"{path} names the split file {split}, outside the run folder",
                             fix=f"to read it, pass --split-file {split}")
    dataset = values.get("dataset", TrainConfig.dataset)
    if "dataset" not in named:
        spec = data.parse_spec(dataset)
        for key in ("path", "dir"):
            if spec.get(key) is not None and not is_inside(str(spec[key]), Path(out)):
                raise LandscapeError(f"{path} names the data {spec[key]}, outside the run folder",
                                     fix=f"to read it, pass --dataset {dataset}")
    return values


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
        LandscapeError: bad settings or data, a model that does not fit the data (all before
            ``out`` is touched); another process writing ``out``; an existing run without
            ``resume`` (a run whose first round never completed is started again instead); with
            ``resume``, such a run, a config that differs from the stored one, or a damaged
            ``state.pt``; a diverging run (NaN / inf loss: the last good model stays saved).
        OSError: a failed write (full disk, ...); the folder stays resumable.
    """
    out = Path(out)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    # Everything that can refuse the config, before the folder is touched: the data and the
    # partition, the model and one forward pass on one sample, the engine.
    cfg, fed = load_federation(cfg, data_dir)
    model = build_model(cfg)
    dtype = getattr(torch, cfg.dtype)
    check_model_fits(model, fed.train, dtype)
    fdata = FederatedData.build(fed.train.x, fed.train.y, fed.parts, dev, dtype, cfg.augment,
                                data.black_pixel(fed.train))
    runner = make_engine(engine, model, fdata, cfg, dev)
    algo = algorithms.get(cfg.algorithm)
    weights = {k: v.detach().to(dev).clone() for k, v in model.state_dict().items()}
    initial = algo.init(weights, runner.param_names, cfg)
    if resume and not (out / "config.json").is_file():  # checked before the lock, which creates the folder
        raise LandscapeError(f"nothing to resume in {out} (no config.json); start it without --resume")
    if out.exists() and not out.is_dir():
        raise LandscapeError("--out is a file, not a folder", where=out, fix="give a folder for the run")

    # One writer per run folder: what it holds is read and decided on under the lock. A folder
    # this call creates is removed again if the run cannot even be set up in it (a full disk).
    new = [p for p in (out, *out.parents) if not p.exists()]
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(out, folder=True))
        except OSError as exc:
            _remove_new_folders(new)
            if exc.filename is None:
                exc.filename = str(out / ".lock")
            raise os_error(exc, "cannot create or lock the run folder") from None
        _remove_partial_writes(out)
        _keep_split_file(out, fed)
        if resume:
            start_round, state, swa_state, elapsed = _resume(out, cfg, dev, initial)
        else:
            try:
                _start(out, cfg, fed, runner, dev, initial)
            except BaseException:
                _remove_new_folders(new)
                raise
            state, swa_state, start_round, elapsed = initial, swa.SWAState(), 0, 0.0
        test = None
        if fed.test is not None:
            test = (fed.test.x.to(device=dev, dtype=dtype), fed.test.y.to(dev))
        state, swa_state = _loop(cfg, out, fed, fdata, runner, algo, model, test, start_round, state, swa_state,
                                 elapsed, progress, on_round)
    return RunResult(out, cfg.num_rounds, state, swa_state, cfg)


def _keep_split_file(out: Path, fed: Federation) -> None:
    """Copy a run's split file into its folder (``OUT/split.EXT``) and record the copy in the checkpoints.

    A checkpoint only points at files inside its run folder (see ``landscape.cli.common``), so
    ``landscape hessian CKPT --data client`` rebuilds the client's data without ``--split-file``;
    the copy is checked against the split's SHA-256 like the original.
    """
    part = fed.spec.get("partition") or {}
    if not part.get("split_file"):
        return
    source = Path(part["split_file"])
    copy_path = out / f"split{source.suffix}"
    if not (copy_path.is_file() and sha256(copy_path) == part["split_sha256"]):
        payload = source.read_bytes()
        atomic_write(copy_path, lambda tmp: tmp.write_bytes(payload))
    part["split_file"] = str(copy_path.resolve())


def _never_completed(out: Path) -> bool:
    """Whether the run in ``out`` has no completed round to lose: no round logged, and no
    ``state.pt`` or only the round-0 one (set-up was cut short, or round 1 was)."""
    if _logged_a_round(out):
        return False
    state_file = out / "state.pt"
    if not state_file.exists():
        return True
    try:
        return _read_state(state_file).get("round") == 0
    except LandscapeError:
        return False  # unreadable: not ours to overwrite


def _start(out: Path, cfg: TrainConfig, fed: Federation, runner: Any, dev: torch.device, initial: Any) -> None:
    """Set up a new run: config.json, the round-0 model, then state.pt (what --resume needs)."""
    config_file = out / "config.json"
    holds_run = any((out / name).exists() for name in ("config.json", "state.pt", "metrics.jsonl"))
    if holds_run and not _never_completed(out):
        raise LandscapeError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if holds_run:  # a set-up or first round cut short: nothing in it to keep, start over
        _remove_run_files(out)
    try:
        write_json(config_file, {"config": cfg.to_dict(), "data": fed.spec,
                               "run": {"device": str(dev), "engine": runner.name, "torch": torch.__version__}})
        checkpoint.save(_checkpoint(cfg, fed, initial.weights, 0, "global"), global_path(out, 0))
        _save_state(out, cfg, 0, initial, swa.SWAState(), 0.0)
    except BaseException:  # a failed set-up (a full disk) leaves no half-made run behind
        _remove_run_files(out)
        raise


def _resume(out: Path, cfg: TrainConfig, dev: torch.device, initial: Any) -> tuple[int, Any, swa.SWAState, float]:
    """The stored state of the run in ``out`` after checking it is this config's and has a round to continue."""
    if _never_completed(out):
        raise LandscapeError(f"the first round of the run in {out} never completed, so there is nothing to resume",
                             fix="start it again without --resume")
    if not (out / "state.pt").exists():
        raise LandscapeError(f"{out} logs rounds but has no state.pt; the run cannot be resumed",
                             fix="start a new run with another --out")
    stored = TrainConfig.from_dict(read_config(out))
    diff = config_difference(stored, cfg)
    if diff:
        raise LandscapeError(
            f"--resume with a different config ({'; '.join(diff[:4])}); drop those flags to continue "
            f"the run in {out}, or start a new run with another --out"
        )
    start_round, state, swa_state, elapsed = _load_state(out, dev, cfg, initial)
    if start_round < cfg.num_rounds:  # a complete run is left as it is
        _truncate_metrics(out / "metrics.jsonl", start_round)
    return start_round, state, swa_state, elapsed


#: The files a run writes, as glob patterns relative to the run folder.
RUN_FILES = ("metrics.jsonl", "clients/r*_c*.pt", "checkpoints/global_r*.pt", "checkpoints/swa.pt", "state.pt",
             "config.json", "split.*")


def _remove_run_files(out: Path) -> None:
    """Remove what an earlier, never completed attempt wrote (only the run's own file names)."""
    for pattern in RUN_FILES:
        for path in sorted(out.glob(pattern)):
            path.unlink(missing_ok=True)


def _remove_new_folders(new: list[Path]) -> None:
    """Remove the folders a failed set-up created (``new``: the run folder first, then the
    parents it needed) and the lock in them; a folder holding anything else stays."""
    if not new:
        return
    out = new[0]
    _remove_partial_writes(out)
    (out / ".lock").unlink(missing_ok=True)
    for folder in (out / "checkpoints", out / "clients", *new):
        try:
            folder.rmdir()
        except OSError:
            pass


def _remove_partial_writes(out: Path) -> None:
    """Remove the temporary files of writes a kill cut short (``.NAME.*.tmp`` of the run's files).

    Only the lock holder writes these names, and it holds the lock now.
    """
    for pattern in RUN_FILES:
        folder, _, name = pattern.rpartition("/")
        for path in (out / folder if folder else out).glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)


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
            checkpoint.save(_checkpoint(cfg, fed, weights, R, "swa",
                                         metadata={**meta, "swa_num_models": swa_state.num_models}), swa_path(out))
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
