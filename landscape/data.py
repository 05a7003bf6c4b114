"""Data sets: digits (offline), synthetic images, CIFAR-10/100 from a local folder, tensor files.

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

Everything read here is treated as untrusted: nothing a file says runs code (``.npz``
without pickles, ``.pt`` with ``weights_only``, CIFAR's pickles through an unpickler that
rebuilds numpy arrays only), archives are unpacked whole or not at all and never outside
their folder, and every bad input ends in one :class:`~landscape.errors.LandscapeError`
line that names the file and quotes at most a few dozen characters of it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import lzma
import math
import os
import pickle
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from collections.abc import Mapping, Sequence
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
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


class Dataset:
    """Inputs and targets in memory, with the spec that rebuilds them.

    Two kinds of inputs, one kind of targets ``y``:

    - **pair** data: ``x`` is one float32 tensor ``(N, ...)``; a batch is ``(x[i:j], y[i:j])``.
    - **named** data (HuggingFace style): :attr:`inputs` is a dict of tensors that share the
      first dimension N (``input_ids``, ``attention_mask``, ...; integer ones stay int64, bool
      ones bool, floating ones float32); a batch is ``{name: t[i:j], ..., "labels": y[i:j]}``,
      what :func:`landscape.objective.default_forward` unpacks as ``model(**inputs)``.

    ``y`` holds int64 class ids ``(N,)`` with ``num_classes`` classes, or float32 regression
    targets ``(N,)`` / ``(N, k)`` with ``num_classes`` None.

    Args:
        x: the inputs: a tensor (pair data) or a dict of tensors (named data).
        y: the targets, one row per sample.
        num_classes: C for class ids, None for real-valued targets.
        spec: what rebuilds the data set (the form stored in results).

    Raises:
        LandscapeError: named inputs that are not tensors with N rows, or that use the name ``labels``.

    >>> ds = Dataset({"input_ids": torch.zeros(3, 5, dtype=torch.long)}, torch.tensor([0, 1, 0]), 2)
    >>> sorted(ds.batches(2)[0]), len(ds.subset([0, 2]))
    (['input_ids', 'labels'], 2)
    """

    def __init__(self, x: torch.Tensor | Mapping[str, torch.Tensor], y: torch.Tensor, num_classes: int | None,
                 spec: dict[str, Any] | None = None) -> None:
        if isinstance(x, Mapping):
            x = dict(x)
            bad = [k for k, v in x.items() if not isinstance(k, str) or k == LABEL_KEY or not isinstance(v, torch.Tensor)
                   or v.ndim == 0 or v.shape[0] != y.shape[0]]
            if not x or bad:
                raise LandscapeError(f"named inputs must be tensors with one row per label ({y.shape[0]}), each named "
                                     f"other than '{LABEL_KEY}'; "
                                     + (f"{_show(bad[0], 30)} is not" if bad else "there are none"))
        self.inputs: torch.Tensor | dict[str, torch.Tensor] = x
        self.y = y
        self.num_classes = num_classes
        self.spec: dict[str, Any] = spec if spec is not None else {}

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
        return Dataset(inputs, self.y[idx], self.num_classes, dict(self.spec))

    def head(self, num_samples: int | None, seed: int = 0) -> Dataset:
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
    idx = {"train": perm[:cut], "test": perm[cut:]}[_check_split(split)]
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
    n = _integer(n, "synthetic n (number of samples)", where=where, fix=fix, minimum=1)
    classes = _integer(classes, "synthetic classes", where=where, fix=fix, minimum=2)
    seed = _integer(seed, "synthetic seed", where=where, fix=fix, minimum=0, maximum=2**62)
    shape = tuple(_integer(s, "every synthetic shape dimension", where=where, fix=fix, minimum=1) for s in shape)
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
    g.manual_seed(seed * 2 + {"train": 1, "test": 2}[_check_split(split)])
    y = torch.randint(0, classes, (n,), generator=g)
    x = means[y] + 2.0 * torch.randn(n, *shape, generator=g)
    spec = {"dataset": "synthetic", "split": split, "n": n, "classes": classes, "shape": list(shape), "seed": seed}
    return Dataset(x, y, classes, spec)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers and nothing else.

    CIFAR's python files are pickles; an ordinary ``pickle.load`` would run any code a
    tampered file names. Only numpy's array reconstruction helpers are allowed.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {_show(f'{module}.{name}', 60)}")


_CIFAR_FIX = "replace it with the file from CIFAR's python version (`landscape download cifar10|cifar100`)"


def read_array_pickle(path: str | os.PathLike) -> dict[Any, Any]:
    """Read a CIFAR-style pickle without running code it may reference.

    Raises:
        LandscapeError: a folder, an unreadable file, a damaged pickle, one that names any
            code but numpy's array helpers, or one that holds something other than a dict.
    """
    path = Path(path)
    if path.is_dir():
        raise LandscapeError("CIFAR batch file is a folder, not a file", where=path, fix=_CIFAR_FIX)
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        if exc.errno is None:  # a parse failure dressed as an OSError
            raise LandscapeError(f"not a CIFAR python batch file ({_reason(exc)})", where=path, fix=_CIFAR_FIX) from None
        raise _os_error(exc, "cannot read CIFAR batch file", path) from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle can fail in any way; none of it is the user's bug
        raise LandscapeError(f"not a CIFAR python batch file ({_reason(exc)})", where=path, fix=_CIFAR_FIX) from None
    if not isinstance(obj, dict):
        raise LandscapeError(f"not a CIFAR python batch file (it holds a {type(obj).__name__}, not a dict)",
                             where=path, fix=_CIFAR_FIX)
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def find_cifar(name: str, root: str | os.PathLike | None) -> Path:
    """The folder holding the python-format batches of ``name`` under ``root``."""
    if root is None:
        root = os.environ.get("LANDSCAPE_DATA", "data")
    root = Path(root).expanduser()
    try:
        for candidate in (root / CIFAR_FOLDERS[name], root):
            if all((candidate / f).exists() for files in CIFAR_FILES[name].values() for f in files):
                return candidate
    except OSError as exc:
        raise _os_error(exc, f"cannot look for {name}", root) from None
    raise LandscapeError(
        f"{name} not found in {root} (expected {CIFAR_FOLDERS[name]}/ with "
        f"{', '.join(CIFAR_FILES[name]['train'][:1] + CIFAR_FILES[name]['test'])}); "
        f"download it with `landscape download {name} --data-dir {root}` "
        f"or unpack {CIFAR_URLS[name]} there"
    )


def load_cifar(name: str, root: str | os.PathLike | None = None, split: str = "train") -> Dataset:
    """CIFAR-10/100 from the standard python layout, normalized per channel.

    Raises:
        LandscapeError: the folder is missing, or a batch file is unreadable, damaged, or holds
            something other than uint8 images of 3x32x32 with one label in range per image.
    """
    folder = find_cifar(name, root)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    classes = 10 if name == "cifar10" else 100
    xs, ys = [], []
    for fname in CIFAR_FILES[name][_check_split(split)]:
        images, labels = _cifar_batch(read_array_pickle(folder / fname), folder / fname, name, label_key, classes)
        xs.append(images)
        ys.append(labels)
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN[name]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[name]).view(1, 3, 1, 1)
    x = (x - mean) / std
    return Dataset(x, torch.from_numpy(np.concatenate(ys)), classes, {"dataset": name, "split": split, "dir": str(folder)})


def _cifar_batch(batch: dict[Any, Any], path: Path, name: str, label_key: str, classes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One batch's images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64, checked."""
    fix = f"is this {name}? {_CIFAR_FIX}"
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        found = _keys(batch)
        raise LandscapeError(f"CIFAR batch lacks {' and '.join(map(repr, missing))}; its keys: {found}", where=path, fix=fix)
    data = _plain_array(batch["data"], "CIFAR batch 'data'", path, fix)
    if data.dtype.kind not in "biu" or data.size == 0 or data.size % 3072:
        what = f"{data.size} values of type {data.dtype}" if data.dtype.kind in "biuf" else f"values of type {data.dtype}"
        raise LandscapeError(f"CIFAR batch 'data' holds {what}, not whole 3x32x32 images of bytes (3072 each)",
                             where=path, fix=fix)
    if data.dtype != np.uint8 and (int(data.min()) < 0 or int(data.max()) > 255):
        raise LandscapeError(f"CIFAR batch 'data' holds values outside 0..255 ({int(data.min())}..{int(data.max())})",
                             where=path, fix=fix)
    images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)
    labels = _plain_array(batch[label_key], f"CIFAR batch '{label_key}'", path, fix)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise LandscapeError(f"CIFAR batch '{label_key}' must be a list of integers, found {labels.dtype} of shape "
                             f"{labels.shape}", where=path, fix=fix)
    if len(labels) != len(images):
        raise LandscapeError(f"CIFAR batch has {len(images)} images but {len(labels)} labels", where=path, fix=fix)
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise LandscapeError(f"CIFAR batch labels must lie in [0, {classes - 1}], found "
                             f"{int(labels.min())}..{int(labels.max())}", where=path, fix=fix)
    return images, labels.astype(np.int64)


def black_pixel(ds: Dataset) -> torch.Tensor | None:
    """The value of a black (zero-intensity) pixel per channel in ``ds``'s input scale, or None for 0.

    CIFAR inputs are normalized, ``(v - mean) / std``, so black is ``-mean / std``; the other
    image data sets hold raw intensities in [0, 1]. This is what a random crop pads with.

    >>> [round(v, 4) for v in black_pixel(Dataset(torch.zeros(1), torch.zeros(1), 10, {"dataset": "cifar10"})).tolist()]
    [-1.9895, -1.9803, -1.7068]
    """
    name = ds.spec.get("dataset")
    if name not in CIFAR_MEAN:
        return None
    return -torch.tensor(CIFAR_MEAN[name]) / torch.tensor(CIFAR_STD[name])


def download_cifar(name: str, root: str | os.PathLike) -> Path:
    """Download and unpack CIFAR-10/100 (python version) into ``root``; needs internet.

    The archive is downloaded to ``NAME.part`` and renamed when complete, so an interrupted
    download never looks like a finished one; an archive already in ``root`` is reused.
    """
    if name not in CIFAR_URLS:
        raise LandscapeError(f"can only download {', '.join(CIFAR_URLS)}, not '{name}'")
    url, root = CIFAR_URLS[name], Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, "cannot create the data folder", root) from None
    archive = root / Path(url).name
    if not archive.exists():
        part = archive.with_name(archive.name + ".part")
        try:
            urllib.request.urlretrieve(url, part)
            os.replace(part, archive)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise LandscapeError(f"could not download {url} ({_reason(exc)})", where=root,
                                 fix=f"check the connection and the free space, or fetch it by hand into {root}") from None
        finally:
            part.unlink(missing_ok=True)
    folder = CIFAR_FOLDERS[name]
    extract_archive(archive, root, [f"{folder}/{f}" for files in CIFAR_FILES[name].values() for f in files])
    return find_cifar(name, root)


#: tarfile's own guard (Python >= 3.11.4, 3.10.12): it resolves links on disk as it writes.
_TAR_FILTER: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def extract_archive(archive: str | os.PathLike, root: str | os.PathLike, required: Sequence[str] = ()) -> list[Path]:
    """Unpack a tar archive (``.tar``, ``.tar.gz``, ...) into ``root``, whole or not at all.

    Every member is checked before anything is written: absolute names, names with ``..``,
    links that point outside the archive's folder (and, without tarfile's ``data`` filter, any
    link) and device files are refused. The members are unpacked into a temporary folder inside
    ``root`` (with the ``data`` filter as a second guard) and its top-level entries are moved
    into place only when all of them were written and every path in ``required`` (relative, e.g.
    ``cifar-10-batches-py/test_batch``) is among them; an entry of the same name already in
    ``root`` is replaced. On any failure the temporary folder is removed and ``root`` is as it was.

    Returns:
        The top-level paths placed in ``root``.

    Raises:
        LandscapeError: a member that would land outside ``root``, a damaged, truncated or empty
            archive, a required file missing from it, or an OS failure (full disk, permissions).
    """
    archive, root = Path(archive).expanduser(), Path(root).expanduser()
    damaged = f"delete {archive} and download it again"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    except OSError as exc:
        raise _os_error(exc, "cannot unpack into", root) from None
    try:
        staged = tmp / "new"
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()  # reads the whole archive: a truncated one fails here
                if not members:
                    raise LandscapeError("archive holds no files", where=archive, fix=damaged)
                for member in members:
                    _check_member(member, archive)
                tar.extractall(staged, members=members, **_TAR_FILTER)
        except LandscapeError:
            raise
        except tarfile.TarError as exc:
            member = getattr(exc, "tarinfo", None)
            if member is not None:  # one of the data filter's refusals
                raise _outside(member.name, "leads outside the folder through a link", archive) from None
            raise LandscapeError(f"damaged or not a tar archive ({_reason(exc)})", where=archive, fix=damaged) from None
        except (EOFError, zlib.error, lzma.LZMAError) as exc:
            raise LandscapeError(f"damaged or truncated archive ({_reason(exc)})", where=archive, fix=damaged) from None
        except OSError as exc:
            if exc.errno is None:  # gzip/bz2 report bad data as a bare OSError
                raise LandscapeError(f"damaged archive ({_reason(exc)})", where=archive, fix=damaged) from None
            raise _os_error(exc, "cannot unpack", archive) from None
        missing = [name for name in required if not (staged / name).is_file()]
        if missing:
            raise LandscapeError(f"archive lacks {_show(missing[0], 60)}"
                                 f"{f' and {len(missing) - 1} more files' if len(missing) > 1 else ''}; "
                                 "nothing was unpacked", where=archive, fix=damaged)
        return _move_into_place(staged, root, tmp / "old")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _outside(name: str, why: str, archive: Path) -> LandscapeError:
    return LandscapeError(f"archive member {_show(name, 60)} {why}; nothing was unpacked", where=archive,
                          fix="use an archive from a trusted source (e.g. the official download)")


def _escapes(relative: str) -> bool:
    """Whether a normalized POSIX path relative to the archive's folder leaves it."""
    return relative == ".." or relative.startswith(("../", "/"))


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a member that could write outside the destination, before anything is written."""
    name = member.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.replace("\\", "/").split("/"):
        raise _outside(name, "has an absolute name or one with '..'", archive)
    if member.issym() or member.islnk():
        target = member.linkname
        # A symbolic link is relative to its own folder; a hard link to the archive's root.
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target) if member.issym() else target)
        if target.startswith("/") or _escapes(resolved):
            raise _outside(name, f"is a link to {_show(target, 40)}, outside the folder", archive)
        if not _TAR_FILTER:  # without the data filter a chain of links inside could still lead out
            raise _outside(name, "is a link, which this Python's tarfile cannot unpack safely", archive)
    elif not (member.isfile() or member.isdir()):
        raise _outside(name, "is a device file or pipe", archive)


def _move_into_place(staged: Path, root: Path, old: Path) -> list[Path]:
    """Move the entries of ``staged`` into ``root``, replacing same-named ones; undo all on failure."""
    replaced: list[str] = []
    placed: list[Path] = []
    try:
        old.mkdir()
        for entry in sorted(staged.iterdir()):
            target = root / entry.name
            if target.exists() or target.is_symlink():
                os.replace(target, old / entry.name)
                replaced.append(entry.name)
            os.replace(entry, target)
            placed.append(target)
    except OSError as exc:
        for target in placed:  # best effort: put back what was there before
            with contextlib.suppress(OSError):
                os.replace(target, staged / target.name)
        for entry_name in replaced:
            with contextlib.suppress(OSError):
                os.replace(old / entry_name, root / entry_name)
        raise _os_error(exc, "cannot move the unpacked files into place", root) from None
    return placed


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
            raise LandscapeError(f"input name {_show(odd[0], 30)} is not a Python identifier, so it cannot be a "
                                 "keyword argument of the model", where=path, fix="name every input like input_ids")
        arrays = {k: _input_array(raw[k], f"input '{_cut(k, 30)}'", path) for k in names}
        inputs = {k: torch.from_numpy(_named_input(a, k, path)) for k, a in arrays.items()}
        rows = {k: a.shape[0] for k, a in arrays.items()}
    else:
        raise LandscapeError(f"data file must hold arrays 'x' and 'y', or named inputs and '{LABEL_KEY}'; "
                             f"found {_keys(raw)}", where=path, fix=_FILE_FIX)
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
    arr = _plain_array(value, name, path, "store the inputs as an array of numbers")
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
    y = _plain_array(raw[key], name, path,
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
        raise LandscapeError(f"{name} run up to {_show(y.max().item(), 25)}, more than {MAX_CLASSES} classes",
                             where=path, fix="renumber the classes 0..C-1, e.g. y = np.unique(y, return_inverse=True)[1]")
    y64 = y.astype(np.int64)
    if "num_classes" in raw:
        num_classes = _integer(_item(raw["num_classes"]), "num_classes", where=path, minimum=1, maximum=MAX_CLASSES,
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
                        raise LandscapeError(f"array {_show(key, 30)} holds Python objects (dtype object), which are "
                                             "not read since loading them could run code", where=path,
                                             fix="store numbers: x as floats, y as integer class ids") from None
                return out
    except LandscapeError:
        raise
    except OSError as exc:
        if exc.errno is not None:
            raise _os_error(exc, "cannot read data file", path) from None
        reason = _reason(exc)
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail in any way; none of it is the user's bug
        if suffix != ".npz":
            reason = _torch_reason(exc)
        elif "pickled" in str(exc):  # numpy's word for "neither a zip of arrays nor an array"
            reason = "neither a zip of arrays nor one array; pickled data is never read"
        else:
            reason = _reason(exc)
    kind = "an .npz archive" if suffix == ".npz" else "a file written by torch.save"
    raise LandscapeError(f"cannot read data file: damaged or not {kind} ({reason})", where=path, fix=_FILE_FIX)


def _torch_reason(exc: Exception) -> str:
    """torch.load's many-line refusals, cut to the part that says what was wrong."""
    text = str(exc)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named and named.group(1).startswith("numpy"):
        return "it holds numpy arrays, which are not read with weights_only; store torch tensors"
    if named:
        return f"it references {_show(named.group(1), 60)}, which a data file may not: loading it could run code"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return f"unpickler: {detail.group(1)[:60]}"
    return _reason(exc)


def _plain_array(value: Any, name: str, path: Path, fix: str) -> np.ndarray:
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
        raise LandscapeError(f"{name} is not an array of numbers ({_reason(exc)})", where=path, fix=fix) from None
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
            raise LandscapeError(f"bad data option {_show(item, 40)}", where=where, fix="write key=value, e.g. digits:split=test")
        if name in OPTIONS and key not in OPTIONS[name]:
            raise LandscapeError(f"unknown option {_show(key, 30)} for {name}", where=where,
                                 fix=f"{name} takes {', '.join(OPTIONS[name])}")
        if key in out:
            raise LandscapeError(f"option {_show(key, 30)} is given twice", where=where, fix="give it once")
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
    where = _cut(spec) if isinstance(spec, str) else f"data spec {_show(d.get('dataset'), 30)}"
    name = d.get("dataset")
    if name != "file" and name not in DATASETS:
        raise LandscapeError(f"unknown data set {_show(name, 30)}", where=where,
                             fix=f"choose one of {', '.join(DATASETS)} or pass a .npz/.pt file with x and y")
    split = d.get("split", "train")
    if name != "file" and split not in ("train", "test"):
        raise LandscapeError(f"split must be 'train' or 'test', got {_show(split, 30)}", where=where,
                             fix=f"e.g. {name}:split=test")
    if name == "file":
        path = d.get("path")
        if not isinstance(path, (str, os.PathLike)):
            raise LandscapeError(f"a file data spec needs a path, got {_show(path, 40)}", where=where, fix="pass data.npz or data.pt")
        return load_tensor_file(path)
    if name == "digits":
        return load_digits(split)
    if name == "synthetic":
        fix = "e.g. synthetic:n=512,classes=10,shape=3x32x32,seed=0"
        shape = d.get("shape", (3, 32, 32))
        if isinstance(shape, str):
            shape = shape.split("x")
        if not isinstance(shape, (list, tuple)):
            raise LandscapeError(f"synthetic shape must look like 3x32x32, got {_show(shape, 30)}", where=where, fix=fix)
        # Checked here too so that the message quotes the spec as the user wrote it.
        return make_synthetic(
            _integer(d.get("n", 512), "synthetic n", where=where, fix=fix, minimum=1),
            _integer(d.get("classes", 10), "synthetic classes", where=where, fix=fix, minimum=2),
            tuple(_integer(s, "every synthetic shape dimension", where=where, fix=fix, minimum=1) for s in shape),
            _integer(d.get("seed", 0), "synthetic seed", where=where, fix=fix, minimum=0, maximum=2**62),
            split,
        )
    if name in ("cifar10", "cifar100"):
        folder = d.get("dir", data_dir)
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise LandscapeError(f"{name} dir must be a folder path, got {_show(folder, 40)}", where=where,
                                 fix=f"e.g. {name}:dir=~/data")
        return load_cifar(name, folder, split)
    raise AssertionError(f"data set {name!r} is in DATASETS but has no loader")  # a bug of ours, not the user's


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise LandscapeError(f"split must be 'train' or 'test', got {_show(split, 30)}", fix="use split=train or split=test")
    return split


# ---------------------------------------------------------------------------------------------
# Small helpers: checked numbers, short quotes of what a file says, one-line reasons
# ---------------------------------------------------------------------------------------------

#: A decimal integer of at most 30 digits (int() refuses strings beyond 4,300 digits; no count needs 31).
_INTEGER = re.compile(r"[+-]?\d{1,30}")


def _integer(value: Any, name: str, *, where: object, fix: str, minimum: int | None = None,
             maximum: int | None = None) -> int:
    """``value`` (an int, an integral float or a decimal string; never a bool) as an int in range.

    >>> _integer("12", "n", where="spec", fix="", minimum=1)
    12
    """
    if isinstance(value, (bool, np.bool_)):
        number = None
    elif isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value)
    else:
        number = None
    low = {1: "a positive integer", 0: "a non-negative integer", None: "an integer"}.get(minimum, f"an integer >= {minimum}")
    if number is None or (minimum is not None and number < minimum):
        raise LandscapeError(f"{name} must be {low}, got {_show(value, 30)}", where=where, fix=fix)
    if maximum is not None and number > maximum:
        raise LandscapeError(f"{name} must be at most {maximum}, got {number}", where=where, fix=fix)
    return number


def _number(value: Any, name: str, *, where: object, fix: str, minimum: float) -> float:
    """``value`` (an int, a float or a decimal string; never a bool or NaN) as a float ``>= minimum``."""
    number: float | None = None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not number >= minimum:  # also refuses NaN
        raise LandscapeError(f"{name} must be a number >= {minimum:g}, got {_show(value, 30)}", where=where, fix=fix)
    return number


def _show(value: Any, limit: int = 60) -> str:
    """A quote of ``value`` of at most ``limit`` characters, so a message never carries a whole file.

    >>> _show("x" * 100, 10)
    "'xxxxxx..."
    """
    return _cut(repr(value), limit)


def _cut(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` where it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _keys(mapping: Mapping[Any, Any]) -> str:
    """The keys of ``mapping`` quoted, at most about 80 characters of them."""
    text = ", ".join(_show(str(k), 30) for k in sorted(mapping, key=str)[:10]) or "no keys"
    return _cut(text + (", ..." if len(mapping) > 10 else ""), 80)


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message``, at most about 100 characters."""
    first = str(exc).strip().split("\n", 1)[0]
    return _cut(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 100)


def _os_error(exc: OSError, action: str, path: str | os.PathLike) -> LandscapeError:
    """:func:`landscape.errors.os_error`, naming ``path`` when the error itself names no file."""
    if exc.filename is None:
        exc = OSError(exc.errno, exc.strerror, str(path))
    return os_error(exc, action)


# ---------------------------------------------------------------------------------------------
# Federated partitions [H19, C22]
# ---------------------------------------------------------------------------------------------

#: Default federation per data set: (num_clients, samples_per_client). CIFAR follows [C22 §5]
#: (100 clients x 500 images); digits has only 1,437 training images (smallest class: 130), so
#: 20 x 65, which also fits alpha = 0.
DEFAULT_FEDERATION = {"cifar10": (100, 500), "cifar100": (100, 500), "digits": (20, 65)}


def class_ids(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Labels as int64 class ids ``(N,)`` for a partition by class, or one line saying why not.

    Real-valued (regression) targets have no classes to split by, so a federation cannot be
    built on them; integral floats are class ids.

    >>> class_ids(np.array([0.0, 2.0])).tolist()
    [0, 2]

    Raises:
        LandscapeError: targets that are not whole numbers, or not one per sample.
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.dtype.kind == "f" and (arr.ndim != 1 or not np.array_equal(arr, np.round(arr))):
        raise LandscapeError(f"a federated partition splits the data by class and needs integer class labels, but "
                             f"the data holds real-valued targets ({arr.dtype}, shape {arr.shape})",
                             fix="train on data whose labels are class ids 0..C-1 (regression targets can be "
                                 "analysed with --loss mse, not federated by class)")
    return arr.astype(np.int64).reshape(-1)


def default_federation(name: str, labels: np.ndarray) -> tuple[int, int]:
    """``(num_clients, samples_per_client)`` used when the caller names neither.

    CIFAR-10/100: 100 x 500 [C22]; digits: 20 x 65; anything else: 10 clients, as many samples
    each as still fits alpha = 0 (every class hosting ``ceil(10 / C)`` clients).
    """
    if name in DEFAULT_FEDERATION:
        return DEFAULT_FEDERATION[name]
    counts = np.bincount(class_ids(labels))
    counts = counts[counts > 0]
    per_class = -(-10 // len(counts))
    return 10, max(1, int(counts.min()) // per_class)


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= minimum


def _check_partition_args(num_labels: int, num_clients: int, samples_per_client: int, alpha: float, seed: int) -> None:
    if not _is_count(num_clients, 1):
        raise LandscapeError(f"--num-clients must be a positive integer, got {_show(num_clients, 30)}")
    if not _is_count(samples_per_client, 1):
        raise LandscapeError(f"--samples-per-client must be a positive integer, got {_show(samples_per_client, 30)}")
    if not _is_count(seed, 0):
        raise LandscapeError(f"the partition seed must be a non-negative integer, got {_show(seed, 30)}")
    if not alpha >= 0:  # also catches NaN
        raise LandscapeError(
            f"--alpha must be >= 0 (0: one class per client, large: iid), got {alpha}"
        )
    need = num_clients * samples_per_client
    if need > num_labels:
        raise LandscapeError(
            f"{num_clients} clients x {samples_per_client} samples = {need} exceeds the {num_labels} training "
            "samples; lower --num-clients or --samples-per-client"
        )


def partition(
    labels: np.ndarray,
    num_clients: int,
    samples_per_client: int,
    alpha: float,
    seed: int,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Split sample indices among clients with the Dirichlet scheme of [H19] as used by [C22].

    Client k draws class proportions ``q_k ~ Dir(alpha * p)`` with ``p`` the uniform prior over
    the ``C`` classes, i.e. **total concentration alpha** (``alpha / C`` per class; "alpha = 0.5"
    on CIFAR-100 in [C22] is 0.005 in the per-class convention of flwr-datasets/FedLab). Its
    ``samples_per_client`` labels are drawn from ``Cat(q_k)`` and images are taken without
    replacement from a seeded shuffle of each class; when a class runs out, the client's prior
    is redrawn over the classes still available (``Dir(alpha / |A| * 1_A)``).

    ``alpha = 0`` is handled separately (numpy's Dirichlet returns zeros or NaN there): every
    client holds exactly one class, classes assigned by capacity ``floor(n_c / samples_per_client)``
    in a balanced round robin (CIFAR-10 100 x 500: 10 clients per class). ``alpha = inf`` is iid;
    large finite alpha (1000 in [C22]) approaches it.

    Args:
        labels: integer class of every sample, shape ``(N,)``.
        num_clients: number of clients K.
        samples_per_client: samples per client; ``K * samples_per_client <= N``.
        alpha: total Dirichlet concentration, ``>= 0``.
        seed: seed of the partition; the same seed gives the same partition.
        num_classes: C (default ``max(labels) + 1``).

    Returns:
        One sorted int64 index array per client, pairwise disjoint, each of ``samples_per_client``.

    Raises:
        LandscapeError: negative alpha, too few samples, (alpha = 0) too few classes with
            room for a whole client, or real-valued labels (see :func:`class_ids`).

    >>> parts = partition(np.repeat(np.arange(10), 50), 10, 50, 0.0, seed=0)
    >>> sorted(len(set(np.repeat(np.arange(10), 50)[p])) for p in parts) == [1] * 10
    True
    """
    labels = class_ids(labels)
    _check_partition_args(len(labels), num_clients, samples_per_client, float(alpha), seed)
    C = int(labels.max()) + 1
    if num_classes is not None:
        if not _is_count(num_classes, C):
            raise LandscapeError(f"num_classes must be an integer >= {C} (the labels run up to {C - 1}), "
                                 f"got {_show(num_classes, 30)}")
        C = int(num_classes)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9A27]))
    # A seeded shuffle of each class: images are taken from the front, without replacement.
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(C)]
    taken = np.zeros(C, dtype=np.int64)
    available = np.array([len(p) for p in pools], dtype=np.int64)
    out: list[np.ndarray] = []

    if alpha == 0:
        capacity = available // samples_per_client
        if capacity.sum() < num_clients:
            raise LandscapeError(
                f"alpha=0 puts one class per client, but the classes only have room for {int(capacity.sum())} "
                f"clients of {samples_per_client} samples; lower --num-clients or --samples-per-client"
            )
        # Balanced round robin over classes (seeded order), skipping full ones.
        order = rng.permutation(C)
        assigned = np.zeros(C, dtype=np.int64)
        classes: list[int] = []
        while len(classes) < num_clients:
            for c in order:
                if len(classes) < num_clients and assigned[c] < capacity[c]:
                    classes.append(int(c))
                    assigned[c] += 1
        for c in classes:
            out.append(np.sort(pools[c][taken[c] : taken[c] + samples_per_client]))
            taken[c] += samples_per_client
        return out

    def draw_prior(mask: np.ndarray) -> np.ndarray:
        k = int(mask.sum())
        if np.isinf(alpha):
            q = mask / k
        else:
            q = np.zeros(C)
            q[mask] = rng.dirichlet(np.full(k, alpha / k))
            if not np.all(np.isfinite(q)) or q.sum() <= 0:  # underflow at tiny alpha: a vertex
                q = np.zeros(C)
                q[rng.choice(np.flatnonzero(mask))] = 1.0
        return q / q.sum()

    for _ in range(num_clients):
        counts = np.zeros(C, dtype=np.int64)
        q = draw_prior(available > 0)
        remaining = samples_per_client
        while remaining > 0:
            want = rng.multinomial(remaining, q)
            got = np.minimum(want, available)
            counts += got
            available -= got
            remaining -= int(got.sum())
            if remaining > 0:  # some class ran out: redraw the prior over what is left
                q = draw_prior(available > 0)
        parts = []
        for c in np.flatnonzero(counts):
            parts.append(pools[c][taken[c] : taken[c] + counts[c]])
            taken[c] += counts[c]
        out.append(np.sort(np.concatenate(parts)))
    return out


def read_split_file(path: str | os.PathLike, labels: np.ndarray | None = None) -> list[np.ndarray]:
    """Read a published split: CSV rows ``user_id,image_id,class`` (a header line is allowed).

    Clients are numbered by sorted user id (numerically when all ids are integers). When
    ``labels`` are given, every row's class must match ``labels[image_id]``. A message quotes
    at most 10 characters of each offending field and nothing else of the file (it may be any
    file, e.g. a password file given by mistake).

    Raises:
        LandscapeError: missing, unreadable or binary file, malformed rows, images out of range,
            a sample given to two users, classes that disagree with the data set, or real-valued
            ``labels`` (regression targets have no classes).
    """
    path = Path(path).expanduser()
    labels = None if labels is None else class_ids(labels)
    fix = "pass a CSV with rows user_id,image_id,class"
    if path.is_dir():
        raise LandscapeError("split file is a folder, not a file", where=path, fix=fix)
    if not path.is_file():
        raise LandscapeError("split file not found", where=path, fix=fix)
    users: dict[str, list[int]] = {}
    lineno, rows = 0, 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if not row or all(not c.strip() for c in row):
                    continue
                rows += 1
                where = f"{path}:{lineno}"
                if len(row) < 3:  # described, not quoted: the file may be anything (a password file)
                    raise LandscapeError(f"row has {len(row)} field{'s' if len(row) > 1 else ''}, expected 3: "
                                         "user_id,image_id,class", where=where, fix=fix)
                user, image, cls = (c.strip() for c in row[:3])
                if not (_INTEGER.fullmatch(image) and _INTEGER.fullmatch(cls)):
                    if rows == 1:  # header
                        continue
                    raise LandscapeError(f"image_id and class must be integers, got {_show(image, 10)}, "
                                         f"{_show(cls, 10)}", where=where, fix=fix)
                image_id, class_id = int(image), int(cls)
                limit = len(labels) if labels is not None else 2**62
                if not 0 <= image_id < limit:
                    raise LandscapeError(f"image_id {_show(image_id, 25)} is outside the {limit} training images"
                                         if labels is not None else f"image_id {_show(image_id, 25)} is not an index",
                                         where=where, fix="image ids count the training images from 0; "
                                                          "is this split for another data set?")
                if labels is not None and int(labels[image_id]) != class_id:
                    raise LandscapeError(f"image {image_id} has class {int(labels[image_id])} in the data set, not "
                                         f"{_show(class_id, 25)}", where=where, fix="is this split for another data set?")
                users.setdefault(user, []).append(image_id)
    except LandscapeError:
        raise
    except UnicodeDecodeError:
        raise LandscapeError("split file is not UTF-8 text (it holds binary data)", where=path, fix=fix) from None
    except csv.Error as exc:  # a NUL byte, an unclosed quote, an over-long field
        raise LandscapeError(f"split file is not a CSV ({_show(str(exc), 60)})", where=f"{path}:{lineno + 1}", fix=fix) from None
    except OSError as exc:
        raise _os_error(exc, "cannot read split file", path) from None
    if not users:
        raise LandscapeError("split file has no rows user_id,image_id,class", where=path, fix=fix)
    keys = sorted(users, key=lambda u: (0, int(u), "") if _INTEGER.fullmatch(u) else (1, 0, u))
    parts = [np.sort(np.asarray(users[u], dtype=np.int64)) for u in keys]
    allidx = np.concatenate(parts)
    if len(np.unique(allidx)) != len(allidx):
        raise LandscapeError("split file gives some images to more than one user", where=path,
                             fix="each image may belong to one user only")
    return parts


_PARTITION_CACHE: dict[tuple[Any, ...], list[np.ndarray]] = {}


def partition_from_spec(labels: np.ndarray, partition_spec: Mapping[str, Any]) -> list[np.ndarray]:
    """The client index arrays described by a checkpoint's ``data["partition"]`` dict.

    A split file is re-read and its SHA-256 checked against ``split_sha256``; otherwise
    :func:`partition` is rerun with the stored (num_clients, samples_per_client, alpha, seed).
    Results are cached per (labels, spec).

    Raises:
        LandscapeError: a spec that is not a dict, lacks a key, or holds a value of the wrong
            type or range; a split file that is missing, changed or malformed.
    """
    from landscape.files import sha256

    where = "the checkpoint's partition spec"
    fix = "the checkpoint's data['partition'] is damaged; pass the client's data as a file instead"
    spec = partition_spec.get("partition", partition_spec) if isinstance(partition_spec, Mapping) else partition_spec
    if not isinstance(spec, Mapping):
        raise LandscapeError(f"a partition spec must be a dict, got {type(spec).__name__}", where=where, fix=fix)
    spec = dict(spec)
    labels = class_ids(labels)
    digest = None
    split_file = spec.get("split_file")
    if split_file is not None and split_file != "":
        if not isinstance(split_file, (str, os.PathLike)):
            raise LandscapeError(f"split_file must be a path, got {_show(split_file, 30)}", where=where, fix=fix)
        path = Path(split_file).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise LandscapeError(f"split file {what}; the partition was built from it", where=path,
                                 fix="put the split file back at that path")
        expected = spec.get("split_sha256")
        if expected is not None and not isinstance(expected, str):
            raise LandscapeError(f"split_sha256 must be a hex string, got {_show(expected, 30)}", where=where, fix=fix)
        try:
            digest = sha256(path)
        except OSError as exc:
            raise _os_error(exc, "cannot read split file", path) from None
        if expected and expected != digest:
            raise LandscapeError(f"split file changed since the run (sha256 {digest[:12]} != {_show(expected[:12], 16)})",
                                 where=path, fix="restore the file the run used")
        args: tuple[Any, ...] = ()
    else:
        missing = [k for k in ("num_clients", "samples_per_client", "alpha", "seed") if k not in spec]
        if missing:
            raise LandscapeError(f"partition spec lacks {', '.join(missing)}", where=where,
                                 fix="it needs num_clients, samples_per_client, alpha and seed (or split_file)")
        num_classes = spec.get("num_classes")
        args = (
            _integer(spec["num_clients"], "num_clients", where=where, fix=fix, minimum=1),
            _integer(spec["samples_per_client"], "samples_per_client", where=where, fix=fix, minimum=1),
            _number(spec["alpha"], "alpha", where=where, fix=fix, minimum=0.0),
            _integer(spec["seed"], "seed", where=where, fix=fix, minimum=0),
            None if num_classes is None else _integer(num_classes, "num_classes", where=where, fix=fix, minimum=1),
        )
    key = (hashlib.sha1(labels.tobytes()).hexdigest(), digest, args)
    if key in _PARTITION_CACHE:
        return _PARTITION_CACHE[key]
    parts = read_split_file(path, labels) if digest is not None else partition(labels, *args)
    _PARTITION_CACHE[key] = parts
    return parts


def client_data(dataset: Dataset, partition_spec: Mapping[str, Any], client_id: int) -> Dataset:
    """The training samples of one client, rebuilt from what a checkpoint stores.

    Args:
        dataset: the full training set (``load(ckpt.data)``).
        partition_spec: ``ckpt.data["partition"]`` (or the whole ``ckpt.data``).
        client_id: 0-based client index.

    Raises:
        LandscapeError: client id out of range, or an unusable spec.
    """
    parts = partition_from_spec(dataset.y.cpu().numpy(), partition_spec)
    if isinstance(client_id, (bool, np.bool_)) or not isinstance(client_id, (int, np.integer)) \
            or not 0 <= client_id < len(parts):
        raise LandscapeError(f"client id {_show(client_id, 30)} is out of range; the partition has clients "
                             f"0..{len(parts) - 1}")
    out = dataset.subset(parts[client_id])
    out.spec = {**dataset.spec, "partition": dict(partition_spec.get("partition", partition_spec)), "client_id": int(client_id)}
    return out
