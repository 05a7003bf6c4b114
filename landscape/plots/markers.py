"""The models drawn on a surface: where each is shown, the training path, one label per place.

A result's ``markers`` (:mod:`landscape.surface`) are models at coordinates of the surface's
axes. Those with role ``"trajectory"`` are checkpoints along training in round order: they are
drawn as a path, a line through them with its start and end marked. The static and the
interactive figures follow the same rules, kept here:

- a figure shows the whole grid and every model it draws (:func:`extent`);
- a slice of a volume shows the models nearest to it along the third axis only (:func:`shown`);
- models at one place (the global model and the last round of its trajectory) share one
  label, ``"global, round 60"`` (:func:`places`);
- every place is labelled but the inner points of the path: the static figure labels those
  where a label fits, the interactive one names them on hover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TRAJECTORY = "trajectory"
#: Models closer than this fraction of each drawn axis's span share a place and a label.
COINCIDENT = 1e-3
#: Room left beyond a model that lies outside the grid, as a fraction of the drawn span.
EDGE = 0.04

Marker = Mapping[str, Any]


def shown(markers: Sequence[Marker], axis: np.ndarray | None = None, index: int = 0) -> list[bool]:
    """Which models a figure draws: those with coordinates; on the slice ``axis[index]`` of a
    volume only those whose third coordinate is nearest to it.

    >>> shown([{"coords": [0, 0, 0.4]}, {"coords": [0, 0, 2.0]}, {"coords": None}], np.array([0.0, 0.5, 1.0]), 1)
    [True, False, False]
    """
    return [m.get("coords") is not None
            and (axis is None or int(np.argmin(np.abs(np.asarray(axis) - m["coords"][2]))) == index) for m in markers]


def path(markers: Sequence[Marker]) -> list[int]:
    """The indices of the trajectory's models, in their order (rounds)."""
    return [i for i, m in enumerate(markers) if m.get("role") == TRAJECTORY]


def path_coords(markers: Sequence[Marker], visible: Sequence[bool], dims: int = 2) -> np.ndarray:
    """The trajectory's points (one row each, first ``dims`` coordinates), NaN where not shown: a gap in the line."""
    rows = [markers[i]["coords"][:dims] if visible[i] else [np.nan] * dims for i in path(markers)]
    return np.asarray(rows, dtype=np.float64).reshape(-1, dims)


def extent(axes: Sequence[np.ndarray], markers: Sequence[Marker], visible: Sequence[bool]) -> list[tuple[float, float]]:
    """The drawn range of each axis: the grid, widened (with room :data:`EDGE`) to every shown model beyond it.

    >>> extent([np.array([-1.0, 1.0])], [{"coords": [3.0]}], [True])
    [(-1.0, 3.16)]
    """
    out = []
    for k, axis in enumerate(axes):
        lo, hi = float(np.min(axis)), float(np.max(axis))
        coords = [float(m["coords"][k]) for m, v in zip(markers, visible) if v and np.isfinite(m["coords"][k])]
        a, b = min([lo, *coords]), max([hi, *coords])
        room = EDGE * (b - a)
        out.append((a - room if a < lo else lo, b + room if b > hi else hi))
    return out


@dataclass
class Place:
    """One labelled place of a figure and the models drawn at it.

    Attributes:
        coords: where (the first member's coordinates).
        members: indices of the models there, in marker order.
        text: their labels, joined (``"global, round 60"``).
        inner: only inner points of the training path are here (labelled where a label fits).
    """

    coords: tuple[float, ...]
    members: list[int]
    text: str
    inner: bool


def places(markers: Sequence[Marker], visible: Sequence[bool], spans: Sequence[float]) -> list[Place]:
    """The shown models grouped by place; first the places of models, then the path's inner points.

    Args:
        spans: the drawn length of each axis (see :func:`extent`); models closer than
            :data:`COINCIDENT` times it along every drawn axis share a place.

    >>> ms = [{"label": "global", "coords": [0, 0]}, {"label": "round 60", "role": "trajectory", "coords": [0, 1e-9]}]
    >>> [p.text for p in places(ms, [True, True], [2.0, 2.0])]
    ['global, round 60']
    """
    traj = path(markers)
    inner = set(traj[1:-1])
    groups: list[list[int]] = []
    for i, m in enumerate(markers):
        if not visible[i]:
            continue
        near = (g for g in groups if all(abs(a - b) <= COINCIDENT * s
                                         for a, b, s in zip(m["coords"], markers[g[0]]["coords"], spans)))
        group = next(near, None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    found = [Place(tuple(float(c) for c in markers[g[0]]["coords"]), g,
                   ", ".join(dict.fromkeys(str(markers[i]["label"]) for i in g)), all(i in inner for i in g))
             for g in groups]
    return sorted(found, key=lambda p: p.inner)
