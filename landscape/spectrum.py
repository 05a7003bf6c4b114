"""Spectral density by stochastic Lanczos quadrature (SLQ) [Y20; Ubaru, Chen, Saad 2017].

For a random unit vector v, m Lanczos steps from v give the projected matrix T_m
with eigenpairs (theta_j, s_j); the Gauss quadrature nodes theta_j with weights
tau_j = (e_1^T s_j)^2 integrate polynomials up to degree 2m-1 exactly against the
measure sum_i (v^T u_i)^2 delta(lambda - lambda_i), whose expectation over v is the
eigenvalue density (1/n) sum_i delta(lambda - lambda_i). Averaging over ``num_runs``
probes and smoothing each node with a Gaussian of width ``sigma`` gives the density
drawn in [C22 Fig. 5] and by PyHessian (whose version crashes on current torch:
it calls the removed ``torch.eig``).

The runs advance together, ``block_size`` of them at a time (by default the operator's
block size, :func:`landscape.eigen.as_block_operator`): one block product per Lanczos step
for all of them, so each run's nodes and weights are those it gets alone. Memory: the
Krylov bases of ``block_size`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape.eigen import KrylovBasis, Operator, as_block_operator, rademacher
from landscape.errors import LandscapeError


@dataclass
class SpectralDensity:
    """Quadrature nodes and weights of every probe (each row of weights sums to 1)."""

    nodes: np.ndarray
    weights: np.ndarray
    num_matvecs: int

    def moment(self, power: int) -> float:
        """Estimate of (1/n) tr(A^power)."""
        return float(np.mean(np.sum(self.weights * self.nodes**power, axis=1)))

    def evaluate(self, grid: np.ndarray, sigma: float | None = None) -> np.ndarray:
        """Gaussian-smoothed density on ``grid``; ``sigma`` defaults to 1% of the node range."""
        if sigma is None:
            sigma = 0.01 * max(float(np.ptp(self.nodes)), 1e-12)
        diff = grid[:, None, None] - self.nodes[None]
        kernel = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        return np.mean(np.sum(kernel * self.weights[None], axis=2), axis=1)


def slq(A: torch.Tensor | Operator, num_steps: int = 80, num_runs: int = 1, seed: int = 0,
        progress: bool = False, block_size: int | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature with Rademacher probes and full reorthogonalization.

    The probes come first from ``seed``'s generator, then one seed per run for the random
    vectors its basis may need (an invariant subspace reached early), so a run's result does
    not depend on which runs share its block products.

    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    >>> d = slq(A, num_steps=4, num_runs=3)
    >>> round(d.moment(1), 10), round(d.moment(2), 10)  # exact: m = n steps
    (2.5, 7.5)
    """
    matmat, n, dtype, device, size = as_block_operator(A, block_size)
    if num_steps < 1 or num_runs < 1:
        raise LandscapeError("SLQ needs at least one step and one run")
    steps = min(num_steps, n)
    g = torch.Generator().manual_seed(seed)
    probes = [rademacher(n, g, dtype, device)[None] for _ in range(num_runs)]
    run_seeds = torch.randint(0, 2**62, (num_runs,), generator=g).tolist()
    nodes, weights = [], []
    bar = tqdm(total=steps * num_runs, desc="SLQ density", unit="hvp", disable=not progress, leave=False)
    for first in range(0, num_runs, size):
        bases = [KrylovBasis(matmat, n, dtype, device, probes[r], torch.Generator().manual_seed(run_seeds[r]))
                 for r in range(first, min(first + size, num_runs))]
        for _ in range(steps):
            bar.update(KrylovBasis.step_all(bases))
        for basis in bases:
            theta, S = torch.linalg.eigh(basis.H)
            nodes.append(theta.cpu().numpy())
            weights.append((S[0] ** 2).cpu().numpy())
    bar.close()
    return SpectralDensity(np.stack(nodes), np.stack(weights), steps * num_runs)
