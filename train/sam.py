"""SAM and ASAM perturbations as pure functions [C22 eq. 4, K21].

Tensors are keyed by parameter name. With ``batch_dims=1`` every tensor carries a leading
client dimension (the batched engine) and norms are taken per client.

SAM:  ``e = rho * g / (||g|| + 1e-16)``, ``||.||`` the global L2 norm over all tensors.

ASAM [K21]: ``T = |w| + eta`` for tensors whose name contains ``weight`` (conv / linear weights
and normalization gammas), ``T = 1`` otherwise (biases); ``n = ||T * g||``,
``e = rho * T^2 * g / (n + 1e-16)``. The ``davda54`` variant (the popular SAM repository) uses
``T = |w|`` for every tensor and ``eps = 1e-12``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from landscape.train.hyperparameters import ASAM_VARIANTS

SAM_EPS = 1e-16
DAVDA54_EPS = 1e-12


def global_norm(tensors: Mapping[str, Tensor], batch_dims: int = 0) -> Tensor:
    """L2 norm over all tensors together; per leading index when ``batch_dims=1``.

    >>> float(global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}))
    5.0
    """
    squares = [t.pow(2).flatten(batch_dims).sum(-1) for t in tensors.values()]
    return torch.stack(squares).sum(0).sqrt()


def _expand(scale: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-client scalar ``(K,)`` (or a scalar) against ``like``."""
    return scale.reshape(scale.shape + (1,) * (like.ndim - scale.ndim))


def sam_perturbation(grads: Mapping[str, Tensor], rho: float, batch_dims: int = 0) -> dict[str, Tensor]:
    """SAM ascent step ``e = rho * g / (||g|| + 1e-16)`` [C22 eq. 4].

    >>> e = sam_perturbation({"w": torch.tensor([3.0, 4.0])}, rho=0.5)
    >>> e["w"].tolist()
    [0.30000001192092896, 0.4000000059604645]
    """
    scale = rho / (global_norm(grads, batch_dims) + SAM_EPS)
    return {k: g * _expand(scale, g) for k, g in grads.items()}


def asam_scale(name: str, param: Tensor, eta: float, variant: str = "kwon") -> Tensor | float:
    """The ASAM normalization operator T for one tensor [K21]."""
    if variant == "kwon":
        return param.abs() + eta if "weight" in name else 1.0
    if variant == "davda54":
        return param.abs()
    raise ValueError(f"unknown ASAM variant {variant!r}; choose one of {ASAM_VARIANTS}")


def asam_perturbation(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    rho: float,
    eta: float,
    variant: str = "kwon",
    batch_dims: int = 0,
) -> dict[str, Tensor]:
    """ASAM ascent step ``e = rho * T^2 g / (||T g|| + eps)`` [K21].

    Args:
        params: the weights w (T depends on |w|).
        grads: the batch gradient g at w (no weight decay).
        rho: neighbourhood size (0.5 on CIFAR-100, 0.7 on CIFAR-10 [C22 Table 11]).
        eta: the offset in ``T = |w| + eta`` (0.2 in [C22]); unused by ``davda54``.
        variant: ``kwon`` (the ASAM paper, fedsam) or ``davda54`` (T = |w| everywhere, eps 1e-12).
        batch_dims: 1 when tensors carry a leading client dimension.

    >>> p, g = {"weight": torch.tensor([1.0]), "bias": torch.tensor([1.0])}, {"weight": torch.tensor([1.0]), "bias": torch.tensor([1.0])}
    >>> e = asam_perturbation(p, g, rho=1.0, eta=0.0)   # T = (1, 1): plain SAM
    >>> round(float(e["weight"]), 6), round(float(e["bias"]), 6)
    (0.707107, 0.707107)
    """
    eps = SAM_EPS if variant == "kwon" else DAVDA54_EPS
    scales = {k: asam_scale(k, params[k], eta, variant) for k in grads}
    scaled = {k: g * scales[k] for k, g in grads.items()}
    factor = rho / (global_norm(scaled, batch_dims) + eps)
    return {k: scaled[k] * scales[k] * _expand(factor, g) for k, g in grads.items()}

