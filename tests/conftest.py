"""Shared fixtures: tiny models and data that every test builds for itself (no files shipped)."""

from __future__ import annotations

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
