"""Shared fixtures: tiny models and data that every test builds for itself (no files shipped)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

# The test models are tiny: intra-op threads only add contention (on a loaded 2-core
# machine a 2-thread product ran 15x slower than a 1-thread one).
torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """A conv + linear network on 1x4x4 inputs with an optional normalization layer."""

    def __init__(self, norm: str | None = None, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = {"group": nn.GroupNorm(2, 4), "batch": nn.BatchNorm2d(4), None: nn.Identity()}[norm]
        self.fc = nn.Linear(4 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.tanh(self.norm(self.conv(x))), 1))


class Noisy(nn.Module):
    """A model whose forward pass draws noise even in eval mode (the determinism check must catch it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + 0.1 * torch.randn_like(x))


def tiny_cnn(norm: str | None = None, num_classes: int = 3) -> TinyCNN:
    """Factory used by tests through ``--model tests.conftest:tiny_cnn``."""
    torch.manual_seed(0)
    model = TinyCNN(norm, num_classes)
    if norm == "batch":
        # Non-trivial running statistics, as after training.
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    return model


def assert_one_line(exc: pytest.ExceptionInfo, *names: object) -> str:
    """The message is one line and names every one of ``names`` (files, members, specs)."""
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text, text
    for name in names:
        assert str(name) in text, (name, text)
    return text


@pytest.fixture
def image_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 1, 4, 4, generator=g), torch.randint(0, 3, (12,), generator=g)


@pytest.fixture(scope="session")
def quick_figures(tmp_path_factory: pytest.TempPathFactory):
    """``landscape figures all --quick`` once for the session: its output folder (runs/, results/,
    every figure and table, manifest.json), shared by the figure tests."""
    from landscape.cli import main

    out = tmp_path_factory.mktemp("figures-quick")
    assert main(["figures", "all", "--quick", "--out", str(out)]) == 0
    return out


def flat_hessian_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense float64 Hessian and gradient of the mean cross-entropy over (x, y), by torch.func (no Objective)."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x.double(),)), y)

    return torch.func.jacrev(torch.func.jacrev(f))(flat0), torch.func.grad(f)(flat0)  # reverse over reverse
