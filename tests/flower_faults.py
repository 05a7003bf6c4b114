"""A model that fails on purpose in local training: the failed Flower client of tests/test_flower.py.

Flower's nodes build it by name (``--model tests.flower_faults:mlp`` with ``{"marker": PATH}`` in
the model kwargs). While the file PATH exists, a forward pass in training mode raises, so the
nodes fail and the server (which only evaluates, in eval mode) does not; without the file it is
the registered MLP, so runs with and without the fault are the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from landscape.models import MLP


class FaultyMLP(MLP):
    def __init__(self, marker: str, in_features: int = 64, hidden: Sequence[int] = (32,),
                 num_classes: int = 10) -> None:
        super().__init__(in_features, hidden, num_classes)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and Path(self.marker).exists():
            raise RuntimeError("a fault injected by the test")
        return super().forward(x)


def mlp(marker: str, in_features: int = 64, hidden: Sequence[int] = (32,), num_classes: int = 10) -> nn.Module:
    return FaultyMLP(marker, in_features, hidden, num_classes)
