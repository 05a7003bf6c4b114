"""The data a checkpoint records: its training set, the test split, and each client's share.

A training checkpoint carries its data set and federated partition (``ckpt.data``), so every
analysis can rebuild the data without being told: :class:`RecordedData` is the one way to do
it (the Hessian on the training data, a surface of the train and test splits and of every
client, the flatness of each client model on its own data, [C22] Fig. 4).

A file is not the user's say-so: the paths a checkpoint names (its data file, its CIFAR
folder, the split file of its partition) are used only when they lie in the checkpoint's run
folder (:meth:`landscape.run_folder.RunFolder.of`); anything else must be passed by the user (``data_dir``,
``split_file``), and the data the user names always wins over the one the checkpoint names.
A refused path is an error only when that data is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from landscape import data
from landscape.checkpoint import Checkpoint
from landscape.data import Dataset
from landscape.errors import LandscapeError
from landscape.files import is_inside
from landscape.run_folder import RunFolder
from landscape.partition import client_data, partition_from_spec

#: The entries of a recorded data spec that say how to rebuild the data set.
DATA_KEYS = ("n", "classes", "shape", "seed", "dir", "path")


class RecordedData:
    """The data sets ``ckpt`` records, with the paths it names confined to its run folder.

    Args:
        ckpt: a loaded checkpoint.
        data_dir: the user's CIFAR folder (wins over the one the checkpoint names).
        split_file: the user's copy of the split file the partition was built from.

    >>> import torch
    >>> from landscape import checkpoint, models
    >>> ckpt = checkpoint.from_model(models.build("mlp"), "mlp", data={"dataset": "digits", "partition": {
    ...     "num_clients": 20, "samples_per_client": 65, "alpha": 0.0, "seed": 0}})
    >>> recorded = RecordedData(ckpt)
    >>> len(recorded.train()), len(recorded.test()), recorded.num_clients(), len(recorded.client(3))
    (1437, 360, 20, 65)
    """

    def __init__(self, ckpt: Checkpoint, data_dir: str | None = None, split_file: str | None = None) -> None:
        self.ckpt, self.data_dir = ckpt, data_dir
        self.spec = self._confine(split_file)
        self._train: Dataset | None = None

    def _confine(self, split_file: str | None) -> dict[str, Any]:
        """``ckpt.data`` with each path it names inside the run folder, replaced by the user's, or refused."""
        spec = json.loads(json.dumps(self.ckpt.data, default=str))
        folder = RunFolder.of(self.ckpt.path).path if self.ckpt.path else Path.cwd()
        where = self.ckpt.path or "the checkpoint"
        if spec.get("dataset") == "file" and not is_inside(str(spec.get("path", "")), folder):
            spec["refused"] = LandscapeError(
                f"the checkpoint names its data file {spec.get('path')!r} outside its run folder {folder}",
                where=where, fix="pass the data yourself with --data FILE").args[0]
        if "dir" in spec and (self.data_dir is not None or not is_inside(str(spec["dir"]), folder)):
            spec.pop("dir")  # the user's --data-dir, $LANDSCAPE_DATA or ./data instead
        part = spec.get("partition")
        if isinstance(part, dict) and part.get("split_file"):
            if split_file is not None:
                part["split_file"] = str(Path(split_file).expanduser().resolve())
            elif not is_inside(str(part["split_file"]), folder):
                part["refused"] = LandscapeError(
                    f"the checkpoint's partition names the split file {part['split_file']!r} outside its run folder",
                    where=where, fix="pass it with --split-file FILE if you trust it").args[0]
        return spec

    def _trusted(self, partition: bool = False) -> dict[str, Any]:
        for entry in (self.spec, self.spec.get("partition") if partition else None):
            if isinstance(entry, dict) and "refused" in entry:
                raise LandscapeError(entry["refused"])
        return self.spec

    def train(self) -> Dataset:
        """The whole training set the checkpoint was trained on (loaded once)."""
        if self._train is None:
            name = self.spec.get("dataset")
            if name is None:
                raise LandscapeError(f"{self.ckpt.path} does not record its data set",
                                     fix="name one with --data (e.g. --data digits or data.npz)")
            spec = self._trusted()
            self._train = data.load({"dataset": name, "split": "train",
                                     **{k: v for k, v in spec.items() if k in DATA_KEYS}}, self.data_dir)
        return self._train

    def test(self, of: Dataset | None = None) -> Dataset | None:
        """The test split of the training set (or of ``of``), None for data files (they have none)."""
        base = of if of is not None else self.train()
        if base.spec.get("dataset") not in data.DATASETS:
            return None
        spec = {k: v for k, v in base.spec.items() if k not in ("split", "num_samples", "subset_seed", "partition",
                                                                 "client_id")}
        return data.load({**spec, "split": "test"}, self.data_dir)

    def _partition(self) -> dict[str, Any]:
        if not isinstance(self.spec.get("partition"), dict):
            raise LandscapeError(f"{self.ckpt.path} records no federated partition",
                                 fix="pass the client's data as a file")
        return self._trusted(partition=True)

    def num_clients(self, full: Dataset | None = None) -> int:
        """The number of clients of the recorded partition."""
        spec = self._partition()
        full = full or self.train()
        return len(partition_from_spec(full.y.numpy(), spec, full.names))

    def client(self, client_id: int | None = None, full: Dataset | None = None) -> Dataset:
        """Client ``client_id``'s training data (default: the checkpoint's own client).

        Args:
            client_id: a client of the partition; None for the checkpoint's own (a client model).
            full: the training set, when the caller already holds it (clients of one federation).
        """
        spec = self._partition()
        if client_id is None:
            if self.ckpt.client_id is None:
                raise LandscapeError(f"{self.ckpt.path} is not a client model",
                                     fix="name the client, e.g. --data client:3")
            client_id = self.ckpt.client_id
        return client_data(full or self.train(), spec, client_id)
