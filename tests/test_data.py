import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from landscape import data
from landscape.errors import LandscapeError


def write_cifar_fixture(root, name="cifar10", per_file=6):
    """A tiny copy of CIFAR's python layout: uint8 rows of 3072 bytes plus label lists."""
    folder = root / data.CIFAR_FOLDERS[name]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    classes = 10 if name == "cifar10" else 100
    for split, files in data.CIFAR_FILES[name].items():
        for f in files:
            batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                     key: rng.integers(0, classes, per_file).tolist(), b"batch_label": b"fixture"}
            with open(folder / f, "wb") as fh:
                pickle.dump(batch, fh)
    return folder


def test_digits_splits_are_disjoint_and_scaled():
    train, test = data.load("digits"), data.load("digits:split=test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.x.shape == (1437, 64) and 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    rows = {tuple(r) for r in train.x.numpy().round(4)}
    overlap = sum(tuple(r) in rows for r in test.x.numpy().round(4))
    assert overlap < 5  # only accidental duplicate images of the source data set


def test_synthetic_is_seeded_and_shaped():
    a, b = data.load("synthetic:n=40,classes=4,shape=1x6x6,seed=3"), data.load("synthetic:n=40,classes=4,shape=1x6x6,seed=3")
    assert a.x.shape == (40, 1, 6, 6) and torch.equal(a.x, b.x) and int(a.y.max()) < 4
    assert not torch.equal(a.x, data.load("synthetic:n=40,classes=4,shape=1x6x6,seed=4").x)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_the_python_layout(tmp_path, name):
    write_cifar_fixture(tmp_path, name)
    train = data.load(f"{name}:dir={tmp_path}")
    test = data.load({"dataset": name, "split": "test"}, data_dir=tmp_path)
    n_train = 6 * len(data.CIFAR_FILES[name]["train"])
    assert train.x.shape == (n_train, 3, 32, 32) and len(test) == 6
    assert train.num_classes == (10 if name == "cifar10" else 100)
    # Normalized per channel: raw byte 0 maps to -mean/std.
    assert float(train.x.min()) >= -data.CIFAR_MEAN[name][0] / min(data.CIFAR_STD[name]) - 1e-4


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(LandscapeError, match=r"cifar100 not found.*landscape download cifar100"):
        data.load("cifar100", data_dir=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch CIFAR_PWNED",))


def test_cifar_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_cifar_fixture(tmp_path, "cifar10")
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, fh)
    with pytest.raises(LandscapeError, match="not a CIFAR python batch file.*refusing"):
        data.load("cifar10:split=test", data_dir=tmp_path)
    assert not (tmp_path / "CIFAR_PWNED").exists()


def test_download_helper_unpacks_a_local_archive(tmp_path):
    src = tmp_path / "src"
    write_cifar_fixture(src, "cifar10")
    archive = tmp_path / "dest" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    # The archive is already present, so no network is used.
    folder = data.download_cifar("cifar10", tmp_path / "dest")
    assert (folder / "data_batch_5").exists()


def test_tensor_files_are_data_sets(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(10, 5)), np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    torch.save({"x": torch.tensor(x), "y": torch.tensor(y), "num_classes": 4}, tmp_path / "d.pt")
    a, b = data.load(str(tmp_path / "d.npz")), data.load(str(tmp_path / "d.pt"))
    assert a.num_classes == 3 and b.num_classes == 4 and torch.equal(a.y, b.y)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"inputs": np.zeros((3, 2)), "y": np.zeros(3)}, "must hold arrays 'x' and 'y'"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1, -1])}, r"must lie in \[0, 1\]"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1, 5]), "num_classes": 3}, r"must lie in \[0, 2\]"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 0])}, "must be integers"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0])}, "x has 4 samples but y has 3"),
    ],
)
def test_bad_tensor_files_are_clear_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(LandscapeError, match=match):
        data.load(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize(
    "spec, match",
    [("imagenet", "unknown data set 'imagenet'"), ("digits:split", "write key=value"),
     ("digits:split=val", "split must be 'train' or 'test'"), ("missing.npz", "data file not found")],
)
def test_bad_specs(spec, match):
    with pytest.raises(LandscapeError, match=match):
        data.load(spec)


def test_head_is_a_seeded_subset_and_batches_cover_it():
    d = data.load("digits")
    a, b = d.head(100, seed=1), d.head(100, seed=1)
    assert torch.equal(a.x, b.x) and len(a) == 100 and a.spec["num_samples"] == 100
    batches = a.batches(32)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([x for x, _ in batches]), a.x)
