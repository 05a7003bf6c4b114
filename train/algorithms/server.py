"""The server side: typed server states that serialize themselves, and the one server optimizer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from landscape.train.aggregate import MeanDelta

State = dict[str, Tensor]


@dataclass(frozen=True)
class ServerState:
    """Base of every server state: the global model, its parameter names and the round.

    ``to_dict`` / ``from_dict`` are the state's own on-disk form (``state.pt``'s ``server``
    entry: ``{"type": class name, "fields": {...}}``, the layout written since the first release).
    """

    weights: State
    param_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["param_names"] = list(fields["param_names"])
        return {"type": type(self).__name__, "fields": fields}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ServerState:
        fields = dict(payload["fields"])
        fields["param_names"] = tuple(fields["param_names"])
        return cls(**fields)


@dataclass(frozen=True)
class ServerSGD:
    """Server SGD on the pseudo-gradient ``d = -Delta``, Delta the mean client delta [C22 App. C, L26].

    - no momentum state (FedAvg): ``x <- x + Delta``, the weighted mean of the client models.
    - heavy ball (FedAvgM): ``v <- beta v + d``, ``x <- x - lr v``.
    - Nesterov (FedNSAM): the clients started from the look-ahead ``z = x + beta m``;
      ``m <- beta m + Delta``, ``x <- z + Delta``.

    Tensors without momentum (normalization buffers, and every tensor of FedAvg) take the client
    mean itself, which ``start + Delta`` equals in exact arithmetic (see :class:`MeanDelta`).

    Attributes:
        lr: eta_s (1.0 [C22]); the Nesterov form is written for lr 1, as [L26].
        momentum: beta (FedAvgM 0.9 [C22]; FedNSAM's gamma 0.85 [L26]).
        nesterov: the Nesterov (look-ahead) form.
    """

    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False

    def step(self, weights: State, start: State, update: MeanDelta, buf: State | None
             ) -> tuple[State, State | None]:
        """The new global model and momentum buffer (None stays None).

        Args:
            weights: the global model x.
            start: what the clients started from (x, or the look-ahead z).
            update: the mean delta and mean model of the round.
            buf: the momentum per tensor that carries it (None: no momentum).
        """
        new = dict(update.mean)
        if buf is None:
            return new, None
        out = {}
        for k, b in buf.items():
            if self.nesterov:
                out[k] = self.momentum * b + update.delta[k]
                new[k] = start[k] + update.delta[k]
            else:
                out[k] = self.momentum * b + -update.delta[k]
                new[k] = weights[k] - self.lr * out[k]
        return new, out
