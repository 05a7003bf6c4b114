"""The self-describing checkpoint format.

A checkpoint is a ``torch.save``d dict holding everything an analysis needs::

    {
      "format": "landscape-checkpoint", "format_version": 1,
      "model": {"name": "cnn", "kwargs": {"num_classes": 100}},
      "state_dict": {...},                 # tensors keyed by parameter/buffer name
      "config": {...},                     # the training config (JSON-like)
      "round": 1200, "role": "global",     # "global" | "client" | "swa" | None
      "client_id": None,                   # int for role "client"
      "data": {"dataset": "cifar100", "partition": {...}},
      "metadata": {...},                   # free, JSON-like
    }

so ``landscape hessian ckpt.pt`` needs nothing else. Files are written atomically
and read with ``torch.load(weights_only=True)``: a pickle that would run code is
refused before any of it runs. Plain state_dicts from other projects load too when
the caller names the architecture (``model=`` / ``--model``), also as ``.safetensors``
files (read with ``safetensors.torch.load_file``, never a pickle; the metadata in their
header is ignored: a file never names code).

Checkpoints of other code wrap their state dicts: fedsam [C22] (github:debcaldarola/fedsam,
``models/servers/fedavg_server.py::save_model``) writes ``{"model_state_dict": <global>,
"round": r, "swa_model": <SWA>, "swa_n": n}`` (SWA entries once SWA has started, plus
``"opt_state_dict"`` for FedOpt servers); others use ``state_dict``, ``model``, ``net``, or
Lightning's ``state_dict`` with ``model.``-prefixed names. :func:`select_state_dict` finds
them: the only state dict in the file is used; several are an error that lists them, and
``state_key`` (``--state-key``) picks one by its dotted path (``swa_model``,
``state_dict.model``). Names that every key carries from a wrapper (``module.`` of
(Distributed)DataParallel, ``_orig_mod.`` of ``torch.compile``) are dropped.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape import models
from landscape.errors import LandscapeError, os_error
from landscape.files import save_torch, sha256

FORMAT = "landscape-checkpoint"
FORMAT_VERSION = 1
ROLES = ("global", "client", "swa")


@dataclass
class Checkpoint:
    """A model with everything needed to rebuild and analyse it."""

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    round: int | None = None
    role: str | None = None
    client_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    #: Whether a ``package.module:factory`` model name may be imported and called: True when the
    #: name came from the user (Python, ``--model``), False when only the file says so.
    trust_factory: bool = True
    #: Where the weights lie in a file of other code (:func:`select_state_dict`, e.g. ``"swa_model"``):
    #: one file may hold several models. None for a landscape checkpoint or a bare state dict.
    state_key: str | None = None

    def build_model(self) -> nn.Module:
        """A fresh model of the stored architecture with the stored weights, in eval mode.

        A registered architecture is first built on the ``meta`` device and checked against the
        stored weights, so kwargs from a file cannot make it allocate more than the file holds.
        """
        where = self.path or "the checkpoint"
        factory = models.resolve(self.model_name, allow_import=self.trust_factory, origin=where)
        if factory in models.REGISTRY.values():
            check_state_dict(models.call_factory(factory, self.model_name, self.model_kwargs, "meta"),
                             self.state_dict, self.model_name)
        model = models.call_factory(factory, self.model_name, self.model_kwargs)
        load_state_dict(model, self.state_dict, self.model_name)
        return model.eval()

    def check_finite(self) -> None:
        """Refuse weights or buffers holding NaN or inf (every analysis would be meaningless)."""
        bad = [k for k, v in self.state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise LandscapeError(
                f"the weights hold NaN or inf values in {len(bad)} tensor(s), e.g. {bad[0]}", where=self.path,
                fix="analyse a checkpoint from before the training diverged")

    def to_dict(self) -> dict[str, Any]:
        """The on-disk representation."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {"name": self.model_name, "kwargs": self.model_kwargs},
            "state_dict": self.state_dict,
            "config": self.config,
            "round": self.round,
            "role": self.role,
            "client_id": self.client_id,
            "data": self.data,
            "metadata": self.metadata,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready identification for result files (``state_key`` only when one was picked, so
        the identity of a result written before ``--state-key`` existed is unchanged)."""
        out = {
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "model": {"name": self.model_name, "kwargs": self.model_kwargs},
            "round": self.round,
            "role": self.role,
            "client_id": self.client_id,
            "data": self.data,
        }
        if self.state_key is not None:
            out["state_key"] = self.state_key
        return out


def from_model(model: nn.Module, name: str, kwargs: dict[str, Any] | None = None, **fields: Any) -> Checkpoint:
    """Wrap a model's weights (copied to CPU) in a :class:`Checkpoint`."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if fields.get("role") not in (None, *ROLES):
        raise LandscapeError(f"role must be one of {ROLES}, got {fields['role']!r}")
    return Checkpoint(model_name=name, model_kwargs=dict(kwargs or {}), state_dict=state, **fields)


def save(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Atomically write a checkpoint (a crash mid-write leaves the old file intact)."""
    return save_torch(path, checkpoint.to_dict())


#: The suffix of weights in the safetensors format (a JSON header and raw tensor bytes).
SAFETENSORS_SUFFIX = ".safetensors"


def _read(path: Path) -> Any:
    """torch.load with weights_only=True (or safetensors' reader), every failure turned into a one-line error."""
    if not path.exists():
        raise LandscapeError(f"checkpoint not found: {path}; check the path")
    if path.is_dir():
        raise LandscapeError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise LandscapeError("not a regular file", where=path, fix="pass a checkpoint file")
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise os_error(exc, "cannot read the checkpoint") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc), flags=re.IGNORECASE)
        if found:
            raise LandscapeError(
                f"refused to load {path}: its pickle references {found.group(1)}, code that would run on "
                "load (only tensors and plain containers are accepted); re-save the weights with "
                "torch.save(model.state_dict(), path) in a trusted environment"
            ) from None
        raise LandscapeError(
            f"{path} is not a PyTorch checkpoint (unreadable pickle); pass a file written by torch.save"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in text:  # torch's advice to turn off the safety is not ours to give
            text = type(exc).__name__
        if zipfile.is_zipfile(path) or "zip" in text.lower() or isinstance(exc, EOFError):
            raise LandscapeError(
                f"{path} is truncated or corrupt ({text}); re-copy or re-save the checkpoint"
            ) from None
        raise LandscapeError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {text}); pass a file written by torch.save"
        ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (its header metadata is dropped), or one line why not.

    The format holds only a JSON header and raw bytes, so reading it runs nothing; the tensors
    are copied out of the memory map, so the file may change afterwards.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path, device="cpu")
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise os_error(exc, "cannot read the checkpoint") from None
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        text = (str(exc).splitlines() or [type(exc).__name__])[0].removeprefix("Error while deserializing header: ")
        text = text if len(text) <= 80 else text[:77] + "..."  # it may quote the file: a few words of it at most
        raise LandscapeError(f"not a valid safetensors file, or truncated ({text})", where=path,
                             fix="re-copy it; a file written by torch.save must end in .pt") from None
    if not tensors:
        raise LandscapeError("the safetensors file holds no tensors", where=path, fix="pass the file with the weights")
    return {name: t.clone() for name, t in tensors.items()}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


#: How many dicts deep :func:`select_state_dict` looks for state dicts (``{"a": {"b": {"c": sd}}}``).
SEARCH_DEPTH = 3
#: Prefixes a wrapper gives every parameter name: (Distributed)DataParallel, ``torch.compile``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _find(obj: Any, depth: int = SEARCH_DEPTH) -> list[tuple[list[str], dict[str, torch.Tensor]]]:
    """The state dicts in ``obj`` with their key paths (``[]``: ``obj`` itself), through dicts with string keys."""
    if _is_state_dict(obj):
        return [([], obj)]
    if not isinstance(obj, dict) or depth == 0:
        return []
    return [([k, *path], sd) for k, v in obj.items() if isinstance(k, str) for path, sd in _find(v, depth - 1)]


def _quote(paths: list[str]) -> str:
    """A few dotted paths for a one-line message (text from a file: escaped and cut short)."""
    shown = [repr(p) if len(p) <= 40 else repr(p[:37]) + "..." for p in paths[:6]]
    return ", ".join(shown) + (f" ... ({len(paths)} in all)" if len(paths) > 6 else "")


def _choices(obj: Any) -> str:
    """The fix of a wrong ``--state-key``: the state dicts the file holds."""
    found = [".".join(path) for path, _ in _find(obj)]
    if not found:
        return "the file holds no state dict"
    if found == [""]:
        return "the file is a bare state dict: drop --state-key"
    return f"pass {'one of ' if len(found) > 1 else ''}{_quote(found)}"


def _unwrap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the :data:`WRAPPER_PREFIXES` that every key carries."""
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def select_state_dict(obj: Any, key: str | None = None,
                      where: object = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict in ``obj`` (the content of a file of other code) and its dotted path (None: ``obj`` itself).

    ``key`` is a dotted path: each step a key of a nested dict (the longest that matches, so keys
    holding dots work), or, once a state dict is reached, a prefix of its names (``state_dict.model``
    takes Lightning's ``model.*`` entries, without the prefix). Without ``key``, or below a ``key``
    that is no state dict itself, the state dict found there (up to :data:`SEARCH_DEPTH` dicts deep)
    is used when it is the only one. Prefixes every name carries from a wrapper
    (:data:`WRAPPER_PREFIXES`) are dropped, so the names are those of the bare model.

    Raises:
        LandscapeError: no state dict; several and no ``key`` naming one (the error lists them); a
            ``key`` that is not in the file or leads to something other than a dict (the fix lists
            the state dicts the file holds).

    >>> sd = {"w": torch.ones(1)}
    >>> select_state_dict({"model_state_dict": sd, "round": 3, "swa_model": {"w": torch.zeros(1)}}, "swa_model")
    ({'w': tensor([0.])}, 'swa_model')
    >>> select_state_dict({"epoch": 3, "net": {"module.w": torch.ones(1)}})
    ({'w': tensor([1.])}, 'net')
    """
    if key is not None and (not isinstance(key, str) or "" in key.split(".")):
        raise LandscapeError(f"the state key must be a key of the saved dict, dotted for nested ones, got {key!r}",
                             where=where, fix="e.g. --state-key swa_model or --state-key state_dict.model")
    node, path, parts = obj, [], key.split(".") if key else []
    while parts:
        if not isinstance(node, dict):
            what = f"{_quote(['.'.join(path)])} is" if path else "the file holds"
            raise LandscapeError(f"--state-key {_quote([key])}: {what} {type(node).__name__}, not a dict of tensors",
                                 where=where, fix=_choices(obj))
        if _is_state_dict(node):  # the rest is a prefix of parameter names
            prefix = ".".join(parts) + "."
            node = {k[len(prefix):]: v for k, v in node.items() if k.startswith(prefix)}
            path, parts, found = [*path, *parts], [], bool(node)
        else:
            step = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in node), 0)
            name, found = ".".join(parts[:step]), step > 0
            node, path, parts = node.get(name), [*path, name], parts[step:]
        if not found:
            raise LandscapeError(f"--state-key {_quote([key])}: no such entry", where=where, fix=_choices(obj))
    states = _find(node)
    full = [".".join([*path, *tail]) for tail, _ in states]
    if not states and key:
        what = "no state dict" if isinstance(node, dict) else f"{type(node).__name__}, not a dict of tensors"
        raise LandscapeError(f"--state-key {_quote([key])} holds {what}", where=where, fix=_choices(obj))
    if not states:
        raise LandscapeError("neither a landscape checkpoint nor a state_dict (a dict of parameter names to tensors)",
                             where=where, fix="pass a file of torch.save(model.state_dict()) or checkpoint.save")
    if len(states) > 1:
        raise LandscapeError(f"the file holds {len(states)} state dicts: {_quote(full)}", where=where,
                             fix="pick one with --state-key KEY (state_key= in Python)")
    return _unwrap(states[0][1]), full[0] or None


def load(
    path: str | os.PathLike,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    trust_factory: bool = False,
    state_key: str | None = None,
) -> Checkpoint:
    """Load a checkpoint, or a plain state_dict when ``model`` names its architecture.

    Args:
        path: a file written by :func:`save`, or by ``torch.save(state_dict)``, or a checkpoint of
            other code wrapping state dicts (``{"state_dict": ...}``, fedsam's ``{"model_state_dict":
            ..., "swa_model": ...}``; see :func:`select_state_dict`), or a ``.safetensors`` file of
            weights (a plain state_dict; its header metadata is ignored).
        model: registered model name or ``package.module:factory``; overrides the
            stored name (required for plain state_dicts).
        model_kwargs: keyword arguments for the factory; override the stored ones.
        trust_factory: import and call a ``package.module:factory`` that the file names
            (runs that code: only for files you trust). A factory named by ``model`` runs anyway.
        state_key: the dotted path of the state dict in a file of other code (``"swa_model"``;
            ``--state-key``); needed when it holds several. A landscape checkpoint holds one
            model: only ``"state_dict"`` names it.

    Raises:
        LandscapeError: missing, truncated, malformed, non-checkpoint or code-carrying files
            (also ``.safetensors`` files that are not valid safetensors),
            factories named by the file without ``trust_factory``, plain state_dicts without
            ``model``, weights that do not fit the model, files of other code with several
            state dicts and no ``state_key``, a ``state_key`` the file does not hold.
    """
    path = Path(path)
    obj = _read(path)
    digest = sha256(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        _check_payload(obj, path)
        if state_key not in (None, "state_dict"):
            raise LandscapeError(f"--state-key {_quote([state_key])}: a landscape checkpoint holds one model",
                                 where=path, fix="drop --state-key (it picks a model in files of other code)")
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise LandscapeError(
                f"{path} uses checkpoint format {obj['format_version']}, newer than this "
                f"landscape ({FORMAT_VERSION}); upgrade the package"
            )
        stored = obj["model"]
        ckpt = Checkpoint(
            model_name=model or stored["name"],
            model_kwargs={**(stored.get("kwargs") or {}), **(model_kwargs or {})},
            state_dict=obj["state_dict"],
            config=obj.get("config") or {},
            round=obj.get("round"),
            role=obj.get("role"),
            client_id=obj.get("client_id"),
            data=obj.get("data") or {},
            metadata=obj.get("metadata") or {},
            trust_factory=model is not None or trust_factory,
        )
    else:
        state, found_at = select_state_dict(obj, state_key, path)
        if model is None:
            what = "safetensors file of weights" if path.suffix.lower() == SAFETENSORS_SUFFIX else "plain state_dict"
            raise LandscapeError(
                f"{path} is a {what} with no model description; name its architecture "
                "with --model NAME (see `landscape models`) or --model package.module:factory"
            )
        ckpt = Checkpoint(model_name=model, model_kwargs=dict(model_kwargs or {}), state_dict=state,
                          state_key=found_at)
    ckpt.path, ckpt.sha256 = path, digest
    # Validate now, so a mismatch is reported before any analysis starts.
    ckpt.build_model()
    return ckpt


#: The fields of a checkpoint file and the types they may hold.
_FIELDS: dict[str, tuple[type, ...]] = {
    "model": (dict,), "state_dict": (dict,), "config": (dict, type(None)), "round": (int, type(None)),
    "role": (str, type(None)), "client_id": (int, type(None)), "data": (dict, type(None)),
    "metadata": (dict, type(None)), "format_version": (int,),
}


def _check_payload(obj: dict[str, Any], path: Path) -> None:
    """Every field of a landscape checkpoint present with its type (one line naming the first that is not)."""
    def bad(what: str) -> LandscapeError:
        return LandscapeError(f"malformed checkpoint: {what}", where=path,
                              fix="re-save it with landscape (checkpoint.save) or pass a plain state_dict with --model")

    for key in ("model", "state_dict"):
        if key not in obj:
            raise bad(f"no '{key}' entry")
    for key, types in _FIELDS.items():
        if key in obj and (not isinstance(obj[key], types) or isinstance(obj[key], bool)):
            raise bad(f"'{key}' is {type(obj[key]).__name__}, expected {' or '.join(t.__name__ for t in types)}")
    name, kwargs = obj["model"].get("name"), obj["model"].get("kwargs") or {}
    if not isinstance(name, str) or not name:
        raise bad("the model has no name")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise bad(f"the model kwargs are {type(kwargs).__name__}, expected an object with string keys")
    if not _is_state_dict(obj["state_dict"]):
        raise bad("'state_dict' is not a mapping of parameter names to tensors")
    if obj.get("role") not in (None, *ROLES):
        raise bad(f"role {obj['role']!r} is not one of {', '.join(ROLES)}")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Raise a one-line error naming what in ``state`` does not match ``model`` (names and shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:3]}{'...' if len(wrong) > 3 else ''}")
        raise LandscapeError(
            f"the weights do not match model '{name}' ({'; '.join(parts)}); "
            "check --model and --model-kwargs (e.g. num_classes)"
        )


def load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """``model.load_state_dict(state)`` with a one-line error naming what does not match."""
    check_state_dict(model, state, name)
    wrong = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point != state[k].dtype.is_floating_point]
    if wrong:
        raise LandscapeError(f"the weights do not match model '{name}' (tensor {wrong[0]} has dtype "
                             f"{state[wrong[0]].dtype})", fix="check that the file holds this model's weights")
    model.load_state_dict(copy.copy(state))
