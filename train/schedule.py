"""The client learning rate of each round: a base schedule, and SWA's cycle [C22 §4, eq. 8].

Base schedule over the T rounds (0-based round t):

- ``constant``: ``lr_t = lr`` [C22].
- ``cosine``: ``lr_t = lr (1 + cos(pi t / T)) / 2``, the FedNSAM code's
  ``eta_min + (eta_max - eta_min) (1 + cos(pi t / T)) / 2`` with ``eta_min = 0``.

With SWA, from round ``t_0 = floor(swa_start * T)`` the rate cycles with period c instead: for
``i = t - t_0``,

    lr_i = (1 - s) gamma1 + s gamma2,   s = ((i mod c) + 1) / c          [C22 eq. 8]

so each cycle runs from just below gamma1 down to gamma2, and c = 1 is a constant gamma2.
fedsam's code cycles only when c > 1; with c = 1 its clients keep the client lr, which
``swa_c1_keeps_lr`` reproduces.
"""

from __future__ import annotations

import math
from typing import Any

from landscape.train.swa import swa_start_round


def base_lr(cfg: Any, t: int) -> float:
    """The base schedule's rate at 0-based round ``t`` (before any SWA cycle).

    >>> from landscape.train.config import TrainConfig
    >>> cfg = TrainConfig(num_rounds=4, lr=0.1, lr_schedule="cosine")
    >>> [round(base_lr(cfg, t), 6) for t in range(4)]
    [0.1, 0.085355, 0.05, 0.014645]
    """
    if cfg.lr_schedule == "cosine":
        return 0.5 * float(cfg.lr) * (1.0 + math.cos(math.pi * t / cfg.num_rounds))
    return float(cfg.lr)


def client_lr(cfg: Any, t: int) -> float:
    """The client learning rate of 0-based round ``t``.

    >>> from landscape.train.config import TrainConfig
    >>> cfg = TrainConfig(num_rounds=100, swa=True, swa_cycle=4, swa_gamma1=1.0, swa_gamma2=0.0)
    >>> [client_lr(cfg, t) for t in (74, 75, 76, 77, 78, 79)]
    [0.01, 0.75, 0.5, 0.25, 0.0, 0.75]
    >>> c1 = cfg.replace(swa_cycle=1)
    >>> client_lr(c1, 80), client_lr(c1.replace(swa_c1_keeps_lr=True), 80)
    (0.0, 0.01)
    """
    t0 = swa_start_round(cfg)
    if not cfg.swa or t < t0 or (cfg.swa_cycle == 1 and cfg.swa_c1_keeps_lr):
        return base_lr(cfg, t)
    s = ((t - t0) % cfg.swa_cycle + 1) / cfg.swa_cycle
    return (1 - s) * cfg.swa_gamma1 + s * cfg.swa_gamma2
