"""CIFAR-10/100 in the python format: found in a local folder, read safely, downloaded and unpacked.

CIFAR's batch files are pickles; they are read through an unpickler that rebuilds numpy
arrays only, so nothing a tampered file names runs. The images are normalized per channel
(:data:`CIFAR_MEAN`, :data:`CIFAR_STD`); their ``filenames`` are kept as the data set's
:attr:`~landscape.data.Dataset.names` (fedsam's split files name images by them, see
:mod:`landscape.splits`). A downloaded archive is unpacked whole or not at
all and never outside its folder (:func:`extract_archive`). Every bad input ends in one
:class:`~landscape.errors.LandscapeError` line that names the file.
"""

from __future__ import annotations

import contextlib
import http.client
import lzma
import os
import pickle
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.data import Dataset, check_split, os_error_at, plain_array, quote, quote_keys, reason_of
from landscape.errors import LandscapeError

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
        raise pickle.UnpicklingError(f"refusing to load {quote(f'{module}.{name}', 60)}")


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
            raise LandscapeError(f"not a CIFAR python batch file ({reason_of(exc)})", where=path, fix=_CIFAR_FIX) from None
        raise os_error_at(exc, "cannot read CIFAR batch file", path) from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle can fail in any way; none of it is the user's bug
        raise LandscapeError(f"not a CIFAR python batch file ({reason_of(exc)})", where=path, fix=_CIFAR_FIX) from None
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
        raise os_error_at(exc, f"cannot look for {name}", root) from None
    raise LandscapeError(
        f"{name} not found in {root} (expected {CIFAR_FOLDERS[name]}/ with "
        f"{', '.join(CIFAR_FILES[name]['train'][:1] + CIFAR_FILES[name]['test'])}); "
        f"download it with `landscape download {name} --data-dir {root}` "
        f"or unpack {CIFAR_URLS[name]} there"
    )


def load_cifar(name: str, root: str | os.PathLike | None = None, split: str = "train") -> Dataset:
    """CIFAR-10/100 from the standard python layout, normalized per channel.

    The images keep the order of the batch files (``data_batch_1`` ... ``data_batch_5`` for
    CIFAR-10) and their ``filenames`` (decoded as UTF-8) become the data set's ``names``; a
    folder whose batches carry no ``filenames`` gives ``names`` None.

    Raises:
        LandscapeError: the folder is missing, or a batch file is unreadable, damaged, or holds
            something other than uint8 images of 3x32x32 with one label in range (and, where it
            has ``filenames``, one name) per image.
    """
    folder = find_cifar(name, root)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    classes = 10 if name == "cifar10" else 100
    xs, ys, names = [], [], []
    for fname in CIFAR_FILES[name][check_split(split)]:
        images, labels, batch_names = _cifar_batch(read_array_pickle(folder / fname), folder / fname, name,
                                                   label_key, classes)
        xs.append(images)
        ys.append(labels)
        names.append(batch_names)
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN[name]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[name]).view(1, 3, 1, 1)
    x = (x - mean) / std
    return Dataset(x, torch.from_numpy(np.concatenate(ys)), classes, {"dataset": name, "split": split, "dir": str(folder)},
                   None if any(n is None for n in names) else np.concatenate(names))


def _cifar_batch(batch: dict[Any, Any], path: Path, name: str, label_key: str, classes: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One batch's images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` int64 and names ``(N,)`` str
    (None without ``filenames``), checked."""
    fix = f"is this {name}? {_CIFAR_FIX}"
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        found = quote_keys(batch)
        raise LandscapeError(f"CIFAR batch lacks {' and '.join(map(repr, missing))}; its keys: {found}", where=path, fix=fix)
    data = plain_array(batch["data"], "CIFAR batch 'data'", path, fix)
    if data.dtype.kind not in "biu" or data.size == 0 or data.size % 3072:
        what = f"{data.size} values of type {data.dtype}" if data.dtype.kind in "biuf" else f"values of type {data.dtype}"
        raise LandscapeError(f"CIFAR batch 'data' holds {what}, not whole 3x32x32 images of bytes (3072 each)",
                             where=path, fix=fix)
    if data.dtype != np.uint8 and (int(data.min()) < 0 or int(data.max()) > 255):
        raise LandscapeError(f"CIFAR batch 'data' holds values outside 0..255 ({int(data.min())}..{int(data.max())})",
                             where=path, fix=fix)
    images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)
    labels = plain_array(batch[label_key], f"CIFAR batch '{label_key}'", path, fix)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise LandscapeError(f"CIFAR batch '{label_key}' must be a list of integers, found {labels.dtype} of shape "
                             f"{labels.shape}", where=path, fix=fix)
    if len(labels) != len(images):
        raise LandscapeError(f"CIFAR batch has {len(images)} images but {len(labels)} labels", where=path, fix=fix)
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise LandscapeError(f"CIFAR batch labels must lie in [0, {classes - 1}], found "
                             f"{int(labels.min())}..{int(labels.max())}", where=path, fix=fix)
    return images, labels.astype(np.int64), _batch_names(batch.get("filenames"), len(images), path, fix)


def _batch_names(filenames: Any, count: int, path: Path, fix: str) -> np.ndarray | None:
    """A batch's ``filenames`` (a list of byte strings) as ``count`` str, None when it has none."""
    if filenames is None:
        return None
    if not isinstance(filenames, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in filenames):
        raise LandscapeError(f"CIFAR batch 'filenames' must be a list of names, found {type(filenames).__name__}"
                             + (" with other entries" if isinstance(filenames, (list, tuple)) else ""),
                             where=path, fix=fix)
    if len(filenames) != count:
        raise LandscapeError(f"CIFAR batch has {count} images but {len(filenames)} filenames", where=path, fix=fix)
    return np.array([n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in filenames], dtype=str)


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
        raise os_error_at(exc, "cannot create the data folder", root) from None
    archive = root / Path(url).name
    if not archive.exists():
        part = archive.with_name(archive.name + ".part")
        try:
            urllib.request.urlretrieve(url, part)
            os.replace(part, archive)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise LandscapeError(f"could not download {url} ({reason_of(exc)})", where=root,
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
        raise os_error_at(exc, "cannot unpack into", root) from None
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
            raise LandscapeError(f"damaged or not a tar archive ({reason_of(exc)})", where=archive, fix=damaged) from None
        except (EOFError, zlib.error, lzma.LZMAError) as exc:
            raise LandscapeError(f"damaged or truncated archive ({reason_of(exc)})", where=archive, fix=damaged) from None
        except OSError as exc:
            if exc.errno is None:  # gzip/bz2 report bad data as a bare OSError
                raise LandscapeError(f"damaged archive ({reason_of(exc)})", where=archive, fix=damaged) from None
            raise os_error_at(exc, "cannot unpack", archive) from None
        missing = [name for name in required if not (staged / name).is_file()]
        if missing:
            raise LandscapeError(f"archive lacks {quote(missing[0], 60)}"
                                 f"{f' and {len(missing) - 1} more files' if len(missing) > 1 else ''}; "
                                 "nothing was unpacked", where=archive, fix=damaged)
        return _move_into_place(staged, root, tmp / "old")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _outside(name: str, why: str, archive: Path) -> LandscapeError:
    return LandscapeError(f"archive member {quote(name, 60)} {why}; nothing was unpacked", where=archive,
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
            raise _outside(name, f"is a link to {quote(target, 40)}, outside the folder", archive)
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
        raise os_error_at(exc, "cannot move the unpacked files into place", root) from None
    return placed
