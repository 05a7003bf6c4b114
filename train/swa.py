"""Server-side SWA with the cyclic client learning rate [C22 §4, App. A.2, Algorithm 1].

From round ``t_0 = floor(swa_start * T)`` (75% of the rounds) the client learning rate cycles
with period c (:func:`landscape.train.schedule.client_lr`, [C22] eq. 8). At the end of every cycle (after the
round with ``i mod c = c - 1``, the lowest learning rate) the new global model joins the running
mean ``w_swa <- (w_swa n + w) / (n + 1)`` [C22 eq. 9]; the first collected model has weight 1.
fedsam's code collects right after the highest-lr round (``i mod c = 0``, from the second cycle
on): ``swa_collect_early``. (fedsam takes the cycle phase from the absolute round number; the two
agree whenever t_0 is a multiple of c, as in all of [C22]'s settings.)
Only parameters are averaged; buffers are taken from the latest model (normalization statistics
must be recomputed for the SWA weights, see :func:`landscape.train.run.recompute_batchnorm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from landscape.train.algorithms import State


def swa_start_round(cfg: Any) -> int:
    """``t_0 = floor(swa_start * T)``, the first 0-based round of the SWA phase."""
    return int(cfg.swa_start * cfg.num_rounds)


def is_collection_round(cfg: Any, t: int) -> bool:
    """Whether the global model after 0-based round ``t`` joins the SWA mean."""
    t0 = swa_start_round(cfg)
    if not cfg.swa or t < t0:
        return False
    phase = (t - t0) % cfg.swa_cycle
    if cfg.swa_collect_early:  # fedsam's main.py: i > swa_start and (i - swa_start) % c == 0
        return phase == 0 and t > t0
    return phase == cfg.swa_cycle - 1


@dataclass(frozen=True)
class SWAState:
    """The running SWA mean.

    Attributes:
        weights: mean parameters (buffers of the latest collected model); None before the first.
        num_models: number of collected models n.
    """

    weights: State | None = None
    num_models: int = 0


def collect(swa: SWAState, weights: State, param_names: tuple[str, ...]) -> SWAState:
    """``w_swa <- (w_swa n + w) / (n + 1)`` on the parameters [C22 eq. 9]."""
    n = swa.num_models
    out = {k: v.clone() for k, v in weights.items()}
    if swa.weights is not None and n > 0:
        for k in param_names:
            out[k] = (swa.weights[k] * n + weights[k]) / (n + 1)
    return SWAState(out, n + 1)
