"""Data sets: digits (offline), synthetic images, CIFAR-10/100 from a local folder, tensor files.

A data set is held in memory as two tensors (``x`` float32, ``y`` int64): the
analyses evaluate fixed batches many times, so the data stays resident (on the
GPU when there is one) and is never re-decoded.

Data specs (``--data SPEC``) are strings: a file path (``data.npz`` / ``data.pt``
holding ``x`` and ``y``) or ``NAME[:key=value,...]`` with NAME one of
``digits``, ``synthetic``, ``cifar10``, ``cifar100`` and keys ``split``
(train/test), ``dir`` (CIFAR folder), and for ``synthetic`` ``n``, ``classes``,
``shape`` (e.g. ``3x32x32``), ``seed``. Examples: ``digits``,
``digits:split=test``, ``synthetic:n=2048,classes=100``,
``cifar100:dir=~/data,split=test``.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.errors import LandscapeError

DATASETS = ("digits", "synthetic", "cifar10", "cifar100")
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


@dataclass
class Dataset:
    """Inputs and integer labels in memory, with the spec that rebuilds them."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    spec: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> Dataset:
        """The samples at ``indices`` (a copy), recording them in the spec."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return Dataset(self.x[idx], self.y[idx], self.num_classes, dict(self.spec))

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

    def batches(self, batch_size: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive fixed batches (the last may be smaller)."""
        n = len(self)
        size = n if batch_size is None or batch_size >= n else batch_size
        if size < 1:
            raise LandscapeError(f"--batch-size must be at least 1, got {batch_size}")
        return [(self.x[i : i + size], self.y[i : i + size]) for i in range(0, n, size)]


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
    """
    if n < 1 or classes < 2:
        raise LandscapeError(f"synthetic data needs n >= 1 and classes >= 2, got n={n}, classes={classes}")
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
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_array_pickle(path: Path) -> dict[Any, Any]:
    """Read a CIFAR-style pickle without running code it may reference."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise LandscapeError(f"{path} is not a CIFAR python batch file ({exc})") from None
    if not isinstance(obj, dict):
        raise LandscapeError(f"{path} is not a CIFAR python batch file (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def find_cifar(name: str, root: str | os.PathLike | None) -> Path:
    """The folder holding the python-format batches of ``name`` under ``root``."""
    if root is None:
        root = os.environ.get("LANDSCAPE_DATA", "data")
    root = Path(root).expanduser()
    for candidate in (root / CIFAR_FOLDERS[name], root):
        if all((candidate / f).exists() for files in CIFAR_FILES[name].values() for f in files):
            return candidate
    raise LandscapeError(
        f"{name} not found in {root} (expected {CIFAR_FOLDERS[name]}/ with "
        f"{', '.join(CIFAR_FILES[name]['train'][:1] + CIFAR_FILES[name]['test'])}); "
        f"download it with `landscape download {name} --data-dir {root}` "
        f"or unpack {CIFAR_URLS[name]} there"
    )


def load_cifar(name: str, root: str | os.PathLike | None = None, split: str = "train") -> Dataset:
    """CIFAR-10/100 from the standard python layout, normalized per channel."""
    folder = find_cifar(name, root)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    xs, ys = [], []
    for fname in CIFAR_FILES[name][_check_split(split)]:
        batch = read_array_pickle(folder / fname)
        if "data" not in batch or label_key not in batch:
            raise LandscapeError(f"{folder / fname} lacks 'data' or '{label_key}'; is this {name}?")
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN[name]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[name]).view(1, 3, 1, 1)
    x = (x - mean) / std
    classes = 10 if name == "cifar10" else 100
    return Dataset(x, torch.from_numpy(np.concatenate(ys)), classes, {"dataset": name, "split": split, "dir": str(folder)})


def download_cifar(name: str, root: str | os.PathLike) -> Path:
    """Download and unpack CIFAR-10/100 (python version) into ``root``; needs internet."""
    if name not in CIFAR_URLS:
        raise LandscapeError(f"can only download {', '.join(CIFAR_URLS)}, not '{name}'")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    archive = root / Path(CIFAR_URLS[name]).name
    if not archive.exists():
        try:
            urllib.request.urlretrieve(CIFAR_URLS[name], archive.with_suffix(".part"))
        except OSError as exc:
            raise LandscapeError(f"could not download {CIFAR_URLS[name]} ({exc}); fetch it by hand into {root}") from None
        archive.with_suffix(".part").rename(archive)
    extract_archive(archive, root)
    return find_cifar(name, root)


def extract_archive(archive: Path, root: Path) -> None:
    """Unpack a .tar.gz with tarfile's safe 'data' filter (no absolute paths or links out)."""
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")


def load_tensor_file(path: str | os.PathLike) -> Dataset:
    """A ``.npz`` or ``.pt`` file with arrays ``x`` (inputs) and ``y`` (integer labels).

    ``num_classes`` may be stored too; otherwise it is ``max(y) + 1``.
    """
    path = Path(path)
    if not path.exists():
        raise LandscapeError(f"data file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
        elif path.suffix in (".pt", ".pth"):
            raw = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise LandscapeError(f"data file {path} must end in .npz or .pt")
    except LandscapeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise LandscapeError(f"cannot read data file {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or "x" not in raw or "y" not in raw:
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise LandscapeError(f"data file {path} must hold arrays 'x' and 'y'; found {keys}")
    x = torch.as_tensor(np.asarray(raw["x"])).float()
    y_raw = torch.as_tensor(np.asarray(raw["y"]))
    if y_raw.is_floating_point() and not torch.equal(y_raw, y_raw.round()):
        raise LandscapeError(f"labels 'y' in {path} must be integers")
    y = y_raw.long().reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise LandscapeError(f"data file {path}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    if y.numel() == 0:
        raise LandscapeError(f"data file {path} holds no samples")
    num_classes = int(np.asarray(raw["num_classes"])) if "num_classes" in raw else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise LandscapeError(
            f"labels in {path} must lie in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}"
        )
    return Dataset(x, y, num_classes, {"dataset": "file", "path": str(path)})


def parse_spec(spec: str) -> dict[str, Any]:
    """``NAME[:k=v,...]`` or a file path -> a dict spec (the form stored in results)."""
    if spec.endswith((".npz", ".pt", ".pth")) or os.sep in spec and not spec.split(":")[0] in DATASETS:
        return {"dataset": "file", "path": spec}
    name, _, rest = spec.partition(":")
    out: dict[str, Any] = {"dataset": name}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise LandscapeError(f"bad data option '{item}' in '{spec}'; write key=value, e.g. digits:split=test")
        out[key.strip()] = value.strip()
    return out


def load(spec: str | dict[str, Any], data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set from a spec string or dict (see the module docstring).

    Raises:
        LandscapeError: unknown data set, bad options, missing files.
    """
    d = parse_spec(spec) if isinstance(spec, str) else dict(spec)
    name = d.get("dataset")
    split = str(d.get("split", "train"))
    if name == "file":
        return load_tensor_file(d["path"])
    if name == "digits":
        return load_digits(split)
    if name == "synthetic":
        shape = d.get("shape", (3, 32, 32))
        if isinstance(shape, str):
            shape = tuple(int(s) for s in shape.split("x"))
        try:
            return make_synthetic(int(d.get("n", 512)), int(d.get("classes", 10)), tuple(shape), int(d.get("seed", 0)), split)
        except ValueError as exc:
            raise LandscapeError(f"bad synthetic data option in {spec!r}: {exc}") from None
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, d.get("dir", data_dir), split)
    raise LandscapeError(f"unknown data set '{name}'; choose one of {', '.join(DATASETS)} or pass a .npz/.pt file with x and y")


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise LandscapeError(f"split must be 'train' or 'test', got '{split}'")
    return split
