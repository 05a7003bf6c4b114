"""Federated partitions [H19, C22]: which training samples each client holds.

A partition is one sorted int64 index array per client. It is drawn by a Dirichlet scheme
(:func:`partition`; :data:`SCHEMES`): ``h19`` (the default) as [H19]'s authors generated the
published CIFAR splits that [C22] trains on, ``fednsam`` as the FedNSAM reference code [L26]
does, or ``legacy``, this module's rule before issue 12, which rebuilds the partitions of the
checkpoints written then. Or it is read from a published split file (:mod:`landscape.splits`).
A checkpoint records the spec that rebuilds it (:func:`partition_from_spec`, :func:`client_data`;
a spec naming no ``scheme`` predates them and is ``legacy``); the default federation per data
set follows [C22 §5] (:data:`DEFAULT_FEDERATION`).

References: [H19] Hsu, Qi, Brown 2019, [C22] Caldarola et al. ECCV 2022, [L26] FedNSAM 2026;
see ``shared/design/algorithms.md``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.data import Dataset, checked_integer, os_error_at, quote
from landscape.errors import LandscapeError

#: Default federation per data set: (num_clients, samples_per_client). CIFAR follows [C22 §5]
#: (100 clients x 500 images); digits has only 1,437 training images (smallest class: 130), so
#: 20 x 65, which also fits alpha = 0.
DEFAULT_FEDERATION = {"cifar10": (100, 500), "cifar100": (100, 500), "digits": (20, 65)}

#: The Dirichlet schemes of :func:`partition` (``landscape train --partition``).
SCHEMES = ("h19", "fednsam", "legacy")
#: The scheme of new partitions.
DEFAULT_SCHEME = "h19"
#: The scheme of a partition spec that names none: it was written before schemes existed.
UNNAMED_SCHEME = "legacy"


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
        raise LandscapeError(f"{name} must be a number >= {minimum:g}, got {quote(value, 30)}", where=where, fix=fix)
    return number


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= minimum


def _check_partition_args(num_labels: int, num_clients: int, samples_per_client: int, alpha: float, seed: int,
                          scheme: str) -> None:
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise LandscapeError(f"unknown partition scheme {quote(scheme, 30)}; choose one of {', '.join(SCHEMES)}")
    if not _is_count(num_clients, 1):
        raise LandscapeError(f"--num-clients must be a positive integer, got {quote(num_clients, 30)}")
    if not _is_count(samples_per_client, 1):
        raise LandscapeError(f"--samples-per-client must be a positive integer, got {quote(samples_per_client, 30)}")
    if not _is_count(seed, 0):
        raise LandscapeError(f"the partition seed must be a non-negative integer, got {quote(seed, 30)}")
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


def _dirichlet(rng: np.random.Generator, mask: np.ndarray, concentration: float) -> np.ndarray:
    """``q ~ Dir(concentration * 1_A)`` on the classes ``A = mask``, zero elsewhere.

    ``concentration = inf`` is the uniform distribution on A. At tiny concentrations numpy's
    draw can underflow to zeros or NaN: then q is a vertex of the simplex, a class of A drawn
    uniformly (the alpha -> 0 limit).
    """
    k = int(mask.sum())
    if np.isinf(concentration):
        q = mask / k
    else:
        q = np.zeros(len(mask))
        q[mask] = rng.dirichlet(np.full(k, concentration))
        if not np.all(np.isfinite(q)) or q.sum() <= 0:
            q = np.zeros(len(mask))
            q[rng.choice(np.flatnonzero(mask))] = 1.0
    return q / q.sum()


def _largest_remainder(rng: np.random.Generator, n: int, q: np.ndarray) -> np.ndarray:
    """``n * q`` rounded to integers that sum to n (Hamilton's largest-remainder method).

    Every class gets ``floor(n q_c)``; the ``n - sum`` units left go to the classes with the
    largest fractional parts, ties broken at random (so no class index is favoured in the iid
    limit, where all parts tie).
    """
    exact = n * q
    counts = np.floor(exact).astype(np.int64)
    order = rng.permutation(len(q))
    order = order[np.argsort(counts[order] - exact[order], kind="stable")]
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _fill(rng: np.random.Generator, available: np.ndarray, n: int, concentration, split) -> np.ndarray:
    """One client's class counts for the disjoint schemes (``available`` is decreased in place).

    Proportions ``q ~ Dir(concentration(A) * 1_A)`` over the classes A that still have images
    are split into counts (``split(n, q)``), capped by what is left; when a class runs out, the
    shortfall is drawn again the same way over the classes left.
    """
    counts = np.zeros(len(available), dtype=np.int64)
    while n > 0:
        mask = available > 0
        got = np.minimum(split(n, _dirichlet(rng, mask, concentration(mask))), available)
        counts += got
        available -= got
        n -= int(got.sum())
    return counts


def partition(
    labels: np.ndarray,
    num_clients: int,
    samples_per_client: int,
    alpha: float,
    seed: int,
    num_classes: int | None = None,
    scheme: str = DEFAULT_SCHEME,
) -> list[np.ndarray]:
    """Split sample indices among clients with a Dirichlet scheme [H19].

    Client k's class proportions are ``q_k ~ Dir(alpha * p)`` with ``p`` the uniform prior over
    the ``C`` classes: ``alpha`` is the **total concentration**, ``alpha / C`` per class, in every
    scheme ("alpha = 0.5" on CIFAR-100 in [C22] is 0.005 in the per-class convention of
    flwr-datasets/FedLab; FedNSAM's ``alpha_value = 0.1`` on CIFAR-100 is alpha = 10 here).
    Clients are filled in order, images taken from a seeded shuffle of each class. The schemes
    differ in how q_k becomes images:

    ``h19`` (default), as [H19]'s authors generated the published CIFAR splits of [C22]
    (fedsam's ``federated_train_alpha_*.json``; the generator itself is unpublished). Client k
    holds ``n q_kc`` images of class c, rounded by largest remainder (no sampling noise), without
    replacement. The classes that have run out are left out of the prior: q_k is drawn on the
    classes A still available, ``Dir(alpha / C * 1_A)``, per-class weight unchanged (by the
    Dirichlet aggregation property this is ``Dir(alpha * p)`` with the emptied classes' mass
    dropped), and a class that runs out mid-client has the shortfall drawn again that way.

    ``legacy``, this module's rule until issue 12 (kept so old checkpoints rebuild their
    clients): labels sampled i.i.d. from ``Cat(q_k)``, and the prior over the available classes
    A renormalized to total concentration alpha, ``Dir(alpha / |A| * 1_A)``, at each client and
    after each shortfall. The evidence that the published splits are not this (measured on
    fedsam's JSON files; ``bench/partition_stats.py`` prints the comparison): (1) at alpha = 1000
    on CIFAR-100 the per-client class counts of clients 0-59 (before any class runs out) have
    variance 2.59 around 5; ``n^2 Var(q_c) = 500^2 (0.01 * 0.99) / 1001 = 2.47`` plus 1/12 of
    rounding gives 2.55, while multinomial sampling adds ``n q (1 - q)`` for 7.4; their histogram
    is that of rounded ``n q``. Sampling is why legacy has 95.8 classes per client there against
    the published 98.8 (top-class share 0.028 against 0.020): noisy consumption empties classes
    early. (2) Renormalizing the prior to total alpha over the |A| classes left makes each
    per-class weight grow as classes run out (the last clients draw nearly uniformly over the
    few classes left), which is why legacy has 6.25 classes per client at alpha = 0.5 against
    the published 5.13; with the per-class weight kept at alpha / C (and n q rounded) it is 5.01
    (seed sd 0.18). Gaps left, each about 2 seed sd: h19's top-class share there, 0.667 (sd
    0.025) against 0.723 (legacy 0.620), and CIFAR-10 at alpha 0.5 and 10 (legacy alike). The total concentration implied by the
    early clients' mean ``sum_c (n_kc / n)^2`` is alpha in every file (0.35 for 0.5 from its 8
    clients before the first class runs out, 968 for 1000, 10.9 for 10, 104 for 100).

    ``fednsam``, the FedNSAM reference code [L26] (``dirichlet_data.data_from_dirichlet``): q_k
    on all classes that have images, labels sampled i.i.d. from ``Cat(q_k)``; a class that runs
    out is reshuffled and its images are used again, so clients may share images and a client
    may hold one image twice (its array then repeats the index). (The code draws q per client,
    ``Dir(alpha_value * 1_C)``, not per class over clients.)

    ``alpha = 0`` is one rule for every scheme (numpy's Dirichlet returns zeros or NaN there):
    every client holds exactly one class, classes assigned by capacity
    ``floor(n_c / samples_per_client)`` in a balanced round robin (CIFAR-10 100 x 500: 10 clients
    per class; [C22]'s alpha = 0 files are this). ``alpha = inf`` is iid (``h19``: exactly
    ``n / C`` of each class, up to rounding); large finite alpha (1000 in [C22]) approaches it.

    Args:
        labels: integer class of every sample, shape ``(N,)``.
        num_clients: number of clients K.
        samples_per_client: samples per client n; ``K * n <= N``.
        alpha: total Dirichlet concentration, ``>= 0``.
        seed: seed of the partition; the same seed gives the same partition.
        num_classes: C (default ``max(labels) + 1``).
        scheme: one of :data:`SCHEMES`.

    Returns:
        One sorted int64 index array per client, each of ``samples_per_client``; pairwise
        disjoint except with ``fednsam``.

    Raises:
        LandscapeError: an unknown scheme, negative alpha, too few samples, (alpha = 0) too few
            classes with room for a whole client, or real-valued labels (see :func:`class_ids`).

    >>> parts = partition(np.repeat(np.arange(10), 50), 10, 50, 0.0, seed=0)
    >>> sorted(len(set(np.repeat(np.arange(10), 50)[p])) for p in parts) == [1] * 10
    True
    """
    labels = class_ids(labels)
    _check_partition_args(len(labels), num_clients, samples_per_client, float(alpha), seed, scheme)
    C = int(labels.max()) + 1
    if num_classes is not None:
        if not _is_count(num_classes, C):
            raise LandscapeError(f"num_classes must be an integer >= {C} (the labels run up to {C - 1}), "
                                 f"got {quote(num_classes, 30)}")
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

    present = available > 0
    for _ in range(num_clients):
        if scheme == "h19":
            counts = _fill(rng, available, samples_per_client, lambda mask: alpha / C,
                           lambda n, q: _largest_remainder(rng, n, q))
        elif scheme == "legacy":
            counts = _fill(rng, available, samples_per_client, lambda mask: alpha / int(mask.sum()), rng.multinomial)
        else:  # fednsam: images reused, so every class with images stays in the prior
            counts = rng.multinomial(samples_per_client, _dirichlet(rng, present, alpha / C))
        parts = []
        for c in np.flatnonzero(counts):
            need = int(counts[c])
            while need > 0:
                if taken[c] == len(pools[c]):  # fednsam only: the class is reshuffled and reused
                    pools[c] = rng.permutation(pools[c])
                    taken[c] = 0
                k = min(need, len(pools[c]) - int(taken[c]))
                parts.append(pools[c][taken[c] : taken[c] + k])
                taken[c] += k
                need -= k
        out.append(np.sort(np.concatenate(parts)))
    return out


_PARTITION_CACHE: dict[tuple[Any, ...], list[np.ndarray]] = {}


def partition_from_spec(labels: np.ndarray, partition_spec: Mapping[str, Any],
                        names: np.ndarray | None = None) -> list[np.ndarray]:
    """The client index arrays described by a checkpoint's ``data["partition"]`` dict.

    A split file is re-read (:func:`landscape.splits.read_split_file`, with the training set's
    image ``names`` that fedsam's JSON needs) and its SHA-256 checked against ``split_sha256``; otherwise
    :func:`partition` is rerun with the stored (num_clients, samples_per_client, alpha, seed,
    num_classes, scheme); a spec without ``scheme`` was written before schemes existed and is
    rebuilt by :data:`UNNAMED_SCHEME` (``legacy``). Results are cached per (labels, spec).

    Raises:
        LandscapeError: a spec that is not a dict, lacks a key, or holds a value of the wrong
            type or range; a split file that is missing, changed or malformed.
    """
    from landscape.files import sha256
    from landscape.splits import read_split_file  # splits builds on this module

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
            raise LandscapeError(f"split_file must be a path, got {quote(split_file, 30)}", where=where, fix=fix)
        path = Path(split_file).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise LandscapeError(f"split file {what}; the partition was built from it", where=path,
                                 fix="put the split file back at that path")
        expected = spec.get("split_sha256")
        if expected is not None and not isinstance(expected, str):
            raise LandscapeError(f"split_sha256 must be a hex string, got {quote(expected, 30)}", where=where, fix=fix)
        try:
            digest = sha256(path)
        except OSError as exc:
            raise os_error_at(exc, "cannot read split file", path) from None
        if expected and expected != digest:
            raise LandscapeError(f"split file changed since the run (sha256 {digest[:12]} != {quote(expected[:12], 16)})",
                                 where=path, fix="restore the file the run used")
        args: tuple[Any, ...] = ()
    else:
        missing = [k for k in ("num_clients", "samples_per_client", "alpha", "seed") if k not in spec]
        if missing:
            raise LandscapeError(f"partition spec lacks {', '.join(missing)}", where=where,
                                 fix="it needs num_clients, samples_per_client, alpha and seed (or split_file)")
        num_classes = spec.get("num_classes")
        scheme = spec.get("scheme", UNNAMED_SCHEME)
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            raise LandscapeError(f"scheme must be one of {', '.join(SCHEMES)}, got {quote(scheme, 30)}",
                                 where=where, fix=fix)
        args = (
            checked_integer(spec["num_clients"], "num_clients", where=where, fix=fix, minimum=1),
            checked_integer(spec["samples_per_client"], "samples_per_client", where=where, fix=fix, minimum=1),
            _number(spec["alpha"], "alpha", where=where, fix=fix, minimum=0.0),
            checked_integer(spec["seed"], "seed", where=where, fix=fix, minimum=0),
            None if num_classes is None else checked_integer(num_classes, "num_classes", where=where, fix=fix, minimum=1),
            scheme,
        )
    named = None if digest is None or names is None else hashlib.sha1(np.asarray(names).tobytes()).hexdigest()
    key = (hashlib.sha1(labels.tobytes()).hexdigest(), digest, named, args)
    if key in _PARTITION_CACHE:
        return _PARTITION_CACHE[key]
    parts = read_split_file(path, labels, names).parts if digest is not None else partition(labels, *args)
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
    parts = partition_from_spec(dataset.y.cpu().numpy(), partition_spec, dataset.names)
    if isinstance(client_id, (bool, np.bool_)) or not isinstance(client_id, (int, np.integer)) \
            or not 0 <= client_id < len(parts):
        raise LandscapeError(f"client id {quote(client_id, 30)} is out of range; the partition has clients "
                             f"0..{len(parts) - 1}")
    out = dataset.subset(parts[client_id])
    out.spec = {**dataset.spec, "partition": dict(partition_spec.get("partition", partition_spec)), "client_id": int(client_id)}
    return out
