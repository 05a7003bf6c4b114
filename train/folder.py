"""Training's side of the run folder (layout: :mod:`landscape.run_folder`): ``config.json``, ``state.pt``,
``metrics.jsonl`` writes, and the clean-up of attempts cut short.

:func:`landscape.train.run.train` writes a run folder. Every checkpoint is a
:mod:`landscape.checkpoint` file carrying the model name and kwargs, the config, the round, its
role, the client id and the data spec with the partition, so the analysis commands need nothing
else. All files are written atomically; ``state.pt`` is written last, after the checkpoints it
refers to. A folder whose first round never completed (no ``state.pt``, or only the round-0 one
and no logged round) is started again as if it were new. Nothing read from the folder runs code:
``state.pt`` is loaded with ``weights_only`` and checked against the model before it is used,
and :func:`stored_config` is how the command line gets a config back (with the model factories
and the paths it names refused unless the user names them again).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from landscape import data
from landscape.errors import LandscapeError, os_error
from landscape.files import atomic_write, is_inside, save_torch, sha256
from landscape.run_folder import RunFolder
from landscape.splits import SUFFIXES
from landscape.train import swa
from landscape.train.config import TrainConfig

STATE_FORMAT = "landscape-train-state"


def save_state(out: Path, cfg: TrainConfig, round: int, state: Any, swa_state: swa.SWAState, elapsed: float) -> None:
    """Write ``OUT/state.pt``: the round, config, server state, SWA state and elapsed time."""
    payload = {"format": STATE_FORMAT, "round": round, "config": cfg.to_dict(), "server": state.to_dict(),
               "swa": {"weights": swa_state.weights, "num_models": swa_state.num_models}, "elapsed": elapsed}
    save_torch(RunFolder(Path(out)).state_file, payload)


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


def _same_config(stored: Any, cfg: TrainConfig) -> bool:
    """Whether a state file's config is ``cfg``; options added since it was written take the value
    that reproduces the behaviour from before they existed (:meth:`TrainConfig.stored`, else the
    option's default), so a state file of an older release resumes.
    """
    if not isinstance(stored, dict):
        return False
    try:
        return TrainConfig.from_dict(TrainConfig.stored(stored)).to_dict() == cfg.to_dict()
    except (LandscapeError, TypeError):
        return False


def _state_problem(payload: dict[str, Any], cfg: TrainConfig, expected: Any) -> str | None:
    """What is wrong with a state payload for this config and model (None: nothing)."""
    r = payload.get("round")
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= cfg.num_rounds:
        return f"round {r!r} is not a round of this run"
    if not _same_config(payload.get("config"), cfg):
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


def load_state(out: Path, device: torch.device, cfg: TrainConfig, expected: Any) -> tuple[int, Any, swa.SWAState, float]:
    """The round, server state, SWA state and elapsed time stored in ``OUT/state.pt``.

    ``expected`` is the freshly initialized server state: the stored one must have its type and
    every tensor its name, shape and dtype, so a damaged or foreign file is one line here, not
    a traceback from inside the engine.
    """
    path = RunFolder(Path(out)).state_file
    payload = _read_state(path, device)
    problem = _state_problem(payload, cfg, expected)
    if problem:
        raise LandscapeError(f"{path} does not fit this run ({problem}); the run cannot be resumed",
                             fix="continue from a copy of the folder, or start a new run with another --out")
    state = type(expected).from_dict(payload["server"])
    s = payload["swa"]
    return payload["round"], state, swa.SWAState(s["weights"], s["num_models"]), float(payload["elapsed"])


def truncate_metrics(out: Path, round: int) -> None:
    """Keep the metric lines of rounds <= ``round`` that parse (a resumed run rewrites the rest)."""
    path = RunFolder(Path(out)).metrics_file
    if not path.exists():
        return
    keep = [line for line, record in RunFolder(Path(out)).metric_lines() if record["round"] <= round]
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


def _logged_a_round(out: Path) -> bool:
    """Whether ``metrics.jsonl`` records a completed round."""
    return any(record["round"] >= 1 for record in RunFolder(Path(out)).metrics())


def read_config(out: str | Path) -> dict[str, Any]:
    """The TrainConfig fields stored in ``OUT/config.json`` (checked as :class:`TrainConfig` does).

    Raises:
        LandscapeError: no such file, or one that is not JSON, lacks its ``config`` or holds
            options a config cannot have; one line each.
    """
    path = RunFolder(Path(out)).config_file
    if not path.is_file():
        raise LandscapeError(f"nothing to resume in {out} (no config.json); start it without --resume")
    try:
        stored = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise os_error(exc, "cannot read the run's config") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise LandscapeError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}); the run cannot be resumed",
                             fix="restore the file, or start a new run with another --out") from None
    values = TrainConfig.stored(stored.get("config")) if isinstance(stored, dict) else None
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
    path = RunFolder(Path(out)).config_file
    model = values.get("model", TrainConfig.model)
    if isinstance(model, str) and ":" in model and "model" not in named and not trust_stored_factory:
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


def keep_split_file(out: Path, spec: dict[str, Any]) -> None:
    """Copy a run's split file into its folder (``OUT/split.csv`` or ``OUT/split.json``, by its
    detected format, :data:`landscape.splits.SUFFIXES`) and record the copy in the
    checkpoints' data ``spec`` (its partition's ``split_file``, in place).

    A checkpoint only points at files inside its run folder (see ``landscape.cli.common``), so
    ``landscape hessian CKPT --data client`` rebuilds the client's data without ``--split-file``;
    the copy is checked against the split's SHA-256 like the original.
    """
    part = spec.get("partition") or {}
    if not part.get("split_file"):
        return
    source = Path(part["split_file"])
    copy_path = RunFolder(out).split_copy(SUFFIXES[part["split_format"]])
    if not (copy_path.is_file() and sha256(copy_path) == part["split_sha256"]):
        payload = source.read_bytes()
        atomic_write(copy_path, lambda tmp: tmp.write_bytes(payload))
    part["split_file"] = str(copy_path.resolve())


def never_completed(out: Path) -> bool:
    """Whether the run in ``out`` has no completed round to lose: no round logged, and no
    ``state.pt`` or only the round-0 one (set-up was cut short, or round 1 was)."""
    if _logged_a_round(out):
        return False
    state_file = RunFolder(out).state_file
    if not state_file.exists():
        return True
    try:
        return _read_state(state_file).get("round") == 0
    except LandscapeError:
        return False  # unreadable: not ours to overwrite


#: The files a run writes, as glob patterns relative to the run folder.
RUN_FILES = ("metrics.jsonl", "clients/r*_c*.pt", "checkpoints/global_r*.pt", "checkpoints/swa.pt", "state.pt",
             "config.json", "split.*")


def remove_run_files(out: Path) -> None:
    """Remove what an earlier, never completed attempt wrote (only the run's own file names)."""
    for pattern in RUN_FILES:
        for path in sorted(out.glob(pattern)):
            path.unlink(missing_ok=True)


def remove_new_folders(new: list[Path]) -> None:
    """Remove the folders a failed set-up created (``new``: the run folder first, then the
    parents it needed) and the lock in them; a folder holding anything else stays."""
    if not new:
        return
    out = new[0]
    remove_partial_writes(out)
    (out / ".lock").unlink(missing_ok=True)
    for folder in (out / "checkpoints", out / "clients", *new):
        try:
            folder.rmdir()
        except OSError:
            pass


def remove_partial_writes(out: Path) -> None:
    """Remove the temporary files of writes a kill cut short (``.NAME.*.tmp`` of the run's files).

    Only the lock holder writes these names, and it holds the lock now.
    """
    for pattern in RUN_FILES:
        folder, _, name = pattern.rpartition("/")
        for path in (out / folder if folder else out).glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
