"""Interactive surfaces as one self-contained plotly HTML file (works offline).

:func:`write_html` draws a 3D surface with its contour lines projected on the floor
and, beside it, a 2D contour view of the same values; the models (global, clients,
SWA, trajectory points) are labelled markers in both, with their role, coordinates,
off-surface distance and every value (loss and accuracy of each data source) at the
nearest grid point on hover; hovering the surface shows every value at that point. Several
surfaces (rounds, algorithms) given together share one color scale and are switched
with a slider; a volume is shown as its slices along the third axis, on the slider
too. plotly.js is embedded in the file (no CDN, no network access when opened), and the
values are written as plain JSON numbers (NaN and inf as null: gaps), readable in the file.

Drawing only: every number comes from the results (the dicts of
:func:`landscape.surface.load_result`). Wide positive ranges are drawn as log10, as
in :mod:`landscape.plots.static`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.errors import LandscapeError
from landscape.files import atomic_write
from landscape.plots.static import axis_labels, default_value, finite_or_nan, use_log_scale

COLORSCALE = "Viridis"
ROLE_MARKERS: dict[str | None, dict[str, Any]] = {
    "global": {"symbol": "diamond", "color": "red", "size": 9},
    "swa": {"symbol": "square", "color": "orange", "size": 7},
    "client": {"symbol": "circle", "color": "white", "size": 6},
    "trajectory": {"symbol": "circle", "color": "gray", "size": 4},
    None: {"symbol": "cross", "color": "magenta", "size": 6},
}


@dataclass
class Frame:
    """One 2D view on the slider: z[i, j] at (x[i], y[j]) drawn, every value for hover, the models to mark."""

    label: str
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    values: dict[str, np.ndarray]
    markers: list[dict[str, Any]]
    axis_labels: list[str]


def _result_label(result: Mapping[str, Any], index: int) -> str:
    ckpts = result.get("metadata", {}).get("checkpoints") or [{}]
    if ckpts[0].get("round") is not None:
        return f"round {ckpts[0]['round']}"
    if ckpts[0].get("path"):
        return Path(ckpts[0]["path"]).stem
    return f"surface {index}"


def _frames(result: Mapping[str, Any], value: str, label: str) -> list[Frame]:
    """A grid or plane as one frame; a volume as one frame per slice along its third axis."""
    axes = [np.asarray(a, dtype=np.float64) for a in result["axes"]]
    values = {k: finite_or_nan(v) for k, v in result["values"].items()}
    names = axis_labels(result)
    markers = list(result.get("markers", []))
    if result["kind"] in ("grid", "plane"):
        return [Frame(label, axes[0], axes[1], values[value], values, markers, names)]
    if result["kind"] == "volume":
        return [
            Frame(f"{label}, {names[2]} = {w:.3g}", axes[0], axes[1], values[value][:, :, k],
                  {key: v[:, :, k] for key, v in values.items()}, markers, names)
            for k, w in enumerate(axes[2])
        ]
    raise LandscapeError(f"cannot draw a result of kind '{result['kind']}' as a surface; expected grid, plane or volume")


def _nearest_point(frame: Frame, coords: Sequence[float]) -> tuple[int, int]:
    """The grid point nearest to a marker (a lookup, not an interpolation)."""
    return int(np.argmin(np.abs(frame.x - coords[0]))), int(np.argmin(np.abs(frame.y - coords[1])))


def _marker_traces(frame: Frame, value: str, log: bool) -> tuple[go.Scatter3d, go.Scatter]:
    """The models as labelled markers on the 3D surface and on the contour view."""
    xs, ys, zs, texts, hovers, symbols, colors, sizes = [], [], [], [], [], [], [], []
    for m in frame.markers:
        i, j = _nearest_point(frame, m["coords"])
        v = float(frame.z[i, j])
        style = ROLE_MARKERS.get(m.get("role"), ROLE_MARKERS[None])
        xs.append(m["coords"][0])
        ys.append(m["coords"][1])
        zs.append(np.log10(v) if log and v > 0 else v)
        texts.append(str(m["label"]))
        coords = ", ".join(f"{c:.4g}" for c in m["coords"])
        distance = "" if m.get("distance") is None else f"<br>off-surface distance {m['distance']:.4g}"
        at = "".join(f"<br>{key} {float(vals[i, j]):.5g}" for key, vals in frame.values.items())
        hovers.append(f"<b>{m['label']}</b> ({m.get('role')})<br>coords ({coords}){distance}"
                      f"<br>at the nearest grid point:{at}")
        symbols.append(style["symbol"])
        colors.append(style["color"])
        sizes.append(style["size"])
    marker = {"symbol": symbols, "color": colors, "size": sizes, "line": {"color": "black", "width": 1}}
    common = {"mode": "markers+text", "text": texts, "hovertext": hovers, "hoverinfo": "text", "showlegend": False}
    return (
        go.Scatter3d(x=xs, y=ys, z=zs, marker=marker, textposition="top center", **common),
        go.Scatter(x=xs, y=ys, marker={**marker, "symbol": [_flat_symbol(s) for s in symbols]},
                   textposition="top right", **common),
    )


def _flat_symbol(symbol: str) -> str:
    """2D scatter symbols are named like the 3D ones except the cross."""
    return {"cross": "x"}.get(symbol, symbol)


def _surface_figure(frames: list[Frame], value: str, equal_aspect: bool) -> go.Figure:
    everything = np.concatenate([f.z.ravel() for f in frames])
    log = use_log_scale(everything)
    shown = [np.log10(f.z) if log else f.z for f in frames]
    lo = float(np.nanmin(np.concatenate([s.ravel() for s in shown])))
    hi = float(np.nanmax(np.concatenate([s.ravel() for s in shown])))
    scale = f"log10 {value}" if log else value
    names = frames[0].axis_labels
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]], column_widths=[0.55, 0.45],
                        subplot_titles=("surface", "contours"), horizontal_spacing=0.08)
    per_frame = 4
    for k, (frame, z) in enumerate(zip(frames, shown)):
        visible = k == 0
        every = "".join(f"<br>{key} %{{customdata[{n}]:.5g}}" for n, key in enumerate(frame.values))
        hover = f"{names[0]} %{{x:.4g}}<br>{names[1]} %{{y:.4g}}{every}<extra>{frame.label}</extra>"
        custom = np.stack([v.T for v in frame.values.values()], axis=-1).tolist()
        fig.add_trace(go.Surface(
            x=frame.x.tolist(), y=frame.y.tolist(), z=z.T.tolist(), customdata=custom, hovertemplate=hover,
            visible=visible, colorscale=COLORSCALE, cmin=lo, cmax=hi,
            colorbar={"title": {"text": scale}, "x": 0.47, "len": 0.8},
            contours={"z": {"show": True, "usecolormap": True, "project": {"z": True}, "width": 1}},
        ), row=1, col=1)
        fig.add_trace(go.Contour(
            x=frame.x.tolist(), y=frame.y.tolist(), z=z.T.tolist(), customdata=custom, hovertemplate=hover,
            visible=visible, colorscale=COLORSCALE, zmin=lo, zmax=hi, showscale=False, ncontours=25,
            contours={"coloring": "heatmap", "showlabels": True, "labelfont": {"size": 9, "color": "white"}},
        ), row=1, col=2)
        markers3d, markers2d = _marker_traces(frame, value, log)
        markers3d.visible = markers2d.visible = visible
        fig.add_trace(markers3d, row=1, col=1)
        fig.add_trace(markers2d, row=1, col=2)
    fig.update_scenes(xaxis_title=names[0], yaxis_title=names[1], zaxis_title=scale, zaxis_range=[lo, hi])
    fig.update_xaxes(title_text=names[0], row=1, col=2)
    fig.update_yaxes(title_text=names[1], row=1, col=2)
    if equal_aspect:  # a plane is in Euclidean units on both axes: keep distances true
        fig.update_yaxes(scaleanchor="x", scaleratio=1, row=1, col=2)
    if len(frames) > 1:
        steps = []
        for k, frame in enumerate(frames):
            mask = [i // per_frame == k for i in range(per_frame * len(frames))]
            steps.append({"method": "update", "label": frame.label, "args": [{"visible": mask}]})
        fig.update_layout(sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "showing: "},
                                    "pad": {"t": 40}}])
    return fig


def _line_figure(results: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> go.Figure:
    """Loss and accuracy of every source along the line; one set of curves per result."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    counts = []
    for k, (result, label) in enumerate(zip(results, labels)):
        x = np.asarray(result["axes"][0], dtype=np.float64)
        n = 0
        for key, values in result["values"].items():
            source, _, metric = key.rpartition("/")
            if metric not in ("loss", "accuracy"):
                continue
            hover = f"%{{x:.4g}}: %{{y:.5g}}<extra>{label} {key}</extra>"
            fig.add_trace(go.Scatter(x=x.tolist(), y=finite_or_nan(values).tolist(), name=f"{source} {metric}",
                                     visible=k == 0, legendgroup=source, hovertemplate=hover),
                          row=1, col=1 if metric == "loss" else 2)
            n += 1
        counts.append(n)
    for m in results[0].get("markers", []):
        fig.add_vline(x=m["coords"][0], line_dash="dash", line_color="gray", annotation_text=str(m["label"]))
    fig.update_xaxes(title_text=axis_labels(results[0])[0])
    if len(results) > 1:
        owner = [k for k, n in enumerate(counts) for _ in range(n)]
        steps = [{"method": "update", "label": label, "args": [{"visible": [o == k for o in owner]}]}
                 for k, label in enumerate(labels)]
        fig.update_layout(sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "showing: "},
                                    "pad": {"t": 40}}])
    return fig


def write_html(
    result: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    value: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write an interactive, offline HTML view of one or several surface results.

    Args:
        result: one result dict of :func:`landscape.surface.load_result`, or a list of
            them of the same kind (e.g. rounds or algorithms), switched by a slider.
        path: the .html file (written atomically).
        value: the key of ``values`` to draw (default: ``train/loss`` or the first loss).
        labels: slider labels, one per result (default: round, else checkpoint name).

    Raises:
        LandscapeError: mixed kinds, an unknown value, or no finite value to draw.
    """
    results = [result] if isinstance(result, Mapping) else list(result)
    if not results:
        raise LandscapeError("no surface results to draw")
    kinds = {r["kind"] for r in results}
    if len(kinds) > 1:
        raise LandscapeError(f"cannot show results of different kinds ({', '.join(sorted(kinds))}) on one slider")
    labels = list(labels) if labels is not None else [_result_label(r, k) for k, r in enumerate(results)]
    if len(labels) != len(results):
        raise LandscapeError(f"{len(labels)} labels for {len(results)} results")
    value = default_value(results[0]) if value is None else value
    missing = [lab for lab, r in zip(labels, results) if value not in r["values"]]
    if missing:
        raise LandscapeError(f"no value '{value}' in {', '.join(missing)}; it holds {', '.join(results[0]['values'])}")
    if kinds == {"line"}:
        fig = _line_figure(results, labels)
    else:
        frames = [f for r, lab in zip(results, labels) for f in _frames(r, value, lab)]
        if not np.isfinite(np.concatenate([f.z.ravel() for f in frames])).any():
            raise LandscapeError("nothing to draw: every value is NaN or infinite")
        fig = _surface_figure(frames, value, equal_aspect=kinds == {"plane"})
    fig.update_layout(title=f"{value} ({results[0]['kind']})", height=650, template="plotly_white")
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    return atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
