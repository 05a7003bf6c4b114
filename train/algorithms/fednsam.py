"""FedNSAM [L26]: global Nesterov momentum as look-ahead start and as the SAM direction.

Notation: x the global model, m the server momentum (m_0 = 0), gamma = 0.85, rho = 0.05.

- Server sends ``z = x + gamma m`` and ``m_hat = m / ||m||``.
- Client i: ``u_0 = z``; per step ``eps = -rho m_hat`` (``global_momentum``, 0 while m = 0) or
  ``eps = rho g / ||g||`` (``local_sam``); ``u_{k+1} = u_k - lr (grad F_i(u_k + eps) + wd u_k)``;
  it returns ``u_K`` (``Delta_i = u_K - z``).
- Server: ``Delta = sum_i n_i Delta_i / sum_i n_i``; ``m <- gamma m + Delta``; ``x <- z + Delta``.

The reference code computes ``m = (1 + gamma) Delta`` (it drops the old momentum): a defect,
reproduced only with ``fednsam_reference_momentum``. Normalization buffers are averaged, not
extrapolated, unless ``fednsam_extrapolate_buffers`` (the reference treats them like weights).
``gamma = 0`` with ``local_sam`` is FedSAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from landscape.train.algorithms import Algorithm, ClientStart, State
from landscape.train.sam import global_norm


@dataclass(frozen=True)
class FedNSAMState:
    """Server state of FedNSAM.

    Attributes:
        weights: the global model x.
        param_names: trainable entries of ``weights``.
        momentum: the server momentum m per extrapolated tensor (parameters, and float buffers
            with ``fednsam_extrapolate_buffers``); zeros before round 1.
        round: completed rounds.
    """

    weights: State
    param_names: tuple[str, ...]
    momentum: State
    round: int = 0


def _moving(weights: State, param_names: tuple[str, ...], cfg: Any) -> list[str]:
    """The tensors that carry momentum: parameters (+ float buffers on the reference path)."""
    if cfg.fednsam_extrapolate_buffers:
        return [k for k, v in weights.items() if k in param_names or v.is_floating_point()]
    return list(param_names)


def init(weights: State, param_names: tuple[str, ...], cfg: Any) -> FedNSAMState:
    """m_0 = 0."""
    moving = _moving(weights, tuple(param_names), cfg)
    return FedNSAMState(dict(weights), tuple(param_names), {k: torch.zeros_like(weights[k]) for k in moving}, 0)


def broadcast(state: FedNSAMState, cfg: Any) -> ClientStart:
    """``z = x + gamma m`` and ``m_hat = m / ||m||`` (None while m = 0)."""
    z = dict(state.weights)
    for k, m in state.momentum.items():
        z[k] = state.weights[k] + cfg.gamma * m
    params_m = {k: state.momentum[k] for k in state.param_names}
    norm = global_norm(params_m)
    direction = None if float(norm) == 0.0 else {k: m / norm for k, m in params_m.items()}
    return ClientStart(z, direction)


def perturbation(cfg: Any) -> str:
    """``global_momentum`` (the default) or ``local_sam`` (a SAM step)."""
    return "global_momentum" if cfg.perturbation == "global_momentum" else "sam"


def server_update(state: FedNSAMState, start: ClientStart, mean: State, cfg: Any) -> FedNSAMState:
    """``m <- gamma m + Delta`` (reference: ``(1 + gamma) Delta``), ``x <- z + Delta``."""
    weights, momentum = dict(mean), {}
    for k, m in state.momentum.items():
        delta = mean[k] - start.weights[k]
        momentum[k] = (1 + cfg.gamma) * delta if cfg.fednsam_reference_momentum else cfg.gamma * m + delta
        weights[k] = start.weights[k] + delta
    return FedNSAMState(weights, state.param_names, momentum, state.round + 1)


ALGORITHM = Algorithm("fednsam", init, broadcast, perturbation, server_update)
