"""Federated training for the loss-landscape toolkit.

FedAvg, FedAvgM, FedSAM, FedASAM [C22] and FedNSAM [L26], each optionally with server-side
SWA [C22 §4], on two interchangeable engines: a sequential reference loop and a batched cohort
engine (``torch.func.functional_call`` + ``vmap`` over stacked client parameters). Runs write
self-describing :mod:`landscape.checkpoint` files that the analysis commands read directly.

Layout (a federated algorithm = a client update + a server update, FedJAX/optax style):

- :mod:`landscape.train.sam`: SAM / ASAM perturbations as pure functions.
- :mod:`landscape.train.algorithms`: factories (``fedavg()``, ``fedsam(rho=...)``, ...) returning client
  steps and server updates over typed server states; ``from_config`` maps a config onto them.
- :mod:`landscape.train.aggregate`: weighted sums of client models and the mean delta.
- :mod:`landscape.train.swa`: the cyclic client learning rate and the SWA running mean.
- :mod:`landscape.train.engine`: runs a block of clients (or a round) on the sequential or the batched engine.
- :mod:`landscape.train.config`: the frozen :class:`~landscape.train.config.TrainConfig` and the paper presets.
- :mod:`landscape.train.folder`: the run folder: its layout, config.json, state.pt, metrics.jsonl.
- :mod:`landscape.train.run`: the training loop: set-up, rounds, checkpoints, resume.
- :mod:`landscape.train.distributed`: the same loop under torchrun, each rank training a block of every cohort.

``train`` imports ``landscape``; ``landscape`` never imports ``train``.
"""
