"""Published federated splits: which training images each client holds, read from a file.

Three formats, told apart by the file's content (never by its name), each recorded as
:attr:`Split.format`:

- ``fedsam-json``: the LEAF layout of fedsam [C22] (github.com/debcaldarola/fedsam,
  ``data/cifar{10,100}/data/train/federated_train_alpha_*.json``)::

      {"users": [19, 74, ...], "num_samples": [500, 500, ...],
       "user_data": {"19": {"x": ["cichlid_s_001814.png", ...], "y": [1, ...]}, ...}}

  ``x`` names images, ``y`` gives their classes. fedsam's ``save_images.py`` writes CIFAR-100's
  training images under the ``filenames`` entries of the python batch, and CIFAR-10's as
  ``img_<i>_label_<c>.png``, ``i`` counting the images of ``data_batch_1`` ... ``data_batch_5``
  in order. A name is looked up in the data set's names (:attr:`landscape.data.Dataset.names`,
  CIFAR's ``filenames``) first, then read as ``img_<i>_label_<c>.png``; so the data set must have
  names (the CIFAR python batches have them, digits and data files do not). CIFAR-100's training
  set holds two images named ``baby_s_000333.png`` (classes 2 and 35) and fedsam's splits give
  both out: a name the data set gives to several images is told apart by ``y``. ``users`` must
  list the keys of ``user_data`` once each, and ``num_samples`` the length of each user's ``x``
  and ``y``.
- ``indices-json``: ``{client: [image indices]}``, what ``json.dump`` makes of the
  ``_partition_id_to_indices`` of Flower's partitioners (flwr-datasets) or of the ``dict_users``
  of many federated repos.
- ``csv``: rows ``user_id,image_id,class`` (a header line is allowed).

Indices count the training images of the data set from 0 (CIFAR: in the order of its batch
files). In every format clients are numbered by sorted user id, numerically when the ids are
integers: client k of a fedsam split is its user ``"k"`` (fedsam itself orders them as strings,
``"0", "1", "10", ...``, and its ``users`` list is shuffled). Every client must hold at least
one image, and no image may belong to two clients. The file is read once: its SHA-256
(:attr:`Split.sha256`, recorded in a checkpoint's partition spec) is of the bytes parsed.

Nothing the file says is run, and a message quotes at most about 10 characters of each
offending field and nothing else of the file (it may be any file, e.g. a password file given by
mistake). References: [C22] Caldarola et al. ECCV 2022; see ``shared/design/algorithms.md``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landscape.data import DECIMAL_INTEGER, os_error_at, quote
from landscape.errors import LandscapeError
from landscape.partition import class_ids

#: The formats, and how a run names its copy of a split file of each (``OUT/split.json``, ...).
SUFFIXES = {"fedsam-json": ".json", "indices-json": ".json", "csv": ".csv"}
#: The largest split file read (fedsam's CIFAR splits are 1.5 MB; 50 million indices fit).
MAX_BYTES = 1 << 30
#: fedsam's names of CIFAR-10 training images: ``img_<index>_label_<class>.png``.
FEDSAM_INDEX_NAME = re.compile(r"img_(\d{1,30})_label_(\d{1,30})\.png")

_FIX = "pass fedsam's JSON (users, num_samples, user_data), a JSON {client: [image indices]} or a CSV with rows " \
       "user_id,image_id,class"
_OTHER_DATA = "is this split for another data set?"


@dataclass(frozen=True)
class Split:
    """A split file as read: one sorted int64 index array per client, pairwise disjoint."""

    parts: list[np.ndarray]
    format: str
    sha256: str


def read_split_file(path: str | os.PathLike, labels: np.ndarray | None = None,
                    names: Sequence[str] | np.ndarray | None = None) -> Split:
    """Read a published split in any of the formats of this module (see its docstring).

    Args:
        path: the split file.
        labels: the class of every training image; when given, every class the file states must
            match (and a fedsam name given to several images is told apart by it).
        names: the name of every training image (``Dataset.names``), needed by fedsam's JSON.

    Raises:
        LandscapeError: a missing, unreadable, binary or over-large file; a format that is none of
            the three; malformed entries; images out of range or not in the data set; classes that
            disagree with ``labels``; an image given to two users; a user without images; fedsam's
            JSON on a data set without names; real-valued ``labels`` (regression targets have no
            classes).
    """
    path = Path(path).expanduser()
    labels = None if labels is None else class_ids(labels)
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LandscapeError("split file is not UTF-8 text (it holds binary data)", where=path, fix=_FIX) from None
    start = text.lstrip()[:1]
    if not start:
        raise LandscapeError("split file is empty", where=path, fix=_FIX)
    if start in "{[":
        content = _parse_json(text, path)
        if isinstance(content, dict) and ("user_data" in content or "users" in content):
            fmt, users = "fedsam-json", _fedsam_users(content, path, labels, names)
        elif isinstance(content, dict) and content and all(isinstance(v, list) for v in content.values()):
            fmt, users = "indices-json", _index_users(content, path, labels)
        else:
            raise LandscapeError(f"JSON split file holds {_describe(content)}, neither fedsam's "
                                 "{users, num_samples, user_data} nor {client: [image indices]}", where=path, fix=_FIX)
    else:
        fmt, users = "csv", _csv_users(text, path, labels)
    return Split(_ordered_parts(users), fmt, hashlib.sha256(raw).hexdigest())


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise LandscapeError("split file is a folder, not a file", where=path, fix=_FIX)
    if not path.is_file():
        raise LandscapeError("split file not found", where=path, fix=_FIX)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_BYTES:
                raise LandscapeError(f"split file is larger than {MAX_BYTES >> 20} MiB, more than any split needs",
                                     where=path, fix=_FIX)
            return f.read()
    except OSError as exc:
        raise os_error_at(exc, "cannot read split file", path) from None


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}


def _describe(value: Any) -> str:
    """What a JSON value is, without quoting more than 10 characters of it."""
    if isinstance(value, dict) and value:
        key = next(iter(value))
        return f"an object whose entry {quote(key, 10)} is {_JSON_KINDS[type(value[key])]}"
    return "an empty object" if isinstance(value, dict) else _JSON_KINDS[type(value)]


# ---------------------------------------------------------------------------------------------
# Collecting users: each image to one user
# ---------------------------------------------------------------------------------------------

class _Users:
    """The images of each user as they are read, refusing an image given out twice."""

    def __init__(self) -> None:
        self.images: dict[str, list[int]] = {}
        self.owner: dict[int, str] = {}

    def add(self, user: str, image: int, what: str, where: str) -> None:
        if image in self.owner:
            other = self.owner[image]
            again = f"twice to user {quote(user, 10)}" if other == user else \
                f"to more than one user ({quote(other, 10)} and {quote(user, 10)})"
            raise LandscapeError(f"split file gives {what} {again}", where=where,
                                 fix="each image may belong to one user only")
        self.owner[image] = user
        self.images.setdefault(user, []).append(image)


def _ordered_parts(users: _Users) -> list[np.ndarray]:
    """Client index arrays in the order of sorted user ids (numerically where they are integers)."""
    keys = sorted(users.images, key=lambda u: (0, int(u), "") if DECIMAL_INTEGER.fullmatch(u) else (1, 0, u))
    return [np.sort(np.asarray(users.images[u], dtype=np.int64)) for u in keys]


def _check_image(image: int, labels: np.ndarray | None, cls: int | None, where: str) -> None:
    """``image`` must be a training image (and of class ``cls`` when both are known)."""
    limit = len(labels) if labels is not None else 2**62
    if not 0 <= image < limit:
        raise LandscapeError(f"image index {quote(image, 12)} is outside the {limit} training images"
                             if labels is not None else f"image index {quote(image, 12)} is not an index",
                             where=where, fix=f"indices count the training images from 0; {_OTHER_DATA}")
    if labels is not None and cls is not None and int(labels[image]) != cls:
        raise LandscapeError(f"image {image} has class {int(labels[image])} in the data set, not {quote(cls, 12)}",
                             where=where, fix=_OTHER_DATA)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# The formats
# ---------------------------------------------------------------------------------------------

def _parse_json(text: str, path: Path) -> Any:
    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:  # json.loads would keep the last of two equal keys: a user would vanish
            if key in out:
                raise LandscapeError(f"JSON split file names {quote(key, 10)} twice in one object", where=path,
                                     fix="give each user once")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as exc:
        raise LandscapeError(f"split file is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                             where=path, fix=_FIX) from None
    except ValueError:  # an integer of more than 4,300 digits
        raise LandscapeError("JSON split file holds a number too long to be an index", where=path, fix=_FIX) from None
    except RecursionError:
        raise LandscapeError("JSON split file is nested too deeply", where=path, fix=_FIX) from None


def _index_users(content: dict[str, list[Any]], path: Path, labels: np.ndarray | None) -> _Users:
    """``{client: [image indices]}``."""
    users = _Users()
    for user, images in content.items():
        if not images:
            raise LandscapeError(f"client {quote(user, 10)} holds no images", where=path,
                                 fix="drop it from the file (every client needs data)")
        for j, image in enumerate(images):
            where = f"{path}: [{quote(user, 10)}][{j}]"
            if not _is_int(image):
                raise LandscapeError(f"image indices must be integers, got {quote(image, 10)}", where=where, fix=_FIX)
            _check_image(image, labels, None, where)
            users.add(user, image, f"image {image}", where)
    return users


def _fedsam_users(content: dict[str, Any], path: Path, labels: np.ndarray | None,
                  names: Sequence[str] | np.ndarray | None) -> _Users:
    """fedsam's ``{"users", "num_samples", "user_data": {user: {"x": names, "y": classes}}}``."""
    fix = "fedsam's split files hold users, num_samples and user_data: {user: {x: [image names], y: [classes]}}"
    missing = [k for k in ("users", "num_samples", "user_data") if k not in content]
    if missing:
        raise LandscapeError(f"fedsam split file lacks {' and '.join(map(repr, missing))}", where=path, fix=fix)
    listed, counts, data = content["users"], content["num_samples"], content["user_data"]
    if not isinstance(listed, list) or not all(isinstance(u, str) or _is_int(u) for u in listed):
        raise LandscapeError("fedsam split file's 'users' must be a list of user ids", where=path, fix=fix)
    if not isinstance(counts, list) or len(counts) != len(listed) or not all(_is_int(n) for n in counts):
        raise LandscapeError(f"fedsam split file's 'num_samples' must be one integer per user ({len(listed)})",
                             where=path, fix=fix)
    if not isinstance(data, dict) or not data:
        raise LandscapeError("fedsam split file's 'user_data' must be an object {user: {x, y}}", where=path, fix=fix)
    ids, seen, twice = [str(u) for u in listed], set(), None
    for u in ids:
        twice = u if twice is None and u in seen else twice
        seen.add(u)
    absent = next((u for u in ids if u not in data), None)
    stray = next((u for u in data if u not in seen), None)
    if twice is not None or absent is not None or stray is not None:
        what = (f"'users' lists {quote(twice, 10)} twice" if twice is not None else
                f"user {quote(absent, 10)} of 'users' has no 'user_data'" if absent is not None else
                f"user {quote(stray, 10)} of 'user_data' is not in 'users'")
        raise LandscapeError(f"fedsam split file: {what}", where=path,
                             fix="'users' must list the keys of 'user_data' once each")
    if names is None:
        raise LandscapeError("the split file names its images (fedsam's JSON), but the data set has no image names",
                             where=path, fix="names come from CIFAR's python batches ('filenames'): train on cifar10 "
                                             "or cifar100, or give a split by index (CSV or {client: [indices]})")
    lookup: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        lookup.setdefault(str(name), []).append(i)
    users = _Users()
    for user, count in zip(ids, counts):
        entry = data[user]
        at = f"{path}: user_data[{quote(user, 10)}]"
        if not (isinstance(entry, dict) and isinstance(entry.get("x"), list) and isinstance(entry.get("y"), list)):
            raise LandscapeError("a user's data must be an object {x: [image names], y: [classes]}", where=at, fix=fix)
        xs, ys = entry["x"], entry["y"]
        if not len(xs) == len(ys) == count:
            raise LandscapeError(f"user's x, y and num_samples disagree ({len(xs)}, {len(ys)} and {count} samples)",
                                 where=at, fix=fix)
        if not xs:
            raise LandscapeError("user holds no images", where=at, fix="drop it from the file (every client needs data)")
        for j, (name, cls) in enumerate(zip(xs, ys)):
            where = f"{at}.x[{j}]"
            if not isinstance(name, str) or not _is_int(cls):
                raise LandscapeError(f"x must hold image names and y integer classes, got {quote(name, 10)}, "
                                     f"{quote(cls, 10)}", where=where, fix=fix)
            image = _resolve(name, cls, lookup, labels, where)
            users.add(user, image, f"image {quote(name, 14)}", where)
    return users


def _resolve(name: str, cls: int, lookup: dict[str, list[int]], labels: np.ndarray | None, where: str) -> int:
    """The index of the training image fedsam calls ``name``, of class ``cls``."""
    candidates = lookup.get(name)
    if candidates is None:
        match = FEDSAM_INDEX_NAME.fullmatch(name)
        if match is None:
            raise LandscapeError(f"image {quote(name, 14)} is not in the data set", where=where,
                                 fix=f"names are CIFAR's 'filenames' of the training batches; {_OTHER_DATA}")
        image, named_cls = int(match.group(1)), int(match.group(2))
        if named_cls != cls:
            raise LandscapeError(f"image {quote(name, 14)} is named class {named_cls} but y says {cls}", where=where,
                                 fix="the file is damaged; get it again")
        _check_image(image, labels, cls, where)
        return image
    matching = candidates if labels is None else [i for i in candidates if int(labels[i]) == cls]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        found = sorted({int(labels[i]) for i in candidates}) if labels is not None else []
        raise LandscapeError(f"image {quote(name, 14)} has class{'es' if len(found) > 1 else ''} "
                             f"{' and '.join(map(str, found))} in the data set, not {quote(cls, 12)}",
                             where=where, fix=_OTHER_DATA)
    raise LandscapeError(f"the data set holds {len(matching)} images named {quote(name, 14)}"
                         + (f" of class {cls}" if labels is not None else "") + "; the split cannot say which",
                         where=where, fix="rename them in the data set or give a split by index")


def _csv_users(text: str, path: Path, labels: np.ndarray | None) -> _Users:
    """Rows ``user_id,image_id,class`` (a header line allowed)."""
    fix = "pass a CSV with rows user_id,image_id,class (or one of the JSON formats)"
    users = _Users()
    lineno, rows = 0, 0
    try:
        for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if not row or all(not c.strip() for c in row):
                continue
            rows += 1
            where = f"{path}:{lineno}"
            if len(row) < 3:  # described, not quoted: the file may be anything (a password file)
                raise LandscapeError(f"row has {len(row)} field{'s' if len(row) > 1 else ''}, expected 3: "
                                     "user_id,image_id,class", where=where, fix=_FIX)
            user, image, cls = (c.strip() for c in row[:3])
            if not (DECIMAL_INTEGER.fullmatch(image) and DECIMAL_INTEGER.fullmatch(cls)):
                if rows == 1:  # header
                    continue
                raise LandscapeError(f"image_id and class must be integers, got {quote(image, 10)}, "
                                     f"{quote(cls, 10)}", where=where, fix=fix)
            _check_image(int(image), labels, int(cls), where)
            users.add(user, int(image), f"image {int(image)}", where)
    except csv.Error as exc:  # an unclosed quote, an over-long field
        raise LandscapeError(f"split file is not a CSV ({quote(str(exc), 60)})", where=f"{path}:{lineno + 1}",
                             fix=fix) from None
    if not users.images:
        raise LandscapeError("split file has no rows user_id,image_id,class", where=path, fix=_FIX)
    return users

