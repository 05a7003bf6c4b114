"""Static figures with matplotlib: surfaces, curves, spectral densities, flatness bars.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no
pyplot state, no GUI backend) and written atomically; the format follows the file
suffix (``.png``, ``.pdf``, ``.svg``). Drawing only: every number comes from the
result passed in.

Conventions:

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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator

from landscape.errors import LandscapeError
from landscape.files import atomic_write
from landscape.plots import IMAGE_SUFFIXES

SUFFIXES = IMAGE_SUFFIXES
LOG_RANGE = 100.0
NUM_LEVELS = 20
DPI = 150
CMAP = "viridis"
STYLES = ("contour", "filled", "heatmap", "3d")
ROLE_STYLE: dict[str | None, dict[str, Any]] = {
    "global": {"marker": "*", "s": 160, "c": "red", "edgecolors": "black", "zorder": 5},
    "swa": {"marker": "D", "s": 70, "c": "orange", "edgecolors": "black", "zorder": 5},
    "client": {"marker": "o", "s": 45, "c": "white", "edgecolors": "black", "zorder": 4},
    "trajectory": {"marker": ".", "s": 30, "c": "gray", "zorder": 3},
    None: {"marker": "^", "s": 60, "c": "magenta", "edgecolors": "black", "zorder": 4},
}


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically in the format of the file suffix (.png, .pdf or .svg).

    Raises:
        LandscapeError: for any other suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise LandscapeError(f"cannot write a figure to {path}: use a file ending in {', '.join(SUFFIXES)}")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix[1:], dpi=DPI, bbox_inches="tight"))


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
    ax.clabel(lines, lines.levels[::4], inline=True, fontsize=6, fmt="%.3g")
    return lines


def draw_heatmap(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: np.ndarray) -> Any:
    """Cells colored by ``z[i, j]``, centred on the grid points; NaN cells stay empty."""
    return ax.pcolormesh(x, y, np.ma.masked_invalid(z.T), cmap=CMAP, norm=color_norm(levels), shading="nearest")


def draw_surface3d(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: np.ndarray) -> Any:
    """A 3D surface of ``z[i, j]``; log10(z) when the levels are logarithmic.

    matplotlib's 3D axes have no working log scale, so a wide positive range is drawn
    as log10 (one spike would otherwise flatten the rest). NaN faces are left out by
    matplotlib: gaps.
    """
    gx, gy = np.meshgrid(x, y, indexing="ij")
    if use_log_scale(levels):
        z, levels = np.log10(z), np.log10(levels)
        ax.set_zlabel("log10", fontsize=8)
    surface = ax.plot_surface(gx, gy, z, cmap=CMAP, norm=Normalize(levels[0], levels[-1]), linewidth=0,
                              antialiased=True, rstride=1, cstride=1)
    ax.set_zlim(levels[0], levels[-1])
    return surface


def add_colorbar(fig: Figure, mappable: Any, ax: Axes | Sequence[Axes], label: str, log: bool) -> None:
    """A colorbar beside ``ax``, with decade ticks when the scale is logarithmic."""
    ticks = {"ticks": LogLocator(), "format": LogFormatterSciNotation()} if log else {"format": "%.4g"}
    fig.colorbar(mappable, ax=ax, shrink=0.8, label=label, **ticks)


def draw_markers(ax: Axes, markers: Sequence[Mapping[str, Any]]) -> None:
    """The models as labelled points at their (first two) coordinates, styled by role."""
    for m in markers:
        coords = m["coords"]
        style = ROLE_STYLE.get(m.get("role"), ROLE_STYLE[None])
        ax.scatter([coords[0]], [coords[1]], **style)
        ax.annotate(str(m["label"]), (coords[0], coords[1]), textcoords="offset points", xytext=(5, 5), fontsize=7)


def default_value(result: Mapping[str, Any]) -> str:
    """The value drawn when none is named: ``train/loss``, else the first loss, else the first key."""
    keys = list(result["values"])
    if not keys:
        raise LandscapeError("the result holds no values to draw")
    if "train/loss" in keys:
        return "train/loss"
    return next((k for k in keys if k.endswith("/loss")), keys[0])


def _title(result: Mapping[str, Any], value: str) -> str:
    meta = result.get("metadata", {})
    ckpts = meta.get("checkpoints") or [{}]
    where = Path(ckpts[0]["path"]).name if ckpts[0].get("path") else ""
    return f"{value} ({result['kind']}{', ' + where if where else ''})"


def axis_labels(result: Mapping[str, Any]) -> list[str]:
    """The result's axis names (default alpha, beta, gamma)."""
    return list(result.get("axis_labels") or ["alpha", "beta", "gamma"][: len(result["axes"])])


def plot_surface(
    result: Mapping[str, Any],
    path: str | os.PathLike,
    value: str | None = None,
    styles: Sequence[str] = STYLES,
) -> Path:
    """Draw a surface result and save it (format by suffix).

    - ``line``: the loss and the accuracy of every data source against the coordinate,
      markers as vertical lines; log y-axis when the loss range calls for it.
    - ``grid`` / ``plane``: one panel per style: ``"contour"`` (labelled lines),
      ``"filled"`` (filled contours), ``"heatmap"``, ``"3d"`` (surface); the models
      are drawn as markers on the 2D panels.
    - ``volume``: filled contours of up to five slices along the third axis (first,
      quarter, centre, three quarters, last).

    Args:
        result: the dict of :func:`landscape.surface.load_result`.
        path: output file (.png, .pdf or .svg).
        value: the key of ``result["values"]`` to draw (default :func:`default_value`).
        styles: panels for 2D results, a subset of :data:`STYLES`.

    Raises:
        LandscapeError: unknown kind, value or style, or no finite value to draw.
    """
    value = default_value(result) if value is None else value
    if value not in result["values"]:
        raise LandscapeError(f"no value '{value}' in this result; it holds {', '.join(result['values'])}")
    kind = result["kind"]
    if kind == "line":
        fig = _line_figure(result)
    elif kind in ("grid", "plane"):
        fig = _plane_figure(result, value, styles)
    elif kind == "volume":
        fig = _volume_figure(result, value)
    else:
        raise LandscapeError(f"cannot draw a result of kind '{kind}'; expected line, grid, plane or volume")
    return save_figure(fig, path)


def _line_figure(result: Mapping[str, Any]) -> Figure:
    x = np.asarray(result["axes"][0], dtype=np.float64)
    metrics = [m for m in ("loss", "accuracy") if any(k.endswith("/" + m) for k in result["values"])]
    fig = Figure(figsize=(5.5 * len(metrics), 4), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        curves = {k.rsplit("/", 1)[0]: finite_or_nan(v) for k, v in result["values"].items() if k.endswith("/" + metric)}
        for source, y in curves.items():
            ax.plot(x, y, label=source)  # NaN breaks the line: a gap
        if metric == "loss" and use_log_scale(np.concatenate(list(curves.values()))):
            ax.set_yscale("log")
        for m in result.get("markers", []):
            ax.axvline(m["coords"][0], color="gray", linestyle="--", linewidth=0.8)
            ax.annotate(str(m["label"]), (m["coords"][0], 1.0), xycoords=("data", "axes fraction"),
                        fontsize=7, rotation=90, va="top", ha="right")
        ax.set_xlabel(axis_labels(result)[0])
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(_title(result, "loss and accuracy"), fontsize=9)
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
    cols = 2 if len(styles) == 4 else len(styles)
    rows = -(-len(styles) // cols)
    fig = Figure(figsize=(5 * cols, 4.3 * rows), layout="constrained")
    for i, style in enumerate(styles):
        if style == "3d":
            ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
            add_colorbar(fig, draw_surface3d(ax, x, y, z, levels), ax, ("log10 " if log else "") + value, log=False)
        else:
            ax = fig.add_subplot(rows, cols, i + 1)
            if style == "heatmap":
                mappable = draw_heatmap(ax, x, y, z, levels)
            else:
                mappable = draw_contour(ax, x, y, z, levels, filled=style == "filled")
            add_colorbar(fig, mappable, ax, value, log)
            draw_markers(ax, result.get("markers", []))
            ax.set_aspect("equal" if result["kind"] == "plane" else "auto")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_title(style, fontsize=9)
    fig.suptitle(_title(result, value), fontsize=10)
    return fig


def _volume_figure(result: Mapping[str, Any], value: str) -> Figure:
    x, y, w = (np.asarray(a, dtype=np.float64) for a in result["axes"][:3])
    z = finite_or_nan(result["values"][value])
    levels = contour_levels(z)
    labels = axis_labels(result)
    slices = np.unique(np.linspace(0, len(w) - 1, 5).round().astype(int))
    fig = Figure(figsize=(4 * len(slices), 3.8), layout="constrained")
    for i, k in enumerate(slices):
        ax = fig.add_subplot(1, len(slices), i + 1)
        mappable = draw_contour(ax, x, y, z[:, :, k], levels, filled=True)
        ax.set_title(f"{labels[2]} = {w[k]:.3g}", fontsize=9)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    add_colorbar(fig, mappable, fig.axes, value, use_log_scale(levels))
    fig.suptitle(_title(result, value), fontsize=10)
    return fig


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
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


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
    ax.bar_label(bars, [f"cos {c:.2f}" for c in pd["cosines"]], fontsize=7, label_type="center", color="white")
    ax.set_title(f"perturbation distance ||eps_i - eps||, rho = {pd['rho']:g}", fontsize=9)

    ax = axes[1]
    ax.bar(idx - 0.2, sg["client_first_order"], 0.4, label="client, first-order", color="C1")
    ax.bar(idx + 0.2, sg["client_ascent"], 0.4, label=f"client, {sg['num_ascent_steps']}-step ascent", color="C2")
    ax.axhline(sg["global_first_order"], color="C1", linestyle="--", label="global f, first-order")
    ax.axhline(sg["global_ascent"], color="C2", linestyle=":", label="global f, ascent")
    ax.set_title(f"sharpness at x; gap = {sg['gap_first_order']:.3g} (first-order), {sg['gap_ascent']:.3g} (ascent)",
                 fontsize=9)

    ax = axes[2]
    ax.bar(idx - 0.2, lm["local_at_client"], 0.4, label="f_i at x_i", color="C4")
    ax.bar(idx + 0.2, lm["global_at_client"], 0.4, label="f at x_i", color="C5")
    ax.axhline(lm["global_at_global"], color="black", linestyle="--", label="f at x")
    ax.set_title("lambda_max, local vs global", fontsize=9)

    ax = axes[3]
    bars = ax.bar(idx, dist["distances"], color="C7")
    ax.bar_label(bars, [f"{r:.1%}" for r in dist["relative"]], fontsize=7)
    ax.set_title(f"||x_i - x|| (labels: relative to ||x|| = {dist['global_norm']:.3g})", fontsize=9)

    for ax in axes:
        ax.set_xticks(idx, labels, fontsize=8)
        ax.set_xlabel("client")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("flatness distance between the global model and its clients (reconstruction of [L26])", fontsize=10)
    return save_figure(fig, path)
