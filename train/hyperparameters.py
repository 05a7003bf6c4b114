"""The algorithms' names and hyperparameter defaults, each written once (and torch-free, so the
command line parser reads them without importing torch).

The factories of :mod:`landscape.train.algorithms` take their defaults from here and the
training config (:mod:`landscape.train.config`) reads the same table; ``tests/test_train_algorithms.py``
checks that every name has a factory.

References: [C22] Table 11 (CIFAR-100 rho), [K21] ASAM, [L26] FedNSAM's reference settings.
"""

ALGORITHMS = ("fedavg", "fedavgm", "fedsam", "fedasam", "fednsam")
#: rho per algorithm when none is named: SAM 0.05, ASAM 0.5 (eta 0.2) [C22 Table 11], FedNSAM 0.05 [L26].
DEFAULT_RHO = {"fedsam": 0.05, "fedasam": 0.5, "fednsam": 0.05}
DEFAULT_ETA = 0.2
DEFAULT_GAMMA = 0.85
#: ASAM's normalization operator: ``kwon`` [K21] or ``davda54`` (T = |w| everywhere, eps 1e-12).
ASAM_VARIANTS = ("kwon", "davda54")
#: How a FedNSAM client builds its perturbation eps: along the global momentum, or a local SAM step.
PERTURBATIONS = ("global_momentum", "local_sam")
