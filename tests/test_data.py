import errno
import io
import os
import re
import pickle
import tarfile

import numpy as np
import pytest
import torch

from landscape import cifar, data, partition, splits
from landscape.errors import LandscapeError
from tests.conftest import assert_one_line


def write_cifar_fixture(root, name="cifar10", per_file=6):
    """A tiny copy of CIFAR's python layout: uint8 rows of 3072 bytes plus label lists."""
    folder = root / cifar.CIFAR_FOLDERS[name]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    classes = 10 if name == "cifar10" else 100
    for split, files in cifar.CIFAR_FILES[name].items():
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
    n_train = 6 * len(cifar.CIFAR_FILES[name]["train"])
    assert train.x.shape == (n_train, 3, 32, 32) and len(test) == 6
    assert train.num_classes == (10 if name == "cifar10" else 100)
    # Normalized per channel: raw byte 0 maps to -mean/std.
    assert float(train.x.min()) >= -cifar.CIFAR_MEAN[name][0] / min(cifar.CIFAR_STD[name]) - 1e-4


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(LandscapeError, match=r"cifar100 not found.*landscape download cifar100"):
        data.load("cifar100", data_dir=tmp_path)


def test_tensor_files_are_data_sets(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(10, 5)), np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    torch.save({"x": torch.tensor(x), "y": torch.tensor(y), "num_classes": 4}, tmp_path / "d.pt")
    a, b = data.load(str(tmp_path / "d.npz")), data.load(str(tmp_path / "d.pt"))
    assert a.num_classes == 3 and b.num_classes == 4 and torch.equal(a.y, b.y)


def npz(**arrays):
    return lambda path: np.savez(path, **arrays)


def pt(obj):
    return lambda path: torch.save(obj, path)


def raw(content: bytes):
    return lambda path: path.write_bytes(content)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def zip_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


X3 = np.zeros((3, 2))

BAD_TENSOR_FILES = [
    # name, writer, match
    ("bad.npz", npz(inputs=X3, y=np.zeros(3)), "must hold arrays 'x' and 'y'"),
    ("bad.npz", npz(x=X3, y=np.array([0, 1, -1])), r"must lie in \[0, 1\]"),
    ("bad.npz", npz(x=X3, y=np.array([0, 1, 5]), num_classes=3), r"must lie in \[0, 2\]"),
    ("bad.npz", npz(x=X3, y=np.array([np.nan, 1, 0])), "labels 'y' hold 1 NaN or infinite values"),
    ("bad.npz", npz(x=X3, y=np.array([0.5, np.inf, 0])), "labels 'y' hold 1 NaN or infinite values"),
    ("bad.npz", npz(x=X3, y=np.array([0.5, 1, 0]), num_classes=2), "stores num_classes, but labels 'y' are real"),
    ("bad.npz", npz(x=X3, y=np.full((3, 2, 2), 0.5)), r"must have shape \(N,\) or \(N, k\); found shape \(3, 2, 2\)"),
    ("bad.npz", npz(x=X3, y=np.array([1e300, 0.5, 0])), "1 NaN or infinite values.*too large for float32"),
    ("bad.npz", npz(x=X3, y=np.array([2.0**70, 1, 0])), f"more than {data.MAX_CLASSES} classes"),
    ("bad.npz", npz(x=np.zeros((4, 2)), y=np.array([0, 1, 0])), "x has 4 samples but y has 3"),
    ("bad.npz", npz(x=X3, y=np.array(["cat", "dog", "cat"])), r"labels 'y' holds strings \(dtype <U3\)"),
    ("bad.npz", npz(x=X3, y=np.array([b"cat", b"dog", b"cat"])), "labels 'y' holds byte strings"),
    ("bad.npz", npz(x=X3, y=np.array([0, None, "a"], dtype=object)), "'y' holds Python objects.*could run code"),
    ("bad.npz", npz(x=np.array([["a", "b"]] * 3), y=np.zeros(3)), "inputs 'x' holds strings"),
    ("bad.npz", npz(x=X3 + 1j, y=np.zeros(3)), "inputs 'x' holds complex numbers"),
    ("bad.npz", npz(x=X3, y=np.zeros((3, 2), np.int64)), r"one class id per sample, shape \(N,\); found shape \(3, 2\)"),
    ("bad.npz", npz(x=np.zeros((0, 2)), y=np.zeros(0)), "holds no samples"),
    ("bad.npz", npz(x=np.zeros((3, 0)), y=np.zeros(3)), "no values per sample"),
    ("bad.npz", npz(x=np.array(5.0), y=np.zeros(3)), "one row per sample"),
    ("bad.npz", npz(x=np.array([[0, np.nan], [1, 2], [np.inf, 0]]), y=np.zeros(3)), "2 NaN or infinite values"),
    ("bad.npz", npz(x=np.full((3, 2), 1e300), y=np.zeros(3)), "6 NaN or infinite values.*too large for float32"),
    ("bad.npz", npz(x=X3, y=np.zeros(3), num_classes="ten"), "num_classes must be a positive integer, got 'ten'"),
    ("bad.npz", npz(x=X3, y=np.zeros(3), num_classes=2.5), "num_classes must be a positive integer, got 2.5"),
    ("bad.npz", npz(x=X3, y=np.zeros(3), num_classes=0), "num_classes must be a positive integer, got 0"),
    ("bad.npz", npz(x=X3, y=np.zeros(3), num_classes=-3), "num_classes must be a positive integer, got -3"),
    ("bad.npz", npz(x=X3, y=np.zeros(3), num_classes=[2, 3]), "num_classes must be a positive integer"),
    ("bad.npz", npz(x=X3, y=np.zeros(3), num_classes=10**9), f"num_classes must be at most {data.MAX_CLASSES}"),
    ("bad.npz", npz(x=X3, y=np.array([0, 1, 10**9])), f"more than {data.MAX_CLASSES} classes"),
    ("bad.pt", pt({"x": torch.zeros(3, 2), "y": torch.zeros(3), "num_classes": True}), "num_classes must be a positive"),
    # named inputs and 'labels' (HuggingFace style)
    ("bad.npz", npz(x=X3, labels=np.zeros(3)), "must hold arrays 'x' and 'y', or named inputs and 'labels'"),
    ("bad.npz", npz(labels=np.zeros(3), num_classes=2), "holds 'labels' but no inputs beside it"),
    ("bad.npz", npz(input_ids=np.zeros((4, 5), np.int64), labels=np.zeros(3)), "input 'input_ids' has 4 rows but 'labels' has 3"),
    ("bad.npz", npz(input_ids=np.array(5), labels=np.zeros(3)), "input 'input_ids' must be an array with one row per sample"),
    ("bad.npz", npz(input_ids=np.array([["a"]] * 3), labels=np.zeros(3)), "input 'input_ids' holds strings"),
    ("bad.npz", npz(input_ids=np.zeros((3, 0)), labels=np.zeros(3)), r"input 'input_ids' have no values per sample \(shape \(3, 0\)\)"),
    ("bad.npz", npz(pixels=np.array([[np.nan], [0], [1]]), labels=np.zeros(3)), "input 'pixels' hold 1 NaN"),
    ("bad.npz", npz(ids=np.array([[2**63]] * 3, np.uint64), labels=np.zeros(3)), "input 'ids' holds integers beyond int64"),
    ("bad.npz", npz(ids=np.zeros((3, 2)), labels=np.array([0, 1, 9]), num_classes=3), r"labels must lie in \[0, 2\]"),
    ("bad.npz", npz(ids=np.zeros((3, 2)), labels=np.array([0.5, np.nan, 1])), "labels 'labels' hold 1 NaN"),
    ("bad.pt", pt({"input ids": torch.zeros(3, 2), "labels": torch.zeros(3)}), "input name 'input ids' is not a Python identifier"),
    ("bad.pt", pt({7: torch.zeros(3, 2), "labels": torch.zeros(3)}), "input name 7 is not a Python identifier"),
    ("bad.pt", pt({"ids": {"a": torch.zeros(3)}, "labels": torch.zeros(3)}), "input 'ids' holds Python objects"),
    ("bad.pt", pt(torch.zeros(3, 2)), "holds a Tensor, not a dict with arrays 'x' and 'y'"),
    ("bad.pt", pt([torch.zeros(3, 2), torch.zeros(3)]), "holds a list, not a dict"),
    ("bad.pt", pt({"x": X3, "y": np.zeros(3)}), "holds numpy arrays.*store torch tensors"),
    ("bad.pt", pt({"x": [[1.0], [1.0, 2.0]], "y": [0, 1]}), "inputs 'x' is not an array of numbers"),
    ("bad.pt", pt({"x": [[1.0], [2.0]], "y": ["cat", "dog"]}), "labels 'y' holds strings"),
    ("bad.pt", raw(b"\x80\x05garbage" * 20), "damaged or not a file written by torch.save"),
    ("bad.pt", raw(b""), "damaged or not a file written by torch.save"),
    ("bad.npz", raw(os.urandom(64)), "damaged or not an .npz archive"),
    ("bad.npz", raw(zip_bytes(x=X3, y=np.zeros(3))[:200]), "damaged or not an .npz archive"),
    ("bad.npz", raw(npy_bytes(X3)), "holds a ndarray, not a dict"),
    ("bad.npz", lambda path: path.mkdir(), "data file is a folder, not a file"),
    ("bad.csv", raw(b"x,y\n"), "data file must end in .npz or .pt"),
    ("missing.npz", lambda path: None, "data file not found"),
]


@pytest.mark.parametrize("name, write, match", BAD_TENSOR_FILES)
def test_bad_tensor_files_are_one_line_errors(tmp_path, name, write, match):
    path = tmp_path / name
    write(path)
    with pytest.raises(LandscapeError, match=match) as exc:
        data.load(str(path))
    assert_one_line(exc, path)


def test_truncated_pt_file_is_one_line(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"x": torch.zeros(50, 4), "y": torch.zeros(50)}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(LandscapeError, match="damaged or not a file written by torch.save") as exc:
        data.load(str(bad))
    assert_one_line(exc, bad)


def test_tensor_file_labels_of_shape_n_by_1_and_small_floats_load(tmp_path):
    torch.save({"x": torch.zeros(3, 2, dtype=torch.bfloat16), "y": torch.tensor([[0], [1], [1]]),
                "num_classes": torch.tensor(4)}, tmp_path / "d.pt")
    ds = data.load(str(tmp_path / "d.pt"))
    assert ds.x.dtype == torch.float32 and ds.y.tolist() == [0, 1, 1] and ds.num_classes == 4


IDS = np.array([[5, 3, 0], [2, 7, 1], [4, 4, 4], [9, 0, 0]], np.int32)
MASK = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]], np.uint8)

GOOD_TENSOR_FILES = [
    # id, writer, input dtypes by name (None: pair data, x float32), target dtype and shape, num_classes
    ("integral-float-y", npz(x=X3, y=np.array([0.0, 2.0, 1.0])), None, (torch.long, (3,)), 3),
    ("regression-y", npz(x=X3, y=np.array([0.5, -1.25, 3.0])), None, (torch.float32, (3,)), None),
    ("regression-y-n-by-1", npz(x=X3, y=np.array([[0.5], [1.0], [2.0]])), None, (torch.float32, (3, 1)), None),
    ("regression-y-n-by-k", pt({"x": torch.zeros(3, 2), "y": torch.randn(3, 4, dtype=torch.float64)}), None,
     (torch.float32, (3, 4)), None),
    ("multi-label-0-1-floats", npz(x=X3, y=np.eye(3)[[0, 2, 1]]), None, (torch.float32, (3, 3)), None),
    ("named-npz", npz(input_ids=IDS, attention_mask=MASK, labels=np.array([0, 1, 2, 1])),
     {"input_ids": torch.long, "attention_mask": torch.long}, (torch.long, (4,)), 3),
    ("named-pt", pt({"input_ids": torch.from_numpy(IDS), "attention_mask": torch.from_numpy(MASK).bool(),
                     "pixel_values": torch.zeros(4, 2, dtype=torch.float16), "labels": torch.tensor([1, 0, 1, 1]),
                     "num_classes": 5}),
     {"input_ids": torch.long, "attention_mask": torch.bool, "pixel_values": torch.float32}, (torch.long, (4,)), 5),
    ("named-regression", npz(input_ids=IDS, labels=np.array([0.1, 0.2, 0.3, 0.4])), {"input_ids": torch.long},
     (torch.float32, (4,)), None),
]


@pytest.mark.parametrize("name, write, inputs, target, num_classes", GOOD_TENSOR_FILES, ids=[c[0] for c in GOOD_TENSOR_FILES])
def test_tensor_files_with_named_inputs_or_real_targets_load(tmp_path, name, write, inputs, target, num_classes):
    path = tmp_path / ("d.pt" if "pt" in name or "n-by-k" in name else "d.npz")
    write(path)
    ds = data.load(str(path))
    assert ds.named == (inputs is not None) and ds.num_classes == num_classes
    assert (ds.y.dtype, tuple(ds.y.shape)) == target
    if inputs is None:
        assert ds.x.dtype == torch.float32 and ds.arrays().keys() == {"x", "y"}
    else:
        assert {k: v.dtype for k, v in ds.inputs.items()} == inputs
        assert ds.arrays().keys() == {*inputs, "labels"}
        assert torch.equal(ds.inputs["input_ids"], torch.from_numpy(IDS).long())  # token ids are never rescaled


def named_dataset():
    ids = torch.arange(20).reshape(5, 4)
    return data.Dataset({"input_ids": ids, "attention_mask": ids % 2}, torch.tensor([0, 1, 2, 1, 0]), 3,
                        {"dataset": "file", "path": "tokens.npz"})


def test_named_data_subsets_and_batches_are_dicts_with_labels():
    ds = named_dataset()
    assert len(ds) == 5 and "tokens.npz" in repr(ds)
    batches = ds.batches(2)
    assert [sorted(b) for b in batches] == [["attention_mask", "input_ids", "labels"]] * 3
    assert [len(b["labels"]) for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), ds.inputs["input_ids"])
    sub = ds.subset([4, 1])
    assert sub.inputs["input_ids"].tolist() == [[16, 17, 18, 19], [4, 5, 6, 7]] and sub.y.tolist() == [0, 1]
    a, b = ds.sample(3, seed=2), ds.sample(3, seed=2)
    assert len(a) == 3 and a.spec["num_samples"] == 3 and torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
    rows = [int(r[0]) // 4 for r in a.inputs["input_ids"]]  # each row keeps its own label
    assert a.y.tolist() == ds.y[rows].tolist()
    assert ds.sample(None) is ds and ds.batch(0, 1)["input_ids"].shape == (1, 4)


def test_named_data_is_what_the_objective_unpacks():
    from landscape.objective import Objective

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.out = torch.nn.Embedding(20, 3), torch.nn.Linear(3, 3)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).float()
            return self.out((self.emb(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))

    ds, model = named_dataset(), Bag()
    expected = torch.nn.functional.cross_entropy(model(**ds.inputs), ds.y).item()
    for batch_size in (None, 2):
        objective = Objective(model, ds.batches(batch_size), dtype=torch.float64)
        assert objective.loss() == pytest.approx(expected, abs=1e-6)


def test_regression_targets_reach_mse_and_cross_entropy_refuses_them(tmp_path):
    from landscape.objective import Objective

    x, y = np.random.default_rng(0).normal(size=(6, 2)), np.linspace(-1, 1, 6)
    np.savez(tmp_path / "r.npz", x=x, y=y)
    ds = data.load(str(tmp_path / "r.npz"))
    model = torch.nn.Linear(2, 1)
    mse = Objective(model, ds, loss="mse").loss()
    assert mse == pytest.approx(((model(ds.x)[:, 0] - ds.y) ** 2).mean().item(), abs=1e-6)
    with pytest.raises(LandscapeError, match="cross-entropy needs integer class labels") as exc:
        Objective(torch.nn.Linear(2, 3), ds).loss()
    assert_one_line(exc)


@pytest.mark.parametrize("use", [
    lambda ds: ds.x.shape,
    lambda ds: ds.subset([0]).x[:1],
    lambda ds: ds.sample(2).x,
], ids=["x", "subset", "sample"])
def test_code_needing_one_input_tensor_gets_one_line_for_named_data(use):
    with pytest.raises(LandscapeError, match=r"needs \(x, y\) data.*named inputs \(input_ids, attention_mask\)") as exc:
        use(named_dataset())
    assert_one_line(exc, "tokens.npz", "'x' and 'y'")


@pytest.mark.parametrize("inputs, labels, match", [
    ({"labels": torch.zeros(3)}, torch.zeros(3), "'labels' is not"),
    ({"ids": torch.zeros(2)}, torch.zeros(3), "one row per label \\(3\\).*'ids' is not"),
    ({"ids": [1, 2, 3]}, torch.zeros(3), "'ids' is not"),
    ({"ids": torch.tensor(1)}, torch.zeros(3), "'ids' is not"),
    ({}, torch.zeros(3), "there are none"),
])
def test_named_inputs_are_checked_when_built(inputs, labels, match):
    with pytest.raises(LandscapeError, match=match) as exc:
        data.Dataset(inputs, labels, None)
    assert_one_line(exc)


REAL = np.array([0.5, 1.5, 2.25, 0.0])


@pytest.mark.parametrize("call", [
    lambda tmp: partition.partition(REAL, 2, 2, 0.5, seed=0),
    lambda tmp: partition.default_federation("file", REAL),
    lambda tmp: partition.default_federation("file", torch.tensor(REAL).reshape(2, 2)),
    lambda tmp: splits.read_split_file(tmp / "split.csv", REAL),
    lambda tmp: partition.client_data(data.Dataset(torch.zeros(4, 1), torch.tensor(REAL), None),
                                 {"num_clients": 2, "samples_per_client": 2, "alpha": 0.5, "seed": 0}, 0),
    lambda tmp: partition.partition(np.ones((4, 2)), 2, 2, 0.5, seed=0),
], ids=["partition", "default-federation", "default-federation-n-by-k", "split-file", "client-data", "float-n-by-k"])
def test_a_federation_by_class_refuses_real_valued_targets(tmp_path, call):
    (tmp_path / "split.csv").write_text("0,0,0\n1,1,1\n")
    with pytest.raises(LandscapeError, match="splits the data by class and needs integer class labels.*real-valued") as exc:
        call(tmp_path)
    assert_one_line(exc)


def test_integral_float_labels_still_partition():
    labels = np.repeat(np.arange(4), 5)
    assert [p.tolist() for p in partition.partition(labels.astype(float), 4, 5, 0.0, seed=1)] == \
        [p.tolist() for p in partition.partition(labels, 4, 5, 0.0, seed=1)]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def write_evil_cifar(root):
    folder = write_cifar_fixture(root, "cifar10")
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, fh)
    return "cifar10:split=test"


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda root: np.savez(root / "e.npz", x=np.array([_Evil()], dtype=object), y=[0]) or str(root / "e.npz"),
         "holds Python objects"),
        (lambda root: torch.save({"x": _Evil(), "y": [0]}, root / "e.pt") or str(root / "e.pt"),
         "references 'posix.system'.*could run code"),
        (write_evil_cifar, "not a CIFAR python batch file.*refusing to load 'posix.system'"),
    ],
    ids=["npz", "pt", "cifar"],
)
def test_nothing_a_file_says_runs_code(tmp_path, monkeypatch, write, match):
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path)
    with pytest.raises(LandscapeError, match=match) as exc:
        data.load(spec, data_dir=tmp_path)
    assert_one_line(exc)
    assert not (tmp_path / "PWNED").exists()


def cifar_batch(**fields) -> bytes:
    """A CIFAR-10 test batch: 2 black images labelled 0, 1 with ``fields`` replaced (None drops one)."""
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], **fields}
    return pickle.dumps({k.encode(): v for k, v in batch.items() if v is not None})


BAD_CIFAR_BATCHES = [
    # data set, content of its test batch (None: a folder), match
    ("cifar10", os.urandom(64), "not a CIFAR python batch file"),
    ("cifar10", b"", r"not a CIFAR python batch file \(EOFError"),
    ("cifar10", cifar_batch()[:100], "not a CIFAR python batch file"),
    ("cifar10", pickle.dumps([1, 2, 3]), r"it holds a list, not a dict"),
    ("cifar10", cifar_batch(data=None), "lacks 'data'; its keys: 'labels'"),
    ("cifar10", cifar_batch(labels=None), "lacks 'labels'; its keys: 'data'"),
    ("cifar10", cifar_batch(data=np.zeros((2, 1000), np.uint8)), "2000 values of type uint8, not whole 3x32x32"),
    ("cifar10", cifar_batch(data=np.zeros((0, 3072), np.uint8), labels=[]), "0 values"),
    ("cifar10", cifar_batch(data=np.zeros((2, 3072))), "values of type float64, not whole 3x32x32 images of bytes"),
    ("cifar10", cifar_batch(data=np.full((2, 3072), 256)), r"values outside 0\.\.255"),
    ("cifar10", cifar_batch(data=[b"ab", None]), "'data' holds (Python objects|byte strings)"),
    ("cifar10", cifar_batch(labels=[0]), "has 2 images but 1 labels"),
    ("cifar10", cifar_batch(labels=[0, 1, 2]), "has 2 images but 3 labels"),
    ("cifar10", cifar_batch(labels=[0, 10]), r"labels must lie in \[0, 9\], found 0\.\.10"),
    ("cifar10", cifar_batch(labels=[-1, 0]), r"labels must lie in \[0, 9\]"),
    ("cifar10", cifar_batch(labels=["cat", "dog"]), "'labels' holds strings"),
    ("cifar10", cifar_batch(labels=[0.5, 1.0]), "must be a list of integers"),
    ("cifar10", None, "CIFAR batch file is a folder, not a file"),
    ("cifar100", cifar_batch(), "lacks 'fine_labels'.*is this cifar100"),
    ("cifar100", cifar_batch(labels=None, fine_labels=[0, 100]), r"must lie in \[0, 99\], found 0\.\.100"),
]


@pytest.mark.parametrize("name, content, match", BAD_CIFAR_BATCHES)
def test_bad_cifar_batches_are_one_line_errors(tmp_path, name, content, match):
    folder = write_cifar_fixture(tmp_path, name, per_file=2)
    batch = folder / cifar.CIFAR_FILES[name]["test"][0]
    if content is None:
        batch.unlink()
        batch.mkdir()
    else:
        batch.write_bytes(content)
    with pytest.raises(LandscapeError, match=match) as exc:
        data.load(f"{name}:split=test", data_dir=tmp_path)
    assert_one_line(exc, batch)


def write_tensor_file(root):
    np.savez(root / "d.npz", x=X3, y=np.zeros(3))
    return data, str(root / "d.npz"), root / "d.npz", "cannot read data file"


def write_cifar(root):
    folder = write_cifar_fixture(root, "cifar10", per_file=2)
    return cifar, "cifar10:split=test", folder / "test_batch", "cannot read CIFAR batch file"


@pytest.mark.parametrize("code, what", [(errno.EACCES, "permission denied"), (errno.EISDIR, "is a folder"),
                                        (errno.EIO, "input/output error")])
@pytest.mark.parametrize("write", [write_tensor_file, write_cifar], ids=["tensor-file", "cifar"])
def test_os_errors_while_reading_are_one_line(tmp_path, monkeypatch, write, code, what):
    # Tests run as root, which reads any file: the OS refusal is simulated where the module reading it opens files.
    # No file name on the error, as for a failed read(): the message must still name the file.
    module, spec, path, action = write(tmp_path)

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(module, "open", refuse, raising=False)
    with pytest.raises(LandscapeError, match=f"{action}: {what}") as exc:
        data.load(spec, data_dir=tmp_path)
    assert_one_line(exc, path)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("imagenet", "unknown data set 'imagenet'"),
        ("digits:split", "write key=value"),
        ("digits:split=val", "split must be 'train' or 'test', got 'val'"),
        ("synthetic:split=valid", "split must be 'train' or 'test', got 'valid'"),
        ("missing.npz", "data file not found"),
        ("digits:foo=1", "unknown option 'foo' for digits.*digits takes split"),
        ("synthetic:dir=x", "unknown option 'dir' for synthetic"),
        ("cifar10:n=5", "unknown option 'n' for cifar10.*takes split, dir"),
        ("digits:dataset=cifar10", "unknown option 'dataset'"),
        ("digits:split=test,split=train", "option 'split' is given twice"),
        ("synthetic:n=abc", "synthetic n must be a positive integer, got 'abc'"),
        ("synthetic:n=1.5", "synthetic n must be a positive integer, got '1.5'"),
        ("synthetic:n=0", "synthetic n must be a positive integer, got '0'"),
        ("synthetic:n=-4", "synthetic n must be a positive integer"),
        ("synthetic:n=", "synthetic n must be a positive integer, got ''"),
        ("synthetic:n=" + "9" * 5000, "synthetic n must be a positive integer"),
        (f"synthetic:n={10**12}", "would hold 1000000000000 samples of shape 3x32x32.*more than the 1e\\+08"),
        ("synthetic:n=10,shape=1000x1000x1000", "would hold 10 samples of shape 1000x1000x1000"),
        ("synthetic:n=2,classes=100000,shape=1000x10", "would hold 100000 class means"),
        ("synthetic:shape=0x4", "every synthetic shape dimension must be a positive integer, got '0'"),
        ("synthetic:shape=3xx4", "shape dimension must be a positive integer, got ''"),
        ("synthetic:shape=", "shape dimension must be a positive integer, got ''"),
        ("synthetic:classes=1", "synthetic classes must be an integer >= 2, got '1'"),
        ("synthetic:classes=many", "synthetic classes must be an integer >= 2"),
        ("synthetic:seed=-1", "synthetic seed must be a non-negative integer"),
        (f"synthetic:seed={2**64}", "synthetic seed must be at most"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(LandscapeError, match=match) as exc:
        data.load(spec)
    text = assert_one_line(exc, spec.split(":")[0])
    assert len(text) < 300  # a long spec is quoted in part only


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"dataset": "synthetic", "n": None}, "synthetic n must be a positive integer, got None"),
        ({"dataset": "synthetic", "n": True}, "synthetic n must be a positive integer, got True"),
        ({"dataset": "synthetic", "shape": 5}, "synthetic shape must look like 3x32x32"),
        ({"dataset": "synthetic", "shape": ["a"]}, "shape dimension must be a positive integer, got 'a'"),
        ({"dataset": "synthetic", "split": None}, "split must be 'train' or 'test', got None"),
        ({"dataset": "file"}, "a file data spec needs a path, got None"),
        ({"dataset": "cifar10", "dir": 3}, "cifar10 dir must be a folder path, got 3"),
        ({"dataset": None}, "unknown data set None"),
        ({}, "unknown data set None"),
        (["digits"], "a data spec must be a string or a dict, got list"),
    ],
)
def test_bad_spec_dicts(spec, match):
    with pytest.raises(LandscapeError, match=match) as exc:
        data.load(spec)
    assert_one_line(exc)


def test_make_synthetic_checks_its_arguments():
    with pytest.raises(LandscapeError, match="synthetic classes must be an integer >= 2, got 1") as exc:
        data.make_synthetic(n=4, classes=1, shape=(2,))
    assert_one_line(exc, "synthetic:n=4,classes=1,shape=2")
    with pytest.raises(LandscapeError, match="more than the 1e\\+08 allowed"):
        data.make_synthetic(n=10**5, shape=(10**4,))


def test_sample_is_a_seeded_subset_and_batches_cover_it():
    d = data.load("digits")
    a, b = d.sample(100, seed=1), d.sample(100, seed=1)
    assert torch.equal(a.x, b.x) and len(a) == 100 and a.spec["num_samples"] == 100
    batches = a.batches(32)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([x for x, _ in batches]), a.x)


def write_tar(path, members, mode="w:gz"):
    """A tar archive of ``members``: ``(name, type, linkname or content)`` rows, written by hand so
    that names and links tarfile.add would never produce can be tested."""
    with tarfile.open(path, mode) if isinstance(path, (str, os.PathLike)) else tarfile.open(fileobj=path, mode=mode) as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
            else:
                info.linkname = extra or ""
                tar.addfile(info)
    return path


FILE, DIR, SYM, HARD = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
GOOD = [("top", DIR, None), ("top/a", FILE, b"new")]

ESCAPING_ARCHIVES = [
    # members (a good one first: nothing of it may be left either), offending member, match
    (GOOD + [("../escaped", FILE, b"x")], "../escaped", "absolute name or one with '..'"),
    (GOOD + [("top/../../escaped", FILE, b"x")], "top/../../escaped", "one with '..'"),
    (GOOD + [("{victim}/escaped-absolute", FILE, b"x")], "{victim}/escaped-absolute", "absolute name"),
    (GOOD + [("top/out", SYM, "../../escaped")], "top/out", "is a link to '../../escaped', outside the folder"),
    (GOOD + [("top/out", SYM, "{victim}"), ("top/out/secret", FILE, b"x")], "top/out", "is a link to '/"),
    (GOOD + [("top/hard", HARD, "../escaped")], "top/hard", "is a link to '../escaped', outside"),
    (GOOD + [("top/hard", HARD, "{victim}/secret")], "top/hard", "is a link to '/"),
    (GOOD + [("top/fifo", tarfile.FIFOTYPE, None)], "top/fifo", "is a device file or pipe"),
    (GOOD + [("top/dev", tarfile.CHRTYPE, None)], "top/dev", "is a device file or pipe"),
]
if cifar._TAR_FILTER:  # links that each look inside but lead out together: only tarfile's data filter sees it
    ESCAPING_ARCHIVES.append((GOOD + [("d", SYM, "."), ("d/d/l", SYM, "../../escaped"), ("d/d/l/f", FILE, b"x")],
                              "d/d/l", "leads outside the folder through a link"))


def folder_state(root):
    """Every path under ``root`` with its content (files) or link target, to compare before and after."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
    return out


@pytest.mark.parametrize("members, member, match", ESCAPING_ARCHIVES)
def test_archives_cannot_escape_their_folder(tmp_path, members, member, match):
    # Every escape aims at a folder of the test's own ("victim"), never at a real system path: if
    # the code under test were unsafe, it must not damage the machine the tests run on.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_bytes(b"must stay as it is")

    def aim(text):
        return text.replace("{victim}", str(victim)) if isinstance(text, str) else text

    members = [(aim(name), kind, aim(extra)) for name, kind, extra in members]
    member, match = aim(member)[:10], re.escape(match)  # long names are shortened in the message
    outside = tmp_path / "outside"
    dest = outside / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "a").write_bytes(b"old")
    archive = write_tar(outside / "a.tar.gz", members)
    before, victim_before = folder_state(outside), folder_state(victim)
    with pytest.raises(LandscapeError, match=match) as exc:
        cifar.extract_archive(archive, dest)
    assert "nothing was unpacked" in assert_one_line(exc, member, archive)
    assert folder_state(outside) == before  # nothing written, nothing half unpacked, the old file intact
    assert folder_state(victim) == victim_before  # nothing written where the members pointed
    assert not list(tmp_path.rglob("escaped*"))  # also not beside the folder the links point at


def test_good_archive_unpacks_and_replaces_what_was_there(tmp_path):
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "stale").write_bytes(b"from an older unpacking")
    (dest / "keep").write_bytes(b"not in the archive")
    archive = write_tar(tmp_path / "a.tar", GOOD + [("top/sub", DIR, None), ("top/sub/b", FILE, b"bb"),
                                                     ("top/link", SYM, "a"), ("README", FILE, b"r")], mode="w")
    placed = cifar.extract_archive(archive, dest)
    assert sorted(p.name for p in placed) == ["README", "top"]
    assert folder_state(dest) == {"README": b"r", "keep": b"not in the archive", "top": None, "top/a": b"new",
                                  "top/link": "a", "top/sub": None, "top/sub/b": b"bb"}


def good_archive_bytes(tmp_path) -> bytes:
    path = write_tar(tmp_path / "good.tar.gz", [("top", DIR, None)] + [(f"top/f{i}", FILE, os.urandom(20000))
                                                                      for i in range(5)])
    return path.read_bytes()


@pytest.mark.parametrize(
    "content, match",
    [
        (lambda good: os.urandom(500), "damaged or not a tar archive"),
        (lambda good: b"", "damaged or not a tar archive"),
        (lambda good: good[: len(good) // 2], "damaged or truncated archive"),
        (lambda good: good[:10], "damaged"),
        (lambda good: good[:-2000], "damaged or truncated"),
        (lambda good: good[:100] + bytes(200) + good[300:], "damaged"),
        (lambda good: write_tar(io.BytesIO(), [], mode="w").getvalue(), "archive holds no files"),
    ],
    ids=["garbage", "empty-file", "truncated-half", "truncated-header", "truncated-tail", "corrupted", "no-members"],
)
def test_damaged_archives_are_one_line_and_leave_nothing(tmp_path, content, match):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(content(good_archive_bytes(tmp_path)))
    with pytest.raises(LandscapeError, match=match) as exc:
        cifar.extract_archive(archive, dest)
    assert "download it again" in assert_one_line(exc, archive)
    assert list(dest.iterdir()) == []


def test_failed_unpacking_leaves_nothing_half_unpacked(tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "a").write_bytes(b"old")
    archive = write_tar(tmp_path / "a.tar.gz", GOOD + [("top/b", FILE, b"b"), ("top/c", FILE, b"c")])
    real = tarfile.TarFile.makefile

    def full_disk_on_third_file(self, tarinfo, targetpath):
        if tarinfo.name == "top/c":
            raise OSError(errno.ENOSPC, "No space left on device", targetpath)
        return real(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", full_disk_on_third_file)
    with pytest.raises(LandscapeError, match="cannot unpack: no space left on the device") as exc:
        cifar.extract_archive(archive, dest)
    assert_one_line(exc)
    assert folder_state(dest) == {"top": None, "top/a": b"old"}  # the old folder intact, no temporary left


def test_download_helper_unpacks_a_local_archive(tmp_path):
    src = tmp_path / "src"
    write_cifar_fixture(src, "cifar10")
    archive = tmp_path / "dest" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    # The archive is already present, so no network is used.
    folder = cifar.download_cifar("cifar10", tmp_path / "dest")
    assert (folder / "data_batch_5").exists()
    assert len(data.load("cifar10:split=test", data_dir=tmp_path / "dest")) == 6


def unrelated_archive(path):
    write_tar(path, [("readme.txt", FILE, b"no cifar here")])


def cifar_archive_without_test_batch(path):
    write_tar(path, [(f"cifar-10-batches-py/data_batch_{i}", FILE, cifar_batch()) for i in range(1, 6)])


@pytest.mark.parametrize(
    "write, match",
    [
        (raw(b"<html>not found</html>"), "error: damaged or not a tar archive"),
        (unrelated_archive, "error: archive lacks 'cifar-10-batches-py/data_batch_1' and 5 more files; nothing"),
        (cifar_archive_without_test_batch, "error: archive lacks 'cifar-10-batches-py/test_batch'; nothing"),
        (lambda path: path.mkdir(), "error: cannot unpack: is a folder, not a file"),
    ],
    ids=["html-page", "unrelated", "incomplete", "folder"],
)
def test_download_command_with_a_bad_archive_is_one_error_line(tmp_path, capsys, write, match):
    from landscape.cli import main

    archive = tmp_path / "cifar-10-python.tar.gz"
    write(archive)
    assert main(["download", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(match) and err.count("\n") == 1 and str(archive) in err, err
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # nothing unpacked, no temporary left
