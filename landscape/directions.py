"""Directions in parameter space for loss surfaces, and coordinates of models along them.

A direction is a dict of tensors keyed by parameter name, shaped like the parameters
(the model's trainable parameters, in ``named_parameters()`` order). Four families:

- **Random, filter-normalized** [Li18 §4]: ``d ~ N(0, I)``, then every dim-0 slice
  (a filter of a convolution, a row of a linear layer) is rescaled to the norm of the
  same slice of the weights,

      d_{l,i} <- d_{l,i} * ||w_{l,i}|| / ||d_{l,i}||,

  so a step ``alpha = 1`` moves every filter by its own size and surfaces of
  networks with different weight scales become comparable. Biases and the affine
  parameters of normalization layers are zeroed by default [Li18 §4] -- chosen by
  role (the attribute name ``bias``; the module type of norm layers), not by ``ndim``.
  Optionally the directions are orthogonalized (Gram-Schmidt, after normalization)
  and the cosines between them before that are reported.
- **Hessian eigenvectors**: the top-``k`` eigenvectors of the loss Hessian at the
  checkpoint (unit vectors, Euclidean units), from :func:`landscape.eigen.top_eigenvalues`.
- **PCA of a trajectory** [Li18 §7]: the top principal directions of the centred
  matrix of differences ``w_t - w0`` of checkpoints along training (e.g. the global
  model over rounds), with every checkpoint projected onto them.
- **The plane through three models** [G18 §3]: ``u = w2 - w1``,
  ``v = (w3 - w1) - <w3 - w1, u_hat> u_hat``, both normalized, so coordinates are true
  Euclidean distances; other models (e.g. every client) are projected onto it with
  their off-plane distance.

Directions are saved to and loaded from ``.pt`` files (tensors only, read with
``weights_only=True``) that are checked against the model on load.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape import objective
from landscape.eigen import top_eigenvalues
from landscape.errors import LandscapeError
from landscape.files import save_torch
from landscape.operators import HessianOperator

Params = dict[str, torch.Tensor]

FORMAT = "landscape-directions"
FORMAT_VERSION = 1
ROLES = ("weight", "bias", "norm")
NORMALIZATIONS = ("filter", "none")
# Module types whose parameters are normalization parameters (affine scale and shift).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# Relative size below which a direction counts as zero (collinear models, empty PCA axis).
DEGENERATE_TOL = 1e-6
#: The unit of a coordinate along directions of each deterministic kind (random ones: see Directions.unit).
UNITS = {"eigen": "Euclidean distance", "pca": "Euclidean distance", "plane": "Euclidean distance",
         "interpolation": "0 = A, 1 = B"}


@dataclass
class Directions:
    """Directions keyed by parameter name, with what is needed to reproduce them.

    Attributes:
        vectors: one dict (parameter name -> tensor) per direction.
        kind: ``"random"``, ``"eigen"``, ``"pca"``, ``"plane"`` or ``"interpolation"``.
        seed: the seed of random directions (None for the deterministic kinds).
        info: JSON-ready details (normalization, ignored roles, cosines, eigenvalues,
            explained variance, the file they were loaded from).
    """

    vectors: list[Params]
    kind: str
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.vectors)

    def sha256(self) -> str:
        """Hash of the direction values (names, shapes, dtypes and bytes)."""
        digest = hashlib.sha256()
        for vector in self.vectors:
            for name, t in vector.items():
                digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
                digest.update(t.detach().to("cpu").contiguous().numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-ready identification for result files."""
        return {"kind": self.kind, "seed": self.seed, "num": len(self), "sha256": self.sha256(), **self.info}

    @property
    def unit(self) -> str:
        """What one unit of a coordinate along these directions is, for axis labels.

        Unit vectors (eigenvectors, PCA, the plane) measure Euclidean distance in parameter
        space; a filter-normalized direction moves every filter by its own norm [Li18 §4].

        >>> Directions([], "random", 0, {"normalization": "filter"}).unit
        'filter-normalized units'
        """
        if self.kind == "random":
            return "filter-normalized units" if self.info.get("normalization") == "filter" else "random-direction units"
        return UNITS.get(self.kind, "direction units")


def trainable_parameters(model: nn.Module) -> Params:
    """The parameters that directions move (``requires_grad``), detached, in model order."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """The role of every parameter: ``"norm"``, ``"bias"`` or ``"weight"``.

    ``"norm"``: any parameter of a normalization layer (its type is one of
    :data:`NORM_TYPES`: BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm);
    ``"bias"``: a parameter registered under the name ``bias`` elsewhere;
    ``"weight"``: everything else (convolution and linear weights, embeddings, tokens).

    >>> parameter_roles(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)))
    {'0.weight': 'weight', '0.bias': 'bias', '1.weight': 'norm', '1.bias': 'norm'}
    """
    roles: dict[str, str] = {}
    for prefix, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            if param is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            roles[name] = "norm" if isinstance(module, NORM_TYPES) else "bias" if attr == "bias" else "weight"
    return {n: roles[n] for n, _ in model.named_parameters()}


def filter_normalize(direction: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> Params:
    """Rescale every dim-0 slice of ``direction`` to the norm of the same slice of ``weights`` [Li18 §4].

    d_{l,i} <- d_{l,i} * ||w_{l,i}|| / ||d_{l,i}||   for every parameter l and index i of its dim 0.

    A slice whose direction or weight is zero stays zero. Returns new tensors.

    >>> w = {"a": torch.tensor([[3.0, 4.0], [0.0, 2.0]])}
    >>> filter_normalize({"a": torch.tensor([[1.0, 0.0], [1.0, 1.0]])}, w)["a"]
    tensor([[5.0000, 0.0000],
            [1.4142, 1.4142]])
    """
    out: Params = {}
    for name, d in direction.items():
        shape = (d.shape[0], -1) if d.ndim else (1, 1)
        d2, w2 = d.reshape(shape), weights[name].reshape(shape).to(d.device, d.dtype)
        d_norm = d2.norm(dim=1, keepdim=True)
        scale = torch.where(d_norm > 0, w2.norm(dim=1, keepdim=True) / d_norm.clamp_min(torch.finfo(d.dtype).tiny), 0.0)
        out[name] = (d2 * scale).reshape(d.shape)
    return out


def flatten(vector: Mapping[str, torch.Tensor], names: Sequence[str], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Concatenate named tensors in ``names`` order into one vector of ``dtype``."""
    return torch.cat([vector[n].detach().reshape(-1).to(dtype) for n in names])


def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Split a vector into tensors shaped (and typed) like ``like`` (copies)."""
    views = objective.unflatten(flat, {n: t.shape for n, t in like.items()})
    return {n: v.to(like[n].dtype).clone() for n, v in views.items()}


def orthogonalize(vectors: Sequence[Params]) -> tuple[list[Params], list[list[float]]]:
    """Gram-Schmidt in float64, each result rescaled to its input's norm.

    d_k <- d_k - sum_{j<k} <d_k, e_j> e_j,  then  d_k <- d_k * ||d_k^in|| / ||d_k||,

    with ``e_j`` the unit orthogonalized earlier directions: the directions become
    mutually orthogonal and keep their overall scale (filter normalization holds
    approximately; random directions in high dimension are nearly orthogonal
    already [Li18 §4], the returned cosines say how nearly).

    Returns:
        The orthogonal directions and the matrix of cosines between the inputs.
    """
    names = list(vectors[0])
    flat = [flatten(v, names) for v in vectors]
    cos = [[float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300)) for b in flat] for a in flat]
    basis: list[torch.Tensor] = []
    out: list[Params] = []
    for vec, d in zip(vectors, flat):
        r = d.clone()
        for e in basis:
            r -= (r @ e) * e
        if r.norm() <= DEGENERATE_TOL * d.norm():
            raise LandscapeError("cannot orthogonalize: two directions are parallel; use another seed")
        basis.append(r / r.norm())
        out.append(unflatten(r * (d.norm() / r.norm()), vec))
    return out, cos


def random_directions(
    model: nn.Module,
    num: int,
    seed: int = 0,
    normalization: str = "filter",
    ignore: Sequence[str] = ("bias", "norm"),
    orthogonal: bool = False,
) -> Directions:
    """Seeded Gaussian directions, filter-normalized, biases and norm parameters zeroed [Li18 §4].

    Each direction is drawn with ``torch.randn`` from one CPU generator seeded with
    ``seed``, parameter by parameter in model order (so it is the same on every device),
    then normalized, then optionally orthogonalized.

    Args:
        model: the network whose trainable parameters the directions move.
        num: how many directions (1 for a line, 2 for a grid, 3 for a volume).
        seed: random seed.
        normalization: ``"filter"`` (per dim-0 slice, [Li18]) or ``"none"`` (raw Gaussian).
        ignore: roles (see :func:`parameter_roles`) whose direction is zero.
        orthogonal: orthogonalize the directions after normalization (see :func:`orthogonalize`).

    Raises:
        LandscapeError: unknown normalization or role, ``num < 1``, nothing left to move.
    """
    if normalization not in NORMALIZATIONS:
        raise LandscapeError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    unknown = [r for r in ignore if r not in ROLES]
    if unknown:
        raise LandscapeError(f"unknown parameter roles {unknown}; choose from {ROLES}")
    if num < 1:
        raise LandscapeError(f"need at least one direction, got {num}")
    params = trainable_parameters(model)
    roles = parameter_roles(model)
    if all(roles[n] in ignore for n in params):
        raise LandscapeError(f"every parameter has an ignored role {tuple(ignore)}; nothing to move")
    generator = torch.Generator().manual_seed(seed)
    vectors: list[Params] = []
    for _ in range(num):
        d = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64) for n, p in params.items()}
        if normalization == "filter":
            d = filter_normalize(d, {n: p.to("cpu", torch.float64) for n, p in params.items()})
        vectors.append({n: (torch.zeros_like(t) if roles[n] in ignore else t).to(params[n].dtype) for n, t in d.items()})
    info: dict[str, Any] = {"normalization": normalization, "ignore": list(ignore), "orthogonal": orthogonal}
    if num > 1:
        ortho, cos = orthogonalize(vectors)
        info["cosines"] = cos
        if orthogonal:
            vectors = ortho
    return Directions(vectors, "random", seed, info)


def eigen_directions(
    objective: Any, num: int, seed: int = 0, tol: float = 1e-3, method: str = "lanczos"
) -> Directions:
    """The top-``num`` Hessian eigenvectors at the objective's parameters (unit, Euclidean units).

    Along eigenvector ``q_i`` with eigenvalue ``lambda_i`` the loss is
    f(w + a q_i) = f(w) + a g.q_i + a^2 lambda_i / 2 + O(a^3). Signs are fixed so that
    the largest-magnitude entry of each vector is positive (solvers return either sign).

    Args:
        objective: a :class:`landscape.objective.Objective` (its ``params`` are the base point).
        num: number of eigenvectors (largest algebraic eigenvalues first).
        seed, tol, method: passed to :func:`landscape.eigen.top_eigenvalues`; the directions are
            eigenvectors, so ``tol`` bounds both the eigenvalue error and the relative residual
            ||Hv - lambda v|| / |lambda| (``vector_tol``).
    """
    result = top_eigenvalues(HessianOperator(objective), num, method=method, tol=tol, seed=seed, vector_tol=tol)
    vectors = []
    for q in result.eigenvectors[:num]:
        q = q.detach().to(torch.float64)
        q = q / q.norm()
        q = q * torch.sign(q[q.abs().argmax()])
        vectors.append(unflatten(q.to(objective.device), objective.params))
    info = {
        "eigenvalues": [float(x) for x in result.eigenvalues[:num]],
        "converged": [bool(c) for c in result.converged[:num]],
        "method": method,
        "tol": tol,
    }
    return Directions(vectors, "eigen", seed, info)


def interpolation(w_a: Mapping[str, torch.Tensor], w_b: Mapping[str, torch.Tensor]) -> Directions:
    """The direction d = w_b - w_a: the point at coordinate t is (1 - t) w_a + t w_b [G18].

    Coordinates outside [0, 1] extrapolate beyond the two models.
    """
    return Directions([{n: (w_b[n] - w_a[n]).detach().clone() for n in w_a}], "interpolation", None, {})


def require_same_shapes(params: Sequence[Mapping[str, torch.Tensor]], labels: Sequence[str]) -> None:
    """All parameter dicts have the same names and shapes, else a one-line error naming the culprit."""
    ref = params[0]
    for label, p in zip(labels[1:], params[1:]):
        if list(p) != list(ref) or any(p[n].shape != ref[n].shape for n in ref):
            diff = next(
                (f"{n}: {tuple(ref[n].shape)} vs {tuple(p[n].shape) if n in p else 'missing'}"
                 for n in ref if n not in p or p[n].shape != ref[n].shape),
                f"parameters {sorted(set(p) ^ set(ref))[:3]}",
            )
            raise LandscapeError(
                f"checkpoints have different architectures: {labels[0]} and {label} differ ({diff}); "
                "pass checkpoints of one model"
            )


def project(
    origin: Mapping[str, torch.Tensor], directions: Sequence[Mapping[str, torch.Tensor]], point: Mapping[str, torch.Tensor]
) -> tuple[list[float], float]:
    """Least-squares coordinates of ``point`` in the affine span of ``directions`` at ``origin``.

    With D the matrix whose rows are the flattened directions and r = point - origin,
    c = (D D^T)^{-1} D r and the off-surface distance is ||r - D^T c|| (float64). For
    orthonormal directions (plane, PCA, eigenvectors) c_i = <r, d_i>.

    >>> o = {"w": torch.zeros(3)}
    >>> project(o, [{"w": torch.tensor([2.0, 0, 0])}], {"w": torch.tensor([4.0, 3.0, 0])})
    ([2.0], 3.0)
    """
    names = list(origin)
    d = torch.stack([flatten(v, names) for v in directions])
    r = flatten(point, names) - flatten(origin, names)
    coords = torch.linalg.solve(d @ d.T, d @ r)
    return [float(c) for c in coords], float((r - d.T @ coords).norm())


def pca_directions(
    origin: Mapping[str, torch.Tensor], trajectory: Sequence[Mapping[str, torch.Tensor]], num: int = 2
) -> tuple[Directions, list[tuple[list[float], float]]]:
    """Principal directions of a trajectory of checkpoints, and the trajectory projected onto them [Li18 §7].

    M has one row ``w_t - w0`` per checkpoint; the directions are the top right
    singular vectors of the centred M (unit vectors), signs fixed so that the
    largest-magnitude entry is positive. ``info["explained_variance"]`` holds
    sigma_i^2 / sum_j sigma_j^2.

    Returns:
        The directions and, per trajectory checkpoint, its coordinates and its distance
        to the plane (line, volume) they span through ``origin``.

    Raises:
        LandscapeError: fewer than ``num + 1`` checkpoints, or a trajectory that spans
            fewer than ``num`` dimensions.
    """
    if len(trajectory) < num + 1:
        raise LandscapeError(f"PCA directions need at least {num + 1} trajectory checkpoints, got {len(trajectory)}")
    names = list(origin)
    base = flatten(origin, names)
    m = torch.stack([flatten(w, names) - base for w in trajectory])
    _, s, vt = torch.linalg.svd(m - m.mean(dim=0), full_matrices=False)
    if s[num - 1] <= DEGENERATE_TOL * s[0].clamp_min(1e-300) or s[0] == 0:
        raise LandscapeError(f"the trajectory spans fewer than {num} dimensions; pass checkpoints that differ")
    vectors = []
    for q in vt[:num]:
        q = q * torch.sign(q[q.abs().argmax()])
        vectors.append(unflatten(q, origin))
    explained = (s**2 / (s**2).sum())[:num]
    directions = Directions(vectors, "pca", None, {"explained_variance": [float(e) for e in explained]})
    return directions, [project(origin, vectors, w) for w in trajectory]


@dataclass
class Plane:
    """The plane through three models [G18 §3], in Euclidean units.

    Attributes:
        origin: w1.
        directions: ``[u_hat, v_hat]`` (orthonormal).
        coords: the coordinates of w1, w2, w3: (0, 0), (||u||, 0), (<w3 - w1, u_hat>, ||v||).
    """

    origin: Params
    directions: Directions
    coords: list[list[float]]


def plane_through(w1: Mapping[str, torch.Tensor], w2: Mapping[str, torch.Tensor], w3: Mapping[str, torch.Tensor]) -> Plane:
    """The plane through three parameter settings [G18 §3].

    u = w2 - w1,  v = (w3 - w1) - <w3 - w1, u_hat> u_hat,  u_hat = u/||u||,  v_hat = v/||v||
    (float64). A point (x, y) of the plane is w1 + x u_hat + y v_hat, so distances in the
    plane are Euclidean distances in parameter space.

    Raises:
        LandscapeError: two identical models or three collinear ones
            (||v|| <= 1e-6 ||w3 - w1||).

    >>> w = [{"p": torch.tensor(t)} for t in ([0.0, 0, 1], [3.0, 0, 1], [1.0, 2, 1])]
    >>> plane_through(*w).coords
    [[0.0, 0.0], [3.0, 0.0], [1.0, 2.0]]
    """
    names = list(w1)
    a, b, c = (flatten(w, names) for w in (w1, w2, w3))
    u = b - a
    if u.norm() <= DEGENERATE_TOL * max(float(a.norm()), 1e-30):
        raise LandscapeError("the first two models are identical; a plane needs three distinct models")
    u_hat = u / u.norm()
    r = c - a
    x3 = r @ u_hat
    v = r - x3 * u_hat
    if v.norm() <= DEGENERATE_TOL * max(float(r.norm()), float(u.norm())):
        raise LandscapeError(
            "the three models are collinear (the third lies on the line through the first two); "
            "no plane passes through them: pass three models that span a plane"
        )
    v_hat = v / v.norm()
    directions = Directions([unflatten(u_hat, w1), unflatten(v_hat, w1)], "plane", None, {})
    coords = [[0.0, 0.0], [float(u.norm()), 0.0], [float(x3), float(v.norm())]]
    return Plane({n: t.detach().clone() for n, t in w1.items()}, directions, coords)


def save_directions(path: str | os.PathLike, directions: Directions, model: Mapping[str, Any] | None = None) -> Path:
    """Atomically write directions (and the model they belong to) to a ``.pt`` file."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": directions.kind,
        "seed": directions.seed,
        "info": directions.info,
        "model": dict(model or {}),
        "vectors": [{n: t.detach().to("cpu") for n, t in v.items()} for v in directions.vectors],
    }
    return save_torch(path, payload)


def load_directions(path: str | os.PathLike, params: Mapping[str, torch.Tensor]) -> Directions:
    """Read a file of :func:`save_directions` (or ``landscape hessian --save-eigenvectors``), checked against ``params``.

    Args:
        path: the ``.pt`` file.
        params: the model's trainable parameters (names and shapes must match exactly);
            the vectors are moved to their device and dtype.

    Raises:
        LandscapeError: missing or unreadable file, not a direction file, or directions
            whose names or shapes differ from the model's.
    """
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"direction file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise LandscapeError(f"cannot read direction file {path} ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
    if isinstance(obj, dict) and obj.get("kind") == "hessian-eigenvectors" and isinstance(obj.get("vectors"), list):
        # Written by `landscape hessian --save-eigenvectors`: unit eigenvectors by parameter name.
        eigenvalues = [float(e) for e in obj.get("eigenvalues", [])]
        obj = {"format": FORMAT, "kind": "eigen", "info": {"eigenvalues": eigenvalues}, "vectors": obj["vectors"]}
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise LandscapeError(f"{path} is not a direction file (write one with `landscape surface --save-directions`)")
    stored = obj.get("model") or {}
    for i, vector in enumerate(obj["vectors"]):
        missing = [n for n in params if n not in vector]
        extra = [n for n in vector if n not in params]
        wrong = [f"{n} {tuple(vector[n].shape)} vs {tuple(p.shape)}" for n, p in params.items()
                 if n in vector and vector[n].shape != p.shape]
        if missing or extra or wrong:
            what = "; ".join(
                f"{k} {v[:3]}" for k, v in (("missing", missing), ("unexpected", extra), ("shape mismatch", wrong)) if v
            )
            made_for = f" (made for model {stored.get('name')!r} {stored.get('kwargs') or {}})" if stored.get("name") else ""
            raise LandscapeError(f"direction file {path}{made_for} does not match the model: direction {i}: {what}")
    vectors = [{n: vector[n].to(p.device, p.dtype) for n, p in params.items()} for vector in obj["vectors"]]
    return Directions(vectors, str(obj["kind"]), obj.get("seed"), {**dict(obj.get("info") or {}), "file": str(path)})

