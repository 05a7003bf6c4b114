"""Federated algorithms: a client step + a server update, built by factories (optax / FedJAX style).

Each factory binds its hyperparameters and returns an :class:`Algorithm` record of pure
functions; nothing here reads a :class:`~landscape.train.config.TrainConfig` except
:func:`from_config`, the one place that turns a config into a factory call.

- ``init(weights, param_names) -> state``: the server state before round 1 (a frozen dataclass
  that serializes itself, :class:`ServerState`).
- ``broadcast(state) -> ClientStart``: what the sampled clients start from.
- ``client_step(start, local, x, y, lr, loss_grad) -> (local, loss)``: ONE local step on one
  batch, on named tensors; the engine supplies ``loss_grad`` (autograd on one client, or
  ``torch.func.grad`` under ``vmap`` over stacked clients).
- ``server_update(state, mean_delta) -> state``: a server optimizer (:class:`ServerSGD`) on the
  sample-weighted mean of the clients' deltas ``w_k - start``
  (:class:`~landscape.train.aggregate.MeanDelta`, which also carries the mean model).

Variants swap parts instead of subclassing [C22, L26]: FedSAM = FedAvg with the SAM gradient;
FedASAM swaps in ASAM's eps; FedAvgM swaps the server update for server SGD with momentum;
FedNSAM starts clients at the look-ahead ``z = x + gamma m``, takes its eps along the global
momentum and updates the server in the Nesterov form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from landscape.errors import LandscapeError
from landscape.train.aggregate import MeanDelta
from landscape.train.hyperparameters import ALGORITHMS
from landscape.train.algorithms.client import ClientSGD, ClientStart, LocalState, LossGrad
from landscape.train.algorithms.server import ServerSGD, ServerState, State

__all__ = ["Algorithm", "ClientSGD", "ClientStart", "LocalState", "LossGrad", "ServerSGD", "ServerState", "State",
           "fedavg", "fedavgm", "fedsam", "fedasam", "fednsam", "from_config", "FACTORIES", "NAMES"]

ClientStep = Callable[[ClientStart, LocalState, Tensor, Tensor, float, LossGrad], tuple[LocalState, Tensor]]


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm: pure functions over an explicit server state.

    Attributes:
        name: the paper name (``fedavg``, ...).
        init: ``(weights, param_names) -> state``.
        broadcast: ``state -> ClientStart``.
        client_step: one local step on one batch (see the module docstring).
        server_update: ``(state, mean_delta) -> state``.
        state_type: the :class:`ServerState` subclass ``init`` returns (what a state file holds).
    """

    name: str
    init: Callable[[State, tuple[str, ...]], Any]
    broadcast: Callable[[Any], ClientStart]
    client_step: ClientStep
    server_update: Callable[[Any, MeanDelta], Any]
    state_type: type


from landscape.train.algorithms.fedavg import fedavg, fedavgm  # noqa: E402 - they use Algorithm
from landscape.train.algorithms.fedsam import fedasam, fedsam  # noqa: E402
from landscape.train.algorithms.fednsam import fednsam  # noqa: E402

#: The registered algorithms: adding one is its file, its name in
#: :data:`~landscape.train.hyperparameters.ALGORITHMS`, a line here and a branch in :func:`from_config`.
FACTORIES: dict[str, Callable[..., Algorithm]] = {"fedavg": fedavg, "fedavgm": fedavgm, "fedsam": fedsam,
                                                  "fedasam": fedasam, "fednsam": fednsam}
NAMES = ALGORITHMS


def from_config(cfg: Any) -> Algorithm:
    """The algorithm a :class:`~landscape.train.config.TrainConfig` names, its hyperparameters bound.

    Raises:
        LandscapeError: unknown algorithm name.
    """
    client = ClientSGD(weight_decay=cfg.weight_decay, momentum=cfg.client_momentum, max_grad_norm=cfg.max_grad_norm)
    rho = cfg.effective_rho
    if cfg.algorithm == "fedavg":
        return fedavg(client=client)
    if cfg.algorithm == "fedavgm":
        return fedavgm(server_lr=cfg.server_lr, momentum=cfg.server_momentum, client=client)
    if cfg.algorithm == "fedsam":
        return fedsam(rho=rho, bn_first_pass_only=cfg.bn_first_pass_only, client=client)
    if cfg.algorithm == "fedasam":
        return fedasam(rho=rho, eta=cfg.eta, variant=cfg.asam_variant, bn_first_pass_only=cfg.bn_first_pass_only,
                       client=client)
    if cfg.algorithm == "fednsam":
        return fednsam(gamma=cfg.gamma, rho=rho, perturbation=cfg.perturbation,
                       reference_momentum=cfg.fednsam_reference_momentum,
                       extrapolate_buffers=cfg.fednsam_extrapolate_buffers,
                       bn_first_pass_only=cfg.bn_first_pass_only, client=client)
    raise LandscapeError(f"unknown algorithm '{cfg.algorithm}'; choose one of {', '.join(NAMES)}")
