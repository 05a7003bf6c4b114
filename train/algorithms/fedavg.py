"""FedAvg [C22 eq. 1] and FedAvgM [C22 App. C]: plain client SGD, a server SGD on the mean delta.

FedAvg: ``w <- w + mean_delta``, i.e. the sample-weighted mean of the client models (buffers
averaged the same way). FedAvgM: ``d = -mean_delta``, ``v <- beta v + d``, ``w <- w - eta_s v``
for the parameters (eta_s = 1, beta = 0.9); buffers take the mean. ``beta = 0, eta_s = 1`` is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landscape.train.aggregate import MeanDelta
from landscape.train.algorithms import Algorithm
from landscape.train.algorithms.client import ClientSGD, ClientStart, Gradient, client_step, plain_gradient
from landscape.train.algorithms.server import ServerSGD, ServerState, State


@dataclass(frozen=True)
class FedAvgState(ServerState):
    """Server state of FedAvg, FedSAM and FedASAM.

    Attributes:
        weights: the global model (parameters and buffers by name).
        param_names: which entries of ``weights`` are trainable parameters.
        round: number of completed rounds.
    """

    round: int = 0


@dataclass(frozen=True)
class FedAvgMState(ServerState):
    """Server state of FedAvgM.

    Attributes:
        weights: the global model.
        param_names: trainable entries of ``weights``.
        velocity: server momentum buffer v per parameter (zeros before round 1).
        round: completed rounds.
    """

    velocity: State = None  # type: ignore[assignment]
    round: int = 0


def averaging(name: str, gradient: Gradient, client: ClientSGD) -> Algorithm:
    """FedAvg's server (the weighted mean) with a client step built from ``gradient``."""

    def init(weights: State, param_names: tuple[str, ...]) -> FedAvgState:
        return FedAvgState(dict(weights), tuple(param_names), 0)

    def broadcast(state: FedAvgState) -> ClientStart:
        return ClientStart(state.weights)

    def server_update(state: FedAvgState, mean_delta: MeanDelta) -> FedAvgState:
        weights, _ = ServerSGD().step(state.weights, state.weights, mean_delta, None)
        return FedAvgState(weights, state.param_names, state.round + 1)

    return Algorithm(name, init, broadcast, client_step(gradient, client), server_update, FedAvgState)


def fedavg(client: ClientSGD = ClientSGD()) -> Algorithm:
    """FedAvg [C22 eq. 1]: plain client SGD, the weighted mean on the server.

    Args:
        client: the client SGD (weight decay 4e-4, no momentum [C22]).
    """
    return averaging("fedavg", plain_gradient(), client)


def fedavgm(server_lr: float = 1.0, momentum: float = 0.9, client: ClientSGD = ClientSGD()) -> Algorithm:
    """FedAvgM [C22 App. C]: FedAvg's clients, server SGD with momentum (eta_s = 1, beta = 0.9)."""
    server = ServerSGD(lr=server_lr, momentum=momentum)

    def init(weights: State, param_names: tuple[str, ...]) -> FedAvgMState:
        return FedAvgMState(dict(weights), tuple(param_names), {k: torch.zeros_like(weights[k]) for k in param_names}, 0)

    def broadcast(state: FedAvgMState) -> ClientStart:
        return ClientStart(state.weights)

    def server_update(state: FedAvgMState, mean_delta: MeanDelta) -> FedAvgMState:
        weights, velocity = server.step(state.weights, state.weights, mean_delta, state.velocity)
        return FedAvgMState(weights, state.param_names, velocity, state.round + 1)

    return Algorithm("fedavgm", init, broadcast, client_step(plain_gradient(), client), server_update, FedAvgMState)
