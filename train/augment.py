"""Batched random-crop and horizontal-flip augmentation on the device.

The random draws (crop offsets, flip bits) come from the client's own generator (see
:func:`landscape.train.engine.plan_client`), so the sequential and batched engines see identical images;
applying them is one gather on the device for the whole batch (or cohort).
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD = 4


def draw(n: int, generator: torch.Generator, pad: int = PAD) -> tuple[Tensor, Tensor]:
    """Crop offsets in ``[0, 2 pad]`` (rows, cols) and flip bits for ``n`` images."""
    crop = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop, flip


def apply(x: Tensor, crop: Tensor, flip: Tensor, fill: Tensor | None = None, pad: int = PAD) -> Tensor:
    """Pad by ``pad`` with ``fill``, crop back to ``H x W`` at ``crop`` and mirror where ``flip``.

    The reference pipelines (torchvision ``RandomCrop(32, padding=4)`` before ``Normalize``)
    pad the raw image with black, so on normalized inputs the padding is the normalized
    black pixel (:func:`landscape.data.black_pixel`), not 0.

    Args:
        x: images ``(n, C, H, W)``.
        crop: ``(n, 2)`` integer offsets into the padded image.
        flip: ``(n,)`` bool.
        fill: ``(C,)`` padding value per channel (default 0).

    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> apply(x, torch.tensor([[1, 1]]), torch.tensor([True]), pad=1)[0, 0].tolist()
    [[1.0, 0.0], [3.0, 2.0]]
    >>> apply(x, torch.tensor([[0, 0]]), torch.tensor([False]), torch.tensor([-1.0]), pad=1)[0, 0].tolist()
    [[-1.0, -1.0], [-1.0, 0.0]]
    """
    n, c, h, w = x.shape
    crop, flip = crop.to(x.device), flip.to(x.device)
    padded = x.new_zeros(n, c, h + 2 * pad, w + 2 * pad)
    if fill is not None:
        padded += fill.to(x).view(1, c, 1, 1)
    padded[:, :, pad : pad + h, pad : pad + w] = x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = crop[:, :1] + ar_h  # (n, H)
    cols = crop[:, 1:] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (n, W)
    i = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[i, ch, rows[:, None, :, None], cols[:, None, None, :]]
