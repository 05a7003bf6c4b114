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
from landscape.chain import FirstLayer, find_chain, find_first_layer


def assert_surface_equals_the_loop(model: nn.Module, dirs: D.Directions, axes: list, ds: data.Dataset) -> None:
    """The surface (whatever path it takes) equals a one-point-at-a-time loop, float64."""
    res = S.evaluate(model, dirs, axes, {"train": ds}, dtype=torch.float64, progress=False, points_per_batch=4)
    loss, acc = loop_reference(model, dirs, axes, ds, None)
    np.testing.assert_allclose(res["values"]["train/loss"], loss, rtol=1e-11)
    np.testing.assert_array_equal(res["values"]["train/accuracy"], acc)


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
    monkeypatch.setattr(S._Evaluator, "_fast_path", lambda self: None)
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
    monkeypatch.setattr(S._Evaluator, "_fast_path", lambda self: None)
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
    monkeypatch.setattr(S._Evaluator, "_fast_path", lambda self: None)
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


# The first layer from its per-direction responses (any network whose first layer is a Linear or a convolution).

class ConvNet(nn.Module):
    """conv -> ReLU -> max-pool -> flatten -> linear, on 1x8x8 digits (or conv1d on 8x8 rows)."""

    def __init__(self, conv: nn.Module, features: int) -> None:
        super().__init__()
        self.conv, self.pool, self.fc = conv, nn.MaxPool2d(2) if isinstance(conv, nn.Conv2d) else nn.Identity(), \
            nn.Linear(features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def _first_layer_nets() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Name -> (network, input shape of one sample)."""
    return {
        "conv-bias": (ConvNet(nn.Conv2d(1, 4, 3), 4 * 3 * 3), (1, 8, 8)),
        "conv-no-bias-stride-padding": (ConvNet(nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False), 4 * 2 * 2),
                                        (1, 8, 8)),
        "conv-dilation-reflect": (ConvNet(nn.Conv2d(1, 3, 3, padding=2, dilation=2, padding_mode="reflect"),
                                          3 * 4 * 4), (1, 8, 8)),
        "conv-groups": (ConvNet(nn.Conv2d(4, 4, 3, groups=2), 4 * 1 * 1), (4, 4, 4)),
        "conv1d-stride": (ConvNet(nn.Conv1d(8, 5, 3, stride=2), 5 * 3), (8, 8)),
        "linear-then-layernorm": (nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.LayerNorm(12), nn.ReLU(),
                                                nn.Linear(12, 10)), (1, 8, 8)),
    }


def _shaped(shape: tuple[int, ...], n: int = 40) -> data.Dataset:
    ds = data.load("digits").sample(n)
    return data.Dataset(ds.x.reshape(n, *shape).double(), ds.y, ds.num_classes, ds.spec)


@pytest.mark.parametrize("name", list(_first_layer_nets()))
def test_first_layer_outputs_equal_the_layer_at_every_point(name: str) -> None:
    """R_0 + sum_i c_i R_i equals the layer's own forward at the point, float64, for three directions of
    which one does not move the layer at all and one moves only its weight."""
    torch.manual_seed(0)
    model, shape = _first_layer_nets()[name]
    model = model.double().eval()
    x = _shaped(shape).x
    found = find_first_layer(model, x[:2])
    assert found is not None
    layer_name, layer, flatten = found
    assert flatten == isinstance(layer, nn.Linear)
    origin = dict(D.trainable_parameters(model))
    g = torch.Generator().manual_seed(1)
    stacked = {n: torch.randn(3, *t.shape, generator=g, dtype=torch.float64) for n, t in origin.items()}
    for n in stacked:
        if n.startswith(layer_name + "."):
            stacked[n][1] = 0.0  # direction 1 does not move the first layer
    if layer.bias is not None:
        stacked[layer_name + ".bias"][2] = 0.0  # direction 2 moves only its weight
    first = FirstLayer(*found, origin, stacked, {})
    coords = torch.randn(4, 3, generator=g, dtype=torch.float64)
    got = FirstLayer.at(coords, first.responses(x))
    inputs = x.flatten(1) if flatten else x
    for k in range(len(coords)):
        point = {p: origin[f"{layer_name}.{p}"] + torch.tensordot(coords[k], stacked[f"{layer_name}.{p}"], dims=1)
                 for p, _ in layer.named_parameters()}
        want = torch.func.functional_call(layer, point, (inputs,))
        torch.testing.assert_close(got[k], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(_first_layer_nets()))
def test_first_layer_path_surface_equals_the_plain_path(name: str, monkeypatch) -> None:
    torch.manual_seed(0)
    model, shape = _first_layer_nets()[name]
    model = model.double().eval()
    ds = _shaped(shape)
    dirs = D.random_directions(model, 2, seed=1)
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(16)},
                             "eval", [], torch.float64, torch.device("cpu"))
    assert evaluator.first is not None and evaluator.chain is None  # it passed the check against the plain forward
    axis = S.symmetric_axis(2.0, 5)
    kwargs = dict(batch_size=16, dtype=torch.float64, progress=False, points_per_batch=7)
    fast = S.evaluate(model, dirs, [axis, axis], {"train": ds, "test": ds.sample(10)}, **kwargs)
    monkeypatch.setattr(S._Evaluator, "_fast_path", lambda self: None)
    plain = S.evaluate(model, dirs, [axis, axis], {"train": ds, "test": ds.sample(10)}, **kwargs)
    for key in fast["values"]:
        np.testing.assert_allclose(fast["values"][key], plain["values"][key], rtol=1e-12)


def test_cifar_cnn_takes_the_first_layer_path_and_equals_one_point_at_a_time() -> None:
    model = build("cnn", num_classes=10).double().eval()
    ds = data.load("synthetic:n=6")
    ds = data.Dataset(ds.x.double(), ds.y, ds.num_classes, ds.spec)
    dirs = D.random_directions(model, 2, seed=0)
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(None)},
                             "eval", [], torch.float64, torch.device("cpu"))
    assert evaluator.first is not None and evaluator.first.name == "conv1"
    axes = [S.symmetric_axis(1.0, 3), S.symmetric_axis(1.0, 3)]
    assert_surface_equals_the_loop(model, dirs, axes, ds)


def test_a_frozen_first_conv_stays_at_its_value(monkeypatch) -> None:
    torch.manual_seed(0)
    model = ConvNet(nn.Conv2d(1, 4, 3), 4 * 3 * 3).double().eval()
    model.conv.requires_grad_(False)
    ds = _shaped((1, 8, 8))
    dirs = D.random_directions(model, 1, seed=0)
    assert "conv.weight" not in dirs.vectors[0]
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(None)},
                             "eval", [], torch.float64, torch.device("cpu"))
    assert evaluator.first is not None
    axis = S.symmetric_axis(1.0, 5)
    fast = S.evaluate(model, dirs, [axis], {"train": ds}, kind="line", dtype=torch.float64, progress=False)
    monkeypatch.setattr(S._Evaluator, "_fast_path", lambda self: None)
    plain = S.evaluate(model, dirs, [axis], {"train": ds}, kind="line", dtype=torch.float64, progress=False)
    np.testing.assert_allclose(fast["values"]["train/loss"], plain["values"]["train/loss"], rtol=1e-12)


class ConvTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 1, 3, padding=1), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.tanh(self.conv(torch.tanh(self.conv(x)))), 1))


class HiddenScaling(nn.Module):
    """A computation on the input that hooks on modules cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(72, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(2.0 * x), 1))


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10))
    model[0].register_forward_hook(lambda m, i, o: o * 0.5)  # the caller's hook changes the layer's output
    return model


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(72, 10)
        self.alias = self.conv  # the same layer under a second name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


def _no_first_layer() -> dict[str, nn.Module]:
    return {
        "conv-called-twice": ConvTwice(),
        "pool-before-conv": nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 10)),
        "norm-before-conv": nn.Sequential(nn.GroupNorm(1, 1), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10)),
        "hidden-scaling-of-the-input": HiddenScaling(),
        "hook-on-the-layer": _hooked(),
        "layer-under-two-names": Shared(),
    }


@pytest.mark.parametrize("name", list(_no_first_layer()))
def test_fallback_for_networks_whose_first_layer_is_not_fed_the_input(name: str) -> None:
    """No fast path is taken, and the surface still equals the one-point-at-a-time loop."""
    torch.manual_seed(0)
    model = _no_first_layer()[name].double().eval()
    ds = _shaped((1, 8, 8), 12)
    assert find_first_layer(model, ds.x[:2]) is None
    dirs = D.random_directions(model, 2, seed=0)
    evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(None)},
                             "eval", [], torch.float64, torch.device("cpu"))
    assert evaluator.first is None and evaluator.chain is None
    axes = [S.symmetric_axis(1.0, 3), S.symmetric_axis(0.5, 3)]
    assert_surface_equals_the_loop(model, dirs, axes, ds)


def test_responses_beyond_the_memory_budget_take_the_plain_path(monkeypatch) -> None:
    model = ConvNet(nn.Conv2d(1, 4, 3), 4 * 3 * 3).double().eval()
    ds = _shaped((1, 8, 8), 20)
    dirs = D.random_directions(model, 2, seed=0)
    per_sample = 3 * 4 * 6 * 6 * 8  # (1 + d) x the conv's output, float64 bytes
    for budget, taken in ((20 * per_sample, True), (20 * per_sample - 1, False)):
        monkeypatch.setattr(S, "RESPONSE_MEMORY_BYTES", budget)
        evaluator = S._Evaluator(model, dict(D.trainable_parameters(model)), dirs, {"train": ds.batches(8)},
                                 "eval", [], torch.float64, torch.device("cpu"))
        assert (evaluator.first is not None) == taken
