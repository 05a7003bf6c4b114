"""Flags shared by the analysis subcommands, and their translation to library objects."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from landscape import checkpoint, data, directions, distributed, files
from landscape.checkpoint import Checkpoint
from landscape.errors import LandscapeError, user_code
from landscape.recorded import RecordedData
from landscape.imports import import_callable
from landscape.objective import LOSSES, default_forward


def rank0_writing(*paths: str | None) -> AbstractContextManager[None]:
    """:func:`landscape.files.writing` of a command's outputs on the rank that writes them (the
    only process, or rank 0 under torchrun); nothing on the other ranks, which neither lock nor write."""
    return files.writing(*paths) if distributed.is_main() else contextlib.nullcontext()


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` / ``--model-kwargs`` / ``--state-key`` / ``--trust-stored-factory``."""
    p.add_argument("--model", metavar="NAME", help="architecture for plain state_dicts: a name from "
                   "`landscape models` or package.module:factory (default: the one stored in the checkpoint)")
    p.add_argument("--model-kwargs", metavar="JSON", type=parse_json_object, default=None,
                   help='keyword arguments for the model factory, e.g. \'{"num_classes": 10}\'')
    p.add_argument("--state-key", metavar="KEY", help="the state dict to use in a checkpoint written by other "
                   "code that holds several, by its key, dotted for nested ones: e.g. swa_model or model_state_dict "
                   "in fedsam's, state_dict.model for Lightning's model.* weights (default: the only state dict "
                   "in the file; several are an error that lists them)")
    p.add_argument("--trust-stored-factory", action="store_true",
                   help="import and call the package.module:factory that a checkpoint names as its model: this "
                   "RUNS CODE the file chose, so use it only for files you trust (default: only registered models "
                   "load from a file; name your own factory with --model)")


def add_data_args(p: argparse.ArgumentParser, default_samples: int | None = None) -> None:
    """``--data`` / ``--data-dir`` / ``--split-file`` / ``--num-samples`` / ``--batch-size``."""
    p.add_argument("--data", metavar="SPEC", help="data set: digits, synthetic[:n=..,classes=..], cifar10, "
                   "cifar100 (options after ':', e.g. digits:split=test), a .npz/.pt file with x and y, or "
                   "client / client:K for a client's own training data from the checkpoint's partition "
                   "(default: the checkpoint's training data)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding CIFAR in its python format (default: "
                   "$LANDSCAPE_DATA, else the folder the checkpoint names if it lies in its run folder, else ./data)")
    p.add_argument("--split-file", metavar="FILE", help="the split file the checkpoint's partition was built "
                   "from (fedsam's JSON, a JSON {client: [image indices]} or a CSV user_id,image_id,class), when "
                   "it lies outside the run folder (a checkpoint only points at files in its run folder)")
    p.add_argument("--num-samples", type=integer(1), default=default_samples, metavar="N",
                   help=f"use a seeded random subset of N samples (default: {default_samples or 'all'})")
    p.add_argument("--batch-size", type=integer(1), default=None, metavar="B",
                   help="samples per forward pass (default: hessian, surface and plane cut the data into "
                   "cache-sized pieces, flatness takes it all at once; the results are the same up to rounding)")


def add_objective_args(p: argparse.ArgumentParser, params: bool = True) -> None:
    """``--loss`` / ``--ignore-index`` (and ``--params``): the objective every analysis measures."""
    p.add_argument("--loss", default="cross-entropy", metavar="NAME",
                   help=f"the loss: {', '.join(LOSSES)} (torch.nn.functional's, mean reduction) or your own "
                   "package.module:function(outputs, targets) -> scalar mean (default: cross-entropy)")
    p.add_argument("--ignore-index", type=integer(-(2**31)), default=-100, metavar="LABEL",
                   help="the label cross-entropy and nll leave out, e.g. 255 for segmentation (default: -100)")
    if params:
        p.add_argument("--params", metavar="REGEX", help="only the parameters whose names match REGEX vary "
                       "(re.search, e.g. '^fc' for the classifier block); the others stay fixed (default: all)")


def loss_of(args: argparse.Namespace) -> str | Callable[..., Any]:
    """The ``--loss`` flag as :class:`~landscape.objective.Objective` takes it: a name, or the user's function."""
    if args.loss in LOSSES:
        return args.loss
    if ":" in args.loss:
        return import_callable(args.loss, "loss")
    raise LandscapeError(f"unknown loss '{args.loss}'",
                         fix=f"choose one of {', '.join(LOSSES)} or give package.module:function")


def add_compute_args(p: argparse.ArgumentParser) -> None:
    """``--device`` / ``--dtype`` / ``--seed``."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="precision (default: float32)")
    p.add_argument("--seed", type=integer(0, 2**63 - 1), default=0, help="random seed (default: 0)")


def integer(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``, checked where it is parsed."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"in [{low}, {high:,}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float within the bounds (``low_open``: ``> low`` instead of ``>= low``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            parts = ([f"{'>' if low_open else '>='} {low:g}"] if low is not None else []) + (
                [f"{'<' if high_open else '<='} {high:g}"] if high is not None else [])
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + ' and '.join(parts) if parts else ''}, "
                                             f"got {text}")
        return value
    return parse


#: A relative tolerance: 0 < tol < 1.
TOLERANCE = number(0.0, 1.0, low_open=True, high_open=True)


def parse_json_object(text: str) -> dict[str, Any]:
    """argparse type for JSON objects, with a one-line error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_classes\": 10}}', got {text}")
    return value


#: Flags whose values are files a command reads (checked against its outputs before any work).
INPUT_FLAGS = ("checkpoint", "to", "trajectory", "models", "project", "clients", "client_data", "data",
               "directions_file", "split_file", "results")


def inputs(args: argparse.Namespace) -> list[str]:
    """Every file path among the flags a command reads (data specs that are not files drop out later)."""
    found: list[str] = []
    for flag in INPUT_FLAGS:
        value = getattr(args, flag, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and Path(item).exists():
                found.append(item)
    return found


def load_checkpoint(path: str, args: argparse.Namespace) -> checkpoint.Checkpoint:
    """Load a checkpoint (or a plain state_dict named by ``--model``) as the flags say.

    A ``package.module:factory`` the file names runs only with ``--trust-stored-factory``;
    data paths the file names are used only inside its run folder (:mod:`landscape.recorded`);
    NaN or inf weights are refused here, the same for every command.
    """
    ckpt = checkpoint.load(path, model=args.model, model_kwargs=args.model_kwargs,
                           trust_factory=args.trust_stored_factory, state_key=args.state_key)
    ckpt.check_finite()
    return ckpt


def recorded(ckpt: Checkpoint, args: argparse.Namespace) -> RecordedData:
    """The data ``ckpt`` records, with the user's ``--data-dir`` and ``--split-file``."""
    return RecordedData(ckpt, getattr(args, "data_dir", None), getattr(args, "split_file", None))


def load_data(
    spec: str | None, ckpt: checkpoint.Checkpoint, args: argparse.Namespace, num_samples: int | None,
) -> data.Dataset:
    """The data named by ``--data``, else the training data recorded in the checkpoint.

    ``--data client`` is the checkpoint's own client's training data and ``--data client:K``
    client K's, both rebuilt from the partition the checkpoint records (e.g. lambda_max of a
    local model on its local data, [C22] Fig. 4).
    """
    if spec is None:
        dataset = recorded(ckpt, args).train()
    elif spec == "client" or spec.startswith("client:"):
        dataset = recorded(ckpt, args).client(_client_id(spec))
    else:
        dataset = data.load(spec, args.data_dir)
    dataset = dataset.sample(num_samples, args.seed)
    check_labels(dataset, ckpt, args.loss, args.ignore_index)
    return dataset


def _client_id(spec: str) -> int | None:
    """K of ``client:K`` (None for ``client``: the checkpoint's own)."""
    _, _, client = spec.partition(":")
    if not client:
        return None
    try:
        return int(client)
    except ValueError:
        raise LandscapeError(f"--data {spec}: the client id must be an integer, e.g. --data client:3") from None


def check_labels(dataset: data.Dataset, ckpt: checkpoint.Checkpoint, loss: object = "cross-entropy",
                 ignore_index: int = -100) -> None:
    """The model must take the inputs; with a class-label loss, labels must be its output classes."""
    model = ckpt.build_model()
    shape = ({k: tuple(v.shape[1:]) for k, v in dataset.inputs.items()} if dataset.named
             else tuple(dataset.x.shape[1:]))
    with user_code(f"model '{ckpt.model_name}' on inputs of shape {shape}",
                   "check that --data fits the model (and --model-kwargs)"):
        with torch.no_grad():
            out, _ = default_forward(model, dataset.batch(0, 1))
    if not isinstance(out, torch.Tensor):
        raise LandscapeError(f"model '{ckpt.model_name}' returns {type(out).__name__}, not a tensor")
    if loss not in ("cross-entropy", "nll"):
        return
    if dataset.y.is_floating_point():
        raise LandscapeError(f"{loss} needs integer class labels, but the data holds {dataset.y.dtype} targets",
                             fix="use --loss mse (or bce-with-logits, or your own) for real-valued targets")
    if out.ndim < 2:
        raise LandscapeError(f"model '{ckpt.model_name}' returns shape {tuple(out.shape)}, not (batch, classes, ...)")
    counted = dataset.y[dataset.y != ignore_index]
    if counted.numel() and int(counted.max()) >= out.shape[1]:
        raise LandscapeError(
            f"labels go up to {int(counted.max())} but model '{ckpt.model_name}' has {out.shape[1]} outputs; "
            "check --data or --model-kwargs num_classes"
        )


def marker_label(ckpt: Checkpoint) -> str:
    """'global', 'client 3', 'swa' from the checkpoint's role, else the file name."""
    if ckpt.role == "client" and ckpt.client_id is not None:
        return f"client {ckpt.client_id}"
    return ckpt.role or (ckpt.path.stem if ckpt.path else "model")


def load_same_architecture(paths: list[str], args: argparse.Namespace) -> list[Checkpoint]:
    """Load checkpoints and check that they share one architecture (one-line error otherwise)."""
    ckpts = [load_checkpoint(p, args) for p in paths]
    for c in ckpts[1:]:
        if (c.model_name, c.model_kwargs) != (ckpts[0].model_name, ckpts[0].model_kwargs):
            raise LandscapeError(
                f"checkpoints have different architectures: {paths[0]} is {ckpts[0].model_name} "
                f"{ckpts[0].model_kwargs}, {c.path} is {c.model_name} {c.model_kwargs}; pass checkpoints of one model"
            )
    directions.require_same_shapes([c.state_dict for c in ckpts], [str(c.path) for c in ckpts])
    return ckpts
