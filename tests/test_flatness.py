"""Flatness metrics against closed forms on a model whose loss is an exact quadratic."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import landscape
from landscape import checkpoint, data, flatness, models
from landscape.cli import main
from landscape.eigen import top_eigenvalues
from landscape.errors import LandscapeError
from landscape.objective import Objective
from landscape.partition import client_data
from tests.conftest import flat_hessian_and_gradient

F64 = torch.float64


class DiagonalQuadratic(nn.Module):
    """Cross-entropy of label 0 equals q + log 2 exactly, q = 1/2 sum_k a_k (w_k - c_k)^2.

    Each input row is (c, a): the sample's centre and curvature. The two logits are
    z0 = -q and z1 = log(2 - exp(-q)), so logsumexp(z) = log 2 and CE = -z0 + log 2.
    A client holding identical rows (c, a) has f_i(w) = 1/2 (w - c)^T diag(a) (w - c) + log 2.
    """

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.w.shape[0]
        c, a = x[:, :p], x[:, p:]
        q = 0.5 * (a * (self.w - c) ** 2).sum(1)
        return torch.stack([-q, torch.log(2 - torch.exp(-q))], 1)


def quadratic_client(c: list[float], a: list[float], num_samples: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch of ``num_samples`` identical rows (c, a), label 0."""
    row = torch.tensor([c + a], dtype=F64)
    return [(row.repeat(num_samples, 1), torch.zeros(num_samples, dtype=torch.long))]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_quadratic_model_loss_is_exact() -> None:
    """The test model itself: f(w) = 1/2 (w-c)^T diag(a) (w-c) + log 2 and its gradient."""
    w, c, a = np.array([0.3, -1.0]), np.array([1.0, 2.0]), np.array([4.0, 0.5])
    obj = Objective(DiagonalQuadratic(list(w)), quadratic_client(list(c), list(a)), F64)
    assert obj.loss() == pytest.approx(0.5 * np.sum(a * (w - c) ** 2) + math.log(2), rel=1e-13)
    np.testing.assert_allclose(obj.gradient().numpy(), a * (w - c), rtol=1e-12)


def test_identical_clients_have_zero_distance_and_gap() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    pd = flatness.perturbation_distance(model, [batches, batches, batches], rho=0.1, dtype=F64)
    assert pd.distance == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(pd.cosines, 1.0, atol=1e-12)
    assert pd.weights == pytest.approx([1 / 3] * 3)
    gap = flatness.sharpness_gap(model, [batches, batches], rho=0.1, num_ascent_steps=2, dtype=F64)
    assert gap.gap_first_order == pytest.approx(0.0, abs=1e-12)
    assert gap.gap_ascent == pytest.approx(0.0, abs=1e-12)
    assert gap.client_losses[0] == pytest.approx(gap.global_loss, abs=1e-12)


def test_perturbation_distance_closed_form() -> None:
    """eps_i = rho g_i/||g_i||, g_i = a_i (x - c_i), g = sum_i (n_i/N) g_i."""
    x = np.array([0.5, -0.2, 1.0])
    clients = [  # (centre c_i, curvature a_i, samples n_i)
        ([1.0, 0.0, 2.0], [1.0, 2.0, 3.0], 1),
        ([-1.0, 1.0, 0.0], [0.5, 0.5, 4.0], 3),
        ([0.0, 0.0, 0.0], [2.0, 1.0, 1.0], 2),
    ]
    rho = 0.3
    pd = flatness.perturbation_distance(
        DiagonalQuadratic(list(x)), [quadratic_client(c, a, n) for c, a, n in clients], rho=rho, dtype=F64
    )
    weights = np.array([n for *_, n in clients]) / 6.0
    grads = [np.array(a) * (x - np.array(c)) for c, a, _ in clients]
    g = sum(w * gi for w, gi in zip(weights, grads))
    expected = [np.linalg.norm(rho * unit(gi) - rho * unit(g)) for gi in grads]
    np.testing.assert_allclose(pd.weights, weights, rtol=1e-15)
    np.testing.assert_allclose(pd.client_distances, expected, rtol=1e-10)
    assert pd.distance == pytest.approx(np.mean(expected), rel=1e-10)
    np.testing.assert_allclose(pd.cosines, [unit(gi) @ unit(g) for gi in grads], rtol=1e-10)
    # ||eps_i - eps|| = rho sqrt(2 - 2 cos_i)
    np.testing.assert_allclose(pd.client_distances, rho * np.sqrt(2 - 2 * np.array(pd.cosines)), rtol=1e-8)
    assert pd.gradient_norm == pytest.approx(np.linalg.norm(g), rel=1e-12)


def test_opposite_clients_distance_is_rho() -> None:
    """g_1 = -v (1 sample), g_2 = +v (3 samples): g = v/2, so eps = eps_2 = -eps_1 and D = (2 rho + 0)/2."""
    x = [1.0, 1.0]
    one = quadratic_client([2.0, 1.0], [1.0, 1.0], 1)  # g_1 = (-1, 0)
    two = quadratic_client([0.0, 1.0], [1.0, 1.0], 3)  # g_2 = (+1, 0)
    pd = flatness.perturbation_distance(DiagonalQuadratic(x), [one, two], rho=0.05, dtype=F64)
    np.testing.assert_allclose(pd.client_distances, [0.1, 0.0], atol=1e-15)
    assert pd.distance == pytest.approx(0.05, rel=1e-14)
    np.testing.assert_allclose(pd.cosines, [-1.0, 1.0], rtol=1e-14)


def test_sharpness_first_order_closed_form() -> None:
    """h(x + rho g/||g||) - h(x) = rho ||g|| + rho^2/2 u^T A u, u = g/||g||, for h quadratic with Hessian A."""
    x = np.array([0.5, -0.2, 1.0])
    clients = [([1.0, 0.0, 2.0], [1.0, 2.0, 3.0], 1), ([-1.0, 1.0, 0.0], [0.5, 0.5, 4.0], 3)]
    rho = 0.2
    gap = flatness.sharpness_gap(
        DiagonalQuadratic(list(x)), [quadratic_client(c, a, n) for c, a, n in clients], rho=rho, num_ascent_steps=0,
        dtype=F64,
    )

    def first_order(g: np.ndarray, a: np.ndarray) -> float:
        u = unit(g)
        return rho * np.linalg.norm(g) + 0.5 * rho**2 * np.sum(a * u**2)

    weights = np.array([0.25, 0.75])
    grads = [np.array(a) * (x - np.array(c)) for c, a, _ in clients]
    local = [first_order(gi, np.array(a)) for gi, (_, a, _) in zip(grads, clients)]
    a_global = sum(w * np.array(a) for w, (_, a, _) in zip(weights, clients))
    global_ = first_order(sum(w * gi for w, gi in zip(weights, grads)), a_global)
    np.testing.assert_allclose(gap.client_first_order, local, rtol=1e-10)
    assert gap.global_first_order == pytest.approx(global_, rel=1e-10)
    assert gap.gap_first_order == pytest.approx(np.mean(local) - global_, rel=1e-9)
    # zero ascent steps: the ascent estimate is the first-order one
    assert gap.client_ascent == pytest.approx(gap.client_first_order, rel=1e-14)


def test_ascent_finds_the_maximum_on_the_sphere() -> None:
    """On a 2-D quadratic the exact max over ||d|| <= rho lies on the circle: sweep it densely."""
    x, c, a = np.array([0.3, 0.2]), np.array([0.0, 0.0]), np.array([1.0, 10.0])
    rho = 0.5
    obj = Objective(DiagonalQuadratic(list(x)), quadratic_client(list(c), list(a)), F64)
    t = np.linspace(0, 2 * np.pi, 2_000_001)
    d = rho * np.stack([np.cos(t), np.sin(t)], 1)
    h = lambda w: 0.5 * np.sum(a * (w - c) ** 2, axis=-1)  # noqa: E731
    exact = float(np.max(h(x + d)) - h(x))
    g = a * (x - c)
    upper = rho * np.linalg.norm(g) + 0.5 * rho**2 * a.max()
    loss, first, ascent = flatness.sharpness(obj, rho, num_ascent_steps=200)
    assert loss == pytest.approx(h(x) + math.log(2), rel=1e-13)
    assert first < exact - 1e-3  # the first-order estimate is visibly short here
    assert ascent == pytest.approx(exact, rel=1e-8)
    assert first <= ascent <= upper


def test_lambda_max_of_quadratic_clients() -> None:
    """Hessians are diag(a_i) for f_i and diag(sum_i w_i a_i) for f, at every point."""
    a1, a2 = [1.0, 5.0, 2.0], [3.0, 0.5, 1.0]
    batches = [quadratic_client([0.0, 0.0, 0.0], a1, 1), quadratic_client([1.0, 1.0, 1.0], a2, 3)]
    global_model = DiagonalQuadratic([0.5, 0.5, 0.5])
    clients = [DiagonalQuadratic([0.1, 0.0, -0.1]), DiagonalQuadratic([0.9, 1.2, 1.0])]
    res = flatness.lambda_max_local_global(global_model, clients, batches, tol=1e-8, dtype=F64)
    expected_global = max(0.25 * np.array(a1) + 0.75 * np.array(a2))  # 2.5
    np.testing.assert_allclose(res.local_at_client, [5.0, 3.0], rtol=1e-8)
    np.testing.assert_allclose(res.global_at_client, [expected_global] * 2, rtol=1e-8)
    assert res.global_at_global == pytest.approx(expected_global, rel=1e-8)
    assert res.global_minus_local == pytest.approx(2.5 - 4.0, rel=1e-8)  # mean_i lambda_max f_i(x_i) = (5 + 3)/2
    assert res.global_over_local == pytest.approx(2.5 / 4.0, rel=1e-8)
    assert res.converged


# -- between the trained client models x_i and the global model x ------------------------------------------------

# Quadratic clients (centre c_i, curvature a_i, samples n_i) and where each one's local training ended (x_i).
LOCAL_CLIENTS = [([1.0, 0.0, 2.0], [1.0, 2.0, 3.0], 1), ([-1.0, 1.0, 0.0], [0.5, 0.5, 4.0], 3)]
LOCAL_MODELS = [[0.8, 0.3, 1.6], [-0.4, 0.7, 0.5]]
GLOBAL_X = [0.25, 0.6, 0.775]  # (1 x_1 + 3 x_2) / 4, as FedAvg aggregates


def local_federation() -> tuple[DiagonalQuadratic, list[DiagonalQuadratic], list[list[Any]]]:
    return (DiagonalQuadratic(GLOBAL_X), [DiagonalQuadratic(x) for x in LOCAL_MODELS],
            [quadratic_client(c, a, n) for c, a, n in LOCAL_CLIENTS])


def test_local_perturbation_distance_closed_form() -> None:
    """eps_i(x_i) = rho g_i/||g_i||, g_i = a_i (x_i - c_i); eps(x) = rho g/||g||, g = sum_i (n_i/N) a_i (x - c_i)."""
    rho = 0.3
    res = flatness.local_perturbation_distance(*local_federation(), rho=rho, dtype=F64)
    x = np.array(GLOBAL_X)
    local = [np.array(a) * (np.array(xi) - np.array(c)) for xi, (c, a, _) in zip(LOCAL_MODELS, LOCAL_CLIENTS)]
    g = 0.25 * np.array(LOCAL_CLIENTS[0][1]) * (x - LOCAL_CLIENTS[0][0]) \
        + 0.75 * np.array(LOCAL_CLIENTS[1][1]) * (x - LOCAL_CLIENTS[1][0])
    expected = [np.linalg.norm(rho * unit(gi) - rho * unit(g)) for gi in local]
    np.testing.assert_allclose(res.client_distances, expected, rtol=1e-10)
    assert res.distance == pytest.approx(np.mean(expected), rel=1e-10)
    cosines = [unit(gi) @ unit(g) for gi in local]
    np.testing.assert_allclose(res.cosines, cosines, rtol=1e-10)
    assert res.mean_cosine == pytest.approx(np.mean(cosines), rel=1e-10)
    np.testing.assert_allclose(res.client_gradient_norms, [np.linalg.norm(gi) for gi in local], rtol=1e-12)
    assert res.gradient_norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    # the clients' gradients at x would give another answer: the metric really reads x_i
    at_x = flatness.perturbation_distance(DiagonalQuadratic(GLOBAL_X), local_federation()[2], rho=rho, dtype=F64)
    assert abs(at_x.distance - res.distance) > 1e-3


def test_local_perturbation_distance_at_the_global_model_is_the_perturbation_distance() -> None:
    """With every x_i = x, D_loc is D (a different code path: per-client models, pooled gradient)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(3)
    batches = [[(torch.randn(6 + 4 * i, 4, generator=g), torch.randint(0, 3, (6 + 4 * i,), generator=g))]
               for i in range(3)]
    local = flatness.local_perturbation_distance(model, [model] * 3, batches, rho=0.1, dtype=F64)
    at_x = flatness.perturbation_distance(model, batches, rho=0.1, dtype=F64)
    np.testing.assert_allclose(local.client_distances, at_x.client_distances, rtol=1e-10)
    np.testing.assert_allclose(local.cosines, at_x.cosines, rtol=1e-10)
    assert local.gradient_norm == pytest.approx(at_x.gradient_norm, rel=1e-12)


def test_sharpness_local_global_first_order_closed_form() -> None:
    """S_1 = rho ||g|| + rho^2/2 u^T A u at x_i for f_i (A = diag a_i) and at x for f (A = sum_i w_i diag a_i)."""
    rho = 0.2
    res = flatness.sharpness_local_global(*local_federation(), rho=rho, num_ascent_steps=0, dtype=F64)

    def first_order(g: np.ndarray, a: np.ndarray) -> float:
        return rho * np.linalg.norm(g) + 0.5 * rho**2 * np.sum(a * unit(g) ** 2)

    x = np.array(GLOBAL_X)
    local = [first_order(np.array(a) * (np.array(xi) - np.array(c)), np.array(a))
             for xi, (c, a, _) in zip(LOCAL_MODELS, LOCAL_CLIENTS)]
    weights = [0.25, 0.75]
    g = sum(w * np.array(a) * (x - np.array(c)) for w, (c, a, _) in zip(weights, LOCAL_CLIENTS))
    global_ = first_order(g, sum(w * np.array(a) for w, (_, a, _) in zip(weights, LOCAL_CLIENTS)))
    np.testing.assert_allclose(res.client_first_order, local, rtol=1e-10)
    assert res.global_first_order == pytest.approx(global_, rel=1e-10)
    assert res.difference_first_order == pytest.approx(global_ - np.mean(local), rel=1e-9)
    assert res.ratio_first_order == pytest.approx(global_ / np.mean(local), rel=1e-9)
    losses = [0.5 * np.sum(np.array(a) * (np.array(xi) - np.array(c)) ** 2) + math.log(2)
              for xi, (c, a, _) in zip(LOCAL_MODELS, LOCAL_CLIENTS)]
    np.testing.assert_allclose(res.client_losses, losses, rtol=1e-12)
    assert res.ratio_ascent == pytest.approx(res.ratio_first_order, rel=1e-14)  # no ascent steps


def circle_sharpness(w: np.ndarray, c: np.ndarray, a: np.ndarray, rho: float) -> float:
    """max_{||d|| = rho} h(w + d) - h(w) for h = 1/2 sum_k a_k (w_k - c_k)^2 in 2-D, by a dense sweep."""
    t = np.linspace(0, 2 * np.pi, 2_000_001)
    d = rho * np.stack([np.cos(t), np.sin(t)], 1)
    h = lambda v: 0.5 * np.sum(a * (v - c) ** 2, axis=-1)  # noqa: E731
    return float(np.max(h(w + d)) - h(w))


def test_sharpness_local_global_ascent_finds_each_maximum() -> None:
    """The ascent estimates against the exact maxima on the circle: f_1, f_2 at x_1, x_2 and f at x."""
    rho = 0.5
    (c1, a1), (c2, a2) = (np.array([0.0, 0.0]), np.array([1.0, 10.0])), (np.array([1.0, -1.0]), np.array([6.0, 0.5]))
    x1, x2 = np.array([0.3, 0.2]), np.array([0.9, -0.6])
    x = 0.5 * (x1 + x2)
    batches = [quadratic_client(list(c1), list(a1)), quadratic_client(list(c2), list(a2))]
    res = flatness.sharpness_local_global(DiagonalQuadratic(list(x)), [DiagonalQuadratic(list(x1)),
                                          DiagonalQuadratic(list(x2))], batches, rho=rho, num_ascent_steps=200,
                                          dtype=F64)
    local = [circle_sharpness(x1, c1, a1, rho), circle_sharpness(x2, c2, a2, rho)]
    # f = (f_1 + f_2)/2 is a quadratic with curvature (a1 + a2)/2 and centre (a1 c1 + a2 c2)/(a1 + a2)
    global_ = circle_sharpness(x, (a1 * c1 + a2 * c2) / (a1 + a2), (a1 + a2) / 2, rho)
    np.testing.assert_allclose(res.client_ascent, local, rtol=1e-8)
    assert res.global_ascent == pytest.approx(global_, rel=1e-8)
    assert res.difference_ascent == pytest.approx(global_ - np.mean(local), rel=1e-7)
    assert res.ratio_ascent == pytest.approx(global_ / np.mean(local), rel=1e-7)


def test_clients_at_their_minima_have_no_sharpness_ratio() -> None:
    """x_i = c_i: grad f_i(x_i) = 0, both estimates of S_{f_i}(x_i) are 0, so the ratio is undefined (NaN)."""
    global_model, _, batches = local_federation()
    at_minima = [DiagonalQuadratic(c) for c, _, _ in LOCAL_CLIENTS]
    res = flatness.sharpness_local_global(global_model, at_minima, batches, rho=0.1, num_ascent_steps=3, dtype=F64)
    assert res.client_first_order == [0.0, 0.0] and res.client_ascent == [0.0, 0.0]
    assert math.isnan(res.ratio_first_order) and math.isnan(res.ratio_ascent)
    assert res.difference_ascent == res.global_ascent > 0


def test_local_global_metrics_against_dense_hessians() -> None:
    """An MLP federation: lambda_max by torch.linalg.eigvalsh of dense Hessians, eps from torch.func.grad."""
    torch.manual_seed(4)
    global_model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    clients = [copy.deepcopy(global_model) for _ in range(2)]
    with torch.no_grad():
        for i, m in enumerate(clients):
            for p in m.parameters():
                p.add_(0.3 * (i + 1) * torch.randn_like(p))
    g = torch.Generator().manual_seed(5)
    data_ = [(torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (7, 13)]
    batches = [[d] for d in data_]
    pooled = (torch.cat([d[0] for d in data_]), torch.cat([d[1] for d in data_]))
    lm = flatness.lambda_max_local_global(global_model, clients, batches, tol=1e-10, dtype=F64)
    local = [float(torch.linalg.eigvalsh(flat_hessian_and_gradient(m, *d)[0])[-1])
             for m, d in zip(clients, data_)]
    hess_x, grad_x = flat_hessian_and_gradient(global_model, *pooled)
    top_x = float(torch.linalg.eigvalsh(hess_x)[-1])
    np.testing.assert_allclose(lm.local_at_client, local, rtol=1e-7)
    assert lm.global_at_global == pytest.approx(top_x, rel=1e-7)
    assert lm.global_minus_local == pytest.approx(top_x - np.mean(local), rel=1e-6, abs=1e-9)
    assert lm.global_over_local == pytest.approx(top_x / np.mean(local), rel=1e-6)
    rho = 0.05
    pd = flatness.local_perturbation_distance(global_model, clients, batches, rho=rho, dtype=F64)
    grads = [flat_hessian_and_gradient(m, *d)[1] for m, d in zip(clients, data_)]
    expected = [float((rho * gi / gi.norm() - rho * grad_x / grad_x.norm()).norm()) for gi in grads]
    np.testing.assert_allclose(pd.client_distances, expected, rtol=1e-9)


def test_flatness_distance_is_the_curvature_ratio_at_m_plus_one_lanczos_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training-loop function: lambda_max(f at x) / mean_i lambda_max(f_i at x_i) = 2.5 / ((5 + 3)/2), from
    M + 1 = 3 eigensolves and no gradient, and the headline of flatness_metrics is the same number."""
    a1, a2 = [1.0, 5.0, 2.0], [3.0, 0.5, 1.0]
    batches = [quadratic_client([0.0, 0.0, 0.0], a1, 1), quadratic_client([1.0, 1.0, 1.0], a2, 3)]
    global_model = DiagonalQuadratic([0.5, 0.5, 0.5])
    clients = [DiagonalQuadratic([0.1, 0.0, -0.1]), DiagonalQuadratic([0.9, 1.2, 1.0])]
    solves: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        res = top_eigenvalues(*args, **kwargs)
        solves.append(res.num_matvecs)
        return res

    def no_gradient(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the flatness distance needs no gradient")

    with monkeypatch.context() as patch:
        patch.setattr(flatness, "top_eigenvalues", counting)
        patch.setattr(Objective, "gradient", no_gradient)
        res = flatness.flatness_distance(global_model, clients, batches, tol=1e-8, dtype=F64)
    assert len(solves) == 3 and res.num_matvecs == sum(solves) > 0
    assert res.global_over_local == pytest.approx(2.5 / 4.0, rel=1e-8)
    assert res.global_at_client == [] and res.converged
    metrics = flatness.flatness_metrics(global_model, clients, batches, num_ascent_steps=1, tol=1e-8, dtype=F64)
    assert metrics.flatness_distance == pytest.approx(res.global_over_local, rel=1e-8)
    headline = metrics.to_dict()["flatness_distance"]
    assert headline["metric"] == flatness.DEFAULT_METRIC == "lambda_max.global_over_local"
    assert headline["value"] == metrics.lambda_max.global_over_local


def test_parameter_distances_exact() -> None:
    torch.manual_seed(0)
    global_model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    num_params = sum(p.numel() for p in global_model.parameters())  # 26
    shifted = copy.deepcopy(global_model)
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(0.5)
    res = flatness.parameter_distances(global_model, [global_model, shifted])
    norm = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in global_model.parameters()))
    assert res.distances[0] == 0.0
    assert res.distances[1] == pytest.approx(0.5 * math.sqrt(num_params), rel=1e-6)
    assert res.global_norm == pytest.approx(norm, rel=1e-12)
    assert res.relative[1] == pytest.approx(0.5 * math.sqrt(num_params) / norm, rel=1e-6)


def test_different_architectures_are_refused() -> None:
    with pytest.raises(LandscapeError, match="different architectures"):
        flatness.parameter_distances(nn.Linear(3, 2), [nn.Linear(3, 2), nn.Linear(4, 2)])


@pytest.mark.parametrize("rho", [0.0, -0.1])
def test_non_positive_rho_is_refused(rho: float) -> None:
    with pytest.raises(LandscapeError, match="rho must be positive"):
        flatness.perturbation_distance(DiagonalQuadratic([0.0]), [quadratic_client([1.0], [1.0])], rho=rho)


def test_all_metrics_leave_models_untouched_and_serialize() -> None:
    torch.manual_seed(1)
    global_model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    clients = [copy.deepcopy(global_model) for _ in range(2)]
    with torch.no_grad():
        for i, m in enumerate(clients):
            for p in m.parameters():
                p.add_(0.01 * (i + 1) * torch.randn_like(p))
    before = [copy.deepcopy(m.state_dict()) for m in [global_model, *clients]]
    batches = [[(torch.randn(12, 4), torch.randint(0, 3, (12,)))] for _ in clients]
    metrics = flatness.flatness_metrics(global_model, clients, batches, rho=0.05, num_ascent_steps=2, dtype=F64)
    for state, model in zip(before, [global_model, *clients]):
        for name, value in model.state_dict().items():
            assert torch.equal(state[name], value)
    out = json.loads(json.dumps(metrics.to_dict()))
    assert set(out) >= {"perturbation_distance", "sharpness_gap", "lambda_max", "parameter_distances",
                        "local_perturbation_distance", "sharpness_local_global"}
    assert len(out["lambda_max"]["local_at_client"]) == 2
    assert 0 <= out["perturbation_distance"]["distance"] <= 2 * 0.05


# -- command line ---------------------------------------------------------------------------------------------

MLP_KWARGS = {"in_features": 8, "hidden": [6], "num_classes": 4}
SYNTHETIC = {"dataset": "synthetic", "n": 240, "classes": 4, "shape": [8], "seed": 3}
PARTITION = {"num_clients": 4, "samples_per_client": 50, "alpha": 0.5, "seed": 0}


def save_federation(tmp_path: Path, data_spec: dict[str, Any] | None) -> tuple[Path, list[Path]]:
    """A global MLP and two trained-looking clients (ids 0 and 2), as self-describing checkpoints."""
    torch.manual_seed(0)
    global_model = models.build("mlp", **MLP_KWARGS)
    paths = [tmp_path / "global.pt"]
    checkpoint.save(checkpoint.from_model(global_model, "mlp", MLP_KWARGS, role="global", data=data_spec or {}), paths[0])
    for cid in (0, 2):
        client = copy.deepcopy(global_model)
        with torch.no_grad():
            for p in client.parameters():
                p.add_(0.05 * torch.randn_like(p))
        paths.append(tmp_path / f"client{cid}.pt")
        checkpoint.save(checkpoint.from_model(client, "mlp", MLP_KWARGS, role="client", client_id=cid,
                                              data=data_spec or {}), paths[-1])
    return paths[0], paths[1:]


def library_metrics(global_path: Path, client_paths: list[Path], datasets: list[data.Dataset]) -> dict[str, Any]:
    models_ = [checkpoint.load(p).build_model() for p in [global_path, *client_paths]]
    return flatness.flatness_metrics(models_[0], models_[1:], [d.batches(None) for d in datasets], rho=0.1,
                                     num_ascent_steps=2, dtype=F64).to_dict()


def test_cli_rebuilds_client_data_from_the_partition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    global_path, client_paths = save_federation(tmp_path, {**SYNTHETIC, "split": "train", "partition": PARTITION})
    out = tmp_path / "flat.json"
    rc = main(["flatness", str(global_path), "--clients", *map(str, client_paths), "--rho", "0.1", "--ascent-steps", "2",
               "--dtype", "float64", "--device", "cpu", "--out", str(out), "--png", str(tmp_path / "flat.png")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "client 2" in printed and "perturbation distance D" in printed
    assert "local perturbation distance D_loc" in printed and "S_f(x) - mean_i S(f_i at x_i)" in printed
    assert "flatness distance lambda_max(f at x) / mean_i lambda_max(f_i at x_i)" in printed
    result = json.loads(out.read_text())
    full = data.load({**SYNTHETIC, "split": "train"})
    own = [client_data(full, {"partition": PARTITION}, cid) for cid in (0, 2)]
    expected = library_metrics(global_path, client_paths, own)
    assert result["metrics"]["perturbation_distance"]["distance"] == pytest.approx(
        expected["perturbation_distance"]["distance"], rel=1e-10)
    assert result["metrics"]["lambda_max"]["local_at_client"] == pytest.approx(
        expected["lambda_max"]["local_at_client"], rel=1e-6)
    assert result["metrics"]["local_perturbation_distance"]["cosines"] == pytest.approx(
        expected["local_perturbation_distance"]["cosines"], rel=1e-10)
    assert result["metrics"]["sharpness_local_global"]["difference_ascent"] == pytest.approx(
        expected["sharpness_local_global"]["difference_ascent"], rel=1e-9)
    assert result["metrics"]["flatness_distance"]["value"] == pytest.approx(
        expected["lambda_max"]["global_over_local"], rel=1e-6)
    assert [c["num_samples"] for c in result["clients"]] == [len(d) for d in own]
    meta = result["metadata"]
    assert meta["checkpoints"]["global"]["sha256"] == checkpoint.load(global_path).sha256
    assert [c["sha256"] for c in meta["checkpoints"]["clients"]] == [checkpoint.load(p).sha256 for p in client_paths]
    assert meta["version"] == landscape.__version__ and meta["settings"]["rho"] == 0.1
    assert (tmp_path / "flat.png").read_bytes().startswith(b"\x89PNG")


def test_cli_reads_explicit_client_data_files(tmp_path: Path) -> None:
    global_path, client_paths = save_federation(tmp_path, None)
    g = torch.Generator().manual_seed(5)
    files, sets = [], []
    for i in range(2):
        x, y = torch.randn(30 + 10 * i, 8, generator=g), torch.randint(0, 4, (30 + 10 * i,), generator=g)
        files.append(tmp_path / f"c{i}.npz")
        np.savez(files[-1], x=x.numpy(), y=y.numpy(), num_classes=4)
        sets.append(data.Dataset(x, y, 4))
    out = tmp_path / "flat.json"
    rc = main(["flatness", str(global_path), "--clients", *map(str, client_paths), "--client-data", *map(str, files),
               "--rho", "0.1", "--ascent-steps", "2", "--dtype", "float64", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())["metrics"]
    expected = library_metrics(global_path, client_paths, sets)
    assert result["perturbation_distance"]["weights"] == pytest.approx([30 / 70, 40 / 70])
    assert result["sharpness_gap"]["gap_ascent"] == pytest.approx(expected["sharpness_gap"]["gap_ascent"], rel=1e-9)


def test_cli_refuses_mixed_architectures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    global_path, client_paths = save_federation(tmp_path, None)
    other = tmp_path / "other.pt"
    checkpoint.save(checkpoint.from_model(models.build("mlp", **{**MLP_KWARGS, "hidden": [5]}), "mlp",
                                          {**MLP_KWARGS, "hidden": [5]}, role="client", client_id=1), other)
    rc = main(["flatness", str(global_path), "--clients", str(client_paths[0]), str(other), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "different architectures" in err and "other.pt" in err and len(err.strip().splitlines()) == 1


def test_cli_without_partition_asks_for_client_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    global_path, client_paths = save_federation(tmp_path, None)
    rc = main(["flatness", str(global_path), "--clients", *map(str, client_paths), "--device", "cpu"])
    assert rc == 2
    assert "--client-data" in capsys.readouterr().err


def test_the_result_file_round_trips_and_is_checked(tmp_path):
    import json

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    g = torch.Generator().manual_seed(0)
    batches = [[(torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g))] for _ in range(2)]
    metrics = flatness.flatness_metrics(model, [model, model], batches, rho=0.05, num_ascent_steps=1)
    result = flatness.FlatnessResult(metrics, [{"label": "client 0"}, {"label": "client 1"}], {}, {"rho": 0.05}, 0.1)
    path = result.save(tmp_path / "f.json")
    back = flatness.load_result(path)
    assert back["metrics"] == json.loads(json.dumps(metrics.to_dict()))
    assert back["metadata"]["format"] == flatness.FORMAT
    (tmp_path / "bad.json").write_text('{"metrics": {}}')
    with pytest.raises(LandscapeError, match="not a result of `landscape flatness --out`"):
        flatness.load_result(tmp_path / "bad.json")
