"""Batched random-crop and horizontal-flip augmentation on the device.

The random draws (crop offsets, flip bits) come from the client's own generator (see
:func:`train.engine.plan_client`), so the sequential and batched engines see identical images;
applying them is one gather on the device for the whole batch (or cohort).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

PAD = 4


def draw(n: int, generator: torch.Generator, pad: int = PAD) -> tuple[Tensor, Tensor]:
    """Crop offsets in ``[0, 2 pad]`` (rows, cols) and flip bits for ``n`` images."""
    crop = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop, flip


def apply(x: Tensor, crop: Tensor, flip: Tensor, pad: int = PAD) -> Tensor:
    """Zero-pad by ``pad``, crop back to ``H x W`` at ``crop`` and mirror where ``flip``.

    Args:
        x: images ``(n, C, H, W)``.
        crop: ``(n, 2)`` integer offsets into the padded image.
        flip: ``(n,)`` bool.

    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> apply(x, torch.tensor([[1, 1]]), torch.tensor([True]), pad=1)[0, 0].tolist()
    [[1.0, 0.0], [3.0, 2.0]]
    """
    n, c, h, w = x.shape
    crop, flip = crop.to(x.device), flip.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = crop[:, :1] + ar_h  # (n, H)
    cols = crop[:, 1:] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (n, W)
    i = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[i, ch, rows[:, None, :, None], cols[:, None, None, :]]
