"""One objective for every analysis: any loss, forward, batches and parameter block, against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from landscape import directions as D
from landscape import flatness, surface
from landscape import hessian as H
from landscape.errors import LandscapeError
from landscape.objective import Objective, make_loss

DT = torch.float64


def regression():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(30, 3, generator=g, dtype=DT)
    return model, x, torch.randn(30, 2, generator=g, dtype=DT)


def dense_of(model, value, names=None):
    """torch.func.hessian of ``value(model_call)`` w.r.t. the named parameters, on one flat vector
    (``model_call(*args)`` runs the model with those parameters): independent of the Objective."""
    model = model.to(DT)
    state = dict(model.named_parameters())
    names = names or list(state)
    shapes = {n: state[n].shape for n in names}

    def f(flat):
        params, i = {}, 0
        for n, s in shapes.items():
            k = int(np.prod(s))
            params[n] = flat[i:i + k].view(s)
            i += k
        return value(lambda *args: functional_call(model, {**state, **params}, args))

    return hessian(f)(torch.cat([state[n].detach().reshape(-1) for n in names]))


def dense_hessian(model, loss, x, y, names=None):
    """d^2/dw^2 of loss(model_w(x), y) over the whole data in one call."""
    return dense_of(model, lambda call: loss(call(x), y), names)


def test_mse_objective_matches_the_dense_hessian_in_unequal_batches():
    model, x, y = regression()
    report = H.analyze(model, [(x[:11], y[:11]), (x[11:], y[11:])], loss="mse", top_k=3, tol=1e-8, dtype=DT)
    dense = dense_hessian(model, nn.functional.mse_loss, x, y)
    expected = torch.linalg.eigvalsh(dense).flip(0)[:3]
    torch.testing.assert_close(report.eigen.eigenvalues.double(), expected, rtol=1e-7, atol=1e-10)
    assert report.objective["loss"] == "mse"
    assert report.loss == pytest.approx(float(nn.functional.mse_loss(model.to(DT)(x), y)), rel=1e-12)


def test_a_parameter_block_is_the_sub_block_of_the_dense_hessian():
    model, x, y = regression()
    dense = dense_hessian(model, nn.functional.mse_loss, x, y)
    sizes = [p.numel() for p in model.parameters()]
    # The first Linear ("0.weight", "0.bias"); the last layer's block of an MSE is degenerate
    # (one identical block per output), which a single-vector Lanczos does not resolve.
    block = dense[:sum(sizes[:2]), :sum(sizes[:2])]
    for params in ("^0\\.", ["0.weight", "0.bias"]):
        report = H.analyze(model, [(x, y)], loss="mse", params=params, top_k=2, tol=1e-9, dtype=DT)
        torch.testing.assert_close(report.eigen.eigenvalues.double(), torch.linalg.eigvalsh(block).flip(0)[:2],
                                   rtol=1e-7, atol=1e-10)


def test_per_layer_lambda_max_is_each_diagonal_block():
    model, x, y = regression()
    dense = dense_hessian(model, nn.functional.mse_loss, x, y)
    report = H.analyze(model, [(x, y)], loss="mse", top_k=1, tol=1e-9, dtype=DT, per_layer=True)
    sizes = np.cumsum([0] + [p.numel() for p in model.parameters()])
    blocks = {"0": dense[sizes[0]:sizes[2], sizes[0]:sizes[2]], "2": dense[sizes[2]:sizes[4], sizes[2]:sizes[4]]}
    assert [layer["block"] for layer in report.per_layer] == ["0", "2"]
    for layer in report.per_layer:
        assert layer["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(blocks[layer["block"]])[-1]), rel=1e-7)


class Segmenter(nn.Module):
    """Per-pixel class scores (N, C, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_segmentation_cross_entropy_counts_the_pixels_that_are_not_ignored():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    model = Segmenter()
    x = torch.randn(5, 1, 4, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (5, 4, 4), generator=g)
    y[0, :3] = 255
    y[3:, 1:] = 255  # the two batches ignore very different numbers of pixels
    obj = Objective(model, [(x[:3], y[:3]), (x[3:], y[3:])], dtype=DT, loss="cross-entropy", ignore_index=255)
    assert obj.num_samples == int((y != 255).sum())
    whole = nn.functional.cross_entropy(model.to(DT)(x), y, ignore_index=255)
    assert obj.loss() == pytest.approx(float(whole), rel=1e-12)
    report = H.analyze(model, [(x[:3], y[:3]), (x[3:], y[3:])], loss="cross-entropy", ignore_index=255, top_k=2,
                       tol=1e-9, dtype=DT)
    dense = dense_hessian(model, lambda o, t: nn.functional.cross_entropy(o, t, ignore_index=255), x, y)
    torch.testing.assert_close(report.eigen.eigenvalues.double(), torch.linalg.eigvalsh(dense).flip(0)[:2],
                               rtol=1e-7, atol=1e-10)
    _, accuracy = obj.metrics()
    counted = y != 255
    assert accuracy == pytest.approx(float(((model(x).argmax(1) == y) & counted).sum() / counted.sum()))


class Bag(nn.Module):
    """A model fed HuggingFace-style dict batches: masked mean of embeddings, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, input_ids, attention_mask):
        e = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return {"logits": self.head(e.sum(1) / attention_mask.sum(1, keepdim=True))}


def dict_batches():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 7, (12, 5), generator=g)
    mask = (torch.rand(12, 5, generator=g) > 0.3).to(DT)
    mask[:, 0] = 1
    labels = torch.randint(0, 2, (12,), generator=g)
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": mask[i:i + 4], "labels": labels[i:i + 4]}
               for i in range(0, 12, 4)]
    return batches, ids, mask, labels


def test_dict_batches_and_a_dataloader_give_the_dense_hessian():
    torch.manual_seed(0)
    model = Bag()
    batches, ids, mask, labels = dict_batches()
    dense = dense_of(model, lambda call: nn.functional.cross_entropy(call(ids, mask)["logits"], labels))
    expected = torch.linalg.eigvalsh(dense).flip(0)[:2]
    loader = torch.utils.data.DataLoader(
        [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(12)], batch_size=5)
    for data in (batches, loader):
        report = H.analyze(model, data, top_k=2, tol=1e-9, dtype=DT)
        torch.testing.assert_close(report.eigen.eigenvalues.double(), expected, rtol=1e-7, atol=1e-10)


def test_a_user_forward_and_loss():
    model, x, y = regression()

    def forward(call, batch):
        return call(batch["features"]), batch["target"]

    def loss(outputs, targets):
        return ((outputs - targets) ** 4).mean()

    report = H.analyze(model, [{"features": x, "target": y}], loss=loss, forward=forward, top_k=1, tol=1e-9,
                       dtype=DT)
    dense = dense_hessian(model, loss, x, y)
    assert float(report.eigen.eigenvalues[0]) == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-7)
    assert report.objective["loss"] == "loss"


@pytest.mark.parametrize("make, match", [
    (lambda m, x, y: Objective(m, [(x, y)], loss="huber"), "unknown loss 'huber'"),
    (lambda m, x, y: Objective(m, [(x, y)], loss=lambda o, t: (o - t) ** 2).loss(), "returned \\(30, 2\\), not a "
     "scalar mean"),
    (lambda m, x, y: Objective(m, [(x, y)], loss=lambda o, t: (o - t) ** 2).metrics(), "returned \\(30, 2\\), not "
     "a scalar mean"),  # the surface path: the same check as the Hessian's
    (lambda m, x, y: Objective(m, [(x, y)], params="^nothing").loss(), "--params '\\^nothing' matches no parameter"),
    (lambda m, x, y: Objective(m, [(x, y)], params="(").loss(), "is not a regular expression"),
    (lambda m, x, y: Objective(m, [(x, y)]).loss(), "cross-entropy needs integer class labels"),
    (lambda m, x, y: Objective(m, [(x, y[:, :1].repeat(1, 3))], loss="mse").loss(), "mse needs targets shaped like"),
    (lambda m, x, y: Objective(m, (b for b in [(x, y)]), loss="mse"), "one-shot iterator"),
    (lambda m, x, y: Objective(m, torch.utils.data.DataLoader(list(zip(x, y)), shuffle=True), loss="mse"),
     "draws its batches with a RandomSampler"),
    (lambda m, x, y: Objective(m, [x], loss="mse"), "cannot unpack a batch of type Tensor"),
    (lambda m, x, y: Objective(m, [{"x": x}], loss="mse"), "a dict batch without 'labels'"),
])
def test_bad_objectives_are_one_line(make, match):
    model, x, y = regression()
    model = model.to(DT)
    with pytest.raises(LandscapeError, match=match) as info:
        make(model, x, y)
    assert "\n" not in str(info.value)


def test_the_surface_centre_is_the_loss_of_the_model_with_a_custom_loss():
    model, x, y = regression()
    model = model.to(DT)
    dirs = D.random_directions(model, 2, seed=0)
    axis = surface.symmetric_axis(0.5, 3)
    result = surface.evaluate(model, dirs, [axis, axis], {"train": [(x, y)]}, loss="mse", dtype=DT, progress=False)
    assert sorted(result["values"]) == ["train/loss"]  # no accuracy for a regression loss
    assert result["values"]["train/loss"][1, 1] == pytest.approx(float(nn.functional.mse_loss(model(x), y)), rel=1e-12)
    corner = {n: p.detach() - 0.5 * dirs.vectors[0][n] + 0.5 * dirs.vectors[1][n]
              for n, p in model.named_parameters()}
    expected = nn.functional.mse_loss(functional_call(model, corner, (x,)), y)
    assert result["values"]["train/loss"][0, 2] == pytest.approx(float(expected), rel=1e-10)


def test_flatness_with_a_custom_loss_uses_it_everywhere():
    model, x, y = regression()
    model = model.to(DT)
    clients = [[(x[:15], y[:15])], [(x[15:], y[15:])]]
    metrics = flatness.flatness_metrics(model, [model, model], clients, rho=0.05, num_ascent_steps=2, tol=1e-8,
                                        dtype=DT, loss="mse")
    for i, batches in enumerate(clients):
        (xi, yi), = batches
        assert metrics.sharpness_gap.client_losses[i] == pytest.approx(
            float(nn.functional.mse_loss(model(xi), yi)), rel=1e-12)
        local = torch.linalg.eigvalsh(dense_hessian(model, nn.functional.mse_loss, xi, yi))[-1]
        assert metrics.lambda_max.local_at_client[i] == pytest.approx(float(local), rel=1e-6)


def test_named_losses_are_torch_functional_losses():
    g = torch.Generator().manual_seed(4)
    o, t = torch.randn(6, 3, generator=g, dtype=DT), torch.randint(0, 3, (6,), generator=g)
    assert make_loss("cross-entropy").fn(o, t) == nn.functional.cross_entropy(o, t)
    assert make_loss("nll").fn(o.log_softmax(1), t) == nn.functional.nll_loss(o.log_softmax(1), t)
    r = torch.randn(6, 3, generator=g, dtype=DT)
    assert make_loss("mse").fn(o, r) == nn.functional.mse_loss(o, r)
    b = (r > 0).double()
    assert make_loss("bce-with-logits").fn(o, b) == nn.functional.binary_cross_entropy_with_logits(o, b)


def test_flatness_on_a_parameter_block_with_another_curvature():
    model, x, y = regression()
    model = model.to(DT)
    clients = [[(x[:15], y[:15])], [(x[15:], y[15:])]]
    sizes = [p.numel() for p in model.parameters()]
    metrics = flatness.flatness_metrics(model, [model, model], clients, rho=0.05, num_ascent_steps=1, tol=1e-8,
                                        dtype=DT, loss="mse", params="^0\\.")
    (x0, y0), = clients[0]
    block = dense_hessian(model, nn.functional.mse_loss, x0, y0)[:sum(sizes[:2]), :sum(sizes[:2])]
    assert metrics.lambda_max.local_at_client[0] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)
    ggn = flatness.flatness_metrics(model, [model, model], clients, rho=0.05, num_ascent_steps=1, tol=1e-8,
                                    dtype=DT, loss="mse", curvature="ggn")
    hess = flatness.flatness_metrics(model, [model, model], clients, rho=0.05, num_ascent_steps=1, tol=1e-8,
                                     dtype=DT, loss="mse")
    assert ggn.lambda_max.local_at_client != pytest.approx(hess.lambda_max.local_at_client)  # another matrix
    assert ggn.perturbation_distance.distance == pytest.approx(hess.perturbation_distance.distance, rel=1e-12)
