"""Hessian trace estimators: Hutchinson and Hutch++, each with a standard error.

- Hutchinson [Y20]: tr(A) = E[z^T A z] for Rademacher z; the estimate is the sample
  mean of z_i^T A z_i and its standard error s / sqrt(m) (s the sample standard
  deviation). Sampling stops when the standard error falls below ``tol * |mean|``.
- Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with s = m/3 products for a sketch
  Q = orth(A S), tr(A) = tr(Q^T A Q) + tr((I-QQ^T) A (I-QQ^T)); the first term is
  exact, Hutchinson estimates only the deflated remainder, so the error falls as
  1/m instead of 1/sqrt(m) when the spectrum decays. Its standard error is that of
  the remainder's samples.

Both multiply blocks of probes at once (``block_size`` of them per block product, by
default the operator's, see :func:`landscape.eigen.as_block_operator`) and give the
estimates of one probe at a time for the same seed: the probes are drawn in the same order,
and Hutchinson stops at the same sample (the rest of its last block is computed and
dropped; the operator's ``num_matvecs`` counts those products too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from landscape.eigen import Operator, as_block_operator, rademacher
from landscape.errors import LandscapeError


@dataclass
class TraceResult:
    """A trace estimate: ``trace`` +- ``stderr`` from ``num_matvecs`` products."""

    trace: float
    stderr: float
    num_matvecs: int
    method: str


def hutchinson(
    A: torch.Tensor | Operator,
    max_samples: int = 200,
    tol: float = 1e-2,
    min_samples: int = 10,
    seed: int = 0,
    progress: bool = False,
    block_size: int | None = None,
) -> TraceResult:
    """Hutchinson's estimator with Rademacher probes, stopping at relative standard error ``tol``.

    ``block_size`` probes are multiplied at once; the estimate is that of one at a time.

    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> hutchinson(A, max_samples=20).trace  # exact for diagonal matrices
    15.0
    """
    matmat, n, dtype, device, size = as_block_operator(A, block_size)
    if max_samples < 2:
        raise LandscapeError("the trace needs at least 2 samples to report a standard error")
    g = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    stderr = math.inf
    bar = tqdm(total=max_samples, desc="hutchinson trace", unit="hvp", disable=not progress, leave=False)
    done = False
    while not done and len(samples) < max_samples:
        Z = torch.stack([rademacher(n, g, dtype, device) for _ in range(min(size, max_samples - len(samples)))])
        for z, az in zip(Z, matmat(Z)):
            samples.append(float(z @ az))
            bar.update(1)
            if len(samples) >= 2:
                t = torch.tensor(samples, dtype=torch.float64)
                stderr = float(t.std() / math.sqrt(len(samples)))
                done = len(samples) >= min_samples and stderr <= tol * abs(float(t.mean()))
                if done:
                    break
    bar.close()
    return TraceResult(float(torch.tensor(samples, dtype=torch.float64).mean()), stderr, len(samples), "hutchinson")


def hutchpp(A: torch.Tensor | Operator, num_matvecs: int = 99, seed: int = 0, progress: bool = False,
            block_size: int | None = None) -> TraceResult:
    """Hutch++ with a budget of ``num_matvecs`` products (a multiple of 3 is used), ``block_size``
    columns of the sketch and of the probes per block product.

    >>> A = torch.diag(torch.tensor([100.0, 10.0, 1.0, 1.0], dtype=torch.float64))
    >>> round(hutchpp(A, num_matvecs=12).trace, 8)  # sketch captures the whole space
    112.0
    """
    matmat, n, dtype, device, _ = as_block_operator(A, block_size)
    s = num_matvecs // 3
    if s < 2:
        raise LandscapeError("Hutch++ needs at least 6 products")
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=3 * s, desc="hutch++ trace", unit="hvp", disable=not progress, leave=False)

    def apply(block: torch.Tensor) -> torch.Tensor:  # A X for an (n, s) block, its columns as rows of matmat
        out = matmat(block.T).T
        bar.update(block.shape[1])
        return out

    S = rademacher(n, g, dtype, device, s)
    Q, _ = torch.linalg.qr(apply(S))
    exact = float(torch.trace(Q.T @ apply(Q)))
    G = rademacher(n, g, dtype, device, s)
    G = G - Q @ (Q.T @ G)
    rest = (G * apply(G)).sum(0).double()
    bar.close()
    return TraceResult(exact + float(rest.mean()), float(rest.std() / math.sqrt(s)), 3 * s, "hutch++")


def estimate_trace(A: torch.Tensor | Operator, method: str = "hutchinson", budget: int = 200, tol: float = 1e-2,
                   seed: int = 0, progress: bool = False, block_size: int | None = None) -> TraceResult:
    """Dispatch to :func:`hutchinson` (up to ``budget`` samples) or :func:`hutchpp` (``budget`` products),
    ``block_size`` vectors per block product."""
    if method == "hutchinson":
        return hutchinson(A, budget, tol, seed=seed, progress=progress, block_size=block_size)
    if method == "hutch++":
        return hutchpp(A, budget, seed, progress, block_size)
    raise LandscapeError(f"unknown trace method '{method}'; choose hutchinson or hutch++")
