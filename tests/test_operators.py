"""The Hessian operator against dense float64 Hessians from torch.func.hessian."""

import pytest
import torch
from torch import nn
from torch.func import hessian

from landscape import models
from landscape.errors import LandscapeError
from landscape.objective import Objective
from landscape.operators import HessianOperator
from tests.conftest import Noisy, tiny_cnn


def dense_reference(objective: Objective, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d^2 f / dw^2 of the mean cross-entropy over all of (x, y) in one batch, by torch.func.hessian
    (independent of how the objective splits and weights its batches)."""
    model = objective.model
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}

    def f(flat):
        params = objective.unflatten(flat)
        out = torch.func.functional_call(model, {**state, **params}, (x.to(flat.dtype),))
        return nn.functional.cross_entropy(out, y)
    return hessian(f)(objective.flatten(objective.params).clone())


def _cases():
    g = torch.Generator().manual_seed(0)
    img = (torch.randn(10, 1, 4, 4, generator=g), torch.randint(0, 3, (10,), generator=g))
    vec = (torch.randn(10, 5, generator=g), torch.randint(0, 3, (10,), generator=g))
    torch.manual_seed(0)
    return {
        "mlp": (models.build("mlp", in_features=5, hidden=[4], num_classes=3), vec),
        "cnn": (tiny_cnn(None), img),
        "groupnorm": (tiny_cnn("group"), img),
        "batchnorm-eval": (tiny_cnn("batch"), img),
    }


@pytest.mark.parametrize("mode", ["cached", "forward"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "groupnorm", "batchnorm-eval"])
def test_operator_matches_dense_hessian_in_float64(name, mode):
    model, (x, y) = _cases()[name]
    # Two unequal batches: the operator must weight them by size.
    objective = Objective(model, [(x[:7], y[:7]), (x[7:], y[7:])], dtype=torch.float64)
    H = dense_reference(objective, x, y)
    assert H.abs().max() > 1e-3
    op = HessianOperator(objective, mode=mode)
    torch.testing.assert_close(op.dense(), H, atol=1e-10, rtol=1e-9)
    # And the whole data set in one batch gives the same operator.
    one = HessianOperator(Objective(model, [(x, y)], dtype=torch.float64), mode=mode)
    torch.testing.assert_close(one.dense(), H, atol=1e-10, rtol=1e-9)


def test_batchnorm_uses_running_statistics():
    model, (x, y) = _cases()["batchnorm-eval"]
    objective = Objective(model, [(x, y)], dtype=torch.float64)
    model.eval()
    expected = nn.functional.cross_entropy(model.double()(x.double()), y)
    assert objective.loss() == pytest.approx(float(expected), rel=1e-12)


def test_the_callers_model_is_never_touched():
    model, (x, y) = _cases()["batchnorm-eval"]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective = Objective(model, [(x, y)])
    op = HessianOperator(objective)
    op @ torch.randn(op.shape[0])
    objective.gradient()
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k


def test_non_deterministic_products_are_detected():
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    op = HessianOperator(Objective(Noisy(), [(x, y)]))
    with pytest.raises(LandscapeError, match="not deterministic"):
        op @ torch.randn(op.shape[0])


class CountingMLP(nn.Module):
    """An MLP that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.calls = models.build("mlp", in_features=5, hidden=[4], num_classes=3), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("mode", ["cached", "forward"])
def test_the_nan_check_and_the_first_product_share_the_determinism_checks_forwards(mode):
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    objective = Objective(CountingMLP(), batches)
    counter = objective.model
    objective.check_finite()  # one forward per batch
    assert counter.calls == 2
    op = HessianOperator(objective, mode=mode)
    op @ torch.randn(op.shape[0])  # the first product, checked
    # cached: the graph's forward is the second loss (2 batches) and both products reuse it;
    # forward mode: each of the two products runs its own forwards, and one loss pass is added
    # (two were before the NaN check's pass was shared).
    assert counter.calls == {"cached": 2 + 2, "forward": 2 + 2 + 2 + 2}[mode]
    # a forward that differs between passes is still caught from those shared passes
    noisy = Objective(Noisy(), batches)
    noisy.check_finite()
    with pytest.raises(LandscapeError, match="not deterministic"):
        HessianOperator(noisy, mode=mode) @ torch.randn(HessianOperator(noisy).shape[0])


def test_counts_products_including_the_determinism_check():
    model, (x, y) = _cases()["mlp"]
    op = HessianOperator(Objective(model, [(x, y)]))
    for _ in range(3):
        op @ torch.randn(op.shape[0])
    assert op.num_matvecs == 4


def test_nan_loss_is_a_clear_error():
    model, (x, y) = _cases()["mlp"]
    with torch.no_grad():
        model.net[0].weight[0, 0] = float("nan")
    with pytest.raises(LandscapeError, match="loss at the checkpoint is nan"):
        Objective(model, [(x, y)]).check_finite()


def test_gradient_matches_autograd():
    model, (x, y) = _cases()["cnn"]
    objective = Objective(model, [(x, y)], dtype=torch.float64)
    ref = model.double()
    loss = nn.functional.cross_entropy(ref(x.double()), y)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(ref.parameters()))])
    torch.testing.assert_close(objective.gradient(), expected)
