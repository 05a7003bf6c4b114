"""Cache-sized pieces of a batch (landscape.pieces) and the analyses that run on them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from torch import nn

from landscape import data, hessian, pieces
from landscape.models import build
from tests.conftest import tiny_cnn

# The CIFAR CNN's module outputs for one sample, from its layer shapes: conv1 64x28x28, pool 64x14x14,
# conv2 64x10x10, pool 64x5x5, fc 384, 192, 10, the model's own output 10.
CNN_ACTIVATIONS = 64 * 28 * 28 + 64 * 14 * 14 + 64 * 10 * 10 + 64 * 5 * 5 + 384 + 192 + 10 + 10
CPU = torch.device("cpu")


class BatchCoupled(nn.Module):
    """An eval forward that mixes the samples of a batch (centres them on the batch mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(0))


def test_activation_bytes_are_every_module_output_of_one_sample() -> None:
    model = build("cnn", num_classes=10)
    x = torch.randn(5, 3, 32, 32)
    assert pieces.activation_bytes(model, x, torch.float32, CPU) == 4 * CNN_ACTIVATIONS
    assert pieces.activation_bytes(model, x, torch.float64, CPU) == 8 * CNN_ACTIVATIONS


def test_samples_per_forward_fill_the_budget_unless_the_model_couples_its_samples(monkeypatch) -> None:
    model = build("cnn", num_classes=10)
    x = torch.randn(300, 3, 32, 32)

    def balanced(s: int, fit: int, n: int = 300) -> bool:
        """s fits, cuts n into as few pieces as the most that fit would, and the last piece is no remainder."""
        m = -(-n // s)
        return s <= fit and m == -(-n // fit) and n - (m - 1) * s > s - m

    fit = pieces.BATCH_MEMORY_BYTES // (4 * CNN_ACTIVATIONS)
    assert balanced(pieces.samples_per_forward(model, x, 300, torch.float32, CPU), fit) and 300 % fit
    assert pieces.samples_per_forward(model, x, 10, torch.float32, CPU) == 10  # never more than the batch
    s2 = pieces.samples_per_forward(model, x, 300, torch.float32, CPU, points=2, fixed_bytes=1000)
    assert balanced(s2, (pieces.BATCH_MEMORY_BYTES // 2 - 1000) // (4 * CNN_ACTIVATIONS))
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 4 * 6 * 10)  # 10 samples of 6 outputs (fc's 3, the model's 3)
    x = torch.randn(40, 4)
    assert pieces.samples_per_forward(nn.Sequential(nn.Linear(4, 3)), x, 40, torch.float32, CPU) == 10
    assert not pieces.agree(BatchCoupled(), x, 10)
    assert pieces.samples_per_forward(BatchCoupled(), x, 40, torch.float32, CPU) == 40


def test_the_hessian_on_pieces_equals_the_hessian_on_one_batch(monkeypatch) -> None:
    """analyze() cuts a data set into pieces when no batch size is given; the eigenvalues and the loss
    are the one-batch ones (float64), and a batch-coupled model keeps its batch whole."""
    g = torch.Generator().manual_seed(0)
    ds = data.Dataset(torch.randn(24, 1, 4, 4, generator=g, dtype=torch.float64),
                      torch.randint(0, 3, (24,), generator=g), 3, {"name": "t"})
    # TinyCNN's outputs per sample: conv 4x2x2, the identity norm 4x2x2, fc 3, the model's 3: 38
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 8 * 38 * 10)  # 10 samples fit: 3 pieces of 8 in float64
    cut = hessian.analyze(tiny_cnn(), ds, top_k=3, tol=1e-10, dtype=torch.float64)
    whole = hessian.analyze(tiny_cnn(), ds, top_k=3, tol=1e-10, dtype=torch.float64, batch_size=24)
    assert cut.settings["samples_per_forward"] == 8 and whole.settings["samples_per_forward"] == 24
    np.testing.assert_allclose(cut.eigen.eigenvalues.numpy(), whole.eigen.eigenvalues.numpy(), rtol=1e-9)
    assert abs(cut.loss - whole.loss) < 1e-12
    coupled = data.Dataset(torch.randn(24, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (24,)), 3,
                           {"name": "t"})
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 8 * 6 * 5)
    assert hessian.analyze(BatchCoupled(), coupled, top_k=1, dtype=torch.float64).settings["samples_per_forward"] == 24


def test_a_hessian_analysis_imports_no_sympy() -> None:
    """One Hessian-vector product differentiates the scalar g . v: a tensor ``grad_outputs`` would make
    autograd import torch's symbolic shapes and sympy (0.5 s of every process's start)."""
    code = ("import sys, torch\nfrom landscape import data, hessian\nfrom landscape.models import build\n"
            "hessian.analyze(build('mlp'), data.load('digits').sample(64), top_k=2)\n"
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False", out
