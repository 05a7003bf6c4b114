"""One Hessian analysis of a checkpoint: top eigenpairs, trace, density, as a JSON-ready report.

This is the library call behind ``landscape hessian``: it builds the
:class:`~landscape.objective.Objective` (mean cross-entropy over the chosen data,
eval mode) and runs the solvers of :mod:`landscape.eigen`, :mod:`landscape.trace` and
:mod:`landscape.spectrum` on one :class:`~landscape.operators.HessianOperator`, so the
HVP count in the report is the count of all of them together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape import __version__
from landscape.data import Dataset
from landscape.eigen import EigenResult, top_eigenvalues
from landscape.objective import Objective
from landscape.operators import HessianOperator
from landscape.spectrum import SpectralDensity, slq
from landscape.trace import TraceResult, estimate_trace


@dataclass
class HessianReport:
    """Everything one analysis computed, with its settings."""

    loss: float
    num_params: int
    eigen: EigenResult
    trace: TraceResult | None
    density: SpectralDensity | None
    num_matvecs: int
    seconds: float
    param_shapes: dict[str, torch.Size]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self, checkpoint: dict[str, Any] | None, data_spec: dict[str, Any]) -> dict[str, Any]:
        """The result file's content: eigenvalues descending, residuals, trace, metadata."""
        values = self.eigen.eigenvalues.double().cpu().tolist()
        out: dict[str, Any] = {
            "eigenvalues": values,
            "residuals": self.eigen.residuals.double().cpu().tolist(),
            "converged": self.eigen.converged,
            "lambda_max": values[0],
            "lambda_max_over_lambda_5": values[0] / values[4] if len(values) >= 5 else None,
            "loss": self.loss,
            "num_params": self.num_params,
            "num_matvecs": self.num_matvecs,
            "seconds": self.seconds,
        }
        if self.trace is not None:
            out["trace"] = self.trace.trace
            out["trace_stderr"] = self.trace.stderr
        if self.density is not None:
            out["density"] = {"nodes": self.density.nodes.tolist(), "weights": self.density.weights.tolist()}
        out["metadata"] = {
            "checkpoint": checkpoint,
            "data": data_spec,
            "settings": self.settings,
            "landscape_version": __version__,
            "torch_version": torch.__version__,
        }
        return out


def analyze(
    model: nn.Module,
    dataset: Dataset,
    top_k: int = 5,
    method: str = "lanczos",
    tol: float = 1e-3,
    max_iter: int | None = None,
    trace: bool = False,
    trace_method: str = "hutchinson",
    trace_budget: int = 200,
    density: bool = False,
    density_steps: int = 80,
    density_runs: int = 1,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
    progress: bool = False,
) -> HessianReport:
    """Top-k eigenpairs (and optionally trace and density) of the loss Hessian at ``model``.

    The loss is the mean cross-entropy over ``dataset`` in fixed batches, model in
    eval mode [C22 §5, Y20]. The model is not modified.

    Raises:
        LandscapeError: NaN/inf loss, k out of range, bad options.
    """
    start = time.perf_counter()
    objective = Objective(model, dataset.batches(batch_size), dtype=dtype, device=device)
    loss = objective.check_finite()
    op = HessianOperator(objective)
    eigen = top_eigenvalues(op, top_k, method=method, tol=tol, max_iter=max_iter, seed=seed, progress=progress)
    trace_result = estimate_trace(op, trace_method, trace_budget, seed=seed + 1, progress=progress) if trace else None
    dens = slq(op, density_steps, density_runs, seed=seed + 2, progress=progress) if density else None
    settings = {
        "top_k": top_k, "method": method, "tol": tol, "max_iter": max_iter, "trace": trace,
        "trace_method": trace_method if trace else None, "density": density, "batch_size": batch_size,
        "dtype": str(dtype).replace("torch.", ""), "device": str(device), "seed": seed, "hvp_mode": op.mode,
    }
    return HessianReport(loss, objective.num_params, eigen, trace_result, dens, op.num_matvecs,
                         time.perf_counter() - start, objective.shapes, settings)


def density_curve(density: SpectralDensity, num_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A grid spanning the quadrature nodes (with margins) and the smoothed density on it."""
    lo, hi = float(density.nodes.min()), float(density.nodes.max())
    pad = 0.05 * max(hi - lo, 1e-12)
    grid = np.linspace(lo - pad, hi + pad, num_points)
    return grid, density.evaluate(grid)
