"""The Hessian operator against dense float64 Hessians from torch.func.hessian."""

import pytest
import torch
from torch import nn
from torch.func import hessian

from landscape import models
from landscape.eigen import lanczos
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


@pytest.mark.parametrize("mode", ["cached", "forward"])
@pytest.mark.parametrize("name", ["cnn", "batchnorm-eval"])
def test_block_products_match_the_dense_hessian(name, mode):
    model, (x, y) = _cases()[name]
    objective = Objective(model, [(x[:7], y[:7]), (x[7:], y[7:])], dtype=torch.float64)
    H = dense_reference(objective, x, y)
    V = torch.randn(4, H.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op = HessianOperator(objective, mode=mode, block_size=4)
    torch.testing.assert_close(op.matmat(V), V @ H, atol=1e-10, rtol=1e-9)
    assert op._vmap_blocks is True and op.num_matvecs == 5


class Scaled(torch.autograd.Function):
    """2 x g, with a backward that reads a Python number (``.item()``: vmap cannot batch it)."""

    @staticmethod
    def forward(ctx, x, g):
        ctx.save_for_backward(x, g)
        return 2 * x * g

    @staticmethod
    def backward(ctx, h):
        x, g = ctx.saved_tensors
        assert h.sum().item() == h.sum().item()
        return 2 * g * h, 2 * x * h


class Square(torch.autograd.Function):
    """x^2 by hand: its backward is :class:`Scaled`, so the Hessian's backward runs that."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return Scaled.apply(x, g)


class SquareNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(Square.apply(torch.tanh(self.fc1(x))))


def test_block_products_fall_back_to_single_products_where_vmap_cannot():
    _, (x, y) = _cases()["mlp"]
    torch.manual_seed(0)
    model = SquareNet()
    single = HessianOperator(Objective(model, [(x, y)], dtype=torch.float64), mode="cached", block_size=1)
    block = HessianOperator(Objective(model, [(x, y)], dtype=torch.float64), mode="cached", block_size=4)
    V = torch.randn(6, single.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(block.matmat(V), torch.stack([single @ v for v in V]), atol=1e-13, rtol=1e-11)
    assert block._vmap_blocks is False and block.num_matvecs == 7


def test_block_shapes_and_sizes_are_checked():
    model, (x, y) = _cases()["mlp"]
    op = HessianOperator(Objective(model, [(x, y)]))
    with pytest.raises(ValueError, match=r"block of shape \(k, "):
        op.matmat(torch.zeros(op.shape[0]))
    with pytest.raises(LandscapeError, match="--block-size must be at least 1, got 0"):
        HessianOperator(Objective(model, [(x, y)]), block_size=0)


def test_block_size_calibration_picks_a_measured_candidate():
    model, (x, y) = _cases()["cnn"]
    objective = Objective(model, [(x, y)], dtype=torch.float64)
    assert HessianOperator(objective).block_size == 1  # the CPU's default, nothing measured
    op = HessianOperator(objective)
    op._block_size = None  # as on a device without a default: measured on first use
    V = torch.randn(5, op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = op.matmat(V)
    assert op.block_size in (1, 2, 4, 8, 16) and op.num_matvecs >= 3 + 5 + 1  # 1 x (warm-up + 2 timed) at least
    torch.testing.assert_close(out, V @ dense_reference(objective, x, y), atol=1e-10, rtol=1e-9)
    assert op.calibrate_block_size((3,), reps=1) == 3 == op.block_size


def test_single_products_measure_no_block_size():
    model, (x, y) = _cases()["mlp"]
    op = HessianOperator(Objective(model, [(x, y)]))
    op._block_size = None  # as on a device without a default
    lanczos(op, k=1, tol=1e-2)  # one vector per step: k = 1 Lanczos (the training tracker's) pays no calibration
    assert op._block_size is None


def test_calibration_reports_its_speedup():
    model, (x, y) = _cases()["mlp"]
    op = HessianOperator(Objective(model, [(x, y)]))
    assert op.block_speedup == 1.0
    op.calibrate_block_size((1, 2), reps=1)
    assert op.block_speedup > 0 and (op.block_size == 1) == (op.block_speedup == 1.0)


class _NoisyBackBack(torch.autograd.Function):
    """Identity whose backward draws noise: a second-order pass that differs each time."""

    @staticmethod
    def forward(ctx, g):
        return g.clone()

    @staticmethod
    def backward(ctx, gg):
        return gg * (1 + 1e-3 * torch.randn_like(gg))


class _NoisySecondOrder(torch.autograd.Function):
    """Identity with a deterministic first backward and a noisy second one (GPU atomics stand-in)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return _NoisyBackBack.apply(g)


class NoisyHvpMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(_NoisySecondOrder.apply(self.fc1(x))))


@pytest.mark.parametrize("num_batches", [1, 3])
def test_the_cached_check_repeats_the_first_batch_and_catches_a_noisy_second_order_pass(num_batches):
    """Cached mode over several batches repeats only the first batch's term of the first product (through
    its part of the kept graph); a backward that differs between passes is caught either way."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    batches = [(x[i::num_batches], y[i::num_batches]) for i in range(num_batches)]
    with pytest.raises(LandscapeError, match="not deterministic"):
        HessianOperator(Objective(NoisyHvpMLP(), batches, torch.float64), mode="cached") @ torch.randn(39, dtype=torch.float64)
    model = models.build("mlp", in_features=5, hidden=[4], num_classes=3)
    objective = Objective(model, batches, torch.float64)
    op = HessianOperator(objective, mode="cached")
    v = torch.randn(op.shape[0], dtype=torch.float64)
    out = op @ v
    assert op.num_matvecs == 2  # the check counts as one product
    if num_batches > 1:  # the kept first term is the first batch's share of the gradient
        leaves = objective.leaves()
        value, count = objective.batch_value(leaves, batches[0])
        want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(value * count / 12, list(leaves.values()))])
        torch.testing.assert_close(op._first_term.detach(), want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out, op @ v, rtol=1e-12, atol=1e-14)
