"""Aggregation: every sample-weighted sum and mean of client models goes through here.

A block of clients (any subset of a round's cohort) reduces to :class:`ClientSums`: the
sample-weighted sum of its client models and the total weight. Sums of blocks add up, so a
round split over blocks (or machines) is combined by adding them, and :func:`mean_delta` turns
the total into the server's ``mean_delta = sum_k n_k w_k / sum_k n_k - start``, which equals
``sum_k n_k (w_k - start) / sum_k n_k``, the weighted mean of the client deltas. (Summing the
models, not the deltas, keeps the weighted mean ``sum_k n_k w_k / N`` the very numbers of the
earlier releases.) Integer buffers (BatchNorm's ``num_batches_tracked``) are summed in float64
and their mean rounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

State = dict[str, Tensor]


@dataclass(frozen=True)
class ClientSums:
    """The sample-weighted sum of a block's client models and its total weight.

    Attributes:
        weighted_sum: ``sum_k n_k w_k`` per tensor (float tensors in their dtype, integer ones in float64).
        total_weight: ``sum_k n_k``.
    """

    weighted_sum: State
    total_weight: float

    def __add__(self, other: ClientSums) -> ClientSums:
        return ClientSums({k: v + other.weighted_sum[k] for k, v in self.weighted_sum.items()},
                          self.total_weight + other.total_weight)


def weighted_sum(states: Sequence[State], weights: Sequence[float]) -> ClientSums:
    """``sum_k n_k w_k`` of client models given one by one."""
    out = {}
    for k, ref in states[0].items():
        if ref.is_floating_point():
            out[k] = sum(s[k] * w for s, w in zip(states, weights))
        else:
            out[k] = sum(s[k].double() * w for s, w in zip(states, weights))
    return ClientSums(out, float(sum(weights)))


def stacked_weighted_sum(stacked: State, weights: Tensor) -> ClientSums:
    """``sum_k n_k w_k`` of client models stacked along a leading dimension; ``weights`` float64 ``(K,)``."""
    out = {}
    K = weights.shape[0]
    for k, v in stacked.items():
        w = weights.to(v.dtype if v.is_floating_point() else torch.float64).view((K,) + (1,) * (v.ndim - 1))
        out[k] = (v * w).sum(0) if v.is_floating_point() else (v.double() * w).sum(0)
    return ClientSums(out, float(weights.sum()))


def weighted_mean(sums: ClientSums, like: State) -> State:
    """``sum_k n_k w_k / sum_k n_k`` per tensor, in the dtypes of ``like`` (integers rounded)."""
    out = {}
    for k, acc in sums.weighted_sum.items():
        if like[k].is_floating_point():
            out[k] = acc / sums.total_weight
        else:
            out[k] = torch.round(acc / sums.total_weight).to(like[k].dtype)
    return out


@dataclass(frozen=True)
class MeanDelta:
    """The server's input: the weighted mean of the client deltas, with the mean model it comes from.

    ``delta[k] = mean[k] - start[k]``. A server step of lr 1 without momentum lands on
    ``start + delta``, which is the mean ``sum_k n_k w_k / N`` in exact arithmetic but not always
    in floating point; such tensors take ``mean`` itself, so FedAvg's global model (and every
    buffer) is the client mean to the last bit, as in the first release.

    Attributes:
        delta: ``sum_k n_k (w_k - start) / sum_k n_k`` per tensor (integer tensors: the rounded mean minus start).
        mean: ``sum_k n_k w_k / sum_k n_k`` per tensor (integer buffers rounded).
    """

    delta: State
    mean: State


def mean_delta(sums: ClientSums, start: State) -> MeanDelta:
    """The weighted mean of the client deltas, ``sum_k n_k w_k / sum_k n_k - start``, and that mean."""
    mean = weighted_mean(sums, start)
    return MeanDelta({k: v - start[k] for k, v in mean.items()}, mean)
