"""Loss surfaces: the loss and accuracy on a line, grid, volume or plane of parameter settings.

A surface is the function

    s(c) = (loss_S(w0 + sum_i c_i d_i), accuracy_S(w0 + sum_i c_i d_i))   for every data source S,

evaluated at every point ``c`` of a grid whose axes are given coordinate vectors
(symmetric ``linspace(-r, r, n)`` around the checkpoint, so the centre is a grid point
for odd ``n`` [Li18 §4]; a grid covering the models drawn on it with margins, e.g. a
training trajectory projected onto its PCA directions [Li18 §7] (:func:`surface_axes`);
``linspace(-0.5, 1.5, n)`` for the interpolation from model A to model B; true Euclidean
units with margins for the plane through three models [G18 §3]). Every point is set from
the base ``w0`` (no drift) on a private copy of the model: the caller's parameters and
buffers are never touched.

Result structure
----------------
:func:`load_result` returns (and :func:`evaluate` returns) one plain dict, the
interface to :mod:`landscape.plots`::

    {
      "kind": "line" | "grid" | "volume" | "plane",
      "axes": [np.ndarray, ...],          # 1 (line), 2 (grid, plane) or 3 (volume) float64
                                          # coordinate vectors, one per direction
      "axis_labels": ["alpha (filter-normalized units)", ...],   # one str per axis, its name
                                          # and unit (Directions.unit), e.g. "u (Euclidean
                                          # distance)", "interpolation (0 = A, 1 = B)"
      "values": {                         # one float64 array per source and metric, shape
        "train/loss": ndarray,            # (len(axes[0]), len(axes[1]), ...), "ij" indexing:
        "train/accuracy": ndarray,        # values[k][i, j] is the point axes[0][i], axes[1][j]
        "test/loss": ndarray, ...         # (so matplotlib's contour(x, y, Z) wants Z.T).
      },                                  # Sources: "train", "test", "client 0", "client 1", ...
                                          # Loss: mean cross-entropy; accuracy: fraction in [0, 1].
                                          # NaN/inf where the model diverged (draw as gaps)
                                          # and NaN where not evaluated yet (see "done").
      "done": ndarray of bool,            # same shape: which points are evaluated (all True
                                          # once metadata["complete"])
      "markers": [                        # models to draw on the surface (may be empty)
        {"label": "global" | "client 3" | "swa" | "A" | "B" | "round 40" | ...,
         "role": "global" | "client" | "swa" | "trajectory" | None,
         "coords": [float, ...],          # one coordinate per axis, in the axes' units
         "distance": float | None},       # off-surface (Euclidean) distance for projected
      ],                                  # models (plane, PCA); 0.0 for models on it.
                                          # The "trajectory" markers are in round order:
                                          # drawn as the training path.
      "metadata": {                       # JSON-ready; identifies the run
        "format": "landscape-surface", "format_version": 1,
        "version": landscape.__version__,
        "kind": ..., "shape": [n0, n1, ...], "sources": ["train", "test", ...],
        "checkpoints": [Checkpoint.describe(), ...],   # path, sha256, model, round, role, ...
        "origin_sha256": str,             # hash of the base parameters and buffers
        "directions": {"kind": "random" | "eigen" | "pca" | "plane" | "interpolation" | "file",
                       "seed": int | None, "sha256": str, ...},   # + normalization, cosines,
                                                                  # eigenvalues, explained variance
        "data": {"train": spec dict, "test": spec dict, ...},     # + sha256 of each source
        "bn": "eval" | "recalibrate", "calibration": spec dict | None,
        "dtype": "float32" | "float64", "device": "cpu" | "cuda:0" | ...,
        "precision": "float32" | "tf32" | "bf16",   # the arithmetic (float32 dtype only)
        "precision_error": {"max_abs_loss": float, "max_rel_loss": float,   # reduced precisions
                            "max_abs_accuracy": float | None, "points": [[c, ...], ...]},  # only: vs
                                          # float32 at a few grid points
        "points_per_batch": int, "batch_size": int | None,
        "samples_per_forward": int | None,   # the samples of one forward (auto_chunks)
        "evaluation": {"path": "chain" | "first-layer" | "plain",      # how the points were
                       "layout": "contiguous" | "channels_last",       # computed (measured:
                       "seconds": {candidate: float}},                 # fastest_evaluation)
        "grid": {"extent": [[start, stop], ...],      # of every axis, as evaluated
                 "rule": "range" | "cover" | "interval", ...},   # how it was chosen, if told:
                                          # range R (symmetric), cover (the markers, margin M),
                                          # interval (the --to line)
        "num_done": int, "complete": bool,
        "nonfinite": {"train/loss": count, ...},   # points whose value is NaN or inf
      },
    }

On disk the result is one ``.npz`` (``allow_pickle=False`` readable): arrays
``axis0``, ``axis1``, ..., ``done``, ``values/<source>/<metric>`` and a JSON string
``metadata`` that also holds ``axis_labels`` and ``markers``.

Under torchrun
--------------
With several ranks (:mod:`landscape.distributed`) the grid points are shared out and each
rank evaluates whole points on all the data: round r gives chunk ``r * size + rank`` of the
pending chunks to each rank, and one all-gather of a few numbers per point hands every
rank the values of the round. The other split, every point on a shard of the data with
its loss all-reduced (what the Hessian does), would pay one collective per point and per
batch and keep every rank waiting on the slowest at each one; a point costs a forward
pass over the data and nothing couples two points, so whole points per rank need no
communication while they run, and the ranks only meet once per round. (A single point
too large for one device is the workload where sharding the data would win; a surface of
such a model is better run with ``--batch-size``.) The chunks are the single-process
chunks (fixed starts, ``points_per_batch`` points, the smallest every rank can afford), so
each value is computed exactly as one process computes it, and a result file continues
with any number of ranks. Rank 0 alone reads the file to continue (and hands it to the
others) and writes it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm import tqdm

import landscape
from landscape import distributed, pieces
from landscape.chain import FirstLayer, LinearChain, find_chain, find_first_layer
from landscape.data import Dataset
from landscape.directions import Directions, Plane, project
from landscape.errors import LandscapeError, os_error
from landscape.files import atomic_write
from landscape.models import batchnorm_layers
from landscape.objective import Forward, Loss, Objective
from landscape.operators import clock

FORMAT = "landscape-surface"
FORMAT_VERSION = 1
KINDS = {"line": 1, "grid": 2, "volume": 3, "plane": 2}
BN_MODES = ("eval", "recalibrate")
#: Arithmetic of the evaluation (:func:`compute_precision`): float32 throughout (on a GPU also no TF32),
#: TF32 matrix products and convolutions (a GPU only), or bfloat16 autocast.
PRECISIONS = ("float32", "tf32", "bf16")
#: Grid points (by index: first, middle, last) re-evaluated in float32 to measure a reduced precision's error.
PRECISION_CHECKS = 3
METRICS = ("loss", "accuracy")
# Metadata fields that record progress, not identity: a continued run may differ in them.
PROGRESS_FIELDS = ("num_done", "complete", "nonfinite", "device", "num_processes")
# Neither are the names of the axes (they do not change a value) nor the record of the grid
# (its axes themselves are compared exactly): a run continued by a newer version may relabel.
# Nor is how the points are computed (the path, the memory layout and the samples per forward
# change only the rounding; a continued run reuses the file's choice).
NOT_IDENTITY = (*PROGRESS_FIELDS, "axis_labels", "grid", "precision_error", "evaluation", "samples_per_forward")
#: Margin of a grid covering models, as a fraction of the extent it covers (on each side).
MARGIN = 0.2
#: The grid of a surface around one model alone (nothing else to cover): +-1 direction units [Li18].
DEFAULT_RANGE = 1.0
MAX_POINTS_PER_BATCH = 128
#: The most points one result may hold (a 51x51x51 volume has 132,651); more is a typo, not a plan.
MAX_POINTS = 10_000_000
# The first layer's responses kept for a fast path (:func:`response_budget`): 1 GiB on a CPU (the
# CIFAR CNN's on 512 images with 2 directions take 0.3 GiB).
RESPONSE_MEMORY_BYTES = 1 << 30
# Samples on which a fast path is checked against the plain forward before it is used.
CHECK_SAMPLES = 64
#: Memory layouts of image batches a convolutional network is evaluated in (:func:`fastest_evaluation`).
LAYOUTS = ("contiguous", "channels_last")
#: Measuring the fastest evaluation (:func:`fastest_evaluation`: up to four candidates, each set up, checked
#: and run three times) costs about 50-60 forwards of one chunk (measured on the CIFAR CNN); a surface of fewer
#: chunk forwards than this is evaluated the default way (fast path, contiguous): measuring would cost more
#: than it could save.
MEASURE_MIN_FORWARDS = 64
#: The margin of a covering grid is taken from at least this fraction of the models' largest spread.
MIN_SIDE = 0.25
Batch = tuple[torch.Tensor, torch.Tensor]


def symmetric_axis(range_: float, resolution: int) -> np.ndarray:
    """``linspace(-r, r, n)``: symmetric around the checkpoint, centre on the grid for odd n [Li18 §4].

    Raises:
        LandscapeError: a resolution below 2 or a range that is not a positive finite number.

    >>> symmetric_axis(1.0, 5)
    array([-1. , -0.5,  0. ,  0.5,  1. ])
    """
    if not (math.isfinite(range_) and range_ > 0):
        raise LandscapeError(f"--range must be a positive number, got {range_}")
    return interval_axis(-range_, range_, resolution)


def interval_axis(start: float, stop: float, resolution: int) -> np.ndarray:
    """``linspace(start, stop, n)`` (e.g. -0.5..1.5 for the interpolation from A to B, [G18]).

    Raises:
        LandscapeError: a resolution below 2 or an empty interval.
    """
    if resolution < 2:
        raise LandscapeError(f"--resolution must be at least 2, got {resolution}")
    if not (math.isfinite(start) and math.isfinite(stop) and start < stop):
        raise LandscapeError(f"the interval must have start < stop, got {start}..{stop}")
    return np.linspace(start, stop, resolution)


def covering_axes(coords: Sequence[Sequence[float]], resolution: int, margin: float = MARGIN,
                  equal: bool = False) -> list[np.ndarray]:
    """Axes of a grid covering the points ``coords`` (one row per model) with margins.

    Every axis extends ``margin * s`` beyond the bounding box of the points on both sides,
    with s the side of the box along that axis, or with ``equal`` the larger side (a plane
    in Euclidean units [G18 §3], drawn with equal aspect: margins equal in parameter-space
    distance). Along an axis where the points hardly spread, s is at least ``MIN_SIDE``
    times the larger side (a flat trajectory still gets a margin, not a sliver).

    Raises:
        LandscapeError: a negative margin, or points that all coincide (nothing to cover).

    >>> [a.tolist() for a in covering_axes([[0, 0], [2, 0], [1, 1]], 3, margin=0.5, equal=True)]
    [[-1.0, 1.0, 3.0], [-1.0, 0.5, 2.0]]
    >>> [a.tolist() for a in covering_axes([[0, 0], [2, 0], [1, 1]], 3, margin=0.5)]
    [[-1.0, 1.0, 3.0], [-0.5, 0.5, 1.5]]
    """
    if not margin >= 0:
        raise LandscapeError(f"--margin must be at least 0, got {margin}")
    pts = np.asarray(coords, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    largest = float((hi - lo).max())
    if not largest > 0:
        raise LandscapeError("the models to cover all lie at one point; give the grid a --range")
    sides = np.full_like(lo, largest) if equal else np.maximum(hi - lo, MIN_SIDE * largest)
    return [interval_axis(float(a - margin * s), float(b + margin * s), resolution) for a, b, s in zip(lo, hi, sides)]


def surface_axes(coords: Sequence[Sequence[float]], resolution: int, range_: float | None = None,
                 margin: float | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The axes of a surface around a checkpoint, and how they were chosen (``metadata["grid"]``).

    - ``range_`` given: ``linspace(-R, R, n)`` on every axis (:func:`symmetric_axis`); it wins.
    - else, when the models ``coords`` (the checkpoint at the origin and, e.g., its training
      trajectory projected onto the directions) spread out, the grid covers them with
      ``margin`` (default :data:`MARGIN`) on each side (:func:`covering_axes`), so the whole
      path is on the picture;
    - else ``+-DEFAULT_RANGE`` [Li18].

    >>> axes, grid = surface_axes([[0.0, 0.0], [-8.0, -4.0]], 3, margin=0.25)
    >>> [a.tolist() for a in axes], grid
    ([[-10.0, -4.0, 2.0], [-5.0, -2.0, 1.0]], {'rule': 'cover', 'margin': 0.25, 'models': 2})
    """
    pts = np.asarray(coords, dtype=np.float64)
    if range_ is None and len(pts) > 1 and float(np.ptp(pts, axis=0).max()) > 0:
        margin = MARGIN if margin is None else margin
        return covering_axes(pts, resolution, margin), {"rule": "cover", "margin": margin, "models": len(pts)}
    if margin is not None:
        raise LandscapeError("a margin sets the grid around the models it shows; with a range, or with no "
                             "other model than the checkpoint, there is none", where="surface grid",
                             fix="drop the margin, or project a trajectory (--directions pca --trajectory CKPT...)")
    range_ = DEFAULT_RANGE if range_ is None else range_
    return [symmetric_axis(range_, resolution) for _ in range(pts.shape[1])], {"rule": "range", "range": range_}


def plane_markers(
    plane: Plane, models: Sequence[tuple[str, str | None, Mapping[str, torch.Tensor]]]
) -> list[dict[str, Any]]:
    """Markers for the three models spanning ``plane`` and every other model projected onto it.

    Args:
        plane: from :func:`landscape.directions.plane_through`.
        models: ``(label, role, parameters)``: first the three spanning models (placed at
            ``plane.coords`` with distance 0), then any others (least-squares
            coordinates and off-plane distance, :func:`landscape.directions.project`).
    """
    markers = []
    for i, (label, role, params) in enumerate(models):
        if i < 3:
            coords, distance = plane.coords[i], 0.0
        else:
            coords, distance = project(plane.origin, plane.directions.vectors, params)
        markers.append({"label": label, "role": role, "coords": [float(c) for c in coords], "distance": distance})
    return markers


def tensor_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hash of named tensors (names, shapes, dtypes, bytes): identifies weights and data in results."""
    digest = hashlib.sha256()
    for name, t in tensors.items():
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@contextmanager
def compute_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed float32 computation in ``precision`` (one of :data:`PRECISIONS`).

    On a GPU, ``"float32"`` turns TF32 off for matrix products and cuDNN convolutions (PyTorch
    allows it in convolutions by default) and ``"tf32"`` on for both; ``"bf16"`` is
    ``torch.autocast(dtype=torch.bfloat16)`` on either device. The previous settings come back on exit.
    """
    if precision not in PRECISIONS:
        raise LandscapeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    saved = None
    if device.type == "cuda":
        saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
        mode = "tf32" if precision == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = mode
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def response_budget(device: torch.device) -> int:
    """Bytes the first layer's responses (of all batches of all sources) may take on ``device``:
    ``RESPONSE_MEMORY_BYTES`` on a CPU, a quarter of the free memory on a GPU. Beyond it the plain
    path runs (recomputing the responses for every chunk of points would cost more than it saves)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    return RESPONSE_MEMORY_BYTES


class _Given(nn.Module):
    """Stands in for the first layer in the rest of the network: returns the output passed in for it
    (a buffer that ``functional_call`` sets at every point, vmapped over the points)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("output", torch.empty(0), persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.output


class _Evaluator:
    """Loss and accuracy of stacked parameter settings on fixed, device-resident batches.

    Points are evaluated ``K`` at a time: the parameters of the K points are stacked
    and one ``vmap(functional_call)`` runs all of them on each batch (K = 1 skips vmap).
    A fully connected network takes the faster :class:`~landscape.chain.LinearChain`
    path instead; any other network whose first layer is a Linear or a convolution fed the
    input gets that layer's output from its precomputed responses
    (:class:`~landscape.chain.FirstLayer`) and runs the rest as above (``fast=False``: the
    plain path always). ``layout="channels_last"`` keeps image batches channels-last, the
    layout oneDNN's convolutions run fastest in on a CPU (the CIFAR CNN 1.5x). Which of
    these is fastest for a model on a device is measured, not assumed
    (:func:`fastest_evaluation`). Works on a private copy of the model; never writes to the
    caller's tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        origin: Mapping[str, torch.Tensor],
        directions: Directions,
        sources: Mapping[str, Sequence[Batch]],
        bn: str,
        calibration: Sequence[Batch],
        dtype: torch.dtype,
        device: torch.device,
        precision: str = "float32",
        fast: bool = True,
        layout: str = "contiguous",
    ) -> None:
        self.precision, self.layout = precision, layout
        self.dtype, self.device = dtype, device
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        self.names = list(origin)
        self.origin = {n: origin[n].detach().to(device, dtype) for n in self.names}
        # (num_directions, *shape) per parameter: a point is origin + coords @ stacked.
        self.stacked = {
            n: torch.stack([v[n].detach().to(device, dtype) for v in directions.vectors]) for n in self.names
        }
        own = dict(self.model.named_parameters())
        self.fixed = {
            **{n: p.detach() for n, p in own.items() if n not in self.origin},
            **{n: b.detach() for n, b in self.model.named_buffers()},
        }
        self.sources = {
            s: [(self._placed(x), y.to(device)) for x, y in batches] for s, batches in sources.items()
        }
        self.recalibrate = bn == "recalibrate" and bool(batchnorm_layers(self.model))
        if self.recalibrate:
            # Only the BatchNorm layers run in training mode (dropout stays off); momentum None
            # makes the running statistics the plain average over the calibration batches.
            self.calibration_model = copy.deepcopy(self.model)
            for _, m in batchnorm_layers(self.calibration_model):
                m.train()
                m.momentum = None
            self.calibration = [(self._placed(x), y.to(device)) for x, y in calibration]
        # The fast paths (:mod:`landscape.chain`): a Linear/elementwise chain whole, else the first
        # layer from its precomputed responses and the rest of the network as below.
        self.chain: LinearChain | None = None
        self.first: FirstLayer | None = None
        fast_path = None if self.recalibrate or not fast else self._fast_path()
        if isinstance(fast_path, LinearChain):
            self.chain = fast_path
        elif isinstance(fast_path, FirstLayer):
            self.first = fast_path
        if fast_path is not None:  # checked in float32; kept in the evaluation's precision (bf16: half the memory)
            with torch.no_grad(), compute_precision(self.precision, self.device):
                self.responses = {s: [fast_path.responses(x) for x, _ in b] for s, b in self.sources.items()}

    def _placed(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of inputs on the evaluation's device and dtype, in its memory layout (image batches)."""
        x = x.to(self.device, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.layout == "channels_last" and x.dim() == 4 else x

    @property
    def path(self) -> str:
        """Which evaluation runs: ``"chain"``, ``"first-layer"`` (:mod:`landscape.chain`) or ``"plain"``."""
        return "chain" if self.chain is not None else "first-layer" if self.first is not None else "plain"

    def _fast_path(self) -> LinearChain | FirstLayer | None:
        """The fast path for this model, if it has one and it is affordable: the whole
        :class:`~landscape.chain.LinearChain` for a fully connected chain, else the first layer
        (:class:`~landscape.chain.FirstLayer`) with the rest of the network run as the plain path.

        Used only when its logits equal the plain evaluation's at two random points (on
        ``CHECK_SAMPLES`` samples), and when the responses of every batch of every source fit
        in :func:`response_budget` (``(1 + d)`` times the first layer's output on all the
        data); otherwise the plain path runs.
        """
        x = next(iter(self.sources.values()))[0][0][:CHECK_SAMPLES]
        layers = find_chain(self.model, x[:2])
        fast: LinearChain | FirstLayer
        if layers is not None:
            fast = chain = LinearChain(layers, self.origin, self.stacked, self.fixed)
            num_directions, per_sample = chain.num_directions, chain.responses(x[:1]).numel()
            fast_logits = lambda c: chain.logits(c, chain.responses(x)).transpose(1, 2)  # noqa: E731
        else:
            found = find_first_layer(self.model, x[:2])
            if found is None:
                return None
            fast = first = FirstLayer(*found, self.origin, self.stacked, self.fixed)
            self._rest(first)
            num_directions, per_sample = first.num_directions, first.responses(x[:1]).numel()
            fast_logits = lambda c: self.rest_logits(c, first.responses(x), x)  # noqa: E731
        samples = sum(len(b[0]) for batches in self.sources.values() for b in batches)
        if samples * per_sample * torch.finfo(self.dtype).bits // 8 > response_budget(self.device):
            return None
        g = torch.Generator().manual_seed(0)
        coords = torch.randn(2, num_directions, generator=g).to(self.device, self.dtype)
        params = self.params_at(coords)
        buffers = {n: b for n, b in self.fixed.items() if n not in params}
        with torch.no_grad(), compute_precision("float32", self.device):
            plain = self.logits(params, buffers, False, x)
            fast_values = fast_logits(coords)
        tol = 1e-4 if self.dtype == torch.float32 else 1e-10
        if not torch.allclose(fast_values, plain, rtol=tol, atol=tol * float(plain.abs().max())):
            return None
        return fast

    def _rest(self, first: FirstLayer) -> None:
        """The network without its first layer: a copy whose first layer returns the output it is given
        (``self.given``, passed with the parameters at every point)."""
        prefix = f"{first.name}." if first.name else ""
        if first.name:
            self.rest = copy.deepcopy(self.model)
            self.rest.set_submodule(first.name, _Given())
        else:  # the model is the layer
            self.rest = _Given()
        self.given = prefix + "output"
        self.rest_names = [n for n in self.names if not n.startswith(prefix)]
        self.rest_fixed = {n: t for n, t in self.fixed.items() if not n.startswith(prefix)}

    def rest_logits(self, coords: torch.Tensor, responses: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(K, B, C) logits at K points on one batch: the first layer's output from its ``responses``,
        the rest of the network as the plain path."""
        params = {n: self.origin[n] + torch.tensordot(coords, self.stacked[n], dims=1) for n in self.rest_names}
        params[self.given] = FirstLayer.at(coords, responses)
        return self.logits(params, self.rest_fixed, False, x, self.rest)

    def params_at(self, coords: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stacked parameters (K, *shape) at K points: w0 + sum_i c_{k,i} d_i, set from w0 every time."""
        return {n: self.origin[n] + torch.tensordot(coords, self.stacked[n], dims=1) for n in self.names}

    def recalibrated_buffers(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """BatchNorm statistics of one parameter setting, re-estimated on the calibration batches."""
        buffers = {n: b.clone() for n, b in self.fixed.items() if n not in self.origin and b is not None}
        for module_name, _ in batchnorm_layers(self.calibration_model):
            prefix = f"{module_name}." if module_name else ""
            buffers[prefix + "running_mean"].zero_()
            buffers[prefix + "running_var"].fill_(1.0)
            buffers[prefix + "num_batches_tracked"].zero_()
        # functional_call updates the running statistics in place in the tensors passed in.
        for x, _ in self.calibration:
            functional_call(self.calibration_model, {**buffers, **params}, (x,))
        return buffers

    def logits(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batched: bool,
               x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """(K, B, C) logits of the K stacked settings on one batch (the plain path; ``model`` default
        the private copy of the network)."""
        model = self.model if model is None else model
        if torch.is_autocast_enabled(self.device.type):  # bf16 autocast misses vmap's batched parameters: cast here
            params, buffers = _bfloat16(params), _bfloat16(buffers)
            x = x.to(torch.bfloat16) if x.is_floating_point() else x
        if next(iter(params.values())).shape[0] == 1:
            one = {n: p[0] for n, p in params.items()}
            state = {n: b[0] for n, b in buffers.items()} if batched else buffers
            return functional_call(model, {**state, **one}, (x,)).unsqueeze(0)
        call = lambda p, b: functional_call(model, {**b, **p}, (x,))  # noqa: E731
        return vmap(call, in_dims=(0, 0 if batched else None))(params, buffers)

    @torch.no_grad()
    def __call__(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """Loss and accuracy of every source at the points ``coords`` (K x num_directions)."""
        with compute_precision(self.precision, self.device):
            return self._evaluate(coords)

    def _evaluate(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        c = torch.as_tensor(coords, dtype=self.dtype, device=self.device)
        out: dict[str, np.ndarray] = {}
        if self.chain is not None:
            for source, batches in self.sources.items():
                z = (self.chain.logits(c, r) for r in self.responses[source])
                out.update(_metrics(source, z, [y for _, y in batches]))
            return out
        if self.first is not None:
            for source, batches in self.sources.items():
                z = (self.rest_logits(c, r, x).transpose(1, 2) for (x, _), r in zip(batches, self.responses[source]))
                out.update(_metrics(source, z, [y for _, y in batches]))
            return out
        params = self.params_at(c)
        buffers, batched = self.fixed, False
        if self.recalibrate:
            per_point = [self.recalibrated_buffers({n: p[k] for n, p in params.items()}) for k in range(len(c))]
            buffers = {n: torch.stack([b[n] for b in per_point]) for n in per_point[0]}
            batched = True
        buffers = {n: b for n, b in buffers.items() if n not in params}
        for source, batches in self.sources.items():
            z = (self.logits(params, buffers, batched, x).transpose(1, 2) for x, _ in batches)
            out.update(_metrics(source, z, [y for _, y in batches]))
        return out


class _ObjectiveEvaluator:
    """Loss (and accuracy for classification losses) of any :class:`~landscape.objective.Objective`
    at parameter settings, one point at a time: the path for your own loss, forward or batches.

    The point with coordinates c is ``origin + sum_i c_i d_i``; the objective's own model,
    fixed parameters and buffers are used (BatchNorm statistics as stored).
    """

    def __init__(self, origin: Mapping[str, torch.Tensor], directions: Directions,
                 objectives: Mapping[str, Objective]) -> None:
        first = next(iter(objectives.values()))
        self.objectives = dict(objectives)
        self.names = list(origin)
        self.origin = {n: origin[n].detach().to(first.device, first.dtype) for n in self.names}
        self.stacked = {n: torch.stack([v[n].detach().to(first.device, first.dtype) for v in directions.vectors])
                        for n in self.names}
        self.dtype, self.device = first.dtype, first.device

    @torch.no_grad()
    def __call__(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        c = torch.as_tensor(coords, dtype=self.dtype, device=self.device)
        out: dict[str, list[float]] = {}
        for k in range(len(c)):
            params = {n: self.origin[n] + torch.tensordot(c[k], self.stacked[n], dims=1) for n in self.names}
            for source, objective in self.objectives.items():
                loss, accuracy = objective.metrics(params)
                out.setdefault(f"{source}/loss", []).append(loss)
                if accuracy is not None:
                    out.setdefault(f"{source}/accuracy", []).append(accuracy)
        return {k: np.asarray(v) for k, v in out.items()}


def _bfloat16(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.to(torch.bfloat16) if t.is_floating_point() else t for n, t in tensors.items()}


def _metrics(source: str, logits: Iterable[torch.Tensor], labels: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Mean cross-entropy and accuracy at K points from per-batch (K, C, B) logits (classes on dim 1).

    CE = logsumexp(z) - z_y, sharing the class maximum with the prediction (``max``
    returns the first maximal index, as ``argmax``, so a flat output predicts class 0).
    """
    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | float = 0.0
    for z, y in zip(logits, labels):
        if z.dtype in (torch.bfloat16, torch.float16):  # autocast logits: the loss itself in float32
            z = z.float()
        top, pred = z.max(dim=1)
        lse = top + torch.log(torch.exp(z - top.unsqueeze(1)).sum(dim=1))
        z_y = z.gather(1, y.expand(z.shape[0], 1, -1)).squeeze(1)
        loss_sum = loss_sum + (lse - z_y).sum(dim=1).double()
        correct = correct + (pred == y).sum(dim=1).double()
    n = sum(int(y.shape[0]) for y in labels)
    return {f"{source}/loss": (loss_sum / n).cpu().numpy(), f"{source}/accuracy": (correct / n).cpu().numpy()}


def auto_chunks(
    model: nn.Module, x: torch.Tensor, batch_size: int, num_params: int, dtype: torch.dtype, device: torch.device,
    points_per_batch: int | None = None,
) -> tuple[int, int]:
    """Points per forward K and samples per forward S: the activations of one stacked forward
    (K points on S samples) within :func:`landscape.pieces.budget`.

    K points on S samples cost ``K (S * activations + num_params)`` elements. Small models on
    small batches get many points per forward (K > 1), which removes the per-call overhead
    that dominates them; when one point on the whole batch exceeds the budget, K = 1 and the
    batch is cut into S-sample pieces that fit it (:func:`landscape.pieces.samples_per_forward`:
    on a CPU the activations then stay in the cache). ``points_per_batch`` (given K) fixes K and
    chooses S alone. ``batch_size`` bounds S.
    """
    item, per_sample = torch.finfo(dtype).bits // 8, pieces.activation_bytes(model, x, dtype, device)
    if points_per_batch is None:
        per_point = batch_size * per_sample + num_params * item
        points_per_batch = int(min(MAX_POINTS_PER_BATCH, max(1, pieces.budget(device) // per_point)))
    samples = pieces.samples_per_forward(model, x, batch_size, dtype, device, points=points_per_batch,
                                         fixed_bytes=num_params * item, per_sample=per_sample)
    return points_per_batch, samples


def fastest_evaluation(model: nn.Module, origin: Mapping[str, torch.Tensor], directions: Directions,
                       batch: Batch, bn: str, calibration: Sequence[Batch], dtype: torch.dtype, device: torch.device,
                       precision: str, points: int) -> dict[str, Any]:
    """The fastest way to evaluate this model on this device, measured: ``{"path", "layout", "seconds"}``.

    The candidates are the plain path and the fast path of :mod:`landscape.chain` (if the
    model has one and it passes its check), each in the contiguous and, for convolutional
    networks on image batches, the channels-last layout. Each evaluates ``points`` random
    points on ``batch`` (one forward's samples) once; a candidate that fails or whose losses
    differ from the plain contiguous path's by more than rounding is dropped (a model that
    reshapes with ``view``, say, cannot run channels-last); the others run twice more, timed,
    and the fastest wins. ``seconds`` holds each kept candidate's best time.
    """
    layouts = ["contiguous"]
    if batch[0].dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        layouts.append("channels_last")
    coords = np.random.default_rng(0).uniform(-1.0, 1.0, (points, len(directions)))
    tol = 1e-10 if dtype == torch.float64 else {"float32": 1e-4, "tf32": 1e-2}.get(precision, 5e-2)
    reference: dict[str, np.ndarray] | None = None
    timings: dict[tuple[str, str], float] = {}
    for layout in layouts:
        for fast in (False, True):
            try:
                evaluator = _Evaluator(model, origin, directions, {"probe": [batch]}, bn, calibration, dtype, device,
                                       precision, fast=fast, layout=layout)
                if (evaluator.path, layout) in timings:
                    continue  # no fast path: the plain one, already timed
                values = evaluator(coords)
            except Exception:  # noqa: BLE001 - a layout the model cannot run in; the plain contiguous one must run
                if reference is None:
                    raise
                continue
            if reference is None:
                reference = values
            elif not np.allclose(values["probe/loss"], reference["probe/loss"], rtol=tol, atol=tol, equal_nan=True):
                continue
            timings[evaluator.path, layout] = min(clock(lambda e=evaluator: e(coords), device, 2))
    path, layout = min(timings, key=timings.__getitem__)
    return {"path": path, "layout": layout, "seconds": {f"{p}/{lay}": round(t, 6) for (p, lay), t in timings.items()}}


def _dataset_description(ds: Dataset | Iterable[Batch], objective: Objective | None = None) -> dict[str, Any]:
    """What identifies a source in a result file: the data set's spec and content hash (or, for
    other batches, the number of targets the objective counts)."""
    if isinstance(ds, Dataset):
        return {**ds.spec, "num_samples": len(ds), "sha256": tensor_sha256(ds.arrays())}
    return {"batches": "user", "num_targets": objective.num_samples if objective is not None else None}


def evaluate(
    model: nn.Module,
    directions: Directions,
    axes: Sequence[np.ndarray],
    sources: Mapping[str, Dataset],
    *,
    kind: str = "grid",
    origin: Mapping[str, torch.Tensor] | None = None,
    axis_labels: Sequence[str] | None = None,
    markers: Sequence[Mapping[str, Any]] = (),
    bn: str = "eval",
    calibration: Dataset | None = None,
    batch_size: int | None = None,
    points_per_batch: int | None = None,
    dtype: torch.dtype = torch.float32,
    precision: str = "float32",
    device: torch.device | str = "cpu",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    save_every: float = 10.0,
    loss: str | Loss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross-entropy",
    forward: Forward | None = None,
    ignore_index: int = -100,
) -> dict[str, Any]:
    """Evaluate loss and accuracy of every source at every grid point (see the module docstring).

    The point with coordinates c is w0 + sum_i c_i d_i (``w0 = origin``), set from w0
    every time. Points are evaluated ``points_per_batch`` at a time, in a fixed order
    (row-major over the grid) and in fixed chunks, so a run continued from its result
    file computes exactly what an uninterrupted run computes. Under torchrun the chunks
    are shared out across the ranks, whole points on all the data per rank (see "Under
    torchrun" in the module docstring); every rank returns the whole result.

    Args:
        model: the network (architecture, non-moving parameters, buffers). Deep-copied;
            never modified.
        directions: one direction per axis.
        axes: coordinate vectors, one per direction (:func:`symmetric_axis`, ...).
        sources: data sets by name (``"train"``, ``"test"``, ``"client 3"``, ...).
        kind: ``"line"``, ``"grid"``, ``"volume"`` or ``"plane"`` (recorded; checked
            against the number of axes).
        origin: the base point w0 (default: the model's trainable parameters).
        axis_labels: names of the axes (default alpha, beta, gamma).
        markers: models to draw (see the module docstring).
        bn: ``"eval"`` (the stored BatchNorm statistics) or ``"recalibrate"`` (re-estimate
            them at every point on ``calibration``; a no-op for models without BatchNorm).
        calibration: the fixed subset for ``bn="recalibrate"``.
        batch_size: samples per forward (default: each source in one batch).
        points_per_batch: points per forward (default: continue with the file's value,
            else :func:`auto_chunks`, which also cuts the batches into pieces that fit the
            cache or device memory). The path and memory layout are measured when the surface
            takes ``MEASURE_MIN_FORWARDS`` forwards (K points on S samples) or more
            (:func:`fastest_evaluation`) and recorded in
            ``metadata["evaluation"]``; a continued run keeps the file's choices.
        dtype, device: precision and place of the computation; the data moves there once.
        precision: the arithmetic of a float32 evaluation (:func:`compute_precision`):
            ``"float32"`` (no TF32 on a GPU either), ``"tf32"`` (a GPU only) or ``"bf16"``
            (autocast; on a CPU too). With a reduced one, ``PRECISION_CHECKS`` grid points are
            evaluated again in float32 (plain path) once the grid is done, and the largest
            differences of their losses from the grid's values are recorded
            as ``metadata["precision_error"]`` (``max_abs_loss``, ``max_rel_loss``,
            ``max_abs_accuracy``, the ``points``).
        out: ``.npz`` result file, written every ``save_every`` seconds, on interruption
            and at the end; if it exists, the run continues from it.
        overwrite: start over even if ``out`` exists; the old file stays until the new result
            is complete (progress goes to ``.NAME.new`` beside it, renamed over ``out`` at the end).
        metadata: extra identification (e.g. ``{"checkpoints": [...]}``), part of the run's identity.
        progress: show a tqdm bar (default: when stderr is a terminal).
        save_every: seconds between writes of ``out``.
        loss, forward, ignore_index: the objective (:class:`~landscape.objective.Objective`); with
            anything but the default mean cross-entropy of ``(x, y)`` data, the points are
            evaluated one at a time through the objective (accuracy only for classification
            losses; BatchNorm statistics as stored), and ``sources`` may be any re-iterable of batches.

    Returns:
        The result dict (module docstring).

    Raises:
        LandscapeError: inconsistent arguments, or an ``out`` file holding another run.
    """
    if kind not in KINDS:
        raise LandscapeError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    if not (len(axes) == len(directions) == KINDS[kind]):
        raise LandscapeError(
            f"a {kind} needs {KINDS[kind]} axes and directions, got {len(axes)} axes and {len(directions)} directions"
        )
    if bn not in BN_MODES:
        raise LandscapeError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if bn == "recalibrate" and calibration is None:
        raise LandscapeError("bn='recalibrate' needs a calibration data set")
    if not sources:
        raise LandscapeError("no data sources to evaluate")
    if points_per_batch is not None and points_per_batch < 1:
        raise LandscapeError(f"points per batch must be at least 1, got {points_per_batch}")
    generic = (loss != "cross-entropy" or forward is not None or ignore_index != -100
               or any(not isinstance(ds, Dataset) or ds.named for ds in sources.values()))
    if precision not in PRECISIONS:
        raise LandscapeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "float32" and dtype != torch.float32:
        raise LandscapeError(f"a reduced precision applies to float32 only, but the dtype is "
                             f"{str(dtype).removeprefix('torch.')}", where=f"--precision {precision}",
                             fix="pass --dtype float32 or --precision float32")
    if precision == "tf32" and torch.device(device).type != "cuda":
        raise LandscapeError("TF32 needs a CUDA device; a CPU has none", where="--precision tf32",
                             fix="use --precision bf16 or float32 on a CPU")
    if generic and precision != "float32":
        raise LandscapeError("a reduced precision works with the default cross-entropy of (x, y) data only",
                             where=f"--precision {precision}",
                             fix="use --precision float32 with your own loss, forward or batches")
    if generic and bn == "recalibrate":
        raise LandscapeError("--bn recalibrate works with the default cross-entropy of (x, y) data only",
                             fix="use --bn eval with your own loss, forward or batches")
    device = torch.device(device)
    axes = [np.asarray(a, dtype=np.float64) for a in axes]
    shape = tuple(len(a) for a in axes)
    if math.prod(shape) > MAX_POINTS:
        raise LandscapeError(f"a {'x'.join(map(str, shape))} {kind} has {math.prod(shape):,} points, more than "
                             f"{MAX_POINTS:,}", fix="lower --resolution")
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    base = dict(origin) if origin is not None else {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if list(directions.vectors[0]) != list(base):
        raise LandscapeError("the directions do not cover the same parameters as the base point")
    out = Path(out) if out is not None else None
    world = distributed.current()
    main = world is None or world.rank == 0
    size = 1 if world is None else world.size

    def read_previous() -> dict[str, Any] | None:
        return load_result(out) if out is not None and out.exists() and not overwrite else None

    previous = read_previous() if world is None else world.from_first(read_previous)
    target, out = out, (out.parent / f".{out.name}.new" if overwrite and out is not None else out)
    if out is not None and overwrite and main:
        out.unlink(missing_ok=True)  # an earlier --overwrite that was interrupted
    # every rank evaluates whole points on all the data (data_parallel=False): see "Under torchrun"
    objectives = {s: Objective(model, ds.batches(batch_size) if isinstance(ds, Dataset) else ds, dtype, device,
                               list(base), loss=loss, forward=forward, ignore_index=ignore_index, data_parallel=False)
                  for s, ds in sources.items()} if generic else {}
    # How the points are computed: continued from the file's choices, else chosen now (see auto_chunks)
    old = previous["metadata"] if previous is not None else {}
    samples_per_forward = batch_size
    if generic:
        points_per_batch = 1
    else:
        if points_per_batch is None and isinstance(old.get("points_per_batch"), int):
            points_per_batch = int(old["points_per_batch"])
        if isinstance(old.get("samples_per_forward"), int) and points_per_batch is not None:
            samples_per_forward = int(old["samples_per_forward"])
        else:
            first = next(iter(sources.values()))
            per_forward = len(first) if batch_size is None else min(batch_size, len(first))
            num = sum(t.numel() for t in base.values())
            points_per_batch, samples_per_forward = auto_chunks(model, first.x, per_forward, num, dtype, device,
                                                                points_per_batch)
            if world is not None:  # one chunking for all ranks (free GPU memory may differ)
                points_per_batch, samples_per_forward = world.min_int(points_per_batch), world.min_int(samples_per_forward)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": landscape.__version__,
        "kind": kind,
        "shape": list(shape),
        "sources": list(sources),
        **dict(metadata or {}),
        "origin_sha256": tensor_sha256({**base, **dict(model.named_buffers())}),
        "directions": directions.describe(),
        "data": {s: _dataset_description(ds, objectives.get(s)) for s, ds in sources.items()},
        "loss": objectives[next(iter(objectives))].loss_fn.name if generic else "cross-entropy",
        "metrics": ["loss", "accuracy"] if not generic or next(iter(objectives.values())).loss_fn.classification
        else ["loss"],
        "bn": bn,
        "calibration": _dataset_description(calibration) if bn == "recalibrate" and calibration is not None else None,
        "dtype": str(dtype).removeprefix("torch."),
        "precision": precision,
        "batch_size": batch_size,
        "points_per_batch": points_per_batch,
        "samples_per_forward": samples_per_forward,
        "axis_labels": list(axis_labels or ["alpha", "beta", "gamma"][: len(axes)]),
        "markers": [dict(m) for m in markers],
        "device": str(device),
        "num_processes": size,
    }
    meta["grid"] = {"extent": [[float(a[0]), float(a[-1])] for a in axes], **dict(meta.get("grid") or {})}
    keys = [f"{s}/{m}" for s in sources for m in meta["metrics"]]
    values = {k: np.full(coords.shape[0], np.nan) for k in keys}
    done = np.zeros(coords.shape[0], dtype=bool)
    if previous is not None:
        _check_same_run(out, previous, meta, axes)
        for key in ("precision_error", "evaluation"):
            if key in previous["metadata"]:
                meta[key] = previous["metadata"][key]
        for k in keys:
            values[k] = previous["values"][k].reshape(-1).copy()
        done = previous["done"].reshape(-1).copy()

    def result() -> dict[str, Any]:
        meta["num_done"] = int(done.sum())
        meta["complete"] = bool(done.all())
        meta["nonfinite"] = {k: int((done & ~np.isfinite(v)).sum()) for k, v in values.items()}
        return {
            "kind": kind,
            "axes": axes,
            "axis_labels": meta["axis_labels"],
            "values": {k: v.reshape(shape) for k, v in values.items()},
            "done": done.reshape(shape),
            "markers": meta["markers"],
            "metadata": meta,
        }

    pending = [i for i in range(0, len(coords), points_per_batch) if not done[i : i + points_per_batch].all()]
    if pending:
        evaluator: Callable[[np.ndarray], dict[str, np.ndarray]]
        if generic:
            evaluator = _ObjectiveEvaluator(base, directions, objectives)
        else:
            calibrate = calibration.batches(batch_size) if calibration is not None else []
            how = old.get("evaluation") if isinstance(old.get("evaluation"), dict) else None
            forwards = len(pending) * sum(math.ceil(len(ds) / (samples_per_forward or len(ds)))
                                          for ds in sources.values())
            if how is None and forwards >= MEASURE_MIN_FORWARDS:
                probe = next(iter(sources.values())).batches(samples_per_forward)[0]

                def measure() -> dict[str, Any]:
                    return fastest_evaluation(model, base, directions, probe, bn, calibrate, dtype, device, precision,
                                              points_per_batch)

                how = measure() if world is None else world.from_first(measure)  # one choice for all ranks
            how = how or {"layout": LAYOUTS[0]}  # unmeasured: the fast path if the model has one, contiguous
            evaluator = _Evaluator(model, base, directions, {s: ds.batches(samples_per_forward) for s, ds in sources.items()},
                                   bn, calibrate, dtype, device, precision, fast=how.get("path") != "plain",
                                   layout=how.get("layout") if how.get("layout") in LAYOUTS else LAYOUTS[0])
            meta["evaluation"] = {**how, "path": evaluator.path, "layout": evaluator.layout}
        bar = tqdm(total=len(coords), initial=int(done.sum()), unit="pt", desc=kind,
                   disable=_no_bar(progress) if main else True)
        last_save = time.monotonic()
        try:
            for first in range(0, len(pending), size):
                for index, got in _round(evaluator, coords, pending[first:first + size], points_per_batch, keys, world):
                    for k, v in got.items():
                        values[k][index] = v
                    done[index] = True
                    bar.update(len(index))
                if out is not None and main and time.monotonic() - last_save >= save_every:
                    with distributed.uninterrupted():
                        save_result(out, result())
                    last_save = time.monotonic()
            if precision != "float32":  # the values just computed against float32 at a few points
                reference = _Evaluator(model, base, directions, {s: ds.batches(batch_size) for s, ds in sources.items()},
                                       bn, calibration.batches(batch_size) if calibration is not None else [], dtype,
                                       device, fast=False)
                meta["precision_error"] = precision_error(values, reference, coords, keys)
        finally:
            bar.close()
            if out is not None and main:
                with distributed.uninterrupted():
                    save_result(out, result())
    elif out is not None and previous is None and main:
        save_result(out, result())
    if overwrite and out is not None and done.all() and main:
        os.replace(out, target)
    return result()


def precision_error(values: Mapping[str, np.ndarray], reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                    coords: np.ndarray, keys: Sequence[str]) -> dict[str, Any]:
    """The largest differences between the (reduced-precision) ``values`` of a finished grid and the
    float32 plain evaluation ``reference`` at ``PRECISION_CHECKS`` grid points (the first, middle and
    last), over every source."""
    index = sorted({round(i) for i in np.linspace(0, len(coords) - 1, PRECISION_CHECKS)})
    want = reference(coords[index])
    loss = [k for k in keys if k.endswith("/loss")]
    diff = np.concatenate([np.abs(values[k][index] - want[k]) for k in loss])
    rel = diff / np.maximum(np.concatenate([np.abs(want[k]) for k in loss]), np.finfo(np.float64).tiny)
    acc = [np.abs(values[k][index] - want[k]) for k in keys if k.endswith("/accuracy")]
    return {"points": coords[index].tolist(), "max_abs_loss": float(diff.max()), "max_rel_loss": float(rel.max()),
            "max_abs_accuracy": float(np.concatenate(acc).max()) if acc else None}


def _round(evaluator: Callable[[np.ndarray], dict[str, np.ndarray]], coords: np.ndarray, starts: Sequence[int],
           per_chunk: int, keys: Sequence[str], world: distributed.World | None
           ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``(point indices, values)`` of one round of chunks: chunk ``starts[rank]`` evaluated on
    each rank (one process: the one chunk), then gathered so every rank has them all."""
    rank = 0 if world is None else world.rank
    mine = np.arange(starts[rank], min(starts[rank] + per_chunk, len(coords))) if rank < len(starts) else None
    got = evaluator(coords[mine]) if mine is not None else {}
    if world is None:
        return [(mine, got)]
    # one row per point (padded to a full chunk): its index (-1: padding), then its values
    table = torch.full((per_chunk, 1 + len(keys)), math.nan, dtype=torch.float64)
    table[:, 0] = -1
    if mine is not None:
        table[: len(mine), 0] = torch.from_numpy(mine).double()
        for j, k in enumerate(keys):
            table[: len(mine), 1 + j] = torch.as_tensor(np.asarray(got[k], dtype=np.float64))
    rounds = []
    for t in world.gather(table):
        t = t[t[:, 0] >= 0]
        if len(t):
            rounds.append((t[:, 0].long().numpy(), {k: t[:, 1 + j].numpy() for j, k in enumerate(keys)}))
    return rounds


def _no_bar(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None lets tqdm hide the bar when stderr is not a terminal."""
    return None if progress is None else not progress


def _check_same_run(path: Path, previous: dict[str, Any], meta: Mapping[str, Any], axes: Sequence[np.ndarray]) -> None:
    """Refuse to continue from a result file written by a different run."""
    old = {"precision": "float32",  # files from before the option were float32
           **{k: v for k, v in previous["metadata"].items() if k not in NOT_IDENTITY}}
    new = {k: v for k, v in meta.items() if k not in NOT_IDENTITY}
    diff = _first_difference(_jsonable(old), _jsonable(new))
    if diff is None and any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(previous["axes"], axes)):
        diff = ("axes", "other grid axes", "these")
    if diff is not None:
        key, a, b = diff
        raise LandscapeError(
            f"refusing to continue {path}: it holds another run ('{key}' differs: {_short(a)} there, {_short(b)} "
            "now); pass another --out, or --overwrite / delete the file to start over"
        )


def _first_difference(a: Any, b: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The dotted key of the first leaf where two JSON values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    return None if a == b else (key, a, b)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def save_result(path: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Atomically write a result dict to ``.npz`` (layout in the module docstring)."""
    arrays: dict[str, np.ndarray] = {f"axis{i}": np.asarray(a) for i, a in enumerate(result["axes"])}
    arrays["done"] = np.asarray(result["done"])
    arrays.update({f"values/{k}": np.asarray(v) for k, v in result["values"].items()})
    arrays["metadata"] = np.array(json.dumps(result["metadata"]))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result file written by :func:`evaluate` into the dict of the module docstring.

    Raises:
        LandscapeError: missing file, or a file that is not a (well-formed) surface result.
    """
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"result file not found: {path}")

    def bad(what: str) -> LandscapeError:
        return LandscapeError(f"{path} is not a surface result file ({what})",
                              fix="pass a .npz written by `landscape surface` or `landscape plane`")

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except OSError as exc:
        raise os_error(exc, "cannot read the result file") from None
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise bad(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if "metadata" not in arrays:
        raise bad("no metadata")
    try:
        meta = json.loads(str(arrays["metadata"]))
    except ValueError:
        raise bad("its metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"format {meta.get('format') if isinstance(meta, dict) else None!r}")
    shape = meta.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 3 or meta.get("kind") not in KINDS
            or not all(isinstance(n, int) and n >= 1 for n in shape)):
        raise bad("its metadata has no valid kind and shape")
    for key in ("axis_labels", "markers", "sources"):
        if not isinstance(meta.get(key), list):
            raise bad(f"its metadata lacks '{key}'")
    for m in meta["markers"]:
        coords = m.get("coords") if isinstance(m, dict) else "?"
        if not isinstance(m, dict) or not isinstance(m.get("label"), str) or not (coords is None or (
                isinstance(coords, list) and len(coords) == len(shape)
                and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords))):
            raise bad("a marker has no label or coordinates of another dimension")
    axes = [arrays.get(f"axis{i}") for i in range(len(shape))]
    if any(a is None or a.shape != (n,) for a, n in zip(axes, shape)):
        raise bad("its axes do not match its shape")
    values = {k.removeprefix("values/"): v for k, v in arrays.items() if k.startswith("values/")}
    metrics = meta.get("metrics", list(METRICS))
    if not isinstance(metrics, list) or "loss" not in metrics or not set(metrics) <= set(METRICS):
        raise bad("its metadata names unknown metrics")
    wanted = [f"{s}/{m}" for s in meta["sources"] for m in metrics]
    if sorted(values) != sorted(wanted) or any(v.shape != tuple(shape) for v in values.values()):
        raise bad("its values do not match its sources and shape")
    if "done" not in arrays or arrays["done"].shape != tuple(shape) or arrays["done"].dtype != bool:
        raise bad("its record of finished points does not match its shape")
    return {
        "kind": meta["kind"],
        "axes": axes,
        "axis_labels": meta["axis_labels"],
        "values": values,
        "done": arrays["done"],
        "markers": meta["markers"],
        "metadata": meta,
    }
