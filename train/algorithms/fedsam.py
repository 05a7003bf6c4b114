"""FedSAM and FedASAM [C22, K21]: FedAvg whose clients take SAM / ASAM steps."""

from __future__ import annotations

from landscape.train.algorithms import Algorithm
from landscape.train.algorithms.client import ClientSGD, asam_eps, sam_eps, sam_gradient
from landscape.train.algorithms.fedavg import averaging
from landscape.train.hyperparameters import ASAM_VARIANTS, DEFAULT_ETA, DEFAULT_RHO


def fedsam(rho: float = DEFAULT_RHO["fedsam"], bn_first_pass_only: bool = False,
           client: ClientSGD = ClientSGD()) -> Algorithm:
    """FedSAM [C22 eq. 4]: ``e = rho g / ||g||``; rho = 0.05 on CIFAR-100 [C22 Table 11].

    Args:
        rho: the SAM neighbourhood.
        bn_first_pass_only: keep the normalization statistics of the first pass only.
        client: the client SGD.
    """
    return averaging("fedsam", sam_gradient(sam_eps(rho), bn_first_pass_only), client)


def fedasam(rho: float = DEFAULT_RHO["fedasam"], eta: float = DEFAULT_ETA, variant: str = "kwon",
            bn_first_pass_only: bool = False,
            client: ClientSGD = ClientSGD()) -> Algorithm:
    """FedASAM [C22, K21]: ``e = rho T^2 g / ||T g||``; rho = 0.5, eta = 0.2 on CIFAR-100.

    Raises:
        ValueError: unknown ASAM variant.
    """
    if variant not in ASAM_VARIANTS:
        raise ValueError(f"unknown ASAM variant {variant!r}; choose one of {ASAM_VARIANTS}")
    return averaging("fedasam", sam_gradient(asam_eps(rho, eta, variant), bn_first_pass_only), client)
