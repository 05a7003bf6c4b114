"""Federated partitions [H19, C22]: Dirichlet split statistics, alpha = 0 by capacity, specs (split files: test_splits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import data, partition
from landscape.errors import LandscapeError
from tests.conftest import assert_one_line

CIFAR10_LABELS = np.repeat(np.arange(10), 5000)  # CIFAR-10-shaped: 10 classes x 5,000 images


def classes_per_client(parts: list[np.ndarray], labels: np.ndarray) -> list[int]:
    return [len(np.unique(labels[p])) for p in parts]


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1.0, 100.0, float("inf")])
def test_sizes_and_disjoint(alpha: float) -> None:
    parts = partition.partition(CIFAR10_LABELS, 100, 500, alpha, seed=3)
    assert len(parts) == 100
    assert all(len(p) == 500 for p in parts)
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything) == 50000  # no sample used twice
    assert everything.min() >= 0 and everything.max() < len(CIFAR10_LABELS)


def test_alpha_zero_one_class_per_client_ten_per_class() -> None:
    parts = partition.partition(CIFAR10_LABELS, 100, 500, 0.0, seed=0)
    assert classes_per_client(parts, CIFAR10_LABELS) == [1] * 100
    owners = np.bincount([int(CIFAR10_LABELS[p[0]]) for p in parts], minlength=10)
    assert owners.tolist() == [10] * 10


def test_alpha_zero_cifar100_one_client_per_class() -> None:
    labels = np.repeat(np.arange(100), 500)
    parts = partition.partition(labels, 100, 500, 0.0, seed=1)
    assert sorted(int(labels[p[0]]) for p in parts) == list(range(100))
    assert classes_per_client(parts, labels) == [1] * 100


def test_mean_classes_grows_with_alpha() -> None:
    means = [np.mean(classes_per_client(partition.partition(CIFAR10_LABELS, 100, 500, a, seed=0), CIFAR10_LABELS))
             for a in (0.0, 0.05, 0.5, 5.0, 1000.0)]
    assert means[0] == 1.0
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert means[-1] > 9.9  # large alpha: iid, every client sees (almost) every class


def test_iid_limit_has_uniform_class_counts() -> None:
    # The legacy scheme samples labels (h19's exact n/C is tested in test_dirichlet.py).
    parts = partition.partition(CIFAR10_LABELS, 100, 500, float("inf"), seed=0, scheme="legacy")
    counts = np.array([np.bincount(CIFAR10_LABELS[p], minlength=10) for p in parts])
    # Multinomial(500, 1/10): mean 50, std sqrt(45) ~ 6.7 per cell.
    assert abs(counts.mean() - 50) < 1e-9
    assert 5 < counts.std() < 8.5


def test_same_seed_same_partition_other_seed_differs() -> None:
    a = partition.partition(CIFAR10_LABELS, 20, 100, 0.5, seed=7)
    b = partition.partition(CIFAR10_LABELS, 20, 100, 0.5, seed=7)
    c = partition.partition(CIFAR10_LABELS, 20, 100, 0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_exhausted_class_is_redrawn() -> None:
    # 3 classes of 100 images, 3 clients x 100 at tiny alpha: clients want one class but some
    # classes run out, so the prior is redrawn over what is left and every image is still used once.
    labels = np.repeat(np.arange(3), 100)
    parts = partition.partition(labels, 3, 100, 1e-3, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -0.1}, "alpha must be >= 0"),
        ({"alpha": float("nan")}, "alpha must be >= 0"),
        ({"num_clients": 101}, "exceeds the 50000 training samples"),
        ({"num_clients": 0}, "num-clients must be a positive integer"),
        ({"samples_per_client": 0}, "samples-per-client must be a positive integer"),
        ({"alpha": 0.0, "samples_per_client": 490, "num_clients": 102}, "room for 100 clients"),
        ({"num_clients": True}, "num-clients must be a positive integer, got True"),
        ({"num_clients": 2.0}, "num-clients must be a positive integer, got 2.0"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"num_classes": 5}, r"num_classes must be an integer >= 10 \(the labels run up to 9\), got 5"),
    ],
)
def test_bad_partition_arguments(kwargs: dict, match: str) -> None:
    args = {"num_clients": 100, "samples_per_client": 500, "alpha": 0.5, "seed": 0, **kwargs}
    with pytest.raises(LandscapeError, match=match) as exc:
        partition.partition(CIFAR10_LABELS, **args)
    assert_one_line(exc)


def test_digits_defaults_fit() -> None:
    train = data.load("digits")
    k, n = partition.default_federation("digits", train.y.numpy())
    parts = partition.partition(train.y.numpy(), k, n, 0.0, seed=0)
    assert (k, n) == (20, 65) and len(parts) == k


def test_default_federation_of_other_data_fits_alpha_zero() -> None:
    labels = np.repeat(np.arange(4), [40, 55, 60, 45])
    k, n = partition.default_federation("synthetic", labels)
    assert (k, n) == (10, 13)  # 3 clients per class, smallest class 40
    assert len(partition.partition(labels, k, n, 0.0, seed=0)) == 10


def write_split(path, rows: list[tuple[object, int, int]], header: bool = True) -> None:
    lines = (["user_id,image_id,class"] if header else []) + [f"{u},{i},{c}" for u, i, c in rows]
    path.write_text("\n".join(lines) + "\n")


GOOD_SPEC = {"num_clients": 2, "samples_per_client": 2, "alpha": 0.5, "seed": 0}

BAD_PARTITION_SPECS = [
    ({**GOOD_SPEC, "num_clients": "x"}, "num_clients must be a positive integer, got 'x'"),
    ({**GOOD_SPEC, "num_clients": None}, "num_clients must be a positive integer, got None"),
    ({**GOOD_SPEC, "num_clients": -2}, "num_clients must be a positive integer, got -2"),
    ({**GOOD_SPEC, "num_clients": 1.5}, "num_clients must be a positive integer, got 1.5"),
    ({**GOOD_SPEC, "num_clients": [2]}, "num_clients must be a positive integer, got \\[2\\]"),
    ({**GOOD_SPEC, "samples_per_client": 0}, "samples_per_client must be a positive integer, got 0"),
    ({**GOOD_SPEC, "samples_per_client": "many"}, "samples_per_client must be a positive integer"),
    ({**GOOD_SPEC, "alpha": None}, "alpha must be a number >= 0, got None"),
    ({**GOOD_SPEC, "alpha": "x"}, "alpha must be a number >= 0, got 'x'"),
    ({**GOOD_SPEC, "alpha": -0.5}, "alpha must be a number >= 0, got -0.5"),
    ({**GOOD_SPEC, "alpha": float("nan")}, "alpha must be a number >= 0, got nan"),
    ({**GOOD_SPEC, "alpha": True}, "alpha must be a number >= 0, got True"),
    ({**GOOD_SPEC, "seed": -1}, "seed must be a non-negative integer, got -1"),
    ({**GOOD_SPEC, "seed": "s"}, "seed must be a non-negative integer, got 's'"),
    ({**GOOD_SPEC, "num_classes": "ten"}, "num_classes must be a positive integer, got 'ten'"),
    ({**GOOD_SPEC, "num_classes": 2}, "num_classes must be an integer >= 3"),
    ({**GOOD_SPEC, "num_clients": 4}, "4 clients x 2 samples = 8 exceeds the 6 training samples"),
    ({"num_clients": 2, "alpha": 0.5}, "partition spec lacks samples_per_client, seed"),
    ({}, "partition spec lacks num_clients, samples_per_client, alpha, seed"),
    ({"partition": None}, "a partition spec must be a dict, got NoneType"),
    ({"partition": "x"}, "a partition spec must be a dict, got str"),
    ([1, 2], "a partition spec must be a dict, got list"),
    ({"split_file": 3}, "split_file must be a path, got 3"),
    ({"split_file": "/nonexistent/split.csv"}, "split file not found; the partition was built from it"),
]


@pytest.mark.parametrize("spec, match", BAD_PARTITION_SPECS)
def test_bad_partition_specs_are_one_line(spec, match: str) -> None:
    with pytest.raises(LandscapeError, match=match) as exc:
        partition.partition_from_spec(np.array([0, 1, 1, 0, 2, 2]), spec)
    assert_one_line(exc)


def test_partition_spec_values_as_a_json_round_trip_would_give_them() -> None:
    labels = np.repeat(np.arange(3), 4)
    stored = partition.partition_from_spec(labels, {"num_clients": 3, "samples_per_client": 4, "alpha": 0, "seed": 1})
    loose = partition.partition_from_spec(labels, {"num_clients": 3.0, "samples_per_client": "4", "alpha": "0", "seed": 1})
    assert [p.tolist() for p in stored] == [p.tolist() for p in loose]
    inf = partition.partition_from_spec(labels, {"num_clients": 3, "samples_per_client": 4, "alpha": "inf", "seed": 1})
    assert sorted(np.concatenate(inf).tolist()) == list(range(12))


def test_split_file_spec_checks_its_types(tmp_path) -> None:
    path = tmp_path / "split.csv"
    write_split(path, [(0, 0, 0)])
    with pytest.raises(LandscapeError, match="split_sha256 must be a hex string, got 5") as exc:
        partition.partition_from_spec(np.array([0]), {"split_file": str(path), "split_sha256": 5})
    assert_one_line(exc)
    path.unlink()
    path.mkdir()
    with pytest.raises(LandscapeError, match="split file is a folder, not a file") as exc:
        partition.partition_from_spec(np.array([0]), {"split_file": str(path)})
    assert_one_line(exc, path)


@pytest.mark.parametrize("client", [True, 1.0, "1", -1])
def test_client_ids_must_be_integers_in_range(client) -> None:
    ds = data.make_synthetic(n=40, classes=2, shape=(2,), seed=0)
    with pytest.raises(LandscapeError, match="is out of range; the partition has clients 0..1") as exc:
        partition.client_data(ds, {"num_clients": 2, "samples_per_client": 10, "alpha": 1.0, "seed": 0}, client)
    assert_one_line(exc)


def test_client_data_rebuilds_partition_from_spec() -> None:
    ds = data.make_synthetic(n=400, classes=4, shape=(1, 2, 2), seed=0)
    spec = {"num_clients": 8, "samples_per_client": 50, "alpha": 0.3, "seed": 5}
    parts = partition.partition(ds.y.numpy(), 8, 50, 0.3, 5, scheme="legacy")  # a spec naming no scheme
    client = partition.client_data(ds, {"dataset": "synthetic", "partition": spec}, 3)
    assert torch.equal(client.x, ds.x[torch.as_tensor(parts[3])])
    assert client.spec["client_id"] == 3 and client.spec["partition"] == spec
    with pytest.raises(LandscapeError, match="client id 8 is out of range"):
        partition.client_data(ds, spec, 8)


def test_client_data_from_split_file_checks_hash(tmp_path) -> None:
    from landscape.files import sha256

    ds = data.Dataset(torch.zeros(6, 1), torch.tensor([0, 1, 1, 0, 2, 2]), 3, {"dataset": "file"})
    path = tmp_path / "split.csv"
    write_split(path, [(0, 0, 0), (0, 1, 1), (1, 2, 1)])
    spec = {"split_file": str(path), "split_sha256": sha256(path)}
    assert partition.client_data(ds, spec, 1).y.tolist() == [1]
    write_split(path, [(0, 0, 0), (1, 1, 1), (1, 2, 1)])
    with pytest.raises(LandscapeError, match="changed since the run"):
        partition.client_data(ds, spec, 1)
