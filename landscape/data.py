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


# ---------------------------------------------------------------------------------------------
# Federated partitions [H19, C22]
# ---------------------------------------------------------------------------------------------

#: Default federation per data set: (num_clients, samples_per_client). CIFAR follows [C22 §5]
#: (100 clients x 500 images); digits has only 1,437 training images (smallest class: 130), so
#: 20 x 65, which also fits alpha = 0.
DEFAULT_FEDERATION = {"cifar10": (100, 500), "cifar100": (100, 500), "digits": (20, 65)}


def default_federation(name: str, labels: np.ndarray) -> tuple[int, int]:
    """``(num_clients, samples_per_client)`` used when the caller names neither.

    CIFAR-10/100: 100 x 500 [C22]; digits: 20 x 65; anything else: 10 clients, as many samples
    each as still fits alpha = 0 (every class hosting ``ceil(10 / C)`` clients).
    """
    if name in DEFAULT_FEDERATION:
        return DEFAULT_FEDERATION[name]
    counts = np.bincount(np.asarray(labels).astype(np.int64).reshape(-1))
    counts = counts[counts > 0]
    per_class = -(-10 // len(counts))
    return 10, max(1, int(counts.min()) // per_class)


def _check_partition_args(num_labels: int, num_clients: int, samples_per_client: int, alpha: float) -> None:
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise LandscapeError(f"--num-clients must be a positive integer, got {num_clients}")
    if not isinstance(samples_per_client, (int, np.integer)) or samples_per_client < 1:
        raise LandscapeError(f"--samples-per-client must be a positive integer, got {samples_per_client}")
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
        LandscapeError: negative alpha, too few samples, or (alpha = 0) too few classes with
            room for a whole client.

    >>> parts = partition(np.repeat(np.arange(10), 50), 10, 50, 0.0, seed=0)
    >>> sorted(len(set(np.repeat(np.arange(10), 50)[p])) for p in parts) == [1] * 10
    True
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    _check_partition_args(len(labels), num_clients, samples_per_client, float(alpha))
    C = int(num_classes) if num_classes is not None else int(labels.max()) + 1
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
    ``labels`` are given, every row's class must match ``labels[image_id]``.

    Raises:
        LandscapeError: missing file, malformed rows, images out of range, a sample given to two
            users, or classes that disagree with the data set.
    """
    import csv

    path = Path(path).expanduser()
    if not path.is_file():
        raise LandscapeError(f"split file not found: {path}; pass a CSV with rows user_id,image_id,class")
    users: dict[str, list[int]] = {}
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 3:
                raise LandscapeError(f"{path}:{lineno}: expected user_id,image_id,class, got {','.join(row)}")
            user, image, cls = (c.strip() for c in row[:3])
            try:
                image_id, class_id = int(image), int(cls)
            except ValueError:
                if lineno == 1:  # header
                    continue
                raise LandscapeError(f"{path}:{lineno}: image_id and class must be integers, got {image!r}, {cls!r}") from None
            if labels is not None:
                if not 0 <= image_id < len(labels):
                    raise LandscapeError(f"{path}:{lineno}: image_id {image_id} is outside the {len(labels)} training images")
                if int(labels[image_id]) != class_id:
                    raise LandscapeError(
                        f"{path}:{lineno}: image {image_id} has class {int(labels[image_id])} in the data set, "
                        f"not {class_id}; is this split for another data set?"
                    )
            users.setdefault(user, []).append(image_id)
    if not users:
        raise LandscapeError(f"split file {path} has no rows user_id,image_id,class")
    keys = sorted(users, key=lambda u: (0, int(u), "") if u.lstrip("-").isdigit() else (1, 0, u))
    parts = [np.sort(np.asarray(users[u], dtype=np.int64)) for u in keys]
    allidx = np.concatenate(parts)
    if len(np.unique(allidx)) != len(allidx):
        raise LandscapeError(f"split file {path} gives some images to more than one user")
    return parts


_PARTITION_CACHE: dict[tuple[Any, ...], list[np.ndarray]] = {}


def partition_from_spec(labels: np.ndarray, partition_spec: dict[str, Any]) -> list[np.ndarray]:
    """The client index arrays described by a checkpoint's ``data["partition"]`` dict.

    A split file is re-read and its SHA-256 checked against ``split_sha256``; otherwise
    :func:`partition` is rerun with the stored (num_clients, samples_per_client, alpha, seed).
    Results are cached per (labels, spec).
    """
    import hashlib

    from landscape.files import sha256

    spec = dict(partition_spec.get("partition", partition_spec))
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    digest = None
    if spec.get("split_file"):
        path = Path(spec["split_file"]).expanduser()
        if not path.is_file():
            raise LandscapeError(f"split file not found: {path}; the partition was built from it")
        digest = sha256(path)
    key = (hashlib.sha1(labels.tobytes()).hexdigest(), digest, tuple(sorted((k, str(v)) for k, v in spec.items())))
    if key in _PARTITION_CACHE:
        return _PARTITION_CACHE[key]
    if digest is not None:
        if spec.get("split_sha256") and spec["split_sha256"] != digest:
            raise LandscapeError(f"split file {path} changed since the run (sha256 {digest[:12]} != {spec['split_sha256'][:12]})")
        parts = read_split_file(path, labels)
    else:
        missing = [k for k in ("num_clients", "samples_per_client", "alpha", "seed") if k not in spec]
        if missing:
            raise LandscapeError(f"partition spec lacks {missing}; it needs num_clients, samples_per_client, alpha, seed")
        parts = partition(labels, int(spec["num_clients"]), int(spec["samples_per_client"]), float(spec["alpha"]),
                          int(spec["seed"]), spec.get("num_classes"))
    _PARTITION_CACHE[key] = parts
    return parts


def client_data(dataset: Dataset, partition_spec: dict[str, Any], client_id: int) -> Dataset:
    """The training samples of one client, rebuilt from what a checkpoint stores.

    Args:
        dataset: the full training set (``load(ckpt.data)``).
        partition_spec: ``ckpt.data["partition"]`` (or the whole ``ckpt.data``).
        client_id: 0-based client index.

    Raises:
        LandscapeError: client id out of range, or an unusable spec.
    """
    parts = partition_from_spec(dataset.y.cpu().numpy(), partition_spec)
    if not isinstance(client_id, (int, np.integer)) or not 0 <= client_id < len(parts):
        raise LandscapeError(f"client id {client_id} is out of range; the partition has clients 0..{len(parts) - 1}")
    out = dataset.subset(parts[client_id])
    out.spec = {**dataset.spec, "partition": dict(partition_spec.get("partition", partition_spec)), "client_id": int(client_id)}
    return out
