"""FedAvgM [C22 App. C]: server SGD with momentum on the pseudo-gradient.

``d = w - mean``, ``v <- beta v + d``, ``w <- w - eta_s v`` for the parameters (eta_s = 1,
beta = 0.9); buffers take the weighted mean. ``beta = 0, eta_s = 1`` is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from landscape.train.algorithms import Algorithm, ClientStart, State, fedavg


@dataclass(frozen=True)
class FedAvgMState:
    """Server state of FedAvgM.

    Attributes:
        weights: the global model.
        param_names: trainable entries of ``weights``.
        velocity: server momentum buffer v per parameter (zeros before round 1).
        round: completed rounds.
    """

    weights: State
    param_names: tuple[str, ...]
    velocity: State
    round: int = 0


def init(weights: State, param_names: tuple[str, ...], cfg: Any) -> FedAvgMState:
    """Zero velocity."""
    return FedAvgMState(dict(weights), tuple(param_names), {k: torch.zeros_like(weights[k]) for k in param_names}, 0)


def server_update(state: FedAvgMState, start: ClientStart, mean: State, cfg: Any) -> FedAvgMState:
    """One server SGD-with-momentum step on ``d = w - mean``."""
    weights, velocity = dict(mean), {}
    for k in state.param_names:
        d = state.weights[k] - mean[k]
        velocity[k] = cfg.server_momentum * state.velocity[k] + d
        weights[k] = state.weights[k] - cfg.server_lr * velocity[k]
    return FedAvgMState(weights, state.param_names, velocity, state.round + 1)


ALGORITHM = Algorithm("fedavgm", init, fedavg.broadcast, fedavg.perturbation, server_update)
