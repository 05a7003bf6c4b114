"""A network at many points of a parameter subspace at once: its first layer from per-direction responses.

A surface evaluates one network at K points ``w(c_k) = w0 + sum_i c_{k,i} d_i``. Two facts
make the K points cheaper than K forwards:

- The first layer with parameters sees the same input x at every point, and a fully
  connected layer or a convolution is affine in its weight and bias:
  ``layer(x; W(c), b(c)) = R_0 + sum_i c_i R_i`` with ``R_0 = layer(x; W_0, b_0)`` and
  ``R_i = layer(x; D_i, e_i)`` (``D_i, e_i`` the direction's weight and bias parts; for a
  convolution ``R_i = conv(x, D_i) + e_i``). :class:`FirstLayer` computes the responses
  once per batch (one call with the ``(1 + d)`` weights stacked, a single convolution with
  ``(1 + d) * out_channels`` filters) and then forms the layer's output at the K points by
  one ``(K, 1 + d) x (1 + d, B * out)`` product instead of K layer calls on x. The rest of
  the network runs as before (:mod:`landscape.surface`, ``vmap`` over the points), fed
  those outputs in place of the first layer's.
- When the whole network is a chain ``x -> Linear -> act -> Linear -> ... -> Linear`` (an
  MLP; the activations elementwise), every later layer is one batched product
  ``A_{l+1} = b_l(c) + W_l(c) A_l`` on activations kept as ``(K, features, B)``
  (:class:`LinearChain`). With the sample dimension last the products are
  ``(out x in)(in x B)``: for the 10-class output layer of the digits MLP about 3x faster
  on a CPU than ``(B x in)(in x out)``, the layout a vmapped ``nn.Linear`` uses.

:func:`find_first_layer` and :func:`find_chain` recognize these networks from one traced
forward; :mod:`landscape.surface` uses them only after checking them against the plain forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity, nn.Dropout,
)
"""Modules that act on every entry alone in eval mode (so the layout of their input does not matter)."""

AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose output is affine in their parameters (weight, bias): the first layer :class:`FirstLayer` takes."""

Call = tuple[str, nn.Module, Any, Any]


def trace(model: nn.Module, x: torch.Tensor) -> tuple[list[Call], Any]:
    """``(name, module, inputs, output)`` of every leaf-module call of one forward on x, in call order,
    and the model's output."""
    calls: list[Call] = []
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
    return calls, output


def _first_layer(model: nn.Module, calls: Sequence[Call], x: torch.Tensor) -> int | None:
    """Index into ``calls`` of the first layer :class:`FirstLayer` can take, or None (see :func:`find_first_layer`)."""
    first = next((i for i, (_, m, _, _) in enumerate(calls) if next(m.parameters(), None) is not None), None)
    if first is None:
        return None
    name, m, inputs, _ = calls[first]
    if not isinstance(m, AFFINE) or sum(n == name for n, *_ in calls) != 1:
        return None
    if m._forward_hooks or m._forward_pre_hooks or any(s is m for n, s in model.named_modules(remove_duplicate=False) if n != name):
        return None  # hooks of the caller's, or the layer also reachable under a second name
    if not all(isinstance(p, (nn.Flatten, *ELEMENTWISE)) for _, p, _, _ in calls[:first]):
        return None
    if not (len(inputs) == 1 and isinstance(inputs[0], torch.Tensor)):
        return None
    seen = inputs[0]
    if not any(seen.shape == v.shape and torch.equal(seen, v) for v in (x, x.flatten(1))):
        return None
    return first


def find_first_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module, bool] | None:
    """``(name, module, flatten)`` of the network's first layer if :class:`FirstLayer` can evaluate it, else None.

    One forward on ``x`` is traced with hooks on the leaf modules. The first leaf with
    parameters must be an :data:`AFFINE` layer called exactly once, without hooks of its own
    and under one name, fed the model's input itself (``flatten`` False) or flattened to
    ``(B, -1)`` (``flatten`` True), with only ``nn.Flatten`` or :data:`ELEMENTWISE` modules
    called before it. So a layer called twice, or preceded by a pooling, a normalization or
    any other computation that changes its input, is refused.
    """
    calls, _ = trace(model, x)
    first = _first_layer(model, calls, x)
    if first is None:
        return None
    name, m, inputs, _ = calls[first]
    flatten = not (inputs[0].shape == x.shape and torch.equal(inputs[0], x))
    return name, m, flatten


def find_chain(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """The modules of ``model`` in call order if its forward is a Linear/elementwise chain, else None.

    One forward on ``x`` is traced with hooks on the leaf modules. It is a chain when the
    first layer (:func:`find_first_layer`) is an ``nn.Linear`` fed the flattened input,
    every later call is a Linear or an :data:`ELEMENTWISE` module fed exactly the previous
    call's output tensor (so no computation hides between the modules), no module runs
    twice, and the last call's output is the model's output.
    """
    calls, output = trace(model, x)
    first = _first_layer(model, calls, x)
    if first is None or not isinstance(calls[first][1], nn.Linear) or calls[first][2][0].dim() != 2:
        return None
    if len({name for name, *_ in calls}) != len(calls):
        return None
    for (_, _, _, previous), (_, m, inp, _) in zip(calls[first:], calls[first + 1 :]):
        if not (isinstance(m, (nn.Linear, *ELEMENTWISE)) and len(inp) == 1 and inp[0] is previous):
            return None
    if calls[-1][3] is not output:
        return None
    return [(name, m) for name, m, _, _ in calls[first:]]


def stack_parameter(key: str, origin: Mapping[str, torch.Tensor], stacked: Mapping[str, torch.Tensor],
                    fixed: Mapping[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """(1 + d, *shape): the base value of parameter ``key`` then its direction parts (zero for a
    tensor that does not move; a frozen one keeps its value in row 0, a missing bias stays zero)."""
    if key in stacked:
        return torch.cat([origin[key][None], stacked[key]])
    like = next(iter(stacked.values()))
    out = like.new_zeros((1 + like.shape[0], *shape))
    if key in fixed:
        out[0] = fixed[key]
    return out


class FirstLayer:
    """The first layer's output at K points ``w0 + c_k . d`` from its responses (see the module docstring).

    Memory: the responses of one batch are ``(1 + d)`` times the layer's output on it (for a
    2D surface 3x the first activation), and the outputs at K points K times it.

    Args:
        name, module, flatten: from :func:`find_first_layer`.
        origin: the base point's tensors by parameter name.
        stacked: ``(num_directions, *shape)`` direction tensors by parameter name, for
            the parameters that move.
        fixed: tensors of the parameters that do not move.
    """

    def __init__(self, name: str, module: nn.Module, flatten: bool, origin: Mapping[str, torch.Tensor],
                 stacked: Mapping[str, torch.Tensor], fixed: Mapping[str, torch.Tensor]) -> None:
        self.name, self.module, self.flatten = name, module, flatten
        self.num_directions = next(iter(stacked.values())).shape[0]
        prefix = f"{name}." if name else ""
        # (1 + d, *shape) per parameter of the layer, row 0 the base point; a layer without bias has none.
        self.params = {k: stack_parameter(prefix + k, origin, stacked, fixed, p.shape)
                       for k, p in module.named_parameters(recurse=False)}

    def responses(self, x: torch.Tensor) -> torch.Tensor:
        """(1 + d, B, *out): ``R_0, R_1, ...`` on the batch x, each the layer's own forward (one
        call: vmap over the stacked weights turns a convolution into one with ``(1 + d)`` times the filters)."""
        x = x.flatten(1) if self.flatten else x
        return vmap(lambda p: functional_call(self.module, p, (x,)))(self.params)

    @staticmethod
    def at(coords: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(K, ...): ``R_0 + sum_i c_{k,i} R_i`` at the K points ``coords`` (K x d); ``responses`` (1 + d, ...)."""
        c = torch.cat([coords.new_ones(len(coords), 1), coords], dim=1)
        return (c @ responses.reshape(len(responses), -1)).view(len(c), *responses.shape[1:])


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
        self.first = FirstLayer(*self.layers[0], True, origin, stacked, fixed)
        self.num_directions = self.first.num_directions
        # Per later Linear layer: (1 + d, out * in) weights and (1 + d, out) biases, row 0 the base point.
        self.weights: dict[str, torch.Tensor] = {}
        self.biases: dict[str, torch.Tensor] = {}
        for name, m in self.layers[1:]:
            if isinstance(m, nn.Linear):
                prefix = f"{name}." if name else ""
                w = stack_parameter(prefix + "weight", origin, stacked, fixed, m.weight.shape)
                b = stack_parameter(prefix + "bias", origin, stacked, fixed, (m.out_features,))
                self.weights[name], self.biases[name] = w.flatten(1), b

    def responses(self, x: torch.Tensor) -> torch.Tensor:
        """(1 + d, out, B): the first layer's ``R_0, R_1, ...`` on the batch x, feature-major."""
        return self.first.responses(x).transpose(1, 2).contiguous()

    def logits(self, coords: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(K, C, B) logits at the K points ``coords`` (K x d) on the batch of ``responses``."""
        c = torch.cat([coords.new_ones(len(coords), 1), coords], dim=1)
        a = self.first.at(coords, responses)
        for name, m in self.layers[1:]:
            if isinstance(m, nn.Linear):
                w = (c @ self.weights[name]).view(len(c), m.out_features, m.in_features)
                a = torch.baddbmm((c @ self.biases[name])[:, :, None], w, a)
            elif isinstance(m, nn.ReLU):
                a = a.relu_()  # a is this function's own buffer
            else:
                a = m(a)
        return a
