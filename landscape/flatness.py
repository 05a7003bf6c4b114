"""Flatness distance and sharpness metrics between a global model and its clients.

At a global model x of a federation with client losses f_i (mean cross-entropy of
client i's train data) the global loss is the sample-weighted mean

    f(w) = sum_i w_i f_i(w),   w_i = n_i / sum_j n_j,

the FedAvg aggregation weights [C22 §3], so f is exactly the mean loss over the pooled
client data. [L26] argues that SAM in federated learning fails when local flatness
does not imply global flatness and names the gap the *flatness distance*. Only the
abstract of [L26] was available, so every metric here is a documented
**reconstruction** of that idea, not the paper's exact definition:

- :func:`perturbation_distance`: D = mean_i ||eps_i - eps||, the distance between
  the SAM perturbation each client computes and the one the global loss wants.
- :func:`sharpness_gap`: mean client sharpness minus global sharpness, with the
  first-order and an n-step projected-gradient-ascent estimate of the inner max.
- :func:`lambda_max_local_global`: lambda_max of f_i at the trained client model
  x_i against lambda_max of f at x_i and at x.
- :func:`parameter_distances`: ||x_i - x|| and ||x_i - x|| / ||x||.

The first two look at the global model x only; between the trained client models x_i
and the global model x:

- :func:`local_perturbation_distance`: D_loc = mean_i ||eps_i(x_i) - eps(x)||, each
  client's SAM perturbation at its own model against the global one at x, with cosines.
- :func:`sharpness_local_global`: S_f(x) against mean_i S_{f_i}(x_i), difference and ratio.
- :func:`lambda_max_local_global` also gives lambda_max(f at x) against
  mean_i lambda_max(f_i at x_i), difference and ratio.

The default flatness distance (:func:`flatness_distance`, ``FlatnessMetrics.flatness_distance``)
is that last ratio: on the digits federation it is the candidate that tells FedAvg,
FedSAM, FedASAM and FedNSAM apart beyond the seed spread (docs/flatness.md has the
evidence). :func:`flatness_metrics` computes them all. Every function works on a private
copy of each model (through :class:`~landscape.objective.Objective`): the caller's models
are never touched. Results are dataclasses; ``FlatnessMetrics.to_dict()`` is JSON-ready.

References: [L26] FedNSAM (arXiv 2602.23827), [C22] Caldarola et al. ECCV 2022,
[K21] ASAM; see ``shared/design/algorithms.md``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.directions import require_same_shapes
from landscape.eigen import top_eigenvalues
from landscape.errors import LandscapeError, os_error
from landscape.files import write_json
from landscape.objective import Batch, Objective
from landscape.operators import make_operator

RHO = 0.05
"""Default perturbation radius: the rho of FedNSAM's reference settings [L26]."""
NUM_ASCENT_STEPS = 5
"""Default number of projected-gradient-ascent steps of the sharpness estimate."""
NORM_EPS = 1e-16
"""Added to gradient norms, as in the SAM step e = rho g / (||g|| + 1e-16) [C22 eq. 4]."""
DEFAULT_METRIC = "lambda_max.global_over_local"
"""Where the default flatness distance lives in :meth:`FlatnessMetrics.to_dict` (docs/flatness.md says why)."""


@dataclass
class PerturbationDistance:
    """SAM perturbations of the clients against that of the global loss, at x.

    Attributes:
        rho: perturbation radius.
        distance: D = mean_i ||eps_i - eps|| (unweighted mean over clients).
        client_distances: ||eps_i - eps|| per client.
        cosines: cos(grad f_i(x), grad f(x)) per client (NaN when a gradient is 0).
        client_gradient_norms: ||grad f_i(x)|| per client.
        gradient_norm: ||grad f(x)||.
        weights: w_i = n_i / sum_j n_j.
    """

    rho: float
    distance: float
    client_distances: list[float]
    cosines: list[float]
    client_gradient_norms: list[float]
    gradient_norm: float
    weights: list[float]


@dataclass
class LocalPerturbationDistance:
    """SAM perturbations of the trained client models against that of the global model.

    Attributes:
        rho: perturbation radius.
        distance: D_loc = mean_i ||eps_i(x_i) - eps(x)|| (unweighted mean over clients).
        client_distances: ||eps_i(x_i) - eps(x)|| per client.
        cosines: cos(grad f_i(x_i), grad f(x)) per client (NaN when a gradient is 0).
        mean_cosine: the unweighted mean of ``cosines``.
        client_gradient_norms: ||grad f_i(x_i)|| per client.
        gradient_norm: ||grad f(x)||.
    """

    rho: float
    distance: float
    client_distances: list[float]
    cosines: list[float]
    mean_cosine: float
    client_gradient_norms: list[float]
    gradient_norm: float


@dataclass
class SharpnessGap:
    """Sharpness S_h(x) = max_{||d||<=rho} h(x+d) - h(x) of each client loss and of f.

    Attributes:
        rho: perturbation radius.
        num_ascent_steps: projected-gradient-ascent steps of the ascent estimate.
        client_losses: f_i(x).
        client_first_order: first-order estimate of S_{f_i}(x) per client.
        client_ascent: ascent estimate of S_{f_i}(x) per client.
        global_loss: f(x).
        global_first_order: first-order estimate of S_f(x).
        global_ascent: ascent estimate of S_f(x).
        gap_first_order: mean_i S_{f_i}(x) - S_f(x), first-order estimates.
        gap_ascent: the same with the ascent estimates.
    """

    rho: float
    num_ascent_steps: int
    client_losses: list[float]
    client_first_order: list[float]
    client_ascent: list[float]
    global_loss: float
    global_first_order: float
    global_ascent: float
    gap_first_order: float
    gap_ascent: float


@dataclass
class LocalGlobalSharpness:
    """Sharpness of each client loss at its trained model x_i against that of f at x.

    Attributes:
        rho: perturbation radius.
        num_ascent_steps: projected-gradient-ascent steps of the ascent estimate.
        client_losses: f_i(x_i).
        client_first_order: first-order estimate of S_{f_i}(x_i) per client.
        client_ascent: ascent estimate of S_{f_i}(x_i) per client.
        global_loss: f(x).
        global_first_order: first-order estimate of S_f(x).
        global_ascent: ascent estimate of S_f(x).
        difference_first_order: S_f(x) - mean_i S_{f_i}(x_i), first-order estimates.
        difference_ascent: the same with the ascent estimates.
        ratio_first_order: S_f(x) / mean_i S_{f_i}(x_i), first-order estimates (NaN unless the mean is positive).
        ratio_ascent: the same with the ascent estimates.
    """

    rho: float
    num_ascent_steps: int
    client_losses: list[float]
    client_first_order: list[float]
    client_ascent: list[float]
    global_loss: float
    global_first_order: float
    global_ascent: float
    difference_first_order: float
    difference_ascent: float
    ratio_first_order: float
    ratio_ascent: float


@dataclass
class LambdaMaxComparison:
    """Top Hessian eigenvalues of local and global losses at client and global models.

    Attributes:
        local_at_client: lambda_max(grad^2 f_i(x_i)) per client.
        global_at_client: lambda_max(grad^2 f(x_i)) per client.
        global_at_global: lambda_max(grad^2 f(x)).
        global_minus_local: lambda_max(grad^2 f(x)) - mean_i lambda_max(grad^2 f_i(x_i)).
        global_over_local: lambda_max(grad^2 f(x)) / mean_i lambda_max(grad^2 f_i(x_i)) (NaN unless the
            mean is positive).
        converged: whether every eigenvalue met the solver tolerance.
        tol: relative residual tolerance of the eigensolver.
        num_matvecs: the curvature-matrix-vector products (Hessian-vector products) of all the runs.
    """

    local_at_client: list[float]
    global_at_client: list[float]
    global_at_global: float
    global_minus_local: float
    global_over_local: float
    converged: bool
    tol: float
    num_matvecs: int


@dataclass
class ParameterDistances:
    """Euclidean distances of the client models from the global model.

    Attributes:
        distances: ||x_i - x|| per client.
        relative: ||x_i - x|| / ||x|| per client.
        global_norm: ||x||.
    """

    distances: list[float]
    relative: list[float]
    global_norm: float


@dataclass
class FlatnessMetrics:
    """All flatness-distance metrics of one global model and its clients.

    The headline, :attr:`flatness_distance`, is the default of :func:`flatness_distance`:
    ``lambda_max.global_over_local``.
    """

    perturbation_distance: PerturbationDistance
    sharpness_gap: SharpnessGap
    lambda_max: LambdaMaxComparison
    parameter_distances: ParameterDistances
    local_perturbation_distance: LocalPerturbationDistance
    sharpness_local_global: LocalGlobalSharpness

    @property
    def flatness_distance(self) -> float:
        """lambda_max(grad^2 f(x)) / mean_i lambda_max(grad^2 f_i(x_i)) (:data:`DEFAULT_METRIC`)."""
        return self.lambda_max.global_over_local

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: one sub-dict per metric, and ``flatness_distance``: ``{"metric", "value"}``."""
        return {**asdict(self), "flatness_distance": {"metric": DEFAULT_METRIC, "value": self.flatness_distance}}


def client_weights(objectives: Sequence[Objective]) -> list[float]:
    """FedAvg weights w_i = n_i / sum_j n_j from the targets each client's objective counts.

    >>> from torch import nn
    >>> x = torch.zeros(1, 2)
    >>> client_weights([Objective(nn.Linear(2, 2), [(x, torch.zeros(1, dtype=torch.long))] * k) for k in (1, 3)])
    [0.25, 0.75]
    """
    counts = [o.num_samples for o in objectives]
    if not counts or min(counts) == 0:
        raise LandscapeError("every client needs at least one sample; got sample counts " + str(counts))
    total = sum(counts)
    return [n / total for n in counts]


def _check_clients(global_model: nn.Module, client_models: Sequence[nn.Module]) -> None:
    labels = ["the global model"] + [f"client model {i}" for i in range(len(client_models))]
    require_same_shapes([dict(m.named_parameters()) for m in [global_model, *client_models]], labels)


def _check_federation(global_model: nn.Module, client_models: Sequence[nn.Module],
                      client_batches: Sequence[Sequence[Batch]]) -> None:
    """One model and one non-empty data set per client, every model of the global model's shapes."""
    if len(client_models) != len(client_batches):
        raise LandscapeError(f"{len(client_models)} client models but data for {len(client_batches)} clients")
    if not client_batches or not all(client_batches):
        raise LandscapeError("every client needs at least one batch of data")
    _check_clients(global_model, client_models)


def _check_rho(rho: float) -> None:
    if not rho > 0:
        raise LandscapeError(f"--rho must be positive, got {rho}")


def global_over_local(global_lambda_max: float, local_lambda_max: Sequence[float]) -> float:
    """The default flatness distance (:data:`DEFAULT_METRIC`, a reconstruction of [L26]):
    ``lambda_max(f at x) / ((1/M) sum_i lambda_max(f_i at x_i))`` from the M+1 eigenvalues.

    >>> global_over_local(4.0, [1.0, 3.0])
    2.0
    """
    return _ratio(global_lambda_max, float(np.mean(local_lambda_max)))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN unless the denominator is positive (a ratio of flatness needs a scale)."""
    return numerator / denominator if denominator > 0 else math.nan


def _perturbation_spread(client_grads: Sequence[torch.Tensor], g: torch.Tensor,
                         rho: float) -> tuple[list[float], list[float]]:
    """||rho g_i/||g_i|| - rho g/||g|||| and cos(g_i, g) per client (norms get +1e-16 as in SAM)."""
    eps = rho * g / (g.norm() + NORM_EPS)
    distances = [float((rho * gi / (gi.norm() + NORM_EPS) - eps).norm()) for gi in client_grads]
    cosines = [float(gi @ g / (gi.norm() * g.norm())) for gi in client_grads]
    return distances, cosines


def perturbation_distance(
    model: nn.Module,
    client_batches: Sequence[Sequence[Batch]],
    rho: float = RHO,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **objective: Any,
) -> PerturbationDistance:
    """The flatness distance as the spread of the clients' SAM perturbations at x.

    A reconstruction of the flatness distance of [L26] (paper body unavailable):

        eps_i = rho * grad f_i(x) / ||grad f_i(x)||,   eps = rho * grad f(x) / ||grad f(x)||,
        D = (1/M) sum_i ||eps_i - eps||,   ||eps_i - eps|| = rho * sqrt(2 - 2 cos_i),

    with M clients, f = sum_i w_i f_i, grad f = sum_i w_i grad f_i and cos_i the
    cosine between grad f_i and grad f. D lies in [0, 2 rho]: 0 when every client
    perturbs along the global ascent direction (local flatness then is global
    flatness), 2 rho when they oppose it. Norms get +1e-16 as in SAM [C22 eq. 4].

    Args:
        model: the global model x (not modified).
        client_batches: each client's fixed batches; f_i is their mean loss.
        rho: perturbation radius (default 0.05, [L26]).
        dtype: computation precision.
        device: where to compute.

    Returns:
        D with the per-client distances, cosines and gradient norms.
    """
    _check_rho(rho)
    objectives = [Objective(model, batches, dtype, device, **objective) for batches in client_batches]
    weights = client_weights(objectives)
    grads = [o.gradient() for o in objectives]
    g = sum(w * gi for w, gi in zip(weights, grads))
    distances, cosines = _perturbation_spread(grads, g, rho)
    return PerturbationDistance(
        rho=rho,
        distance=float(np.mean(distances)),
        client_distances=distances,
        cosines=cosines,
        client_gradient_norms=[float(gi.norm()) for gi in grads],
        gradient_norm=float(g.norm()),
        weights=weights,
    )


def local_perturbation_distance(
    global_model: nn.Module,
    client_models: Sequence[nn.Module],
    client_batches: Sequence[Sequence[Batch]],
    rho: float = RHO,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **objective: Any,
) -> LocalPerturbationDistance:
    """The SAM perturbation of each trained client model against the global model's.

    A reconstruction of the flatness distance of [L26] between local and global models
    (paper body unavailable): client i ends its local training at x_i, where SAM would
    perturb along its own loss, while the flatness the federation needs is that of f at x:

        eps_i(x_i) = rho * grad f_i(x_i) / ||grad f_i(x_i)||,   eps(x) = rho * grad f(x) / ||grad f(x)||,
        D_loc = (1/M) sum_i ||eps_i(x_i) - eps(x)||,   ||eps_i(x_i) - eps(x)|| = rho * sqrt(2 - 2 cos_i),

    with cos_i the cosine between grad f_i(x_i) and grad f(x), and f = sum_i w_i f_i the
    mean loss over the pooled client data. D_loc lies in [0, 2 rho]; with every x_i = x
    it is :func:`perturbation_distance`. Cost: M + 1 gradients (one per client on its own
    data at x_i, one on the pooled data at x).

    Args:
        global_model: x (not modified).
        client_models: x_i, one per client, same architecture (not modified).
        client_batches: each client's fixed batches, in the order of ``client_models``.
        rho: perturbation radius (default 0.05, [L26]).
        dtype: computation precision.
        device: where to compute.
        objective: the loss, forward and ignore_index of every objective
            (:class:`~landscape.objective.Objective`; default: mean cross-entropy of (x, y) batches).
    """
    _check_rho(rho)
    _check_federation(global_model, client_models, client_batches)
    grads = [Objective(m, b, dtype, device, **objective).gradient() for m, b in zip(client_models, client_batches)]
    pooled = [b for batches in client_batches for b in batches]
    g = Objective(global_model, pooled, dtype, device, **objective).gradient()
    distances, cosines = _perturbation_spread(grads, g, rho)
    return LocalPerturbationDistance(
        rho=rho,
        distance=float(np.mean(distances)),
        client_distances=distances,
        cosines=cosines,
        mean_cosine=float(np.mean(cosines)),
        client_gradient_norms=[float(gi.norm()) for gi in grads],
        gradient_norm=float(g.norm()),
    )


def sharpness(
    objective: Objective, rho: float = RHO, num_ascent_steps: int = NUM_ASCENT_STEPS
) -> tuple[float, float, float]:
    """Estimates of the SAM sharpness S_h(x) = max_{||d||<=rho} h(x+d) - h(x) [C22 eq. 2].

    First-order estimate (the SAM perturbation, exact for a linear h):

        S_1 = h(x + d_0) - h(x),   d_0 = rho * g / ||g||,   g = grad h(x).

    Ascent estimate: projected normalized gradient ascent from d_0 with step rho,

        d_{k+1} = P(d_k + rho * grad h(x+d_k) / ||grad h(x+d_k)||),   P: projection onto ||d|| <= rho,

    reporting max_{k=0..n} h(x + d_k) - h(x): a lower bound of S_h that is never
    below S_1 and equals it for n = 0. On a quadratic h = g.d + d.A.d/2 the
    iteration stops where grad h(x+d) is parallel to d, the condition for the
    maximum on the sphere. (The step rule is this toolkit's choice in the
    reconstruction of [L26].) At an exact stationary point (g = 0) both estimates are 0:
    gradient ascent cannot leave it, although S_h = rho^2/2 lambda_max there.

    Args:
        objective: the loss h at its base parameters x.
        rho: ball radius.
        num_ascent_steps: n >= 0.

    Returns:
        (h(x), S_1, ascent estimate); NaN when the loss is not finite.
    """
    _check_rho(rho)
    if num_ascent_steps < 0:
        raise LandscapeError(f"--ascent-steps must be at least 0, got {num_ascent_steps}")
    x = objective.flatten(objective.params)

    def at(d: torch.Tensor) -> dict[str, torch.Tensor]:
        return objective.unflatten(x + d)

    loss = objective.loss()
    g = objective.gradient()
    d = rho * g / (g.norm() + NORM_EPS)
    values = [objective.loss(at(d))]
    for _ in range(num_ascent_steps):
        gd = objective.gradient(at(d))
        d = d + rho * gd / (gd.norm() + NORM_EPS)
        norm = float(d.norm())
        if norm > rho:  # (at a stationary point d stays 0: no division by its norm)
            d = d * (rho / norm)
        values.append(objective.loss(at(d)))
    return loss, values[0] - loss, float(np.max(values)) - loss


def sharpness_gap(
    model: nn.Module,
    client_batches: Sequence[Sequence[Batch]],
    rho: float = RHO,
    num_ascent_steps: int = NUM_ASCENT_STEPS,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **objective: Any,
) -> SharpnessGap:
    """Mean client sharpness minus global sharpness at x.

    A reconstruction of the local/global flatness inconsistency of [L26]:

        gap = (1/M) sum_i S_{f_i}(x) - S_f(x),   S_h(x) = max_{||d||<=rho} h(x+d) - h(x),

    each S estimated by :func:`sharpness` (first-order and n-step ascent). A positive
    gap: the clients see sharper losses than the global model does, so flattening the
    local losses (FedSAM) aims at a different perturbation than the global one.

    Args:
        model: the global model x (not modified).
        client_batches: each client's fixed batches.
        rho: perturbation radius (default 0.05, [L26]).
        num_ascent_steps: ascent steps of the second estimate.
        dtype: computation precision.
        device: where to compute.
        objective: the loss, forward and ignore_index of every objective
            (:class:`~landscape.objective.Objective`; default: mean cross-entropy of (x, y) batches).
    """
    objectives = [Objective(model, b, dtype, device, **objective) for b in client_batches]
    client_weights(objectives)  # validates that every client has data
    clients = [sharpness(o, rho, num_ascent_steps) for o in objectives]
    pooled = [b for batches in client_batches for b in batches]
    loss, first, ascent = sharpness(Objective(model, pooled, dtype, device, **objective), rho, num_ascent_steps)
    return SharpnessGap(
        rho=rho,
        num_ascent_steps=num_ascent_steps,
        client_losses=[c[0] for c in clients],
        client_first_order=[c[1] for c in clients],
        client_ascent=[c[2] for c in clients],
        global_loss=loss,
        global_first_order=first,
        global_ascent=ascent,
        gap_first_order=float(np.mean([c[1] for c in clients])) - first,
        gap_ascent=float(np.mean([c[2] for c in clients])) - ascent,
    )


def sharpness_local_global(
    global_model: nn.Module,
    client_models: Sequence[nn.Module],
    client_batches: Sequence[Sequence[Batch]],
    rho: float = RHO,
    num_ascent_steps: int = NUM_ASCENT_STEPS,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **objective: Any,
) -> LocalGlobalSharpness:
    """SAM sharpness of the trained client models on their own losses against the global model's on f.

    A reconstruction of the flatness distance of [L26] between local and global models:
    the clients' SAM makes each f_i flat around the x_i it trains to, but what counts is
    the flatness of f = sum_i w_i f_i around the aggregate x:

        difference = S_f(x) - (1/M) sum_i S_{f_i}(x_i),   ratio = S_f(x) / ((1/M) sum_i S_{f_i}(x_i)),
        S_h(w) = max_{||d||<=rho} h(w+d) - h(w),

    each S estimated by :func:`sharpness` (first-order and n-step ascent). A positive
    difference (a ratio above 1): the global model is sharper on the federation's loss
    than the clients are on their own, i.e. local flatness did not carry over. Cost:
    (n + 1) (M + 1) gradients and (n + 2) (M + 1) losses (n = 0: M + 1 gradients).

    Args:
        global_model: x (not modified).
        client_models: x_i, one per client, same architecture (not modified).
        client_batches: each client's fixed batches, in the order of ``client_models``.
        rho: perturbation radius (default 0.05, [L26]).
        num_ascent_steps: ascent steps of the second estimate.
        dtype: computation precision.
        device: where to compute.
        objective: the loss, forward and ignore_index of every objective
            (:class:`~landscape.objective.Objective`; default: mean cross-entropy of (x, y) batches).
    """
    _check_federation(global_model, client_models, client_batches)
    clients = [sharpness(Objective(m, b, dtype, device, **objective), rho, num_ascent_steps)
               for m, b in zip(client_models, client_batches)]
    pooled = [b for batches in client_batches for b in batches]
    loss, first, ascent = sharpness(Objective(global_model, pooled, dtype, device, **objective), rho, num_ascent_steps)
    local_first, local_ascent = float(np.mean([c[1] for c in clients])), float(np.mean([c[2] for c in clients]))
    return LocalGlobalSharpness(
        rho=rho,
        num_ascent_steps=num_ascent_steps,
        client_losses=[c[0] for c in clients],
        client_first_order=[c[1] for c in clients],
        client_ascent=[c[2] for c in clients],
        global_loss=loss,
        global_first_order=first,
        global_ascent=ascent,
        difference_first_order=first - local_first,
        difference_ascent=ascent - local_ascent,
        ratio_first_order=_ratio(first, local_first),
        ratio_ascent=_ratio(ascent, local_ascent),
    )


def lambda_max_local_global(
    global_model: nn.Module,
    client_models: Sequence[nn.Module],
    client_batches: Sequence[Sequence[Batch]],
    *,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    curvature: str = "hessian",
    global_at_clients: bool = True,
    **objective: Any,
) -> LambdaMaxComparison:
    """Local against global curvature of the trained client models.

    A reconstruction of the local/global flatness comparison of [L26]: for each client
    model x_i (trained on f_i from the global model x),

        lambda_max(grad^2 f_i(x_i))   vs   lambda_max(grad^2 f(x_i))   and   lambda_max(grad^2 f(x)),

    with f = sum_i w_i f_i (the mean loss over the pooled client data). A client that
    is flat on its own loss but sharp on f has found a flatness that does not carry
    over to the federation. The flatness distance between local and global models in
    this reconstruction of [L26] summarizes it in two numbers,

        global_minus_local = lambda_max(grad^2 f(x)) - (1/M) sum_i lambda_max(grad^2 f_i(x_i)),
        global_over_local  = lambda_max(grad^2 f(x)) / ((1/M) sum_i lambda_max(grad^2 f_i(x_i))).

    Eigenvalues are the algebraically largest, by Lanczos
    (:func:`landscape.eigen.top_eigenvalues`), the method of [C22 §5] being power
    iteration; lambda_max of a client loss at its own model is [C22 Fig. 4]. Cost: 2M + 1
    Lanczos runs (M + 1 without ``global_at_clients``), each some tens of Hessian-vector
    products to ``tol`` (``num_matvecs`` counts them).

    Args:
        global_model: x (not modified).
        client_models: x_i, one per client, same architecture (not modified).
        client_batches: each client's fixed batches, in the order of ``client_models``.
        tol: relative residual tolerance of the eigensolver.
        seed: start vector seed.
        dtype: computation precision.
        device: where to compute.
        curvature: the matrix whose lambda_max is compared: ``hessian`` (as in [C22, L26]), ``ggn`` or ``fisher``.
        global_at_clients: also lambda_max(grad^2 f(x_i)) (else ``global_at_client`` is empty).
        objective: the loss, forward and ignore_index of every objective
            (:class:`~landscape.objective.Objective`; default: mean cross-entropy of (x, y) batches).
    """
    _check_federation(global_model, client_models, client_batches)
    pooled = [b for batches in client_batches for b in batches]
    converged: list[bool] = []
    matvecs: list[int] = []

    def top(model: nn.Module, batches: Sequence[Batch]) -> float:
        res = top_eigenvalues(make_operator(Objective(model, batches, dtype, device, **objective), curvature), k=1,
                              tol=tol, seed=seed)
        converged.append(all(res.converged))
        matvecs.append(res.num_matvecs)
        return float(res.eigenvalues[0])

    local = [top(m, b) for m, b in zip(client_models, client_batches)]
    global_at_client = [top(m, pooled) for m in client_models] if global_at_clients else []
    global_at_global = top(global_model, pooled)
    return LambdaMaxComparison(
        local_at_client=local,
        global_at_client=global_at_client,
        global_at_global=global_at_global,
        global_minus_local=global_at_global - float(np.mean(local)),
        global_over_local=global_over_local(global_at_global, local),
        converged=all(converged),
        tol=tol,
        num_matvecs=sum(matvecs),
    )


def flatness_distance(
    global_model: nn.Module,
    client_models: Sequence[nn.Module],
    client_batches: Sequence[Sequence[Batch]],
    *,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    curvature: str = "hessian",
    **objective: Any,
) -> LambdaMaxComparison:
    """The default flatness distance between the trained client models and the global model.

    The curvature ratio of :func:`lambda_max_local_global` (a reconstruction of [L26]),

        flatness distance = lambda_max(grad^2 f(x)) / ((1/M) sum_i lambda_max(grad^2 f_i(x_i))),

    ``global_over_local`` of the result: how much sharper the aggregate x is on the
    federation's loss f = sum_i w_i f_i than the clients' trained models x_i are on their
    own losses f_i (1: local flatness carried over to the global model). It is the
    candidate that told FedAvg, FedSAM, FedASAM and FedNSAM apart beyond the seed spread
    under heterogeneity (docs/flatness.md). Meant for a training loop every K rounds with
    the round's cohort: M + 1 Lanczos runs (one per client on its own data at x_i, one
    on the cohort's pooled data at x), each some tens of Hessian-vector products to
    ``tol`` (``num_matvecs`` counts them); no gradients beyond those. lambda_max of f at
    the client models is skipped (``global_at_client`` is empty).

    Args:
        global_model: x (not modified).
        client_models: x_i, one per client, same architecture (not modified).
        client_batches: each client's fixed batches, in the order of ``client_models``.
        tol: relative residual tolerance of the eigensolver.
        seed: start vector seed.
        dtype: computation precision.
        device: where to compute.
        curvature: ``hessian`` (default), ``ggn`` or ``fisher``.
        objective: the loss, forward and ignore_index of every objective
            (:class:`~landscape.objective.Objective`; default: mean cross-entropy of (x, y) batches).

    Returns:
        The comparison; its ``global_over_local`` is the flatness distance.
    """
    return lambda_max_local_global(global_model, client_models, client_batches, tol=tol, seed=seed, dtype=dtype,
                                   device=device, curvature=curvature, global_at_clients=False, **objective)


def parameter_distances(global_model: nn.Module, client_models: Sequence[nn.Module]) -> ParameterDistances:
    """||x_i - x|| and ||x_i - x|| / ||x|| over all parameters (buffers excluded).

    Accumulated in float64. ``relative`` is NaN when ||x|| = 0.

    >>> a, b = nn.Linear(1, 1), nn.Linear(1, 1)
    >>> with torch.no_grad():
    ...     _ = a.weight.fill_(3.0), a.bias.fill_(4.0), b.weight.fill_(0.0), b.bias.fill_(4.0)
    >>> parameter_distances(a, [b]).distances, parameter_distances(a, [b]).global_norm
    ([3.0], 5.0)
    """
    _check_clients(global_model, client_models)

    def flat(model: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in model.parameters()])

    x = flat(global_model)
    norm = float(x.norm())
    distances = [float((flat(m) - x).norm()) for m in client_models]
    return ParameterDistances(
        distances=distances,
        relative=[d / norm if norm > 0 else math.nan for d in distances],
        global_norm=norm,
    )


def flatness_metrics(
    global_model: nn.Module,
    client_models: Sequence[nn.Module],
    client_batches: Sequence[Sequence[Batch]],
    rho: float = RHO,
    num_ascent_steps: int = NUM_ASCENT_STEPS,
    *,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    curvature: str = "hessian",
    **objective: Any,
) -> FlatnessMetrics:
    """Every flatness-distance metric of the module (reconstructions of [L26]).

    The perturbation distance and sharpness gap are taken at the global model x on
    the clients' data; the curvature comparison and distances use the client models.

    Args:
        global_model: x.
        client_models: x_i, one per client.
        client_batches: each client's fixed batches, in the order of ``client_models``.
        rho: perturbation radius (default 0.05, [L26]).
        num_ascent_steps: ascent steps of the sharpness estimate.
        tol: eigensolver tolerance.
        seed: eigensolver seed.
        dtype: computation precision.
        device: where to compute.
        curvature: the matrix of the lambda_max comparison (:func:`lambda_max_local_global`).
        objective: the loss, forward and ignore_index of every objective
            (:class:`~landscape.objective.Objective`; default: mean cross-entropy of (x, y) batches).
    """
    return FlatnessMetrics(
        perturbation_distance=perturbation_distance(global_model, client_batches, rho, dtype=dtype, device=device,
                                                    **objective),
        sharpness_gap=sharpness_gap(global_model, client_batches, rho, num_ascent_steps, dtype=dtype, device=device,
                                    **objective),
        lambda_max=lambda_max_local_global(
            global_model, client_models, client_batches, tol=tol, seed=seed, dtype=dtype, device=device,
            curvature=curvature, **objective
        ),
        parameter_distances=parameter_distances(global_model, client_models),
        local_perturbation_distance=local_perturbation_distance(
            global_model, client_models, client_batches, rho, dtype=dtype, device=device, **objective
        ),
        sharpness_local_global=sharpness_local_global(
            global_model, client_models, client_batches, rho, num_ascent_steps, dtype=dtype, device=device,
            **objective
        ),
    )


# ---------------------------------------------------------------------------------------------
# The result file (``landscape flatness --out``)
# ---------------------------------------------------------------------------------------------

FORMAT = "landscape-flatness"
FORMAT_VERSION = 1


@dataclass
class FlatnessResult:
    """The metrics of one global model and its clients, with what identifies them (a JSON file).

    Attributes:
        metrics: :func:`flatness_metrics`' result.
        clients: per client: ``label``, ``num_samples``, ``data`` (spec), ``sha256`` of its checkpoint.
        checkpoints: ``{"global": ..., "clients": [...]}`` descriptions of the checkpoints.
        settings: rho, ascent steps, tolerance, seed, dtype, device, data options, loss.
        seconds: how long the metrics took.
    """

    metrics: FlatnessMetrics
    clients: list[dict[str, Any]]
    checkpoints: dict[str, Any]
    settings: dict[str, Any]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The file's content (``metrics`` as :meth:`FlatnessMetrics.to_dict`)."""
        from landscape import __version__

        return {
            "kind": "flatness", "clients": self.clients, "metrics": self.metrics.to_dict(),
            "metadata": {
                "format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
                "definitions": "reconstructions of the flatness distance of FedNSAM [L26], see landscape.flatness",
                "checkpoints": self.checkpoints, "settings": self.settings, "seconds": self.seconds,
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result file (JSON, atomically); read it back with :func:`load_result`."""
        return write_json(path, self.to_json())


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """A result file of :meth:`FlatnessResult.save`, checked (the dict of :meth:`FlatnessResult.to_json`).

    Raises:
        LandscapeError: unreadable, not JSON, or not a flatness result.
    """
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        raise os_error(exc, "cannot read the flatness result") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LandscapeError(f"{path} is not valid JSON", fix="pass a file written by `landscape flatness --out`") from None
    meta = result.get("metadata") if isinstance(result, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(result.get("metrics"), dict) \
            or not isinstance(result.get("clients"), list):
        raise LandscapeError(f"{path} is not a result of `landscape flatness --out`",
                             fix="pass a file written by `landscape flatness --out`")
    return result
