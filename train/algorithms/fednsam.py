"""FedNSAM [L26]: global Nesterov momentum as look-ahead start and as the SAM direction.

Notation: x the global model, m the server momentum (m_0 = 0), gamma = 0.85, rho = 0.05.

- Server sends ``z = x + gamma m`` and ``m_hat = m / ||m||``.
- Client i: ``u_0 = z``; per step ``eps = -rho m_hat`` (``global_momentum``, 0 while m = 0) or
  ``eps = rho g / ||g||`` (``local_sam``); ``u_{k+1} = u_k - lr (grad F_i(u_k + eps) + wd u_k)``;
  it returns ``u_K`` (``Delta_i = u_K - z``).
- Server (:class:`ServerSGD`, Nesterov form): ``m <- gamma m + Delta``; ``x <- z + Delta``.

The reference code (github:junkangLiu0/FedNSAM, ``main_FedNSAM.py``) computes ``m_1 = Delta_1``,
``m_r = (1 + gamma) Delta_r`` (it drops the old momentum) and ``x_r = x_{r-1} + m_r``: a defect,
reproduced only with ``reference_momentum``. Normalization buffers are averaged, not
extrapolated, unless ``extrapolate_buffers`` (the reference treats every state entry like a
weight; integer counters are averaged here even then: they only matter for BatchNorm with
``momentum=None``). Its clients take a local SAM step (``local_sam``), clip the gradient to norm
10 and weight clients uniformly: ``--perturbation local_sam --max-grad-norm 10
--client-weights uniform`` (docs/algorithms.md lists every reference switch).
``gamma = 0`` with ``local_sam`` is FedSAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landscape.train.aggregate import MeanDelta
from landscape.train.algorithms import Algorithm
from landscape.train.algorithms.client import (ClientSGD, ClientStart, client_step, global_momentum_gradient,
                                               sam_eps, sam_gradient)
from landscape.train.hyperparameters import DEFAULT_GAMMA, DEFAULT_RHO, PERTURBATIONS
from landscape.train.algorithms.server import ServerSGD, ServerState, State
from landscape.train.sam import global_norm



@dataclass(frozen=True)
class FedNSAMState(ServerState):
    """Server state of FedNSAM.

    Attributes:
        weights: the global model x.
        param_names: trainable entries of ``weights``.
        momentum: the server momentum m per extrapolated tensor (parameters, and float buffers
            with ``extrapolate_buffers``); zeros before round 1.
        round: completed rounds.
    """

    momentum: State = None  # type: ignore[assignment]
    round: int = 0


def fednsam(gamma: float = DEFAULT_GAMMA, rho: float = DEFAULT_RHO["fednsam"],
            perturbation: str = "global_momentum",
            reference_momentum: bool = False, extrapolate_buffers: bool = False, bn_first_pass_only: bool = False,
            client: ClientSGD = ClientSGD()) -> Algorithm:
    """FedNSAM [L26] (gamma = 0.85, rho = 0.05 as in its reference code).

    Args:
        gamma: server momentum and look-ahead.
        rho: the neighbourhood of the clients' perturbation.
        perturbation: ``global_momentum`` (eps = -rho m / ||m||) or ``local_sam`` (a SAM step).
        reference_momentum: the reference code's server recursion (see ``server_update``).
        extrapolate_buffers: float buffers carry momentum too (the reference code).
        bn_first_pass_only: with ``local_sam``, the first pass's normalization statistics.
        client: the client SGD.

    Raises:
        ValueError: unknown perturbation.
    """
    if perturbation == "global_momentum":
        gradient = global_momentum_gradient(rho)
    elif perturbation == "local_sam":
        gradient = sam_gradient(sam_eps(rho), bn_first_pass_only)
    else:
        raise ValueError(f"unknown FedNSAM perturbation {perturbation!r}; choose one of {PERTURBATIONS}")
    server = ServerSGD(lr=1.0, momentum=gamma, nesterov=True)

    def init(weights: State, param_names: tuple[str, ...]) -> FedNSAMState:
        """m_0 = 0 on the parameters (and the float buffers with ``extrapolate_buffers``)."""
        moving = [k for k, v in weights.items()
                  if k in param_names or (extrapolate_buffers and v.is_floating_point())]
        return FedNSAMState(dict(weights), tuple(param_names), {k: torch.zeros_like(weights[k]) for k in moving}, 0)

    def broadcast(state: FedNSAMState) -> ClientStart:
        """``z = x + gamma m`` and ``m_hat = m / ||m||`` (None while m = 0)."""
        z = dict(state.weights)
        for k, m in state.momentum.items():
            z[k] = state.weights[k] + gamma * m
        params_m = {k: state.momentum[k] for k in state.param_names}
        norm = global_norm(params_m)
        direction = None if float(norm) == 0.0 else {k: m / norm for k, m in params_m.items()}
        return ClientStart(z, direction)

    def server_update(state: FedNSAMState, mean_delta: MeanDelta) -> FedNSAMState:
        """``m <- gamma m + Delta``, ``x <- z + Delta`` (:class:`ServerSGD`, Nesterov form).

        With ``reference_momentum``, the reference code's recursion instead
        (``apply_weights_avgACG`` of ``main_FedNSAM.py``): ``m_1 = Delta_1``, then
        ``m_r = (1 + gamma) Delta_r`` (its ``gamma * v`` multiplies the new delta, not the old
        momentum) and ``x_r = x_{r-1} + m_r`` (a step from x, not from z).
        """
        if not reference_momentum:
            z = broadcast(state).weights
            weights, momentum = server.step(state.weights, z, mean_delta, state.momentum)
            return FedNSAMState(weights, state.param_names, momentum, state.round + 1)
        scale = 1.0 if state.round == 0 else 1.0 + gamma
        momentum = {k: scale * mean_delta.delta[k] for k in state.momentum}
        weights = dict(mean_delta.mean)
        for k, m in momentum.items():
            weights[k] = state.weights[k] + m
        return FedNSAMState(weights, state.param_names, momentum, state.round + 1)

    return Algorithm("fednsam", init, broadcast, client_step(gradient, client), server_update, FedNSAMState)
