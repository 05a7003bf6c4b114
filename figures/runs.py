"""The training runs the figures are made from, once per mode: ``quick`` (digits, CPU) and ``paper``.

A run is a preset of ``landscape train`` and the fields it changes (:class:`RunSpec`); its name
says its setting: ``fedasam-swa-a0`` is FedASAM + SWA at alpha = 0 with 5 clients per round,
``-c20`` (``-c10`` in quick mode) with more clients per round ([C22] Fig. 10), ``l26-fednsam`` a
run of the [L26] setting. Each run is written down once, with every period any figure needs
(global checkpoints for [C22] Fig. 3 and 7, client checkpoints for Fig. 2, curvature tracking for
Fig. 4 and [L26]), so every figure that reads it reads the same run.

- paper: the [C22] presets ``c22-cifar100-a{alpha}-{algorithm}[-swa]`` (CIFAR-100, CNN, 20k
  rounds) and ``l26-cifar100-fednsam`` with the algorithm swapped (FedASAM with [C22]'s rho 0.5).
- quick: the ``digits-demo`` preset shrunk to a few seconds a run (hidden layer of 16, 30 rounds,
  checkpoints every 3 rounds, SWA from round 22 with a cycle of 2); its alpha = 1000 stands for
  [C22]'s homogeneous alpha = 1k.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MODES = ("quick", "paper")
#: What the quick runs change in the ``digits-demo`` preset.
QUICK = {"model_kwargs": {"hidden": [16]}, "num_rounds": 30, "local_epochs": 1, "eval_every": 3, "save_every": 3,
         "swa_cycle": 2}
#: Rounds between curvature measurements (``--track-every``) of the runs that track it.
TRACK_EVERY = {"quick": 5, "paper": {"c22": 500, "l26": 25}}
#: Clients per round of [C22] Fig. 10 (20 of 100; 10 of the 20 digits clients in quick mode).
MANY_CLIENTS = {"quick": 10, "paper": 20}
#: Runs whose curvature is tracked: [C22] Fig. 4 (FedAvg and FedASAM at both alphas) and [L26].
TRACKED = {"fedavg-a0", "fedasam-a0", "fedavg-a1000", "fedasam-a1000", "fedsam-a0", "fednsam-a0"}
#: Runs that keep the clients' models of their last round ([C22] Fig. 2).
WITH_CLIENTS = {"fedavg-a0"}
#: [L26]'s algorithms, by label.
L26 = {"FedAvg": "fedavg", "FedSAM": "fedsam", "FedASAM": "fedasam", "FedNSAM": "fednsam"}


@dataclass(frozen=True)
class RunSpec:
    """A run: a preset of ``landscape train`` and the config fields it changes."""

    name: str
    preset: str
    changes: dict[str, Any] = field(default_factory=dict)

    def config(self) -> Any:
        """The :class:`~landscape.train.config.TrainConfig` (not yet resolved against the data)."""
        from landscape.train.config import make_config

        return make_config(self.preset, **self.changes)

    def argv(self) -> list[str]:
        """The ``landscape train`` flags that make it (without ``--out``).

        >>> RunSpec("x", "digits-demo", {"num_rounds": 3, "swa": True, "model_kwargs": {"hidden": [4]}}).argv()
        ['train', '--preset', 'digits-demo', '--rounds', '3', '--swa', '--model-kwargs', '{"hidden": [4]}']
        """
        from landscape.train.config import flag

        argv = ["train", "--preset", self.preset]
        for name, value in self.changes.items():
            if isinstance(value, bool):
                argv.append(flag(name) if value else "--no-" + flag(name)[2:])
            else:
                argv += [flag(name), json.dumps(value) if isinstance(value, dict) else f"{value:g}"
                         if isinstance(value, float) else str(value)]
        return argv


def c22(mode: str, algorithm: str, alpha: float = 0.0, swa: bool = False, many_clients: bool = False) -> RunSpec:
    """A [C22] run: CIFAR-100 at ``alpha`` in {0, 1000} (paper), or its digits stand-in (quick)."""
    name = f"{algorithm}{'-swa' if swa else ''}-a{alpha:g}{f'-c{MANY_CLIENTS[mode]}' if many_clients else ''}"
    changes: dict[str, Any] = {"clients_per_round": MANY_CLIENTS[mode]} if many_clients else {}
    if name in TRACKED:
        changes["track_every"] = TRACK_EVERY["quick"] if mode == "quick" else TRACK_EVERY["paper"]["c22"]
    if mode == "quick":
        changes = {"algorithm": algorithm, "alpha": alpha, "swa": swa, **QUICK, **changes}
        preset, rounds = "digits-demo", QUICK["num_rounds"]
    else:
        preset, rounds = f"c22-cifar100-a{alpha:g}-{algorithm}{'-swa' if swa else ''}", 20000
    if name in WITH_CLIENTS:
        changes["save_clients_every"] = rounds
    return RunSpec(name, preset, changes)


def l26(mode: str, algorithm: str) -> RunSpec:
    """An [L26] run: the FedNSAM preset with ``algorithm`` (paper), or the quick alpha = 0 run."""
    if mode == "quick":
        return c22(mode, algorithm)
    changes: dict[str, Any] = {"algorithm": algorithm, "track_every": TRACK_EVERY["paper"]["l26"]}
    if algorithm == "fedasam":
        changes["rho"] = 0.5  # ASAM's neighbourhood is 10x SAM's [C22 Table 11]
    return RunSpec(f"l26-{algorithm}", "l26-cifar100-fednsam", changes)
