"""A fully connected network at many points of a parameter subspace at once (feature-major layout).

A surface evaluates one network at K points ``w(c_k) = w0 + sum_i c_{k,i} d_i``. When the
network is a chain ``x -> Linear -> act -> Linear -> ... -> Linear`` (an MLP; the
activations elementwise), two facts make the K points much cheaper than K forwards:

- The first layer sees the same input x at every point and is affine in its weight and
  bias, so ``x W(c)^T + b(c) = R_0 + sum_i c_i R_i`` with ``R_0 = x W_0^T + b_0`` and
  ``R_i = x D_i^T + e_i`` (``D_i, e_i`` the direction's weight and bias parts). The
  responses are computed once per batch; the K points then cost one
  ``(K, 1 + d) x (1 + d, out * B)`` product instead of K products with x.
- Every later layer is one batched product ``A_{l+1} = b_l(c) + W_l(c) A_l`` on activations
  kept as ``(K, features, B)``. With the sample dimension last the products are
  ``(out x in)(in x B)``: for the 10-class output layer of the digits MLP about 3x faster
  on a CPU than ``(B x in)(in x out)``, the layout a vmapped ``nn.Linear`` uses.

:func:`find_chain` recognizes such a network from one traced forward; :mod:`landscape.surface`
uses :class:`LinearChain` only after checking it against the plain forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity, nn.Dropout,
)
"""Modules that act on every entry alone in eval mode (so the layout of their input does not matter)."""


def find_chain(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """The modules of ``model`` in call order if its forward is a Linear/elementwise chain, else None.

    One forward on ``x`` is traced with hooks on the leaf modules. It is a chain when the
    first module with parameters is an ``nn.Linear`` fed the flattened input (only
    ``nn.Flatten`` or elementwise modules before it), every later call is a Linear or an
    :data:`ELEMENTWISE` module fed exactly the previous call's output tensor (so no
    computation hides between the modules), no module runs twice, and the last call's
    output is the model's output.
    """
    calls: list[tuple[str, nn.Module, Any, Any]] = []
    leaves = [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None]
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: calls.append((name, mod, inp, out)))
        for name, m in leaves
    ]
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for h in hooks:
            h.remove()
    first = next((i for i, (_, m, _, _) in enumerate(calls) if isinstance(m, nn.Linear)), None)
    if first is None or len({name for name, *_ in calls}) != len(calls):
        return None
    if not all(isinstance(m, (nn.Flatten, *ELEMENTWISE)) for _, m, _, _ in calls[:first]):
        return None
    inputs = calls[first][2]
    flat = x.reshape(len(x), -1)
    if not (len(inputs) == 1 and inputs[0].shape == flat.shape and torch.equal(inputs[0], flat)):
        return None
    for (_, _, _, previous), (_, m, inp, _) in zip(calls[first:], calls[first + 1 :]):
        if not (isinstance(m, (nn.Linear, *ELEMENTWISE)) and len(inp) == 1 and inp[0] is previous):
            return None
    if calls[-1][3] is not output:
        return None
    return [(name, m) for name, m, _, _ in calls[first:]]


class LinearChain:
    """Logits of a Linear/elementwise chain at K points ``w0 + c_k . d`` (see the module docstring).

    Args:
        layers: the chain from :func:`find_chain`.
        origin: the base point's tensors by parameter name (at least every Linear
            parameter that moves; others come from ``fixed``).
        stacked: ``(num_directions, *shape)`` direction tensors by parameter name, for
            the parameters that move.
        fixed: tensors of the parameters that do not move.
    """

    def __init__(
        self,
        layers: Sequence[tuple[str, nn.Module]],
        origin: Mapping[str, torch.Tensor],
        stacked: Mapping[str, torch.Tensor],
        fixed: Mapping[str, torch.Tensor],
    ) -> None:
        self.layers = list(layers)
        self.num_directions = next(iter(stacked.values())).shape[0]
        # Per Linear layer: (1 + d, out * in) weights and (1 + d, out) biases, row 0 the base point.
        self.weights: dict[str, torch.Tensor] = {}
        self.biases: dict[str, torch.Tensor] = {}
        for name, m in self.layers:
            if isinstance(m, nn.Linear):
                prefix = f"{name}." if name else ""
                w = self._stack(prefix + "weight", origin, stacked, fixed, m.weight.shape)
                b = self._stack(prefix + "bias", origin, stacked, fixed, (m.out_features,))
                self.weights[name], self.biases[name] = w.flatten(1), b

    def _stack(self, key: str, origin: Mapping[str, torch.Tensor], stacked: Mapping[str, torch.Tensor],
               fixed: Mapping[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """(1 + d, *shape): the base value then the direction parts (zero for a tensor that does not move)."""
        if key in stacked:
            return torch.cat([origin[key][None], stacked[key]])
        out = next(iter(stacked.values())).new_zeros((1 + self.num_directions, *shape))
        if key in fixed:  # a frozen parameter; a missing bias stays zero
            out[0] = fixed[key]
        return out

    def responses(self, x: torch.Tensor) -> torch.Tensor:
        """(1 + d, out * B): the first layer's ``R_0, R_1, ...`` on the batch x, feature-major."""
        name, m = self.layers[0]
        w = self.weights[name].view(-1, m.out_features, m.in_features)
        return (torch.matmul(w, x.reshape(len(x), -1).T) + self.biases[name][:, :, None]).flatten(1)

    def logits(self, coords: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(K, C, B) logits at the K points ``coords`` (K x d) on the batch of ``responses``."""
        c = torch.cat([coords.new_ones(len(coords), 1), coords], dim=1)
        a = (c @ responses).view(len(c), self.layers[0][1].out_features, -1)
        for name, m in self.layers[1:]:
            if isinstance(m, nn.Linear):
                w = (c @ self.weights[name]).view(len(c), m.out_features, m.in_features)
                a = torch.baddbmm((c @ self.biases[name])[:, :, None], w, a)
            elif isinstance(m, nn.ReLU):
                a = a.relu_()  # a is this function's own buffer
            else:
                a = m(a)
        return a
