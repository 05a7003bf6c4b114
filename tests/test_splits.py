"""Split files in every published format: fedsam's JSON [C22], {client: [indices]} JSON, our CSV.

The CIFAR folders are written here in the python layout, with ``filenames`` like the real
batches; each test knows which image (row of the batch files) every name stands for, so the
clients read back are checked against that, not against the reader's own lookup.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape import checkpoint, data, partition, splits
from landscape.cifar import CIFAR_MEAN, CIFAR_STD
from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.files import sha256
from landscape.recorded import RecordedData
from landscape.run_folder import RunFolder
from tests.conftest import assert_one_line

# A CIFAR-100 training set of 12 images: (name, fine label) per row of the ``train`` batch. Two
# rows share a name with different classes, as CIFAR-100's two ``baby_s_000333.png`` do (2 and 35).
TRAIN = [("cichlid_s_001814.png", 1), ("seal_s_001997.png", 72), ("bus_s_000569.png", 13),
         ("baby_s_000333.png", 35), ("iguana_s_000584.png", 44), ("lizard_s_001099.png", 44),
         ("pine_tree_s_000999.png", 59), ("baby_s_000333.png", 2), ("caterpillar_s_001785.png", 18),
         ("adriatic_sea_s_002041.png", 71), ("lizard_s_002099.png", 44), ("bus_s_001234.png", 13)]
# The federation: user id -> rows of TRAIN. Client k is user "k" after sorting ids numerically.
USERS = {"7": [3, 0, 9], "0": [7, 2], "12": [4, 5, 10, 1]}
EXPECTED = [[2, 7], [0, 3, 9], [1, 4, 5, 10]]  # clients 0 ("0"), 1 ("7"), 2 ("12"); rows sorted


def write_cifar100(root: Path, rows: list[tuple[str, int]] = TRAIN, names: bool = True) -> Path:
    """CIFAR-100's python layout under ``root``: ``train`` holds ``rows``, ``test`` two images."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fname, batch_rows in (("train", rows), ("test", rows[:2])):
        batch = {b"data": rng.integers(0, 256, (len(batch_rows), 3072), dtype=np.uint8),
                 b"fine_labels": [c for _, c in batch_rows], b"coarse_labels": [0] * len(batch_rows)}
        if names:
            batch[b"filenames"] = [n.encode() for n, _ in batch_rows]
        (folder / fname).write_bytes(pickle.dumps(batch))
    return root


def fedsam_json(users: dict[str, list[int]] = USERS, rows: list[tuple[str, int]] = TRAIN) -> dict:
    """A split in fedsam's layout: ``users`` shuffled as in its files, ``user_data`` by name."""
    order = sorted(users, key=lambda u: -len(users[u]))
    return {"users": [int(u) for u in order], "num_samples": [len(users[u]) for u in order],
            "user_data": {u: {"x": [rows[i][0] for i in users[u]], "y": [rows[i][1] for i in users[u]]}
                          for u in order}}


def write(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def cifar100(tmp_path: Path) -> data.Dataset:
    return data.load({"dataset": "cifar100", "dir": str(write_cifar100(tmp_path / "data"))})


# --- the three formats give exactly the listed clients -------------------------------------------

def test_fedsam_json_gives_the_listed_clients_images_and_labels(tmp_path: Path) -> None:
    ds = cifar100(tmp_path)
    assert ds.names.tolist() == [n for n, _ in TRAIN]  # the loader keeps the batch's filenames
    path = write(tmp_path / "federated_train_alpha_0.50.json", fedsam_json())
    split = splits.read_split_file(path, ds.y.numpy(), ds.names)
    assert [p.tolist() for p in split.parts] == EXPECTED
    assert split.format == "fedsam-json" and split.sha256 == sha256(path)
    raw = pickle.loads((tmp_path / "data" / "cifar-100-python" / "train").read_bytes())[b"data"]
    mean, std = (torch.tensor(v["cifar100"]).view(1, 3, 1, 1) for v in (CIFAR_MEAN, CIFAR_STD))
    for k, user in enumerate(["0", "7", "12"]):
        client = ds.subset(split.parts[k])
        listed = fedsam_json()["user_data"][user]
        assert sorted(zip(client.names.tolist(), client.y.tolist())) == sorted(zip(listed["x"], listed["y"]))
        pixels = torch.from_numpy(raw[EXPECTED[k]]).float().view(-1, 3, 32, 32) / 255  # the batch's own rows
        assert torch.allclose(client.x, (pixels - mean) / std, atol=1e-6)


def test_a_name_the_data_set_gives_twice_is_told_apart_by_its_class(tmp_path: Path) -> None:
    ds = cifar100(tmp_path)
    both = write(tmp_path / "s.json", fedsam_json({"1": [3], "2": [7]}))  # baby_s_000333.png of class 35, of class 2
    assert [p.tolist() for p in splits.read_split_file(both, ds.y.numpy(), ds.names).parts] == [[3], [7]]


def test_fedsam_cifar10_names_count_the_training_batches_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.arange(50) % 10
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        rows = range(10 * b, 10 * b + 10) if b < 5 else range(10)
        (folder / name).write_bytes(pickle.dumps({
            b"data": np.full((10, 3072), b, np.uint8), b"labels": [int(labels[i]) for i in rows],
            b"filenames": [f"frog_s_{i:06d}.png".encode() for i in rows]}))
    ds = data.load({"dataset": "cifar10", "dir": str(tmp_path / "data")})
    users = {"0": [f"img_{i}_label_{labels[i]}.png" for i in (3, 47)], "1": ["frog_s_000012.png", "img_25_label_5.png"]}
    path = write(tmp_path / "s.json", {"users": [1, 0], "num_samples": [2, 2], "user_data": {
        u: {"x": xs, "y": [int(labels[int(x.split("_")[1])]) if x.startswith("img") else 2 for x in xs]}
        for u, xs in users.items()}})
    parts = splits.read_split_file(path, ds.y.numpy(), ds.names).parts
    assert [p.tolist() for p in parts] == [[3, 47], [12, 25]]
    assert ds.x[47].unique().numel() == 3 and not torch.equal(ds.x[47], ds.x[3])  # batch 5 vs batch 1 pixels


def test_index_json_and_csv_give_the_same_clients(tmp_path: Path) -> None:
    labels = np.array([c for _, c in TRAIN])
    flower = write(tmp_path / "partitions.json", {u: USERS[u] for u in ("12", "0", "7")})
    rows = [f"{u},{i},{labels[i]}" for u in USERS for i in USERS[u]]
    table = write(tmp_path / "split.txt", "user_id,image_id,class\n" + "\n".join(rows) + "\n")
    for path, fmt in ((flower, "indices-json"), (table, "csv")):
        split = splits.read_split_file(path, labels)
        assert [p.tolist() for p in split.parts] == EXPECTED, fmt
        assert split.format == fmt and split.sha256 == sha256(path)


def test_csv_users_sorted_numerically(tmp_path: Path) -> None:
    path = write(tmp_path / "split.csv", "user_id,image_id,class\n10,0,0\n2,1,1\n2,2,1\n10,3,0\n2,4,2\n")
    assert [p.tolist() for p in splits.read_split_file(path, np.array([0, 1, 1, 0, 2, 2])).parts] == [[1, 2, 4], [0, 3]]


def test_csv_header_after_blank_lines_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "split.csv"
    path.write_bytes("\ufeff\nuser_id,image_id,class\n7,1,1\n7,2,1\n".encode())
    assert [p.tolist() for p in splits.read_split_file(path, np.array([0, 1, 1])).parts] == [[1, 2]]


# --- everything else is refused in one line -------------------------------------------------------

def _fedsam(**changes) -> dict:
    content = fedsam_json()
    for key, value in changes.items():
        if key in ("x7", "y7"):  # user "7"'s x or y
            content["user_data"]["7"][key[0]] = value
        else:
            content[key] = value
    return content


BAD_FEDSAM = [  # user "7" holds rows 3, 0, 9: baby_s_000333.png (35), cichlid_s_001814.png (1), adriatic_sea_... (71)
    (_fedsam(x7=["baby_s_000333.png", "TOPSECRET-nowhere-at-all.png", "adriatic_sea_s_002041.png"]),
     r"image 'TOPSECRET-\.\.\. is not in the data set \(.*user_data\['7'\]\.x\[1\]\)"),
    (_fedsam(y7=[35, 1, 99]), r"image 'adriatic_s\.\.\. has class 71 in the data set, not 99"),
    (_fedsam(y7=[34, 1, 71]), r"image 'baby_s_000\.\.\. has classes 2 and 35 in the data set, not 34"),
    (_fedsam(x7=["baby_s_000333.png", "img_0_label_1.png", "img_9_label_3.png"], y7=[35, 1, 3]),
     "image 9 has class 71 in the data set, not 3"),
    (_fedsam(x7=["baby_s_000333.png", "img_0_label_1.png", "img_99_label_3.png"], y7=[35, 1, 3]),
     "image index 99 is outside the 12 training images"),
    (_fedsam(x7=["baby_s_000333.png", "img_0_label_43.png", "adriatic_sea_s_002041.png"]),
     "is named class 43 but y says 1"),
    (_fedsam(x7=["baby_s_000333.png", "bus_s_000569.png", "adriatic_sea_s_002041.png"], y7=[35, 13, 71]),
     r"gives image 'bus_s_0005\.\.\. to more than one user \('7' and '0'\) \(.*user_data\['0'\]\.x\[1\]\)"),
    (_fedsam(x7=["cichlid_s_001814.png", "cichlid_s_001814.png", "adriatic_sea_s_002041.png"], y7=[1, 1, 71]),
     r"gives image 'cichlid_s_\.\.\. twice to user '7'"),
    (_fedsam(num_samples=[4, 3, 3]), r"user's x, y and num_samples disagree \(2, 2 and 3 samples\)"),
    (_fedsam(y7=[35, 1]), r"user's x, y and num_samples disagree \(3, 2 and 3 samples\)"),
    (_fedsam(num_samples=[4, 3]), "'num_samples' must be one integer per user"),
    (_fedsam(users=[12, 7, 0, 7]), "'num_samples' must be one integer per user"),
    (_fedsam(users=[12, 7, 7]), "'users' lists '7' twice"),
    (_fedsam(users=[12, 7, 5]), "user '5' of 'users' has no 'user_data'"),
    (_fedsam(users=[12, 7], num_samples=[4, 3]), "user '0' of 'user_data' is not in 'users'"),
    (_fedsam(users="12,7,0"), "'users' must be a list of user ids"),
    (_fedsam(users=[12, 7, True]), "'users' must be a list of user ids"),
    (_fedsam(num_samples=[4, 3, "2"]), "'num_samples' must be one integer per user"),
    (_fedsam(user_data=[]), "'user_data' must be an object"),
    (_fedsam(x7="cichlid_s_001814.png"), r"a user's data must be an object \{x: \[image names\], y: \[classes\]\}"),
    (_fedsam(x7=[1, 2, 3]), "x must hold image names and y integer classes, got 1, 35"),
    (_fedsam(y7=[35, 1.0, 71]), "x must hold image names and y integer classes"),
    (_fedsam(x7=[], y7=[], num_samples=[4, 0, 2]), "user holds no images"),
    ({"users": [0], "user_data": {}}, "fedsam split file lacks 'num_samples'"),
]


@pytest.mark.parametrize("content, match", BAD_FEDSAM)
def test_bad_fedsam_splits_are_one_line(tmp_path: Path, content: dict, match: str) -> None:
    ds = cifar100(tmp_path)
    path = write(tmp_path / "s.json", content)
    with pytest.raises(LandscapeError, match=match) as exc:
        splits.read_split_file(path, ds.y.numpy(), ds.names)
    text = assert_one_line(exc, path)
    assert "TOPSECRET-n" not in text and "nowhere" not in text


def test_fedsam_json_needs_image_names(tmp_path: Path) -> None:
    path = write(tmp_path / "s.json", fedsam_json())
    for ds in (data.load("digits"), data.load({"dataset": "cifar100", "dir": str(write_cifar100(tmp_path / "x",
                                                                                              names=False))})):
        assert ds.names is None
        with pytest.raises(LandscapeError, match="names its images .fedsam's JSON., but the data set has no image "
                                                 "names.*CIFAR's python batches") as exc:
            splits.read_split_file(path, ds.y.numpy(), ds.names)
        assert_one_line(exc, path)


LABELS6 = np.array([0, 1, 1, 0, 2, 2])
BAD_SPLIT_FILES = [
    # content (None: a folder, "missing": no file), match
    (None, "split file is a folder, not a file"),
    ("missing", "split file not found"),
    (b"", "split file is empty"),
    (b"\n\n  \n", "split file is empty"),
    (b"user_id,image_id,class\n", "split file has no rows user_id,image_id,class"),
    (bytes(range(256)) * 4, "split file is not UTF-8 text"),
    (b"0,1,1\n\xff\xfe\x00garbage\n", r"not UTF-8 text \(it holds binary data\)"),
    ('{"0": [1]}'.encode("utf-16"), "not UTF-8 text"),
    (b"0,1,1\n0,\x00,1\n", r"image_id and class must be integers, got '\\x00', '1'"),
    (b"0,1,1\n0,1.5,1\n", "image_id and class must be integers, got '1.5', '1'"),
    (b"0,1,1\n0,2,one\n", "image_id and class must be integers, got '2', 'one'"),
    (b"0,1,1\n0,2\n", "row has 2 fields, expected 3: user_id,image_id,class"),
    (b"root:x:0:0:TOPSECRET-7f3a9c:/root:/bin/bash\n", "row has 1 field, expected 3"),
    (b"0,1,1\n0,-2,1\n", "image index -2 is outside the 6 training images"),
    (b"0,1,1\n0,9,0\n", "image index 9 is outside the 6 training images"),
    (b"0,0,1\n", "image 0 has class 0 in the data set, not 1"),
    (b"0,0,0\n1,0,0\n", r"gives image 0 to more than one user \('0' and '1'\)"),
    (b"0,1,1\n0," + b"9" * 5000 + b",1\n", "image_id and class must be integers"),
    (b'0,1,"' + b"Q" * 200_000 + b'"\n', r"split file is not a CSV \('field larger than field limit"),
    (b'{"0": [1, 2], "1": [2]}', r"gives image 2 to more than one user \('0' and '1'\)"),
    (b'{"0": [1, 1]}', "gives image 1 twice to user '0'"),
    (b'{"0": [1], "0": [2]}', "JSON split file names '0' twice in one object"),
    (b'{"0": [6]}', "image index 6 is outside the 6 training images"),
    (b'{"0": [-1]}', "image index -1 is outside"),
    (b'{"0": [true]}', "image indices must be integers, got True"),
    (b'{"0": [1.0]}', "image indices must be integers, got 1.0"),
    (b'{"0": ["1"]}', "image indices must be integers, got '1'"),
    (b'{"0": [], "1": [2]}', "client '0' holds no images"),
    (b'{"0": [' + b"9" * 5000 + b"]}", "holds a number too long to be an index"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"0": [1,', r"split file is not valid JSON \(Expecting value at line 1 column 10\)"),
    (b"{}", r"JSON split file holds an empty object, neither fedsam's \{users, num_samples, user_data\} nor"),
    (b'[[0, 1], [2]]', "JSON split file holds an array, neither fedsam's"),
    (b'{"TOPSECRET-7f3a9c": "x"}', r"holds an object whose entry 'TOPSEC\.\.\. is a string, neither"),
    (b'{"0": [1], "1": 2}', "holds an object whose entry '0' is an array, neither"),
]


@pytest.mark.parametrize("content, match", BAD_SPLIT_FILES)
def test_bad_split_files_are_one_line(tmp_path: Path, content, match: str) -> None:
    path = tmp_path / "split.csv"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(LandscapeError, match=match) as exc:
        splits.read_split_file(path, LABELS6)
    text = assert_one_line(exc, path)
    assert len(text) < len(str(path)) + 300 and "TOPSECRET-7" not in text


def test_split_file_messages_quote_only_the_offending_row(tmp_path: Path) -> None:
    path = write(tmp_path / "split.csv", "user_id,image_id,class\n0,1,1\n0,2,TOPSECRET-" + "Z" * 1000
                 + "\nSECRET,SECRET,SECRET\n")
    with pytest.raises(LandscapeError, match=r"must be integers, got '2', 'TOPSEC\.\.\. \(") as exc:
        splits.read_split_file(path)
    text = assert_one_line(exc, f"{path}:3")
    assert "SECRET" not in text.replace("TOPSEC...", "") and "Z" not in text.replace(str(path), "")


def test_an_over_large_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "split.csv", "".join(f"0,{i},0\n" for i in range(20)))
    assert len(splits.read_split_file(path).parts) == 1
    monkeypatch.setattr(splits, "MAX_BYTES", 100)
    with pytest.raises(LandscapeError, match="split file is larger than 0 MiB") as exc:
        splits.read_split_file(path)
    assert_one_line(exc, path)


@pytest.mark.parametrize("code, what", [(errno.EACCES, "permission denied"), (errno.EIO, "input/output error")])
def test_split_file_os_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, what: str) -> None:
    # Tests run as root, which reads any file: the refusal is simulated where splits.py opens it.
    path = write(tmp_path / "split.csv", "0,0,0\n")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(splits, "open", refuse, raising=False)
    with pytest.raises(LandscapeError, match=f"cannot read split file: {what}") as exc:
        splits.read_split_file(path)
    assert_one_line(exc, path)


# --- CIFAR's filenames --------------------------------------------------------------------------

@pytest.mark.parametrize("filenames, match", [
    ([b"a.png"], "has 12 images but 1 filenames"),
    (b"a.png", "'filenames' must be a list of names, found bytes"),
    ([b"a.png", 3] + [b"b"] * 10, "'filenames' must be a list of names, found list with other entries"),
])
def test_cifar_batches_with_broken_filenames_are_refused(tmp_path: Path, filenames, match: str) -> None:
    root = write_cifar100(tmp_path / "data")
    train = root / "cifar-100-python" / "train"
    batch = pickle.loads(train.read_bytes())
    train.write_bytes(pickle.dumps({**batch, b"filenames": filenames}))
    with pytest.raises(LandscapeError, match=match) as exc:
        data.load({"dataset": "cifar100", "dir": str(root)})
    assert_one_line(exc, train)


def test_partition_spec_rebuilds_a_fedsam_split_only_with_names(tmp_path: Path) -> None:
    ds = cifar100(tmp_path)
    path = write(tmp_path / "s.json", fedsam_json())
    spec = {"split_file": str(path), "split_sha256": sha256(path)}
    assert [partition.client_data(ds, spec, k).y.tolist() for k in range(3)] == \
        [[TRAIN[i][1] for i in rows] for rows in EXPECTED]
    with pytest.raises(LandscapeError, match="no image names"):  # not the cached partition of the named data
        partition.partition_from_spec(ds.y.numpy(), spec)


# --- end to end: train on a fedsam split, then analyse a client ---------------------------------

def test_train_on_a_fedsam_split_then_rebuild_a_client(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_cifar100(tmp_path / "data")
    (tmp_path / "published").mkdir()
    split = write(tmp_path / "published" / "federated_train_alpha_0.50.json", fedsam_json())
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cifar100", "--data-dir", str(root), "--model", "mlp", "--model-kwargs",
            '{"hidden": [4]}', "--split-file", str(split), "--clients-per-round", "3", "--rounds", "1",
            "--batch-size", "2", "--save-clients-every", "1", "--eval-every", "0", "--out", str(out),
            "--device", "cpu", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    run = RunFolder(out)
    assert (out / "split.json").read_bytes() == split.read_bytes()
    ckpt = checkpoint.load(run.global_checkpoint(1))
    part = ckpt.data["partition"]
    assert part["split_sha256"] == sha256(split) and part["split_format"] == "fedsam-json"
    assert part["num_clients"] == 3 and part["split_file"] == str((out / "split.json").resolve())
    full = data.load({"dataset": "cifar100", "dir": str(root)})
    clients = sorted((out / "clients").glob("*.pt"))
    assert len(clients) == 3
    split.unlink()  # the published file may move: the run's copy is what its checkpoints use
    for path in clients:
        client = checkpoint.load(path)
        own = RecordedData(client, str(root)).client()
        rows = torch.as_tensor(EXPECTED[client.client_id])
        assert torch.equal(own.x, full.x[rows]) and own.y.tolist() == [TRAIN[i][1] for i in rows]
    capsys.readouterr()
    result = tmp_path / "h.json"
    code = main(["hessian", str(clients[1]), "--data", "client", "--data-dir", str(root), "--top-k", "1",
                 "--device", "cpu", "--out", str(result)])
    assert code == 0, capsys.readouterr().err
    hessian = json.loads(result.read_text())
    client = checkpoint.load(clients[1])
    rows = torch.as_tensor(EXPECTED[client.client_id])
    with torch.no_grad():  # the loss the analysis reports is the client model's on exactly its listed images
        loss = torch.nn.functional.cross_entropy(client.build_model().eval()(full.x[rows]), full.y[rows])
    assert hessian["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert hessian["metadata"]["data"]["client_id"] == client.client_id
    assert hessian["metadata"]["data"]["partition"]["split_format"] == "fedsam-json"


def test_train_on_a_fedsam_split_of_digits_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    split = write(tmp_path / "s.json", fedsam_json())
    code = main(["train", "--dataset", "digits", "--model", "mlp", "--split-file", str(split), "--rounds", "1",
                 "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: the split file names its images")
    assert not (tmp_path / "run").exists()
