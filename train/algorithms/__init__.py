"""Federated algorithms as a client perturbation + a server update (FedJAX / optax style).

Every algorithm is an :class:`Algorithm` record of pure functions; server state is an explicit
frozen dataclass passed in and returned. Variants swap parts instead of subclassing:

- FedAvg [C22 eq. 1]: no perturbation; the server takes the sample-weighted mean.
- FedSAM = FedAvg with the SAM local step; FedASAM swaps in the ASAM perturbation [C22, K21].
- FedAvgM swaps the server update for server SGD with momentum [C22 App. C].
- FedNSAM [L26] starts clients at the Nesterov look-ahead ``z = x + gamma m`` and perturbs
  along the global momentum.

The engine calls, per round: ``start = algo.broadcast(state, cfg)``; trains every sampled client
from ``start.weights`` with ``algo.perturbation(cfg)``; then
``state = algo.server_update(state, start, mean, cfg)`` with ``mean`` the sample-weighted mean
of the clients' final weights (buffers included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from landscape.errors import LandscapeError

State = dict[str, Tensor]


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


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm: pure functions over an explicit server state."""

    name: str
    init: Callable[[State, tuple[str, ...], Any], Any]
    broadcast: Callable[[Any, Any], ClientStart]
    perturbation: Callable[[Any], str]
    server_update: Callable[[Any, ClientStart, State, Any], Any]


def get(name: str) -> Algorithm:
    """The algorithm record for a name.

    Raises:
        LandscapeError: unknown name.
    """
    from landscape.train.algorithms import fedasam, fedavg, fedavgm, fednsam, fedsam

    table = {m.ALGORITHM.name: m.ALGORITHM for m in (fedavg, fedavgm, fedsam, fedasam, fednsam)}
    if name not in table:
        raise LandscapeError(f"unknown algorithm '{name}'; choose one of {', '.join(table)}")
    return table[name]
