"""One curvature analysis of a model: top eigenpairs, trace, density, per-layer spectra, as a typed result.

This is the library call behind ``landscape hessian``: it builds the
:class:`~landscape.objective.Objective` (any data, loss, forward and parameter selection;
by default the mean cross-entropy of a classifier over the data, eval mode) and runs the
solvers of :mod:`landscape.eigen`, :mod:`landscape.trace` and :mod:`landscape.spectrum` on
one curvature operator (the Hessian, the generalized Gauss-Newton matrix or the empirical
Fisher, :mod:`landscape.operators`), so the product count in the report is the count of all
of them together. The result file format (JSON) lives here too: :meth:`HessianReport.save`,
:func:`load_result`, :func:`save_eigenvectors`.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> x = torch.randn(64, 3); y = x @ torch.tensor([[1.0], [2.0], [-1.0]])
>>> report = analyze(nn.Linear(3, 1), [(x, y)], loss="mse", top_k=1, dtype=torch.float64)
>>> expected = 2 * torch.linalg.eigvalsh(torch.cat([x, torch.ones(64, 1)], 1).double().T @
...                                      torch.cat([x, torch.ones(64, 1)], 1).double() / 64)[-1]
>>> abs(report.eigen.eigenvalues[0].item() - expected.item()) < 1e-6 * expected.item()
True
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape import __version__, distributed, pieces
from landscape.data import Dataset
from landscape.eigen import EigenResult, top_eigenvalues
from landscape.errors import LandscapeError, os_error
from landscape.files import save_torch, write_json
from landscape.objective import Batch, Forward, Loss, Objective, unflatten
from landscape.operators import make_operator
from landscape.spectrum import SpectralDensity, slq
from landscape.trace import TraceResult, estimate_trace

FORMAT = "landscape-hessian"
FORMAT_VERSION = 1
#: With the default block size, Lanczos takes a block of start vectors only when the measured block
#: product is this much cheaper per vector than a single one (the extra products it needs, ``bench/block.py``).
LANCZOS_BLOCK_SPEEDUP = 2.0


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
    objective: dict[str, Any] = field(default_factory=dict)
    per_layer: list[dict[str, Any]] | None = None

    def to_json(self, checkpoint: dict[str, Any] | None, data_spec: dict[str, Any]) -> dict[str, Any]:
        """The result file's content: eigenvalues descending, residuals, trace, metadata."""
        values = self.eigen.eigenvalues.double().cpu().tolist()
        out: dict[str, Any] = {
            "eigenvalues": values,
            "residuals": self.eigen.residuals.double().cpu().tolist(),
            "eigenvalue_bounds": self.eigen.bounds.double().cpu().tolist(),
            "certified_by": self.eigen.certified_by,
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
        if self.per_layer is not None:
            out["per_layer"] = self.per_layer
        out["metadata"] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "curvature": self.settings.get("curvature", "hessian"),
            "objective": {k: v for k, v in self.objective.items() if k != "params"},
            "checkpoint": checkpoint,
            "data": data_spec,
            "settings": self.settings,
            "landscape_version": __version__,
            "torch_version": torch.__version__,
        }
        return out

    def save(self, path: str | os.PathLike, checkpoint: dict[str, Any] | None, data_spec: dict[str, Any]) -> Path:
        """Write the result file (JSON, atomically); read it back with :func:`load_result`."""
        return write_json(path, self.to_json(checkpoint, data_spec))


def analyze(
    model: nn.Module,
    data: Dataset | Iterable[Batch],
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
    *,
    loss: str | Loss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross-entropy",
    forward: Forward | None = None,
    curvature: str = "hessian",
    params: str | Sequence[str] | None = None,
    ignore_index: int = -100,
    per_layer: bool = False,
    vector_tol: float | None = None,
    block_size: int | None = None,
) -> HessianReport:
    """Top-k eigenpairs (and optionally trace, density, per-layer lambda_max) of a curvature matrix at ``model``.

    By default the matrix is the Hessian of the mean cross-entropy over ``data``, model in
    eval mode [C22 §5, Y20]; the CLI has the same defaults. The model is not modified.

    Args:
        model: the network.
        data: a :class:`~landscape.data.Dataset` (split into ``batch_size`` batches; None: into the
            cache-sized pieces of :func:`landscape.pieces.samples_per_forward`) or any
            re-iterable of batches (a list, a DataLoader without shuffling; see
            :mod:`landscape.objective`).
        loss, forward, params, ignore_index: the objective (:class:`~landscape.objective.Objective`).
        curvature: ``hessian``, ``ggn`` (generalized Gauss-Newton) or ``fisher`` (empirical Fisher).
        per_layer: also lambda_max of each parameter block (the parameters of one module), each
            with only that block varying: which layer is sharpest.
        top_k, method, tol, max_iter, vector_tol: the eigensolver (:func:`landscape.eigen.top_eigenvalues`):
            ``tol`` bounds each eigenvalue's certified relative error, ``vector_tol`` (None: no
            demand) each eigenvector's relative residual ||Hv - lambda v|| / |lambda|.
        trace, trace_method, trace_budget: Hutchinson / Hutch++ trace estimate.
        density, density_steps, density_runs: SLQ spectral density.
        dtype, device, seed, progress: precision, place, randomness and progress bars.
        block_size: vectors per block product (:class:`~landscape.operators.CurvatureOperator`;
            None: the device's, :func:`~landscape.operators.default_block_size`): Hutchinson
            probes, Hutch++ columns and SLQ runs go that many at a time (the same estimates),
            and Lanczos runs with min(block_size, top_k) start vectors, a step of that many
            vectors per block product (a block Krylov space: other iterates, the same tolerance);
            with None, only where the block product measured :data:`LANCZOS_BLOCK_SPEEDUP` x
            cheaper per vector.

    Raises:
        LandscapeError: NaN/inf loss, k out of range, bad options, data or losses that do not fit.
    """
    start = time.perf_counter()
    samples = batch_size
    if isinstance(data, Dataset) and batch_size is None and forward is None and not data.named:
        # cache-sized pieces (the same function, other rounding): a product on 512 CIFAR images 1.65x faster
        samples = pieces.samples_per_forward(model, data.x, len(data), dtype, device)
        world = distributed.current()
        if world is not None:  # one split for all ranks (free GPU memory may differ)
            samples = world.min_int(samples)
    batches = data.batches(samples) if isinstance(data, Dataset) else data

    def objective_of(names: str | Sequence[str] | None) -> Objective:
        return Objective(model, batches, dtype=dtype, device=device, params=names, loss=loss, forward=forward,
                         ignore_index=ignore_index)

    objective = objective_of(params)
    value = objective.check_finite()
    op = make_operator(objective, curvature, block_size=block_size)
    # Block Lanczos needs more products than Lanczos from one vector (1.8x for the top 5 with 4 vectors
    # on the CIFAR CNN, bench/block.py): taken when asked for, or when a block product was measured
    # LANCZOS_BLOCK_SPEEDUP x cheaper per vector than single ones.
    lanczos_block = min(op.block_size, top_k) if block_size is not None or \
        op.block_speedup >= LANCZOS_BLOCK_SPEEDUP else 1
    eigen = top_eigenvalues(op, top_k, method=method, tol=tol, max_iter=max_iter, seed=seed,
                            block_size=lanczos_block, progress=progress, vector_tol=vector_tol)
    trace_result = estimate_trace(op, trace_method, trace_budget, seed=seed + 1, progress=progress) if trace else None
    dens = slq(op, density_steps, density_runs, seed=seed + 2, progress=progress) if density else None
    layers, products = None, op.num_matvecs
    if per_layer:
        layers = []
        for block, names in parameter_blocks(list(objective.params)).items():
            block_op = make_operator(objective_of(names), curvature)
            res = top_eigenvalues(block_op, 1, method=method, tol=tol, max_iter=max_iter, seed=seed)
            products += block_op.num_matvecs
            layers.append({"block": block, "params": names, "num_params": block_op.shape[0],
                           "lambda_max": float(res.eigenvalues[0]), "residual": float(res.residuals[0]),
                           "eigenvalue_bound": float(res.bounds[0]),
                           "converged": bool(res.converged[0])})
    settings = {
        "curvature": curvature, "top_k": top_k, "method": method, "tol": tol, "vector_tol": vector_tol,
        "max_iter": max_iter, "trace": trace,
        "trace_method": trace_method if trace else None, "density": density, "per_layer": per_layer,
        "batch_size": batch_size, "samples_per_forward": samples, "dtype": str(dtype).replace("torch.", ""),
        "device": str(device), "seed": seed,
        "hvp_mode": op.mode, "block_size": op.block_size,
        "params": params if isinstance(params, (str, type(None))) else list(params),
        "num_processes": objective.world.size if objective.world is not None else 1,
    }
    return HessianReport(value, objective.num_params, eigen, trace_result, dens, products,
                         time.perf_counter() - start, objective.shapes, settings, objective.describe(), layers)


def parameter_blocks(names: Sequence[str]) -> dict[str, list[str]]:
    """Parameter names grouped by the module that holds them (``fc1.weight``, ``fc1.bias`` -> ``fc1``).

    >>> parameter_blocks(["conv.weight", "conv.bias", "fc.weight", "scale"])
    {'conv': ['conv.weight', 'conv.bias'], 'fc': ['fc.weight'], '(top level)': ['scale']}
    """
    blocks: dict[str, list[str]] = {}
    for name in names:
        module, _, _ = name.rpartition(".")
        blocks.setdefault(module or "(top level)", []).append(name)
    return blocks


def save_eigenvectors(path: str | os.PathLike, report: HessianReport, checkpoint_sha256: str | None) -> Path:
    """The eigenvectors as named tensors (``landscape surface --directions-file`` reads them)."""
    vectors = [{k: t.clone() for k, t in unflatten(v, report.param_shapes).items()}
               for v in report.eigen.eigenvectors.cpu()]
    return save_torch(path, {"kind": "hessian-eigenvectors", "eigenvalues": report.eigen.eigenvalues.cpu(),
                             "vectors": vectors, "checkpoint_sha256": checkpoint_sha256})


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """A result file of :meth:`HessianReport.save` (``landscape hessian --out``), checked.

    Raises:
        LandscapeError: unreadable file, invalid JSON, or not such a result (missing or mistyped entries).
    """
    path = Path(path)

    def bad(what: str) -> LandscapeError:
        return LandscapeError(f"{path} is not a result of `landscape hessian --out` ({what})",
                              fix="pass a file written by `landscape hessian --out`")

    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        raise os_error(exc, "cannot read the Hessian result") from None
    except UnicodeDecodeError:
        raise bad("not text") from None
    except json.JSONDecodeError as exc:
        raise LandscapeError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(result, dict):
        raise bad(f"a JSON {type(result).__name__}, not an object")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    values = result.get("eigenvalues")
    if not isinstance(values, list) or not values or not all(number(v) for v in values):
        raise bad("no eigenvalues")
    ratio = result.get("lambda_max_over_lambda_5")
    if not number(result.get("lambda_max")) or not (ratio is None or number(ratio)):
        raise bad("lambda_max is not a number")
    if not isinstance(result.get("converged", []), list) or not isinstance(result.get("metadata", {}), dict):
        raise bad("malformed converged or metadata")
    return result


def density_curve(density: SpectralDensity, num_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A grid spanning the quadrature nodes (with margins) and the smoothed density on it."""
    lo, hi = float(density.nodes.min()), float(density.nodes.max())
    pad = 0.05 * max(hi - lo, 1e-12)
    grid = np.linspace(lo - pad, hi + pad, num_points)
    return grid, density.evaluate(grid)
