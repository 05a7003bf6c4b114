"""FedAvg [C22 eq. 1]: ``w <- sum_k n_k w_k / sum_k n_k``, buffers averaged the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from landscape.train.algorithms import Algorithm, ClientStart, State


@dataclass(frozen=True)
class FedAvgState:
    """Server state of FedAvg (and FedSAM / FedASAM).

    Attributes:
        weights: the global model (parameters and buffers by name).
        param_names: which entries of ``weights`` are trainable parameters.
        round: number of completed rounds.
    """

    weights: State
    param_names: tuple[str, ...]
    round: int = 0


def init(weights: State, param_names: tuple[str, ...], cfg: Any) -> FedAvgState:
    """The server state before round 1."""
    return FedAvgState(dict(weights), tuple(param_names), 0)


def broadcast(state: FedAvgState, cfg: Any) -> ClientStart:
    """Clients start from the global model."""
    return ClientStart(state.weights)


def perturbation(cfg: Any) -> str:
    """Plain SGD on the clients."""
    return "none"


def server_update(state: FedAvgState, start: ClientStart, mean: State, cfg: Any) -> FedAvgState:
    """The new global model is the sample-weighted mean of the client models."""
    return FedAvgState(dict(mean), state.param_names, state.round + 1)


ALGORITHM = Algorithm("fedavg", init, broadcast, perturbation, server_update)
