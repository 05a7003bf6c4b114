"""Model registry: ``build(name, **kwargs) -> nn.Module``.

Every architecture used in the papers is here, built from plain layers so that
``torch.func.functional_call`` and ``vmap`` work on all of them (no in-place
buffer tricks, no fused attention kernels):

- ``cnn``: the CIFAR CNN of [C22 §5] (conv5x5 64, conv5x5 64, FC 384, 192, C; no
  normalization); 815,332 parameters for C = 100.
- ``resnet18-gn``: ResNet-18 for 32x32 images with GroupNorm(2 groups) in place of
  BatchNorm, as in [C22] on CIFAR-100.
- ``lenet5-fednsam``: the network the FedNSAM reference code [L26] calls "LeNet-5" (its ``Lenet5``
  class, ``--CNN lenet5``): the same layers as ``cnn`` (815,332 parameters for C = 100), ending in
  ``log_softmax``.
- ``lenet5``: the classic LeNet-5 layout (conv 6, conv 16, FC 120, 84, C) with ReLU and max-pooling;
  69,656 parameters for C = 100.
- ``vit``: a small Vision Transformer (patch 4) for 32x32 images, [L26].
- ``mlp``: a multilayer perceptron for vector inputs (the digits data set).

A user architecture is reached with ``"package.module:factory"`` in place of a
registered name: the factory is imported and called with the kwargs, but only when the
name comes from the user (``--model``, a Python call), never because a file says so.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from landscape.errors import LandscapeError, user_code
from landscape.imports import import_callable


class TwoConvNet(nn.Module):
    """Two 5x5 conv + ReLU + 2x2 max-pool blocks, then three fully connected layers.

    On 32x32 inputs: 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5, so the first FC
    layer sees ``channels[1] * 5 * 5`` features. ``cnn``, ``lenet5-fednsam`` and ``lenet5``
    are instances. The outputs are logits, or log-probabilities with ``log_probs``.
    """

    def __init__(self, channels: tuple[int, int], hidden: tuple[int, int], num_classes: int, in_channels: int,
                 log_probs: bool = False) -> None:
        super().__init__()
        self.log_probs = log_probs
        self.conv1 = nn.Conv2d(in_channels, channels[0], 5)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(channels[1] * 5 * 5, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = self.fc3(x)
        return torch.log_softmax(x, dim=1) if self.log_probs else x


def cifar_cnn(num_classes: int = 100, in_channels: int = 3) -> TwoConvNet:
    """The CNN of [C22 §5] (McMahan et al.): conv 64, conv 64, FC 384, 192, C; no normalization."""
    return TwoConvNet((64, 64), (384, 192), num_classes, in_channels)


def lenet5_fednsam(num_classes: int = 10, in_channels: int = 3) -> TwoConvNet:
    """The "LeNet-5" of the FedNSAM reference code [L26] (github:junkangLiu0/FedNSAM,
    ``main_FedNSAM.py``, class ``Lenet5``, "TF Tutorial for CIFAR").

    Its layers are those of ``cnn`` (conv5x5 3->64, ReLU, max-pool 2; conv5x5 64->64, ReLU,
    max-pool 2; FC 1600->384->192->C with ReLU; no padding, no normalization; the same parameter
    names, so the two load each other's weights), but its forward ends in ``log_softmax``, as the
    reference's does. Its training loss, ``CrossEntropyLoss`` of those outputs, equals the
    cross-entropy of ``cnn``'s logits (log_softmax is idempotent), so losses, gradients and
    Hessians under cross-entropy are the same as ``cnn``'s; only the outputs differ. The name
    says whose "LeNet-5" it is: the classic 6/16/120/84 network is ``lenet5``.

    The reference flattens with ``x.view(-1, 64 * 5 * 5)``, which silently regroups the batch on
    inputs other than 32x32; this flattens per sample, so such inputs fail at ``fc1`` instead.
    """
    return TwoConvNet((64, 64), (384, 192), num_classes, in_channels, log_probs=True)


def lenet5(num_classes: int = 10, in_channels: int = 3) -> TwoConvNet:
    """The classic LeNet-5 layout for 32x32 images (LeCun et al. 1998): conv5x5 6, conv5x5 16,
    FC 120, 84, C; with ReLU and max-pooling in place of the original's sigmoid-like units and
    subsampling. Not the network [L26]'s code calls LeNet-5 (that is ``lenet5-fednsam``)."""
    return TwoConvNet((6, 16), (120, 84), num_classes, in_channels)


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm."""

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.GroupNorm(groups, planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool) with GroupNorm, [C22]."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, groups: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, 64)
        layers, in_planes = [], 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(
                nn.Sequential(
                    BasicBlock(in_planes, planes, stride, groups),
                    BasicBlock(planes, planes, 1, groups),
                )
            )
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class Attention(nn.Module):
    """Multi-head self-attention written with plain Linear layers (vmap-friendly)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer for CIFAR-sized images (patch 4, class token), [L26]."""

    def __init__(
        self,
        num_classes: int = 100,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        if image_size % patch_size or dim % heads:
            raise LandscapeError("vit: image_size must be a multiple of patch_size and dim of heads")
        num_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.norm(self.blocks(x))[:, 0])


class MLP(nn.Module):
    """Fully connected ReLU network; inputs of any shape are flattened."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (32,), num_classes: int = 10) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(x, 1))


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "cnn": cifar_cnn,
    "resnet18-gn": ResNet18GN,
    "lenet5-fednsam": lenet5_fednsam,
    "lenet5": lenet5,
    "vit": ViT,
    "mlp": MLP,
}


def resolve(name: str, *, allow_import: bool = True, origin: object = None) -> Callable[..., nn.Module]:
    """The factory for a registered name or a ``package.module:factory`` path.

    A ``package.module:factory`` is code: importing and calling it runs whatever it says.
    It is resolved only with ``allow_import`` (the name came from the user: a command-line
    flag or a Python call); a name read from a file (``origin``) is looked up in the registry.

    Raises:
        LandscapeError: unknown names, factories that cannot be imported, and factories
            named by a file when ``allow_import`` is off.
    """
    if not isinstance(name, str) or not name:
        raise LandscapeError(f"the model name must be a non-empty string, got {name!r}", where=origin,
                             fix="pass --model NAME (see `landscape models`)")
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        if not allow_import:
            raise LandscapeError(
                f"refused to import model '{name}' named by a file: a module:factory runs code", where=origin,
                fix=f"if you trust that code, pass --model {name} (or --trust-stored-factory)")
        return import_callable(name, "model")
    raise LandscapeError(
        f"unknown model '{name}'", where=origin,
        fix=f"choose one of {', '.join(REGISTRY)} or give 'package.module:factory' for your own architecture")


def default_for(input_shape: Sequence[int]) -> str:
    """The registered model that fits inputs of ``input_shape`` (one sample's): the CIFAR CNN of
    [C22] for C x 32 x 32 images, else the MLP (it flattens any input).

    >>> default_for((3, 32, 32)), default_for((64,)), default_for((1, 8, 8))
    ('cnn', 'mlp', 'mlp')
    """
    shape = tuple(input_shape)
    return "cnn" if len(shape) == 3 and shape[1:] == (32, 32) else "mlp"


def build(name: str, **kwargs: object) -> nn.Module:
    """Build a model by registered name or ``package.module:factory`` path.

    Raises:
        LandscapeError: unknown name, or kwargs the factory does not accept or fails on.

    >>> sum(p.numel() for p in build("cnn", num_classes=100).parameters())
    815332
    """
    return call_factory(resolve(name), name, kwargs)


def call_factory(factory: Callable[..., nn.Module], name: str, kwargs: dict[str, object],
                 device: str | torch.device | None = None) -> nn.Module:
    """``factory(**kwargs)`` (on ``device``, e.g. ``"meta"`` to check without allocating), one line on failure."""
    with user_code(f"model '{name}' with kwargs {kwargs}", "check --model and --model-kwargs"):
        if device is None:
            model = factory(**kwargs)
        else:
            with torch.device(device):
                model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"factory '{name}' returned {type(model).__name__}, not a torch.nn.Module",
                             fix="return an nn.Module from the factory")
    return model


def describe() -> dict[str, dict[str, object]]:
    """Registered models with their keyword arguments and defaults (``landscape models``)."""
    out: dict[str, dict[str, object]] = {}
    for name, factory in REGISTRY.items():
        params = inspect.signature(factory).parameters
        out[name] = {k: p.default for k, p in params.items() if k != "self"}
    return out


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers of ``model`` that keep running statistics, with their module names."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
