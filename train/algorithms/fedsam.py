"""FedSAM [C22]: FedAvg whose clients take SAM steps (``e = rho g / ||g||``, eq. 4)."""

from __future__ import annotations

from typing import Any

from landscape.train.algorithms import Algorithm, fedavg


def perturbation(cfg: Any) -> str:
    """The SAM ascent step."""
    return "sam"


ALGORITHM = Algorithm("fedsam", fedavg.init, fedavg.broadcast, perturbation, fedavg.server_update)
