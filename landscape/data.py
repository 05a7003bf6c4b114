"""Data sets: digits (offline), synthetic images, tensor files, and the specs that name them.

A data set is held in memory as tensors: inputs ``x`` (float32) or named inputs
(HuggingFace style ``input_ids``, ``attention_mask``, ...), and targets ``y`` (int64
class ids, or float32 regression targets): the analyses evaluate fixed batches many
times, so the data stays resident (on the GPU when there is one) and is never re-decoded.

Data specs (``--data SPEC``) are strings: a file path (``data.npz`` / ``data.pt``
holding ``x`` and ``y``, or named inputs and ``labels``) or ``NAME[:key=value,...]`` with NAME one of
``digits``, ``synthetic``, ``cifar10``, ``cifar100`` and keys ``split``
(train/test), ``dir`` (CIFAR folder), and for ``synthetic`` ``n``, ``classes``,
``shape`` (e.g. ``3x32x32``), ``seed``. Examples: ``digits``,
``digits:split=test``, ``synthetic:n=2048,classes=100``,
``cifar100:dir=~/data,split=test``. An option a data set does not take is refused.
CIFAR itself is read by :mod:`landscape.cifar`, federated partitions are :mod:`landscape.partition`.

Everything read here is treated as untrusted: nothing a file says runs code (``.npz``
without pickles, ``.pt`` with ``weights_only``), and every bad input ends in one
:class:`~landscape.errors.LandscapeError` line that names the file and quotes at most a few
dozen characters of it (the helpers at the end, shared with :mod:`landscape.cifar`,
:mod:`landscape.partition` and :mod:`landscape.splits`).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.errors import LandscapeError, os_error
from landscape.objective import LABEL_KEY

DATASETS = ("digits", "synthetic", "cifar10", "cifar100")
#: The options each named data set takes in a spec string (``NAME:key=value,...``).
OPTIONS = {
    "digits": ("split",),
    "synthetic": ("split", "n", "classes", "shape", "seed"),
    "cifar10": ("split", "dir"),
    "cifar100": ("split", "dir"),
}
#: The most values (samples x features) synthetic data may have: 10^8 float32 is 400 MB.
MAX_SYNTHETIC_VALUES = 10**8
#: The most classes a data set may have (a label of 10^9 would ask for a 10^9-way output layer).
MAX_CLASSES = 100_000


class Dataset:
    """Inputs and targets in memory, with the spec that rebuilds them.

    Two kinds of inputs, one kind of targets ``y``:

    - **pair** data: ``x`` is one float32 tensor ``(N, ...)``; a batch is ``(x[i:j], y[i:j])``.
    - **named** data (HuggingFace style): :attr:`inputs` is a dict of tensors that share the
      first dimension N (``input_ids``, ``attention_mask``, ...; integer ones stay int64, bool
      ones bool, floating ones float32); a batch is ``{name: t[i:j], ..., "labels": y[i:j]}``,
      what :func:`landscape.objective.default_forward` unpacks as ``model(**inputs)``.

    ``y`` holds int64 class ids ``(N,)`` with ``num_classes`` classes, or float32 regression
    targets ``(N,)`` / ``(N, k)`` with ``num_classes`` None. :attr:`names` holds each sample's
    name where the source has them (CIFAR's ``filenames``, which fedsam's split files use;
    see :mod:`landscape.splits`), else None.

    Args:
        x: the inputs: a tensor (pair data) or a dict of tensors (named data).
        y: the targets, one row per sample.
        num_classes: C for class ids, None for real-valued targets.
        spec: what rebuilds the data set (the form stored in results).
        names: one name per sample (an array of str), or None.

    Raises:
        LandscapeError: named inputs that are not tensors with N rows, or that use the name ``labels``.

    >>> ds = Dataset({"input_ids": torch.zeros(3, 5, dtype=torch.long)}, torch.tensor([0, 1, 0]), 2)
    >>> sorted(ds.batches(2)[0]), len(ds.subset([0, 2]))
    (['input_ids', 'labels'], 2)
    """

    def __init__(self, x: torch.Tensor | Mapping[str, torch.Tensor], y: torch.Tensor, num_classes: int | None,
                 spec: dict[str, Any] | None = None, names: np.ndarray | None = None) -> None:
        if isinstance(x, Mapping):
            x = dict(x)
            bad = [k for k, v in x.items() if not isinstance(k, str) or k == LABEL_KEY or not isinstance(v, torch.Tensor)
                   or v.ndim == 0 or v.shape[0] != y.shape[0]]
            if not x or bad:
                raise LandscapeError(f"named inputs must be tensors with one row per label ({y.shape[0]}), each named "
                                     f"other than '{LABEL_KEY}'; "
                                     + (f"{quote(bad[0], 30)} is not" if bad else "there are none"))
        self.inputs: torch.Tensor | dict[str, torch.Tensor] = x
        self.y = y
        self.num_classes = num_classes
        self.spec: dict[str, Any] = spec if spec is not None else {}
        self.names = names

    @property
    def named(self) -> bool:
        """Whether the inputs are named tensors (dict batches) rather than one tensor (pairs)."""
        return isinstance(self.inputs, dict)

    @property
    def x(self) -> torch.Tensor:
        """The inputs as one tensor (pair data only).

        Raises:
            LandscapeError: named data, whose inputs are several tensors.
        """
        if isinstance(self.inputs, dict):
            names = _cut(", ".join(self.inputs), 60)
            raise LandscapeError(f"this command needs (x, y) data with the inputs in one tensor x, but the data holds "
                                 f"named inputs ({names}) and '{LABEL_KEY}'",
                                 where=self.spec.get("path") or self.spec.get("dataset"),
                                 fix="give a data file with arrays 'x' and 'y', or pass dict batches to "
                                     "landscape.objective.Objective from Python")
        return self.inputs

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        inputs = ({k: tuple(v.shape) for k, v in self.inputs.items()} if isinstance(self.inputs, dict)
                  else tuple(self.inputs.shape))
        return f"Dataset(n={len(self)}, inputs={inputs}, num_classes={self.num_classes}, spec={self.spec})"

    def arrays(self) -> dict[str, torch.Tensor]:
        """Every tensor of the data set by name: ``{"x", "y"}`` or the named inputs and ``labels``
        (e.g. what a result file hashes to identify the data)."""
        if isinstance(self.inputs, dict):
            return {**self.inputs, LABEL_KEY: self.y}
        return {"x": self.inputs, "y": self.y}

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> Dataset:
        """The samples at ``indices`` (a copy), recording them in the spec."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        inputs = ({k: v[idx] for k, v in self.inputs.items()} if isinstance(self.inputs, dict)
                  else self.inputs[idx])
        names = None if self.names is None else self.names[idx.numpy()]
        return Dataset(inputs, self.y[idx], self.num_classes, dict(self.spec), names)

    def sample(self, num_samples: int | None, seed: int = 0) -> Dataset:
        """A seeded random subset of ``num_samples`` samples (all when None or larger)."""
        if num_samples is None or num_samples >= len(self):
            return self
        if num_samples < 1:
            raise LandscapeError(f"--num-samples must be at least 1, got {num_samples}")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:num_samples]
        out = self.subset(perm.sort().values)
        out.spec = {**self.spec, "num_samples": num_samples, "subset_seed": seed}
        return out

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
        """Samples ``start:stop`` as one batch: ``(x, y)``, or ``{name: ..., "labels": y}`` for named data
        (e.g. ``ds.batch(0, 1)`` to try a model on one sample with ``default_forward``)."""
        if isinstance(self.inputs, dict):
            return {**{k: v[start:stop] for k, v in self.inputs.items()}, LABEL_KEY: self.y[start:stop]}
        return self.inputs[start:stop], self.y[start:stop]

    def batches(self, batch_size: int | None) -> list[tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]]:
        """Consecutive fixed batches (the last may be smaller), as :meth:`batch` gives them."""
        n = len(self)
        size = n if batch_size is None or batch_size >= n else batch_size
        if size < 1:
            raise LandscapeError(f"--batch-size must be at least 1, got {batch_size}")
        return [self.batch(i, i + size) for i in range(0, n, size)]


def load_digits(split: str = "train") -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), as 64-vectors in [0, 1].

    A fixed permutation (seed 0) puts 1,437 images in ``train`` and 360 in ``test``.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    perm = np.random.default_rng(0).permutation(len(bunch.target))
    cut = 1437
    idx = {"train": perm[:cut], "test": perm[cut:]}[check_split(split)]
    x = torch.tensor(bunch.data[idx] / 16.0, dtype=torch.float32)
    y = torch.tensor(bunch.target[idx], dtype=torch.long)
    return Dataset(x, y, 10, {"dataset": "digits", "split": split})


def make_synthetic(
    n: int = 512, classes: int = 10, shape: tuple[int, ...] = (3, 32, 32), seed: int = 0, split: str = "train"
) -> Dataset:
    """Gaussian class clusters shaped like images: x = mu_y + noise, mu_c ~ N(0, I).

    The test split uses a different noise stream around the same class means.

    Raises:
        LandscapeError: ``n < 1``, ``classes < 2``, a dimension below 1, a negative seed, or more
            than :data:`MAX_SYNTHETIC_VALUES` values (``n`` or ``classes`` times the shape's size).
    """
    where = f"synthetic:n={n},classes={classes},shape={'x'.join(map(str, shape))},seed={seed}"
    fix = "e.g. synthetic:n=512,classes=10,shape=3x32x32"
    n = checked_integer(n, "synthetic n (number of samples)", where=where, fix=fix, minimum=1)
    classes = checked_integer(classes, "synthetic classes", where=where, fix=fix, minimum=2)
    seed = checked_integer(seed, "synthetic seed", where=where, fix=fix, minimum=0, maximum=2**62)
    shape = tuple(checked_integer(s, "every synthetic shape dimension", where=where, fix=fix, minimum=1) for s in shape)
    if not 1 <= len(shape) <= 8:
        raise LandscapeError(f"synthetic shape must have 1 to 8 dimensions, got {len(shape)}", where=where, fix=fix)
    size = math.prod(shape)
    for count, what in ((n, "samples"), (classes, "class means")):
        if count * size > MAX_SYNTHETIC_VALUES:  # refused before anything is allocated
            raise LandscapeError(
                f"synthetic data would hold {count} {what} of shape {'x'.join(map(str, shape))}, "
                f"{count * size:.3g} values, more than the {MAX_SYNTHETIC_VALUES:.0e} allowed",
                where=where, fix="lower n, classes or shape")
    if classes > MAX_CLASSES:
        raise LandscapeError(f"synthetic classes must be at most {MAX_CLASSES}, got {classes}", where=where, fix=fix)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, *shape, generator=g)
    g.manual_seed(seed * 2 + {"train": 1, "test": 2}[check_split(split)])
    y = torch.randint(0, classes, (n,), generator=g)
    x = means[y] + 2.0 * torch.randn(n, *shape, generator=g)
    spec = {"dataset": "synthetic", "split": split, "n": n, "classes": classes, "shape": list(shape), "seed": seed}
    return Dataset(x, y, classes, spec)


def black_pixel(ds: Dataset) -> torch.Tensor | None:
    """The value of a black (zero-intensity) pixel per channel in ``ds``'s input scale, or None for 0.

    CIFAR inputs are normalized, ``(v - mean) / std``, so black is ``-mean / std``; the other
    image data sets hold raw intensities in [0, 1]. This is what a random crop pads with.

    >>> [round(v, 4) for v in black_pixel(Dataset(torch.zeros(1), torch.zeros(1), 10, {"dataset": "cifar10"})).tolist()]
    [-1.9895, -1.9803, -1.7068]
    """
    from landscape import cifar  # cifar builds on this module

    name = ds.spec.get("dataset")
    if name not in cifar.CIFAR_MEAN:
        return None
    return -torch.tensor(cifar.CIFAR_MEAN[name]) / torch.tensor(cifar.CIFAR_STD[name])


_FILE_FIX = ("save it with np.savez(path, x=inputs, y=labels) or torch.save({'x': inputs, 'y': labels}, path), "
             "or with named inputs and 'labels' (e.g. input_ids=..., attention_mask=..., labels=...)")
#: Entries of a data file that are not data.
_FILE_META = ("num_classes",)


def load_tensor_file(path: str | os.PathLike) -> Dataset:
    """A ``.npz`` or ``.pt`` file of arrays: ``x`` and ``y``, or named inputs and ``labels``.

    - ``x`` (inputs, float32) and ``y`` (targets): pair data, batches ``(x, y)``.
    - no ``x`` but ``labels``: named data (HuggingFace style), every other array an input of the
      model (``input_ids``, ``attention_mask``, ...; all with one row per label; integer arrays
      become int64, bool stays bool, floating ones float32), batches ``{name: ..., "labels": y}``.

    Targets are class ids when they are integers (an integral float ``(N,)`` / ``(N, 1)`` is read
    as int64): ``num_classes`` is stored in the file or ``max(y) + 1``. Otherwise, real numbers
    ``(N,)`` or ``(N, k)`` (and any float ``(N, k)``, k > 1: multi-output or multi-label targets)
    are regression targets kept as float32, ``num_classes`` None; the loss decides whether it
    takes them (cross-entropy refuses them, mse takes them). Nothing in the file runs code:
    ``.npz`` is read without pickles, ``.pt`` with ``weights_only``.

    Raises:
        LandscapeError: a missing, unreadable or damaged file; neither ``x``/``y`` nor ``labels``;
            inputs that are not finite numbers or disagree on N; class ids outside
            ``[0, num_classes)`` or not one per sample; NaN or infinite targets; ``num_classes``
            stored beside real-valued targets.
    """
    path = Path(path).expanduser()
    raw = _read_tensor_file(path)
    if not isinstance(raw, Mapping):
        raise LandscapeError(f"data file holds a {type(raw).__name__}, not a dict with arrays 'x' and 'y'",
                             where=path, fix=_FILE_FIX)
    if "x" in raw and "y" in raw:
        target_name = "y"
        x = _input_array(raw["x"], "inputs 'x'", path)
        inputs: torch.Tensor | dict[str, torch.Tensor] = torch.from_numpy(_finite_float32(x, "inputs 'x'", path))
        rows = {"x": x.shape[0]}
    elif "x" not in raw and LABEL_KEY in raw:
        target_name = LABEL_KEY
        names = [k for k in raw if k != LABEL_KEY and k not in _FILE_META]
        if not names:
            raise LandscapeError(f"data file holds '{LABEL_KEY}' but no inputs beside it", where=path, fix=_FILE_FIX)
        odd = [k for k in names if not isinstance(k, str) or not k.isidentifier()]
        if odd:
            raise LandscapeError(f"input name {quote(odd[0], 30)} is not a Python identifier, so it cannot be a "
                                 "keyword argument of the model", where=path, fix="name every input like input_ids")
        arrays = {k: _input_array(raw[k], f"input '{_cut(k, 30)}'", path) for k in names}
        inputs = {k: torch.from_numpy(_named_input(a, k, path)) for k, a in arrays.items()}
        rows = {k: a.shape[0] for k, a in arrays.items()}
    else:
        raise LandscapeError(f"data file must hold arrays 'x' and 'y', or named inputs and '{LABEL_KEY}'; "
                             f"found {quote_keys(raw)}", where=path, fix=_FILE_FIX)
    y, num_classes = _targets(raw, target_name, path)
    n = int(y.shape[0])
    for name, count in rows.items():
        if count != n:
            what = f"x has {count} samples but y has {n}" if name == "x" else \
                f"input '{_cut(name, 30)}' has {count} rows but '{LABEL_KEY}' has {n}"
            raise LandscapeError(what, where=path, fix="store one label per row of the inputs")
    return Dataset(inputs, y, num_classes, {"dataset": "file", "path": str(path)})


def _input_array(value: Any, name: str, path: Path) -> np.ndarray:
    """One input array: numbers, one row per sample, some values per row."""
    arr = plain_array(value, name, path, "store the inputs as an array of numbers")
    if arr.ndim == 0:
        raise LandscapeError(f"{name} must be an array with one row per sample, found a single number",
                             where=path, fix=_FILE_FIX)
    if arr.size == 0 and arr.shape[0] > 0:
        raise LandscapeError(f"{name} have no values per sample (shape {arr.shape})", where=path, fix=_FILE_FIX)
    return arr


def _finite_float32(arr: np.ndarray, name: str, path: Path) -> np.ndarray:
    """``arr`` as float32, refusing NaN, infinity and values beyond float32's range."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    bad = int(out.size - np.isfinite(out).sum())
    if bad:
        raise LandscapeError(f"{name} hold {bad} NaN or infinite values (or values too large for float32)",
                             where=path, fix="clean or drop those samples")
    return out


def _named_input(arr: np.ndarray, name: str, path: Path) -> np.ndarray:
    """A named input as the model takes it: integers as int64 (token ids, masks), bool as bool,
    floating values as finite float32."""
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise LandscapeError(f"input '{_cut(name, 30)}' holds integers beyond int64", where=path,
                                 fix="store token ids and masks as int64")
        return arr.astype(np.int64)
    return _finite_float32(arr, f"input '{_cut(name, 30)}'", path)


def _targets(raw: Mapping[str, Any], key: str, path: Path) -> tuple[torch.Tensor, int | None]:
    """The targets stored under ``key`` and the number of classes (None for real-valued targets)."""
    name = f"labels '{key}'"
    y = plain_array(raw[key], name, path,
                     "store integer class ids 0..C-1 (e.g. y = np.unique(names, return_inverse=True)[1]) "
                     "or real-valued regression targets")
    if y.ndim == 0 or y.shape[0] == 0:
        raise LandscapeError("data file holds no samples" if y.ndim else f"{name} must have one row per sample, "
                             "found a single number", where=path, fix=_FILE_FIX)
    if y.dtype.kind == "f":
        finite = np.isfinite(y)
        if not finite.all():
            raise LandscapeError(f"{name} hold {int(y.size - finite.sum())} NaN or infinite values", where=path,
                                 fix="clean or drop those samples")
        if y.ndim > 2:
            raise LandscapeError(f"real-valued {name} must have shape (N,) or (N, k); found shape {y.shape}",
                                 where=path, fix="flatten each sample's targets into one row")
        if not (y.ndim == 1 or y.shape[1] == 1) or not np.array_equal(y, np.round(y)):
            if "num_classes" in raw:
                raise LandscapeError(f"data file stores num_classes, but {name} are real numbers, not class ids",
                                     where=path, fix="store integer class ids, or leave num_classes out for regression")
            return torch.from_numpy(_finite_float32(y, name, path)), None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise LandscapeError(f"{name} must hold one class id per sample, shape (N,); found shape {y.shape}",
                             where=path, fix="for one-hot or score rows store y.argmax(1) (or store them as floats "
                                             "for mse / bce-with-logits)")
    if y.dtype == np.uint64 and int(y.max()) > np.iinfo(np.int64).max or \
            y.dtype.kind == "f" and float(np.abs(y).max()) >= 2.0**62:
        raise LandscapeError(f"{name} run up to {quote(y.max().item(), 25)}, more than {MAX_CLASSES} classes",
                             where=path, fix="renumber the classes 0..C-1, e.g. y = np.unique(y, return_inverse=True)[1]")
    y64 = y.astype(np.int64)
    if "num_classes" in raw:
        num_classes = checked_integer(_item(raw["num_classes"]), "num_classes", where=path, minimum=1, maximum=MAX_CLASSES,
                               fix="store num_classes as one positive integer, or leave it out")
    else:
        num_classes = int(y64.max()) + 1
    if int(y64.min()) < 0 or int(y64.max()) >= num_classes:
        raise LandscapeError(f"labels must lie in [0, {num_classes - 1}], found {int(y64.min())}..{int(y64.max())}",
                             where=path, fix="store class ids 0..num_classes-1")
    if num_classes > MAX_CLASSES:
        raise LandscapeError(f"labels run up to {num_classes - 1}, more than {MAX_CLASSES} classes", where=path,
                             fix="renumber the classes 0..C-1, e.g. y = np.unique(y, return_inverse=True)[1]")
    return torch.from_numpy(y64), num_classes


def _read_tensor_file(path: Path) -> Any:
    """The raw content of a ``.npz`` (a dict of arrays) or ``.pt`` file, read without running code."""
    suffix = path.suffix.lower()
    try:
        if not path.exists():
            raise LandscapeError("data file not found", where=path, fix="check the path")
        if path.is_dir():
            raise LandscapeError("data file is a folder, not a file", where=path, fix="give the .npz or .pt file")
        if suffix not in (".npz", ".pt", ".pth"):
            raise LandscapeError("data file must end in .npz or .pt", where=path, fix=_FILE_FIX)
        with open(path, "rb") as f:
            if suffix != ".npz":
                with warnings.catch_warnings():  # torch's notes on odd pickles: the file loads or we say why not
                    warnings.simplefilter("ignore")
                    return torch.load(f, map_location="cpu", weights_only=True)
            content = np.load(f, allow_pickle=False)
            if isinstance(content, np.ndarray):  # a lone .npy array
                return content
            with content:
                out = {}
                for key in content.files:
                    try:
                        out[key] = content[key]
                    except ValueError:  # object arrays need pickles, which could run code
                        raise LandscapeError(f"array {quote(key, 30)} holds Python objects (dtype object), which are "
                                             "not read since loading them could run code", where=path,
                                             fix="store numbers: x as floats, y as integer class ids") from None
                return out
    except LandscapeError:
        raise
    except OSError as exc:
        if exc.errno is not None:
            raise os_error_at(exc, "cannot read data file", path) from None
        reason = reason_of(exc)
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail in any way; none of it is the user's bug
        if suffix != ".npz":
            reason = _torch_reason(exc)
        elif "pickled" in str(exc):  # numpy's word for "neither a zip of arrays nor an array"
            reason = "neither a zip of arrays nor one array; pickled data is never read"
        else:
            reason = reason_of(exc)
    kind = "an .npz archive" if suffix == ".npz" else "a file written by torch.save"
    raise LandscapeError(f"cannot read data file: damaged or not {kind} ({reason})", where=path, fix=_FILE_FIX)


def _torch_reason(exc: Exception) -> str:
    """torch.load's many-line refusals, cut to the part that says what was wrong."""
    text = str(exc)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named and named.group(1).startswith("numpy"):
        return "it holds numpy arrays, which are not read with weights_only; store torch tensors"
    if named:
        return f"it references {quote(named.group(1), 60)}, which a data file may not: loading it could run code"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return f"unpickler: {detail.group(1)[:60]}"
    return reason_of(exc)


def plain_array(value: Any, name: str, path: Path, fix: str) -> np.ndarray:
    """``value`` (a tensor, array or nested list) as a numpy array of numbers, or one line why not."""
    try:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
                t = t.float()
            arr = t.numpy()
        else:
            arr = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:  # ragged lists, sparse or quantized tensors
        raise LandscapeError(f"{name} is not an array of numbers ({reason_of(exc)})", where=path, fix=fix) from None
    if arr.dtype.kind not in "biuf":
        kinds = {"U": "strings", "S": "byte strings", "O": "Python objects", "c": "complex numbers",
                 "M": "dates", "m": "time spans", "V": "raw records"}
        raise LandscapeError(f"{name} holds {kinds.get(arr.dtype.kind, str(arr.dtype))} (dtype {arr.dtype}), "
                             "not numbers", where=path, fix=fix)
    return arr


def _item(value: Any) -> Any:
    """A one-element array or tensor as a Python scalar; anything else as it is."""
    if isinstance(value, np.ndarray) and value.size == 1 or isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def parse_spec(spec: str) -> dict[str, Any]:
    """``NAME[:k=v,...]`` or a file path -> a dict spec (the form stored in results).

    Raises:
        LandscapeError: an option without ``=``, given twice, or one the data set does not take.
    """
    if not isinstance(spec, str):
        raise LandscapeError(f"a data spec must be a string, got {type(spec).__name__}", fix="e.g. digits:split=test")
    if spec.endswith((".npz", ".pt", ".pth")) or os.sep in spec and not spec.split(":")[0] in DATASETS:
        return {"dataset": "file", "path": spec}
    name, _, rest = spec.partition(":")
    out: dict[str, Any] = {"dataset": name}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        where = _cut(spec)
        if not eq:
            raise LandscapeError(f"bad data option {quote(item, 40)}", where=where, fix="write key=value, e.g. digits:split=test")
        if name in OPTIONS and key not in OPTIONS[name]:
            raise LandscapeError(f"unknown option {quote(key, 30)} for {name}", where=where,
                                 fix=f"{name} takes {', '.join(OPTIONS[name])}")
        if key in out:
            raise LandscapeError(f"option {quote(key, 30)} is given twice", where=where, fix="give it once")
        out[key] = value.strip()
    return out


def load(spec: str | Mapping[str, Any], data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set from a spec string or dict (see the module docstring).

    Raises:
        LandscapeError: unknown data set, bad options, missing or damaged files.
    """
    d = parse_spec(spec) if isinstance(spec, str) else spec
    if not isinstance(d, Mapping):
        raise LandscapeError(f"a data spec must be a string or a dict, got {type(spec).__name__}", fix="e.g. digits:split=test")
    d = dict(d)
    where = _cut(spec) if isinstance(spec, str) else f"data spec {quote(d.get('dataset'), 30)}"
    name = d.get("dataset")
    if name != "file" and name not in DATASETS:
        raise LandscapeError(f"unknown data set {quote(name, 30)}", where=where,
                             fix=f"choose one of {', '.join(DATASETS)} or pass a .npz/.pt file with x and y")
    split = d.get("split", "train")
    if name != "file" and split not in ("train", "test"):
        raise LandscapeError(f"split must be 'train' or 'test', got {quote(split, 30)}", where=where,
                             fix=f"e.g. {name}:split=test")
    if name == "file":
        path = d.get("path")
        if not isinstance(path, (str, os.PathLike)):
            raise LandscapeError(f"a file data spec needs a path, got {quote(path, 40)}", where=where, fix="pass data.npz or data.pt")
        return load_tensor_file(path)
    if name == "digits":
        return load_digits(split)
    if name == "synthetic":
        fix = "e.g. synthetic:n=512,classes=10,shape=3x32x32,seed=0"
        shape = d.get("shape", (3, 32, 32))
        if isinstance(shape, str):
            shape = shape.split("x")
        if not isinstance(shape, (list, tuple)):
            raise LandscapeError(f"synthetic shape must look like 3x32x32, got {quote(shape, 30)}", where=where, fix=fix)
        # Checked here too so that the message quotes the spec as the user wrote it.
        return make_synthetic(
            checked_integer(d.get("n", 512), "synthetic n", where=where, fix=fix, minimum=1),
            checked_integer(d.get("classes", 10), "synthetic classes", where=where, fix=fix, minimum=2),
            tuple(checked_integer(s, "every synthetic shape dimension", where=where, fix=fix, minimum=1) for s in shape),
            checked_integer(d.get("seed", 0), "synthetic seed", where=where, fix=fix, minimum=0, maximum=2**62),
            split,
        )
    if name in ("cifar10", "cifar100"):
        folder = d.get("dir", data_dir)
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise LandscapeError(f"{name} dir must be a folder path, got {quote(folder, 40)}", where=where,
                                 fix=f"e.g. {name}:dir=~/data")
        from landscape import cifar  # cifar builds on this module

        return cifar.load_cifar(name, folder, split)
    raise AssertionError(f"data set {name!r} is in DATASETS but has no loader")  # a bug of ours, not the user's


def check_split(split: str) -> str:
    """``split`` when it is ``train`` or ``test``; anything else is refused in one line."""
    if split not in ("train", "test"):
        raise LandscapeError(f"split must be 'train' or 'test', got {quote(split, 30)}", fix="use split=train or split=test")
    return split


# ---------------------------------------------------------------------------------------------
# Small helpers: checked numbers, short quotes of what a file says, one-line reasons
# ---------------------------------------------------------------------------------------------

#: A decimal integer of at most 30 digits (int() refuses strings beyond 4,300 digits; no count needs 31).
DECIMAL_INTEGER = re.compile(r"[+-]?\d{1,30}")


def checked_integer(value: Any, name: str, *, where: object, fix: str, minimum: int | None = None,
                    maximum: int | None = None) -> int:
    """``value`` (an int, an integral float or a decimal string; never a bool) as an int in range.

    >>> checked_integer("12", "n", where="spec", fix="", minimum=1)
    12
    """
    if isinstance(value, (bool, np.bool_)):
        number = None
    elif isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        number = int(value)
    elif isinstance(value, str) and DECIMAL_INTEGER.fullmatch(value.strip()):
        number = int(value)
    else:
        number = None
    low = {1: "a positive integer", 0: "a non-negative integer", None: "an integer"}.get(minimum, f"an integer >= {minimum}")
    if number is None or (minimum is not None and number < minimum):
        raise LandscapeError(f"{name} must be {low}, got {quote(value, 30)}", where=where, fix=fix)
    if maximum is not None and number > maximum:
        raise LandscapeError(f"{name} must be at most {maximum}, got {number}", where=where, fix=fix)
    return number


def quote(value: Any, limit: int = 60) -> str:
    """A quote of ``value`` of at most ``limit`` characters, so a message never carries a whole file.

    >>> quote("x" * 100, 10)
    "'xxxxxx..."
    """
    return _cut(repr(value), limit)


def _cut(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` where it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote_keys(mapping: Mapping[Any, Any]) -> str:
    """The keys of ``mapping`` quoted, at most about 80 characters of them."""
    text = ", ".join(quote(str(k), 30) for k in sorted(mapping, key=str)[:10]) or "no keys"
    return _cut(text + (", ..." if len(mapping) > 10 else ""), 80)


def reason_of(exc: BaseException) -> str:
    """``Type: first line of the message``, at most about 100 characters."""
    first = str(exc).strip().split("\n", 1)[0]
    return _cut(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 100)


def os_error_at(exc: OSError, action: str, path: str | os.PathLike) -> LandscapeError:
    """:func:`landscape.errors.os_error`, naming ``path`` when the error itself names no file."""
    if exc.filename is None:
        exc = OSError(exc.errno, exc.strerror, str(path))
    return os_error(exc, action)
