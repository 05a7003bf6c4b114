"""The client side: what a client starts from, its local state, client SGD and the local gradients.

A local gradient rule maps (start, params, buffers, x, y, loss_grad) to (loss, gradient, buffers):
plain, SAM [C22 eq. 4], ASAM [K21] or FedNSAM's global-momentum shift [L26]. :func:`client_step`
pairs one with :class:`ClientSGD` into ONE local step. Everything is on tensors keyed by name
and free of Python-side data dependence, so the batched engine runs the same step under
``torch.func.vmap`` (there ``loss_grad`` is ``torch.func.grad`` and SAM's norms are per client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from landscape.train.sam import asam_perturbation, global_norm, sam_perturbation

#: torch.nn.utils.clip_grad_norm_'s offset in ``max_norm / (total_norm + 1e-6)``.
CLIP_EPS = 1e-6

State = dict[str, Tensor]
#: ``loss_grad(params, buffers, x, y) -> (mean batch loss, its gradient at params, buffers after the pass)``.
LossGrad = Callable[[State, State, Tensor, Tensor], tuple[Tensor, State, State]]
Gradient = Callable[["ClientStart", State, State, Tensor, Tensor, LossGrad], tuple[Tensor, State, State]]


@dataclass(frozen=True)
class ClientStart:
    """What the server sends to the sampled clients.

    Attributes:
        weights: the model local training starts from (x, or FedNSAM's z = x + gamma m).
        direction: FedNSAM's normalized momentum m / ||m|| over the parameters; None while m = 0
            or for other algorithms.
    """

    weights: State
    direction: State | None = None


class LocalState(NamedTuple):
    """A client's state during local training (a pytree, so it stacks and vmaps).

    Attributes:
        params: trainable parameters by name.
        buffers: normalization buffers by name.
        momentum: the client SGD momentum buffer per parameter (reset every round).
    """

    params: State
    buffers: State
    momentum: State


@dataclass(frozen=True)
class ClientSGD:
    """Client SGD [C22 App. C]: ``d = g + wd w``; ``buf <- mu buf + d``; ``w <- w - lr buf``.

    With ``max_grad_norm = c > 0`` the (perturbed) gradient is first clipped as
    ``torch.nn.utils.clip_grad_norm_`` does it, ``g <- g min(1, c / (||g|| + 1e-6))`` with ||.||
    the global L2 norm over all parameters; weight decay is added after clipping, as torch's SGD
    does (the FedNSAM code clips to 10 after SAM's second backward pass).

    Attributes:
        weight_decay: wd (4e-4 in [C22]), evaluated at the unperturbed w.
        momentum: mu (0 in [C22]); with mu = 0 the buffer is just d.
        max_grad_norm: c (0: no clipping).
    """

    weight_decay: float = 4e-4
    momentum: float = 0.0
    max_grad_norm: float = 0.0

    def clip(self, grads: State) -> State:
        """``g min(1, c / (||g|| + 1e-6))`` (unchanged without clipping)."""
        if not self.max_grad_norm:
            return grads
        scale = torch.clamp(self.max_grad_norm / (global_norm(grads) + CLIP_EPS), max=1.0)
        return {k: g * scale for k, g in grads.items()}

    def init(self, start: ClientStart, param_names: tuple[str, ...], buffer_names: tuple[str, ...]) -> LocalState:
        """Fresh local state at ``start.weights`` (copies; the start is never modified)."""
        params = {k: start.weights[k].clone() for k in param_names}
        return LocalState(params, {k: start.weights[k].clone() for k in buffer_names},
                          {k: v.new_zeros(v.shape) for k, v in params.items()})

    def update(self, p: Tensor, g: Tensor, buf: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        """One tensor's step: the new weight and momentum buffer."""
        d = g + self.weight_decay * p
        if self.momentum:
            d = self.momentum * buf + d
        return p - lr * d, d


def client_step(gradient: Gradient, sgd: ClientSGD) -> Callable[..., tuple[LocalState, Tensor]]:
    """ONE local step: ``gradient``'s (perturbed) gradient, then ``sgd`` at the unperturbed w."""

    def step(start: ClientStart, local: LocalState, x: Tensor, y: Tensor, lr: float,
             loss_grad: LossGrad) -> tuple[LocalState, Tensor]:
        loss, g, buffers = gradient(start, local.params, local.buffers, x, y, loss_grad)
        g = sgd.clip(g)
        params, momentum = {}, {}
        for k, p in local.params.items():
            params[k], momentum[k] = sgd.update(p, g[k], local.momentum[k], lr)
        return LocalState(params, buffers, momentum), loss

    return step


def plain_gradient() -> Gradient:
    """The batch gradient at w."""

    def gradient(start: ClientStart, params: State, buffers: State, x: Tensor, y: Tensor,
                 loss_grad: LossGrad) -> tuple[Tensor, State, State]:
        return loss_grad(params, buffers, x, y)

    return gradient


def sam_gradient(eps: Callable[[State, State], State], bn_first_pass_only: bool = False) -> Gradient:
    """g' = grad at w + e on the same batch, ``e = eps(params, g)`` from the gradient g at w.

    ``w + e`` is a new tensor and w is kept, so "restoring" w is exact. Normalization buffers
    come from the second pass, or from the first with ``bn_first_pass_only``.
    """

    def gradient(start: ClientStart, params: State, buffers: State, x: Tensor, y: Tensor,
                 loss_grad: LossGrad) -> tuple[Tensor, State, State]:
        loss, g0, first = loss_grad(params, buffers, x, y)
        e = eps(params, g0)
        _, g, second = loss_grad({k: v + e[k] for k, v in params.items()}, first, x, y)
        return loss, g, first if bn_first_pass_only else second

    return gradient


def sam_eps(rho: float) -> Callable[[State, State], State]:
    """SAM's ``e = rho g / ||g||`` [C22 eq. 4]."""
    return lambda params, g: sam_perturbation(g, rho)


def asam_eps(rho: float, eta: float, variant: str) -> Callable[[State, State], State]:
    """ASAM's ``e = rho T^2 g / ||T g||`` [K21]."""
    return lambda params, g: asam_perturbation(params, g, rho, eta, variant)


def global_momentum_gradient(rho: float) -> Gradient:
    """FedNSAM's gradient at ``u - rho m_hat`` (one pass; plain while m = 0) [L26]."""

    def gradient(start: ClientStart, params: State, buffers: State, x: Tensor, y: Tensor,
                 loss_grad: LossGrad) -> tuple[Tensor, State, State]:
        if start.direction is None:
            return loss_grad(params, buffers, x, y)
        return loss_grad({k: v - rho * start.direction[k] for k, v in params.items()}, buffers, x, y)

    return gradient
