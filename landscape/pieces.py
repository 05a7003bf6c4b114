"""Cache-sized pieces of a batch: how many samples one forward should hold.

A forward (or a Hessian-vector product through a kept graph) over a big batch is slower per
sample than over a small one on a CPU once the batch's activations leave the caches: the CIFAR
CNN's first activation alone is 200 KB per image, 100 MB for 512 images. Measured on 2 cores
(``bench/surface.py``, ``bench/processes.py``): a forward of 512 images in 64-image pieces 1.6x
faster than in one, a Hessian-vector product 1.65x. Every analysis here is a sum over samples
(the mean over the data that one batch holding everything would give,
:mod:`landscape.objective`), so cutting a batch into pieces changes its values only by
rounding, provided the model's eval forward treats its samples alone (checked: :func:`agree`).

:func:`samples_per_forward` sizes the pieces from the activations of one sample, measured with
forward hooks, against a budget (:func:`budget`): about a last-level cache on a CPU, a quarter of
the free memory (at most 8 GiB) on a GPU, where big batches are what keeps the device busy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

# Memory for one stacked forward (activations of all points and samples in it): on a CPU about a
# last-level cache (measured on 2 cores: an MLP on digits is fastest at 24-48 points per forward,
# 1.5x faster than at 128; LeNet-5 on 512 images 2x faster at 1 point than at 15; the CIFAR CNN
# on 512 images 1.6x faster in 64-sample pieces than in one forward); on a GPU a quarter of the
# free memory, at most GPU_BATCH_MEMORY_BYTES.
BATCH_MEMORY_BYTES = 1 << 24
GPU_BATCH_MEMORY_BYTES = 1 << 33


def budget(device: torch.device) -> int:
    """Bytes one forward's activations may take on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return min(GPU_BATCH_MEMORY_BYTES, torch.cuda.mem_get_info(device)[0] // 4)
    return BATCH_MEMORY_BYTES


def activation_bytes(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> int:
    """Bytes of the outputs of every module (the model's own included) in one forward of one sample x[:1]."""
    sizes: list[int] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    probe = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    handles = [m.register_forward_hook(hook) for m in probe.modules()]
    try:
        with torch.no_grad():
            probe(x[:1].to(device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return max(sum(sizes), 1) * (torch.finfo(dtype).bits // 8)


def agree(model: nn.Module, x: torch.Tensor, size: int) -> bool:
    """Whether the model's eval outputs on the batch x equal its outputs on pieces of ``size`` samples
    (to rounding): false for a forward that mixes the samples of a batch."""
    model = copy.deepcopy(model).to(device=x.device, dtype=x.dtype).eval()
    with torch.no_grad():
        whole = model(x)
        pieces = torch.cat([model(piece) for piece in x.split(size)])
    tol = 1e-4 if x.dtype != torch.float64 else 1e-10
    return whole.shape == pieces.shape and torch.allclose(
        whole, pieces, rtol=tol, atol=tol * max(float(whole.abs().max()), 1.0))


def samples_per_forward(model: nn.Module, x: torch.Tensor, batch_size: int, dtype: torch.dtype,
                        device: torch.device, points: int = 1, fixed_bytes: int = 0,
                        per_sample: int | None = None) -> int:
    """Samples per forward, at most ``batch_size``: as many as fit :func:`budget` with ``points``
    parameter settings at once (``fixed_bytes`` each, e.g. their parameters), at least one.
    ``per_sample``: :func:`activation_bytes`, if the caller has measured it.

    The pieces are balanced: a batch that needs ``m`` pieces is cut into ``m`` of about equal size
    (``ceil(batch_size / m)`` samples, e.g. 64 into 32 + 32, not 47 + 17), so none is a small
    remainder that pays a forward's fixed costs for few samples. Below ``batch_size`` only if the
    model's outputs on ``2 S`` samples of x equal its outputs on two pieces of S (:func:`agree`);
    otherwise the batch stays whole.
    """
    per_sample = activation_bytes(model, x, dtype, device) if per_sample is None else per_sample
    samples = int(min(batch_size, max(1, (budget(device) // points - fixed_bytes) // per_sample)))
    count = -(-batch_size // samples)  # the pieces needed (ceil), then the balanced size of each
    samples = -(-batch_size // count)
    if samples < batch_size and not agree(model, x[: 2 * samples].to(device=device, dtype=dtype), samples):
        return batch_size  # its eval forward couples the samples of a batch: keep the batch whole
    return samples
