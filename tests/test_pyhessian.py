"""Cross-check against PyHessian [Y20], the tool researchers use today, on the same model and data."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape import data, models
from landscape.eigen import top_eigenvalues
from landscape.objective import Objective
from landscape.operators import HessianOperator
from landscape.trace import hutchinson

pyhessian = pytest.importorskip("pyhessian")


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = models.build("mlp", hidden=[10], num_classes=10)
    dataset = data.load("digits").sample(300, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):  # a partly trained model has a realistic, non-degenerate spectrum
        opt.zero_grad()
        nn.functional.cross_entropy(model(dataset.x), dataset.y).backward()
        opt.step()
    return model, dataset


def test_top_eigenvalue_and_trace_agree_with_pyhessian(problem):
    model, dataset = problem
    ph = pyhessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=(dataset.x, dataset.y), cuda=False)
    torch.manual_seed(0)
    (ph_top,), _ = ph.eigenvalues(maxIter=1000, tol=1e-6, top_n=1)
    np.random.seed(0)
    torch.manual_seed(0)
    ph_samples = ph.trace(maxIter=300, tol=0.0)
    ph_trace, ph_stderr = np.mean(ph_samples), np.std(ph_samples, ddof=1) / np.sqrt(len(ph_samples))

    objective = Objective(model, dataset.batches(None), dtype=torch.float64)
    op = HessianOperator(objective)
    ours = top_eigenvalues(op, 1, tol=1e-8)
    exact_trace = float(torch.trace(op.dense()))

    assert float(ours.eigenvalues[0]) == pytest.approx(ph_top, rel=1e-4)
    assert abs(ph_trace - exact_trace) <= 4 * ph_stderr
    # Our own estimator, at the same budget, is within its reported standard error too.
    est = hutchinson(op, max_samples=300, tol=0.0, seed=0)
    assert abs(est.trace - exact_trace) <= 4 * est.stderr
