"""Static figures with matplotlib: surfaces, curves, spectral densities, flatness bars.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no
pyplot state, no GUI backend) and written atomically; the format follows the file
suffix (``.png`` at 300 dpi, vector ``.pdf`` and ``.svg`` with their text as text). Drawing
only: every number comes from the result passed in.

Conventions:

- One look for every static figure, here and in the paper figures of ``figures/``: the
  rcParams :data:`STYLE` (fonts, sizes, lines, output), applied by :func:`styled`. Axes say
  their unit (the result's axis labels, e.g. "alpha (filter-normalized units)"), colorbars
  what they show.
- Models are drawn as in :mod:`landscape.plots.markers`: the training trajectory as a path
  in round order (start and end marked), one label per place, labels moved to a free spot
  beside their point (:func:`place_labels`) so that none covers another.

- Surface results are the dicts of :func:`landscape.surface.load_result`:
  ``values[key][i, j]`` is the point ``(axes[0][i], axes[1][j])``, so it is drawn
  transposed (matplotlib puts x along columns).
- NaN and infinite values (diverged or not yet evaluated points) are drawn as gaps.
- Contour levels are log-spaced when the finite values are positive and span more
  than a factor ``LOG_RANGE`` (loss surfaces far from the minimum); linear otherwise.
- The 3D surface uses ``fig.add_subplot(projection="3d")``: the ``fig.gca(projection=...)``
  call of older tools ([Li18]'s reference code) no longer exists and left them blank.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from matplotlib.ticker import LogFormatterSciNotation, LogLocator

from landscape.errors import LandscapeError
from landscape.files import atomic_write
from landscape.plots import IMAGE_SUFFIXES
from landscape.plots import markers as models

SUFFIXES = IMAGE_SUFFIXES
LOG_RANGE = 100.0
NUM_LEVELS = 20
CMAP = "viridis"
STYLES = ("contour", "filled", "heatmap", "3d")
#: The look of every static figure (see :func:`styled`).
STYLE: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same letters on every machine
    "mathtext.fontset": "dejavusans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 10,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.2,
    "image.cmap": CMAP,
    "pdf.fonttype": 42,  # TrueType fonts in PDF (and PS): text stays text, as journals ask
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
}
#: Sizes of the labels of models and of values (on contour lines, on bars), relative to font.size.
MODEL_LABEL_SIZE = "small"
VALUE_LABEL_SIZE = "x-small"
ROLE_STYLE: dict[str | None, dict[str, Any]] = {
    "global": {"marker": "*", "s": 160, "c": "red", "edgecolors": "black", "zorder": 5},
    "swa": {"marker": "D", "s": 70, "c": "orange", "edgecolors": "black", "zorder": 5},
    "client": {"marker": "o", "s": 45, "c": "white", "edgecolors": "black", "zorder": 4},
    None: {"marker": "^", "s": 60, "c": "magenta", "edgecolors": "black", "zorder": 4},
}
#: The training path: a line through the trajectory's points in round order, its start and end marked.
PATH_STYLE = {"color": "black", "linewidth": 1.0, "marker": "o", "markersize": 2.5, "zorder": 3}
PATH_ENDS = {
    "start": {"marker": "o", "s": 45, "c": "white", "edgecolors": "black", "linewidths": 1.2, "zorder": 4},
    "end": {"marker": "s", "s": 40, "c": "black", "zorder": 4},
}
#: Where a model's label may sit beside its point, in order of preference: offset (points), alignment.
LABEL_SPOTS = (((4, 4), "left", "bottom"), ((4, -4), "left", "top"), ((-4, 4), "right", "bottom"),
               ((-4, -4), "right", "top"), ((0, 8), "center", "bottom"), ((0, -8), "center", "top"))
#: Room kept free of other labels around a model's marker (points; half the side of a square).
MARKER_ROOM = 5
#: A label's background: readable on the dark and the light colors of a surface.
LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.75, "linewidth": 0}
#: The gid of the text of a model's label (tests find them by it).
LABEL_GID = "model-label"

P = ParamSpec("P")
R = TypeVar("R")


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """Run ``draw`` under :data:`STYLE`: every function that makes or saves a figure is wrapped in it."""
    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


@styled
def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically in the format of the file suffix (.png, or vector .pdf / .svg).

    Raises:
        LandscapeError: for any other suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise LandscapeError(f"cannot write a figure to {path}: use a file ending in {', '.join(SUFFIXES)}")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix[1:]))


def finite_or_nan(values: np.ndarray) -> np.ndarray:
    """The values as float64 with every inf replaced by NaN (both are drawn as gaps)."""
    z = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(z), z, np.nan)


def use_log_scale(values: np.ndarray) -> bool:
    """Whether the finite values are all positive and span more than ``LOG_RANGE``.

    >>> use_log_scale(np.array([0.5, 80.0])), use_log_scale(np.array([0.5, 40.0, np.nan]))
    (True, False)
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > LOG_RANGE)


def contour_levels(values: np.ndarray, num_levels: int = NUM_LEVELS) -> np.ndarray:
    """Contour levels spanning the finite values: geometric when :func:`use_log_scale`, else linear.

    >>> contour_levels(np.array([[1.0, 1000.0], [np.nan, 10.0]]), 4)
    array([   1.,   10.,  100., 1000.])
    >>> contour_levels(np.array([0.0, 2.0, np.inf]), 3)
    array([0., 1., 2.])

    Raises:
        LandscapeError: when no value is finite (nothing to draw).
    """
    z = finite_or_nan(values)
    if not np.isfinite(z).any():
        raise LandscapeError("nothing to draw: every value is NaN or infinite")
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    if use_log_scale(z):
        return np.geomspace(lo, hi, num_levels)
    if hi == lo:  # a constant surface still needs increasing levels
        pad = max(abs(lo), 1.0) * 1e-3
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, num_levels)


def color_norm(levels: np.ndarray) -> Normalize:
    """The color scale matching the levels: logarithmic for geometric levels."""
    if use_log_scale(levels):
        return LogNorm(levels[0], levels[-1])
    return Normalize(levels[0], levels[-1])


def draw_contour(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: np.ndarray, filled: bool) -> Any:
    """Contour lines (labelled) or filled contours of ``z[i, j]`` at ``(x[i], y[j])``."""
    if filled:
        return ax.contourf(x, y, z.T, levels=levels, cmap=CMAP, norm=color_norm(levels), extend="neither")
    lines = ax.contour(x, y, z.T, levels=levels, cmap=CMAP, norm=color_norm(levels), linewidths=0.8)
    ax.clabel(lines, lines.levels[::4], inline=True, fontsize=VALUE_LABEL_SIZE, fmt="%.3g")
    return lines


def draw_heatmap(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: np.ndarray) -> Any:
    """Cells colored by ``z[i, j]``, centred on the grid points; NaN cells stay empty."""
    return ax.pcolormesh(x, y, np.ma.masked_invalid(z.T), cmap=CMAP, norm=color_norm(levels), shading="nearest")


def draw_surface3d(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: np.ndarray,
                   labels: Sequence[str]) -> Any:
    """A 3D surface of ``z[i, j]``, its axes labelled ``labels`` (x, y, value); log10(z) when the levels are logarithmic.

    matplotlib's 3D axes have no working log scale, so a wide positive range is drawn
    as log10 (one spike would otherwise flatten the rest). NaN faces are left out by
    matplotlib: gaps. A unit in parentheses goes on a line of its own (3D axes are short).
    """
    gx, gy = np.meshgrid(x, y, indexing="ij")
    log = use_log_scale(levels)
    ax.set_xlabel(labels[0].replace(" (", "\n(", 1), labelpad=8)
    ax.set_ylabel(labels[1].replace(" (", "\n(", 1), labelpad=8)
    ax.set_zlabel(value_label(labels[2], log), labelpad=4)
    ax.set_box_aspect(None, zoom=0.85)  # room inside the axes for the labels
    if log:
        z, levels = np.log10(z), np.log10(levels)
    surface = ax.plot_surface(gx, gy, z, cmap=CMAP, norm=Normalize(levels[0], levels[-1]), linewidth=0,
                              antialiased=True, rstride=1, cstride=1)
    ax.set_zlim(levels[0], levels[-1])
    return surface


def add_colorbar(fig: Figure, mappable: Any, ax: Axes | Sequence[Axes], label: str, log: bool,
                 pad: float = 0.02) -> None:
    """A colorbar beside ``ax``, labelled, with decade ticks when the scale is logarithmic."""
    ticks = {"ticks": LogLocator(), "format": LogFormatterSciNotation()} if log else {"format": "%.4g"}
    fig.colorbar(mappable, ax=ax, shrink=0.8, label=label, pad=pad, **ticks)


def draw_models(ax: Axes, markers: Sequence[Mapping[str, Any]], visible: Sequence[bool]) -> list[models.Place]:
    """The shown models at their (first two) coordinates, styled by role, and the training path.

    The trajectory is a line through its points in round order, its start and end marked
    (a gap where a point is not shown). Sets the axis limits to :func:`landscape.plots.markers.extent`
    of the grid drawn so far (so every shown model is inside) and returns the places to
    label with :func:`place_labels` once the figure is laid out.
    """
    limits = models.extent([np.asarray(ax.get_xlim()), np.asarray(ax.get_ylim())], markers, visible)
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
    xy = models.path_coords(markers, visible)
    if len(xy):
        ax.plot(xy[:, 0], xy[:, 1], label="training path", **PATH_STYLE)
        for end, point in (("start", xy[0]), ("end", xy[-1])):
            if np.isfinite(point).all():
                ax.scatter([point[0]], [point[1]], label=f"{end} of training", **PATH_ENDS[end])
    for m, v in zip(markers, visible):
        if v and m.get("role") != models.TRAJECTORY:
            ax.scatter([m["coords"][0]], [m["coords"][1]], **ROLE_STYLE.get(m.get("role"), ROLE_STYLE[None]))
    return models.places(markers, visible, [b - a for a, b in limits])


def place_labels(fig: Figure, labelled: Sequence[tuple[Axes, Sequence[models.Place]]]) -> None:
    """Write the places' labels, each at the best spot of :data:`LABEL_SPOTS` beside its point.

    The figure is laid out first (every point at its final place on the page). A spot is
    best when its label covers no label written before it, then no other model's marker
    (:data:`MARKER_ROOM` around it; the path's small inner points may be covered), then
    stays inside the axes; the first spot wins among
    equals. A model is always named, at the best spot there is; an inner point of the
    training path only at a spot that meets all three.
    """
    fig.draw_without_rendering()
    room = MARKER_ROOM * fig.dpi / 72
    for ax, found in labelled:
        frame = ax.get_window_extent()
        anchors = ax.transData.transform([p.coords[:2] for p in found]).reshape(-1, 2)
        markers = {n: Bbox.from_extents(x - room, y - room, x + room, y + room)
                   for n, (p, (x, y)) in enumerate(zip(found, anchors)) if not p.inner}
        taken: list[Bbox] = []
        for n, place in enumerate(found):
            spots = [ax.annotate(place.text, place.coords[:2], xytext=offset, textcoords="offset points", ha=ha,
                                 va=va, fontsize=MODEL_LABEL_SIZE, gid=LABEL_GID, annotation_clip=False,
                                 bbox=LABEL_BOX) for offset, ha, va in LABEL_SPOTS]
            others = [box for k, box in markers.items() if k != n]

            def faults(text: Any) -> tuple[bool, bool, bool]:
                box = text.get_window_extent()
                return (any(box.overlaps(b) for b in taken), any(box.overlaps(b) for b in others),
                        not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)))

            best = min(spots, key=faults)
            if place.inner and any(faults(best)):
                best = None
            for text in spots:
                if text is not best:
                    text.remove()
            if best is not None:
                taken.append(best.get_window_extent())


def add_path_legend(fig: Figure, ax: Axes) -> None:
    """A legend of the training path (line, start, end) below the figure, if ``ax`` draws one."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles))


def default_value(result: Mapping[str, Any]) -> str:
    """The value drawn when none is named: ``train/loss``, else the first loss, else the first key."""
    keys = list(result["values"])
    if not keys:
        raise LandscapeError("the result holds no values to draw")
    if "train/loss" in keys:
        return "train/loss"
    return next((k for k in keys if k.endswith("/loss")), keys[0])


def value_label(value: str, log: bool = False) -> str:
    """What a value key shows, for colorbars and axes.

    >>> value_label("train/loss"), value_label("client 3/accuracy", log=True)
    ('train loss', 'log10 client 3 accuracy')
    """
    return ("log10 " if log else "") + value.replace("/", " ")


def _title(result: Mapping[str, Any], value: str) -> str:
    meta = result.get("metadata", {})
    ckpts = meta.get("checkpoints") or [{}]
    where = Path(ckpts[0]["path"]).name if ckpts[0].get("path") else ""
    return f"{value} ({result['kind']}{', ' + where if where else ''})"


def axis_labels(result: Mapping[str, Any]) -> list[str]:
    """The result's axis labels, with their unit (default alpha, beta, gamma: results of older versions)."""
    return list(result.get("axis_labels") or ["alpha", "beta", "gamma"][: len(result["axes"])])


def axis_name(label: str) -> str:
    """An axis label without its unit, for short titles: ``"gamma (filter-normalized units)"`` -> ``"gamma"``."""
    return label.rsplit(" (", 1)[0] if label.endswith(")") else label


def plot_surface(
    result: Mapping[str, Any],
    path: str | os.PathLike,
    value: str | None = None,
    styles: Sequence[str] = STYLES,
) -> Path:
    """Draw a surface result (:func:`surface_figure`) and save it, its format by suffix.

    Args:
        result: the dict of :func:`landscape.surface.load_result`.
        path: output file (.png, or vector .pdf / .svg).
        value: the key of ``result["values"]`` to draw (default :func:`default_value`).
        styles: panels for 2D results, a subset of :data:`STYLES`.

    Raises:
        LandscapeError: unknown kind, value or style, or no finite value to draw.
    """
    return save_figure(surface_figure(result, value, styles), path)


@styled
def surface_figure(result: Mapping[str, Any], value: str | None = None, styles: Sequence[str] = STYLES) -> Figure:
    """The figure of a surface result, laid out and labelled (see :func:`plot_surface` for the arguments).

    - ``line``: the loss and the accuracy of every data source against the coordinate,
      models as vertical lines; log y-axis when the loss range calls for it.
    - ``grid`` / ``plane``: one panel per style: ``"contour"`` (labelled lines),
      ``"filled"`` (filled contours), ``"heatmap"``, ``"3d"`` (surface); the models and the
      training path are drawn on the 2D panels.
    - ``volume``: filled contours of up to five slices along the third axis (first,
      quarter, centre, three quarters, last), each with the models nearest to it.
    """
    value = default_value(result) if value is None else value
    if value not in result["values"]:
        raise LandscapeError(f"no value '{value}' in this result; it holds {', '.join(result['values'])}")
    kind = result["kind"]
    if kind == "line":
        return _line_figure(result)
    if kind in ("grid", "plane"):
        return _plane_figure(result, value, styles)
    if kind == "volume":
        return _volume_figure(result, value)
    raise LandscapeError(f"cannot draw a result of kind '{kind}'; expected line, grid, plane or volume")


def _line_figure(result: Mapping[str, Any]) -> Figure:
    x = np.asarray(result["axes"][0], dtype=np.float64)
    metrics = [m for m in ("loss", "accuracy") if any(k.endswith("/" + m) for k in result["values"])]
    markers = result.get("markers", [])
    visible = models.shown(markers)
    (lo, hi), = models.extent([x], markers, visible)
    fig = Figure(figsize=(4.5 * len(metrics), 3.4), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        curves = {k.rsplit("/", 1)[0]: finite_or_nan(v) for k, v in result["values"].items() if k.endswith("/" + metric)}
        for source, y in curves.items():
            ax.plot(x, y, label=source)  # NaN breaks the line: a gap
        if metric == "loss" and use_log_scale(np.concatenate(list(curves.values()))):
            ax.set_yscale("log")
        for place in models.places(markers, visible, [hi - lo]):
            ax.axvline(place.coords[0], color="gray", linestyle=":" if place.inner else "--", linewidth=0.6)
            if not place.inner:
                ax.annotate(place.text, (place.coords[0], 1.0), xycoords=("data", "axes fraction"), xytext=(-2, -2),
                            textcoords="offset points", fontsize=MODEL_LABEL_SIZE, rotation=90, va="top", ha="right",
                            gid=LABEL_GID)
        ax.set_xlim(lo, hi)
        ax.set_xlabel(axis_labels(result)[0])
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle(_title(result, "loss and accuracy"))
    return fig


def _plane_figure(result: Mapping[str, Any], value: str, styles: Sequence[str]) -> Figure:
    unknown = [s for s in styles if s not in STYLES]
    if unknown or not styles:
        raise LandscapeError(f"unknown plot styles {unknown}; choose from {', '.join(STYLES)}")
    x, y = (np.asarray(a, dtype=np.float64) for a in result["axes"][:2])
    z = finite_or_nan(result["values"][value])
    levels = contour_levels(z)
    log = use_log_scale(levels)
    labels = axis_labels(result)
    markers = result.get("markers", [])
    visible = models.shown(markers)
    cols = 2 if len(styles) == 4 else len(styles)
    rows = -(-len(styles) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.9 * rows + 0.3), layout="constrained")
    labelled = []
    for i, style in enumerate(styles):
        if style == "3d":
            ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
            surface = draw_surface3d(ax, x, y, z, levels, [*labels[:2], value])
            add_colorbar(fig, surface, ax, value_label(value, log), log=False, pad=0.1)
        else:
            ax = fig.add_subplot(rows, cols, i + 1)
            if style == "heatmap":
                mappable = draw_heatmap(ax, x, y, z, levels)
            else:
                mappable = draw_contour(ax, x, y, z, levels, filled=style == "filled")
            add_colorbar(fig, mappable, ax, value_label(value), log)
            ax.set_aspect("equal" if result["kind"] == "plane" else "auto")
            labelled.append((ax, draw_models(ax, markers, visible)))
            ax.set_xlabel(labels[0])
            ax.set_ylabel(labels[1])
        ax.set_title(style)
    if labelled:
        add_path_legend(fig, labelled[0][0])
    fig.suptitle(_title(result, value_label(value)))
    place_labels(fig, labelled)
    return fig


def _volume_figure(result: Mapping[str, Any], value: str) -> Figure:
    x, y, w = (np.asarray(a, dtype=np.float64) for a in result["axes"][:3])
    z = finite_or_nan(result["values"][value])
    levels = contour_levels(z)
    labels = axis_labels(result)
    markers = result.get("markers", [])
    slices = np.unique(np.linspace(0, len(w) - 1, 5).round().astype(int))
    fig = Figure(figsize=(3.6 * len(slices), 3.6), layout="constrained")
    labelled = []
    for i, k in enumerate(slices):
        ax = fig.add_subplot(1, len(slices), i + 1)
        mappable = draw_contour(ax, x, y, z[:, :, k], levels, filled=True)
        labelled.append((ax, draw_models(ax, markers, models.shown(markers, w, int(k)))))
        ax.set_title(f"{axis_name(labels[2])} = {w[k]:.3g}")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    add_colorbar(fig, mappable, fig.axes, value_label(value), use_log_scale(levels))
    add_path_legend(fig, next((ax for ax, _ in labelled if ax.get_legend_handles_labels()[0]), labelled[0][0]))
    fig.suptitle(_title(result, value_label(value)))
    place_labels(fig, labelled)
    return fig


@styled
def plot_density(
    grid: np.ndarray,
    density: np.ndarray,
    eigenvalues: np.ndarray,
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """The Hessian spectral density (e.g. SLQ [Y20]) with the top eigenvalues as ticks.

    The density is drawn on a log axis when it is positive (as in [Y20] Fig. 3 and
    [C22] Fig. 5): the bulk near zero and the few outliers differ by orders of magnitude.

    Args:
        grid: eigenvalue axis.
        density: density at each grid value.
        eigenvalues: eigenvalues to mark along the bottom (e.g. the top-k by Lanczos).
        path: output file (.png, .pdf or .svg).
        title: figure title.
    """
    grid, density = np.asarray(grid, dtype=np.float64), finite_or_nan(density)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(grid, density, color="C0")
    if np.nanmin(density) > 0:
        ax.set_yscale("log")
    eig = np.asarray(eigenvalues, dtype=np.float64)
    ax.scatter(eig, np.full(eig.shape, 0.02), marker="|", s=200, color="C3", transform=ax.get_xaxis_transform(),
               label=f"top {eig.size} eigenvalues")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if eig.size:
        ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


@styled
def plot_flatness(metrics: Mapping[str, Any], path: str | os.PathLike, client_labels: Sequence[str] | None = None) -> Path:
    """Bar charts of the flatness metrics per client (:meth:`FlatnessMetrics.to_dict` layout).

    Four panels: ||eps_i - eps|| with the mean D and the cosines; client sharpness
    (first-order and ascent) against the global one; lambda_max of f_i at x_i and of f
    at x_i against f at x; ||x_i - x||.

    Args:
        metrics: ``landscape.flatness.FlatnessMetrics.to_dict()`` (or the ``metrics``
            entry of a ``landscape flatness`` JSON file).
        path: output file (.png, .pdf or .svg).
        client_labels: one tick label per client (default "0", "1", ...).
    """
    pd, sg, lm, dist = (metrics[k] for k in ("perturbation_distance", "sharpness_gap", "lambda_max", "parameter_distances"))
    n = len(pd["client_distances"])
    labels = list(client_labels) if client_labels is not None else [str(i) for i in range(n)]
    idx = np.arange(n)
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)]

    ax = axes[0]
    bars = ax.bar(idx, pd["client_distances"], color="C0")
    ax.axhline(pd["distance"], color="black", linestyle="--", label=f"D = {pd['distance']:.3g}")
    ax.axhline(2 * pd["rho"], color="gray", linestyle=":", label="2 rho (opposite)")
    ax.bar_label(bars, [f"cos {c:.2f}" for c in pd["cosines"]], fontsize=VALUE_LABEL_SIZE, label_type="center",
                 color="white")
    ax.set_title(f"perturbation distance ||eps_i - eps||, rho = {pd['rho']:g}")

    ax = axes[1]
    ax.bar(idx - 0.2, sg["client_first_order"], 0.4, label="client, first-order", color="C1")
    ax.bar(idx + 0.2, sg["client_ascent"], 0.4, label=f"client, {sg['num_ascent_steps']}-step ascent", color="C2")
    ax.axhline(sg["global_first_order"], color="C1", linestyle="--", label="global f, first-order")
    ax.axhline(sg["global_ascent"], color="C2", linestyle=":", label="global f, ascent")
    ax.set_title(f"sharpness at x; gap = {sg['gap_first_order']:.3g} (first-order), {sg['gap_ascent']:.3g} (ascent)")

    ax = axes[2]
    ax.bar(idx - 0.2, lm["local_at_client"], 0.4, label="f_i at x_i", color="C4")
    ax.bar(idx + 0.2, lm["global_at_client"], 0.4, label="f at x_i", color="C5")
    ax.axhline(lm["global_at_global"], color="black", linestyle="--", label="f at x")
    ax.set_title("lambda_max, local vs global")

    ax = axes[3]
    bars = ax.bar(idx, dist["distances"], color="C7")
    ax.bar_label(bars, [f"{r:.1%}" for r in dist["relative"]], fontsize=VALUE_LABEL_SIZE)
    ax.set_title(f"||x_i - x|| (labels: relative to ||x|| = {dist['global_norm']:.3g})")

    for ax in axes:
        ax.set_xticks(idx, labels)
        ax.set_xlabel("client")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle("flatness distance between the global model and its clients (reconstruction of [L26])")
    return save_figure(fig, path)
