"""The one way to get a checkpoint's data: landscape.recorded.RecordedData, directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import checkpoint, data, models, partition
from landscape.errors import LandscapeError
from landscape.recorded import RecordedData
from landscape.run_folder import RunFolder

PARTITION = {"num_clients": 10, "samples_per_client": 40, "alpha": 0.0, "seed": 1}


def _ckpt(tmp_path, spec, **fields):
    model = models.build("mlp", hidden=[3])
    return checkpoint.load(checkpoint.save(checkpoint.from_model(model, "mlp", {"hidden": [3]}, data=spec, **fields),
                                           tmp_path / "c.pt"))


def test_train_test_and_every_client_equal_what_the_data_module_builds(tmp_path):
    ckpt = _ckpt(tmp_path, {"dataset": "digits", "split": "train", "partition": PARTITION}, role="client",
                 client_id=4)
    recorded = RecordedData(ckpt)
    train, test = recorded.train(), recorded.test()
    assert torch.equal(train.x, data.load("digits").x) and torch.equal(test.x, data.load("digits:split=test").x)
    assert recorded.num_clients() == 10
    parts = partition.partition(train.y.numpy(), 10, 40, 0.0, 1, 10)
    for k in (0, 4, 9):
        assert torch.equal(recorded.client(k).y, train.y[torch.as_tensor(parts[k])])
    assert torch.equal(recorded.client().x, recorded.client(4).x)  # the checkpoint's own client
    assert recorded.train() is train  # loaded once


@pytest.mark.parametrize("spec, call, match", [
    ({}, lambda r: r.train(), "does not record its data set"),
    ({"dataset": "digits"}, lambda r: r.client(0), "records no federated partition"),
    ({"dataset": "digits", "partition": PARTITION}, lambda r: r.client(), "is not a client model"),
    ({"dataset": "digits", "partition": PARTITION}, lambda r: r.client(10), "client id 10 is out of range"),
    ({"dataset": "file", "path": "/somewhere/else.npz"}, lambda r: r.train(), "outside its run folder"),
    ({"dataset": "digits", "partition": {**PARTITION, "split_file": "/elsewhere/split.csv"}}, lambda r: r.client(0),
     "names the split file '/elsewhere/split.csv' outside its run folder"),
])
def test_what_cannot_be_rebuilt_is_one_line(tmp_path, spec, call, match):
    with pytest.raises(LandscapeError, match=match) as info:
        call(RecordedData(_ckpt(tmp_path, spec)))
    assert "\n" not in str(info.value)


def test_a_refused_path_only_matters_when_that_data_is_needed(tmp_path):
    spec = {"dataset": "digits", "partition": {**PARTITION, "split_file": "/elsewhere/split.csv"}}
    recorded = RecordedData(_ckpt(tmp_path, spec))
    assert len(recorded.train()) == 1437  # the training set needs no split file


def test_a_data_file_in_the_run_folder_is_used_and_the_run_folder_is_found(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    np.savez(run / "d.npz", x=np.zeros((5, 64), np.float32), y=np.arange(5) % 2)
    model = models.build("mlp", hidden=[3])
    path = checkpoint.save(checkpoint.from_model(model, "mlp", {"hidden": [3]}, data={
        "dataset": "file", "path": str(run / "d.npz")}), run / "checkpoints" / "g.pt")
    assert RunFolder.of(path).path == run
    assert len(RecordedData(checkpoint.load(path)).train()) == 5
    assert RecordedData(checkpoint.load(path)).test() is None  # a data file has no test split
