"""The fully connected fast path of surface evaluation: what it recognizes, and that it changes no value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape import data
from landscape.models import build
from tests.test_surface import loop_reference, tiny_data
from landscape import directions as D
from landscape import surface as S
from landscape.chain import find_chain


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc3(h + torch.relu(self.fc2(h)))


class Scaled(nn.Module):
    """A computation between two modules that hooks on modules cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(2.0 * self.fc1(x))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 10), nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc2(self.fc1(x))))


def _chains() -> dict[str, nn.Module]:
    return {
        "flatten-gelu-dropout-tanh": nn.Sequential(
            nn.Flatten(), nn.Linear(64, 12), nn.GELU(), nn.Dropout(0.5), nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 10)
        ),
        "no-bias-leaky": nn.Sequential(nn.Flatten(), nn.Linear(64, 12, bias=False), nn.LeakyReLU(0.1),
                                       nn.Linear(12, 10)),
        "single-linear": nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
    }


def _not_chains() -> dict[str, nn.Module]:
    return {
        "residual": nn.Sequential(nn.Flatten(), Residual()),
        "hidden-scaling": nn.Sequential(nn.Flatten(), Scaled()),
        "layer-used-twice": nn.Sequential(nn.Flatten(), Twice()),
        "log-softmax-output": nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.LogSoftmax(dim=1)),
        "norm-layer": nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.LayerNorm(12), nn.Linear(12, 10)),
        "conv-first": nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10)),
    }


def _digits(n: int = 120) -> data.Dataset:
    ds = data.load("digits").sample(n)
    return data.Dataset(ds.x.reshape(n, 1, 8, 8), ds.y, ds.num_classes, ds.spec)


@pytest.mark.parametrize("name", list(_chains()))
def test_chains_are_recognized_and_evaluate_like_the_plain_forward(name, monkeypatch):
    torch.manual_seed(0)
    model = _chains()[name].double().eval()
    ds = _digits()
    assert find_chain(model, ds.x[:2].double()) is not None
    dirs = D.random_directions(model, 2, seed=1)
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(50)},
                             "eval", [], torch.float64, torch.device("cpu"))
    assert evaluator.chain is not None  # it passed the check against the plain forward
    axis = S.symmetric_axis(2.0, 5)
    kwargs = dict(batch_size=50, dtype=torch.float64, progress=False, points_per_batch=7)
    fast = S.evaluate(model, dirs, [axis, axis], {"train": ds}, **kwargs)
    monkeypatch.setattr(S._Evaluator, "_chain", lambda self: None)
    plain = S.evaluate(model, dirs, [axis, axis], {"train": ds}, **kwargs)
    np.testing.assert_allclose(fast["values"]["train/loss"], plain["values"]["train/loss"], rtol=1e-12)
    np.testing.assert_array_equal(fast["values"]["train/accuracy"], plain["values"]["train/accuracy"])


def test_a_frozen_first_layer_stays_at_its_value_on_the_fast_path(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10)).double()
    model[1].weight.requires_grad_(False)
    ds = _digits()
    dirs = D.random_directions(model, 1, seed=0)
    assert "1.weight" not in dirs.vectors[0]
    axis = S.symmetric_axis(1.0, 5)
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(None)},
                             "eval", [], torch.float64, torch.device("cpu"))
    assert evaluator.chain is not None
    fast = S.evaluate(model, dirs, [axis], {"train": ds}, kind="line", dtype=torch.float64, progress=False)
    monkeypatch.setattr(S._Evaluator, "_chain", lambda self: None)
    plain = S.evaluate(model, dirs, [axis], {"train": ds}, kind="line", dtype=torch.float64, progress=False)
    np.testing.assert_allclose(fast["values"]["train/loss"], plain["values"]["train/loss"], rtol=1e-12)


@pytest.mark.parametrize("hidden", [[8], [6, 5]])
def test_fully_connected_fast_path_equals_the_plain_forward(monkeypatch, hidden):
    """An MLP is evaluated by the feature-major chain (first layer from precomputed responses); same values."""
    torch.manual_seed(0)
    model = build("mlp", hidden=hidden)
    ds = data.load("digits").sample(200)
    dirs = D.random_directions(model, 2, seed=0)
    axis = S.symmetric_axis(1.0, 5)
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs,
                             {"train": ds.batches(64)}, "eval", [], torch.float64, torch.device("cpu"))
    assert evaluator.chain is not None and [n for n, _ in evaluator.chain.layers][0] == "net.0"
    fast = S.evaluate(model, dirs, [axis, axis], {"train": ds}, batch_size=64, dtype=torch.float64, progress=False)
    monkeypatch.setattr(S._Evaluator, "_chain", lambda self: None)
    plain = S.evaluate(model, dirs, [axis, axis], {"train": ds}, batch_size=64, dtype=torch.float64, progress=False)
    np.testing.assert_allclose(fast["values"]["train/loss"], plain["values"]["train/loss"], rtol=1e-12)
    np.testing.assert_array_equal(fast["values"]["train/accuracy"], plain["values"]["train/accuracy"])


@pytest.mark.parametrize("points_per_batch", [1, 4, 25])
def test_fast_path_equals_one_point_at_a_time(points_per_batch: int) -> None:
    """Against the independent loop of the surface tests: copy the point into a model, forward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    data = tiny_data(dtype=torch.float64)
    dirs = D.random_directions(model, 2, seed=0)
    axes = [S.symmetric_axis(1.0, 5), S.symmetric_axis(0.5, 3)]
    res = S.evaluate(model, dirs, axes, {"train": data}, points_per_batch=points_per_batch, dtype=torch.float64,
                     progress=False)
    loss, acc = loop_reference(model, dirs, axes, data, None)
    np.testing.assert_allclose(res["values"]["train/loss"], loss, rtol=1e-11)
    np.testing.assert_array_equal(res["values"]["train/accuracy"], acc)


@pytest.mark.parametrize("name", list(_not_chains()))
def test_other_networks_are_not_taken_for_chains(name):
    torch.manual_seed(0)
    model = _not_chains()[name].eval()
    ds = _digits(4)
    assert find_chain(model, ds.x[:2]) is None
    dirs = D.random_directions(model, 1, seed=0)
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(None)},
                             "eval", [], torch.float32, torch.device("cpu"))
    assert evaluator.chain is None


def test_metrics_match_cross_entropy_and_argmax_including_ties():
    """Loss and accuracy from (K, C, B) logits; a tie predicts the first maximal class, as argmax."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 9, generator=g, dtype=torch.float64)
    z[1] = 0.0  # a flat output: every class maximal, so class 0 is predicted
    z[2, 1:3, :] = 5.0  # classes 1 and 2 tied at the top: class 1 is predicted
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 2])
    out = S._metrics("s", [z[:, :, :5], z[:, :, 5:]], [y[:5], y[5:]])
    for k in range(3):
        logits = z[k].T
        assert out["s/loss"][k] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-12)
        assert out["s/accuracy"][k] == (logits.argmax(1) == y).double().mean().item()
    assert out["s/accuracy"][1] == pytest.approx(2 / 9)
    assert out["s/accuracy"][2] == pytest.approx(2 / 9)
