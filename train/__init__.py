"""Federated training for the loss-landscape toolkit.

FedAvg, FedAvgM, FedSAM, FedASAM [C22] and FedNSAM [L26], each optionally with server-side
SWA [C22 §4], on two interchangeable engines: a sequential reference loop and a batched cohort
engine (``torch.func.functional_call`` + ``vmap`` over stacked client parameters). Runs write
self-describing :mod:`landscape.checkpoint` files that the analysis commands read directly.

Layout (a federated algorithm = a client update + a server update, FedJAX/optax style):

- :mod:`train.sam`: SAM / ASAM perturbations as pure functions.
- :mod:`train.algorithms`: server states (typed dataclasses), broadcast and server updates.
- :mod:`train.swa`: the cyclic client learning rate and the SWA running mean.
- :mod:`train.engine`: one round on the sequential or the batched engine.
- :mod:`train.config`: the frozen :class:`~train.config.TrainConfig` and the paper presets.
- :mod:`train.folder`: the run folder: its layout, config.json, state.pt, metrics.jsonl.
- :mod:`train.run`: the training loop: set-up, rounds, checkpoints, resume.

``train`` imports ``landscape``; ``landscape`` never imports ``train``.
"""
