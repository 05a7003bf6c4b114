"""Interactive surfaces as one self-contained plotly HTML file (works offline).

:func:`write_html` draws a 3D surface with its contour lines projected on the floor
and, beside it, a 2D contour view of the same values; the models (global, clients,
SWA) are markers in both and the training trajectory a path in round order (line and
points, start and end marked), each with its role, coordinates, off-surface distance and
every value (loss and accuracy of each data source) at the nearest grid point on hover;
hovering the surface shows every value at that point. Models at one place share one label
and the path's inner points are named on hover only (:mod:`landscape.plots.markers`).
Several surfaces (rounds, algorithms) given together share one color scale and are
switched with a slider; a volume is shown as its slices along the third axis, on the
slider too, each slice with the models nearest to it only. plotly.js is embedded in the
file (no CDN, no network access when opened), and the values are written as plain JSON
numbers (NaN and inf as null: gaps), readable in the file.

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
from landscape.plots import markers as models
from landscape.plots.static import (axis_labels, axis_name, default_value, finite_or_nan, use_log_scale,
                                    value_label)

COLORSCALE = "Viridis"
#: One font for the page (DejaVu Sans, as the static figures, where the browser has it).
FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 13}
ROLE_MARKERS: dict[str | None, dict[str, Any]] = {
    "global": {"symbol": "diamond", "color": "red", "size": 9},
    "swa": {"symbol": "square", "color": "orange", "size": 7},
    "client": {"symbol": "circle", "color": "white", "size": 6},
    None: {"symbol": "cross", "color": "magenta", "size": 6},
}
#: The training path: its points in round order, start and end marked.
PATH_POINT = {"symbol": "circle", "color": "black", "size": 4}
PATH_ENDS = {"start": {"symbol": "circle-open", "color": "black", "size": 11},
             "end": {"symbol": "square", "color": "black", "size": 8}}
#: Traces per slider frame: surface, contour, then path, models, labels in 3D and in 2D each.
TRACES_PER_FRAME = 8
#: Height of the models above the 3D surface, as a fraction of its z range.
LIFT = 0.015


@dataclass
class Frame:
    """One 2D view on the slider: z[i, j] at (x[i], y[j]) drawn, every value for hover, the models
    (``visible``: those this view shows, see :func:`landscape.plots.markers.shown`)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    values: dict[str, np.ndarray]
    markers: list[dict[str, Any]]
    visible: list[bool]
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
        return [Frame(label, axes[0], axes[1], values[value], values, markers, models.shown(markers), names)]
    if result["kind"] == "volume":
        return [
            Frame(f"{label}, {axis_name(names[2])} = {w:.3g}", axes[0], axes[1], values[value][:, :, k],
                  {key: v[:, :, k] for key, v in values.items()}, markers, models.shown(markers, axes[2], k), names)
            for k, w in enumerate(axes[2])
        ]
    raise LandscapeError(f"cannot draw a result of kind '{result['kind']}' as a surface; expected grid, plane or volume")


def _nearest_point(frame: Frame, coords: Sequence[float]) -> tuple[int, int]:
    """The grid point nearest to a marker (a lookup, not an interpolation)."""
    return int(np.argmin(np.abs(frame.x - coords[0]))), int(np.argmin(np.abs(frame.y - coords[1])))


def _height(frame: Frame, coords: Sequence[float]) -> float:
    """The drawn surface's height under a point: bilinear in the grid cell around it (the edge cell outside the grid)."""
    x, y = frame.x, frame.y
    i = int(np.clip(np.searchsorted(x, coords[0]) - 1, 0, len(x) - 2))
    j = int(np.clip(np.searchsorted(y, coords[1]) - 1, 0, len(y) - 2))
    tx = float(np.clip((coords[0] - x[i]) / (x[i + 1] - x[i]), 0.0, 1.0))
    ty = float(np.clip((coords[1] - y[j]) / (y[j + 1] - y[j]), 0.0, 1.0))
    z = frame.z[i:i + 2, j:j + 2]
    return float((1 - tx) * (1 - ty) * z[0, 0] + tx * (1 - ty) * z[1, 0] + (1 - tx) * ty * z[0, 1] + tx * ty * z[1, 1])


def _hover(frame: Frame, m: Mapping[str, Any], i: int, j: int) -> str:
    coords = ", ".join(f"{c:.4g}" for c in m["coords"])
    distance = "" if m.get("distance") is None else f"<br>off-surface distance {m['distance']:.4g}"
    at = "".join(f"<br>{key} {float(vals[i, j]):.5g}" for key, vals in frame.values.items())
    return f"<b>{m['label']}</b> ({m.get('role')})<br>coords ({coords}){distance}<br>at the nearest grid point:{at}"


def _point_traces(frame: Frame, drawn: tuple[bool, float], points: Sequence[Mapping[str, Any] | None],
                  styles: Sequence[dict[str, Any]], mode: str, text: Sequence[str] | None = None
                  ) -> tuple[go.Scatter3d, go.Scatter]:
    """Points on the 3D surface and on the contours, one style each.

    A point is a model (hovering shows it and the values at the nearest grid point) or, with
    ``text``, a label; ``None`` breaks the line of a path. In 3D a point floats ``lift`` above
    the surface under it (``drawn = (log, lift)``: the surface as drawn), so the surface
    hides no part of a path.
    """
    log, lift = drawn
    xs: list[float | None] = []
    ys: list[float | None] = []
    zs: list[float | None] = []
    hovers = []
    for m in points:
        height = np.nan if m is None else _height(frame, m["coords"])
        height = np.log10(height) if log and height > 0 else height
        xs.append(None if m is None else m["coords"][0])
        ys.append(None if m is None else m["coords"][1])
        zs.append(float(height + lift) if np.isfinite(height) else None)
        hovers.append("" if m is None or text is not None else _hover(frame, m, *_nearest_point(frame, m["coords"])))
    marker = {"symbol": [s["symbol"] for s in styles], "color": [s["color"] for s in styles],
              "size": [s["size"] for s in styles], "line": {"color": "black", "width": 1}}
    common: dict[str, Any] = {"mode": mode, "showlegend": False, "connectgaps": False}
    flat: dict[str, Any] = {}
    if text is None:
        common.update(hovertext=hovers, hoverinfo="text")
    else:  # labels in the right half of the view are written to the left of their point
        middle = float(frame.x[0] + frame.x[-1]) / 2
        common.update(text=list(text), hoverinfo="skip")
        flat = {"textposition": ["top left" if x > middle else "top right" for x in xs],
                "textfont": {"shadow": "auto"}}  # readable on dark and light colors
    return (go.Scatter3d(x=xs, y=ys, z=zs, marker=marker, line={"color": "black", "width": 2},
                         textposition="top center", **common),
            go.Scatter(x=xs, y=ys, marker={**marker, "symbol": [_flat_symbol(s) for s in marker["symbol"]]},
                       line={"color": "black", "width": 1.5}, **common, **flat))


def _model_traces(frame: Frame, drawn: tuple[bool, float]) -> list[go.Scatter3d | go.Scatter]:
    """The training path, the other models and one label per place of a frame, each in 3D and in 2D."""
    ms, visible = frame.markers, frame.visible
    traj = models.path(ms)
    ends = {traj[0]: PATH_ENDS["start"], traj[-1]: PATH_ENDS["end"]} if traj else {}
    others = [m for m, v in zip(ms, visible) if v and m.get("role") != models.TRAJECTORY]
    spans = [b - a for a, b in models.extent([frame.x, frame.y], ms, visible)]
    named = [p for p in models.places(ms, visible, spans) if not p.inner]
    return [
        *_point_traces(frame, drawn, [ms[i] if visible[i] else None for i in traj],
                       [ends.get(i, PATH_POINT) for i in traj], "lines+markers"),
        *_point_traces(frame, drawn, others, [ROLE_MARKERS.get(m.get("role"), ROLE_MARKERS[None]) for m in others],
                       "markers"),
        *_point_traces(frame, drawn, [{"coords": p.coords} for p in named], [PATH_POINT] * len(named), "text",
                       text=[p.text for p in named]),
    ]


def _flat_symbol(symbol: str) -> str:
    """2D scatter symbols are named like the 3D ones except the cross."""
    return {"cross": "x"}.get(symbol, symbol)


def _surface_figure(frames: list[Frame], value: str, equal_aspect: bool) -> go.Figure:
    everything = np.concatenate([f.z.ravel() for f in frames])
    log = use_log_scale(everything)
    shown = [np.log10(f.z) if log else f.z for f in frames]
    lo = float(np.nanmin(np.concatenate([s.ravel() for s in shown])))
    hi = float(np.nanmax(np.concatenate([s.ravel() for s in shown])))
    names = frames[0].axis_labels
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]], column_widths=[0.55, 0.45],
                        subplot_titles=("surface", "contours"), horizontal_spacing=0.08)
    for k, (frame, z) in enumerate(zip(frames, shown)):
        visible = k == 0
        every = "".join(f"<br>{key} %{{customdata[{n}]:.5g}}" for n, key in enumerate(frame.values))
        hover = f"{names[0]} %{{x:.4g}}<br>{names[1]} %{{y:.4g}}{every}<extra>{frame.label}</extra>"
        custom = np.stack([v.T for v in frame.values.values()], axis=-1).tolist()
        fig.add_trace(go.Surface(
            x=frame.x.tolist(), y=frame.y.tolist(), z=z.T.tolist(), customdata=custom, hovertemplate=hover,
            visible=visible, colorscale=COLORSCALE, cmin=lo, cmax=hi,
            colorbar={"title": {"text": value_label(value, log)}, "x": 1.02, "len": 0.8},
            contours={"z": {"show": True, "usecolormap": True, "project": {"z": True}, "width": 1}},
        ), row=1, col=1)
        fig.add_trace(go.Contour(
            x=frame.x.tolist(), y=frame.y.tolist(), z=z.T.tolist(), customdata=custom, hovertemplate=hover,
            visible=visible, colorscale=COLORSCALE, zmin=lo, zmax=hi, showscale=False, ncontours=25,
            contours={"coloring": "heatmap", "showlabels": True, "labelfont": {"size": 9, "color": "white"}},
        ), row=1, col=2)
        for n, trace in enumerate(_model_traces(frame, (log, LIFT * (hi - lo)))):
            trace.visible = visible
            fig.add_trace(trace, row=1, col=1 + n % 2)
    fig.update_scenes(xaxis_title=names[0].replace(" (", "<br>(", 1), yaxis_title=names[1].replace(" (", "<br>(", 1),
                      zaxis_title=value_label(value, log),
                      zaxis_range=[lo, hi])
    fig.update_xaxes(title_text=names[0], row=1, col=2)
    fig.update_yaxes(title_text=names[1], row=1, col=2)
    if equal_aspect:  # a plane is in Euclidean units on both axes: keep distances true
        fig.update_yaxes(scaleanchor="x", scaleratio=1, row=1, col=2)
    if len(frames) > 1:
        steps = []
        for k, frame in enumerate(frames):
            mask = [i // TRACES_PER_FRAME == k for i in range(TRACES_PER_FRAME * len(frames))]
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
    markers = results[0].get("markers", [])
    visible = models.shown(markers)
    (lo, hi), = models.extent([results[0]["axes"][0]], markers, visible)
    for place in models.places(markers, visible, [hi - lo]):
        fig.add_vline(x=place.coords[0], line_dash="dot" if place.inner else "dash", line_color="gray",
                      line_width=1, annotation_text=None if place.inner else place.text)
    fig.update_xaxes(title_text=axis_labels(results[0])[0], range=[lo, hi])
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
    fig.update_layout(title=f"{value_label(value)} ({results[0]['kind']})", height=650, template="plotly_white",
                      font=FONT)
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    return atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
