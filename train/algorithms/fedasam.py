"""FedASAM [C22, K21]: FedAvg whose clients take ASAM steps (``e = rho T^2 g / ||T g||``)."""

from __future__ import annotations

from typing import Any

from landscape.train.algorithms import Algorithm, fedavg


def perturbation(cfg: Any) -> str:
    """The adaptive (ASAM) ascent step."""
    return "asam"


ALGORITHM = Algorithm("fedasam", fedavg.init, fedavg.broadcast, perturbation, fedavg.server_update)
