"""Plots: files written in the right format, not blank, offline HTML holding the data, gaps for NaN."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from landscape.errors import LandscapeError
from landscape.plots import interactive, static

AXIS = np.linspace(-1.0, 1.0, 11)


def grid_result(values: np.ndarray, kind: str = "grid", round_: int | None = None) -> dict[str, Any]:
    """A result dict shaped like landscape.surface.load_result's, with two models marked."""
    return {
        "kind": kind,
        "axes": [AXIS, AXIS],
        "axis_labels": ["alpha", "beta"],
        "values": {"train/loss": values, "train/accuracy": 1.0 / (1.0 + values)},
        "done": np.ones(values.shape, dtype=bool),
        "markers": [
            {"label": "global", "role": "global", "coords": [0.0, 0.0], "distance": 0.0},
            {"label": "client 3", "role": "client", "coords": [0.4, -0.6], "distance": 0.25},
        ],
        "metadata": {"checkpoints": [{"path": "runs/global.pt", "round": round_}]},
    }


def bowl(scale: float = 1.0) -> np.ndarray:
    x, y = np.meshgrid(AXIS, AXIS, indexing="ij")
    return scale * (x**2 + 0.5 * y**2) + 0.1


def test_log_levels_when_the_range_calls_for_it() -> None:
    wide = np.array([[0.01, 0.5], [3.0, 50.0]])  # max/min = 5000, positive
    levels = static.contour_levels(wide, 5)
    np.testing.assert_allclose(levels, np.geomspace(0.01, 50.0, 5))
    np.testing.assert_allclose(np.diff(np.log(levels)), np.log(5000.0) / 4)
    narrow = np.array([0.5, 40.0])  # ratio 80: linear
    np.testing.assert_allclose(static.contour_levels(narrow, 3), [0.5, 20.25, 40.0])
    signed = np.array([-1.0, 500.0])  # not all positive: linear
    np.testing.assert_allclose(static.contour_levels(signed, 3), [-1.0, 249.5, 500.0])
    with_gaps = np.array([0.01, np.nan, np.inf, 50.0])  # NaN/inf ignored
    np.testing.assert_allclose(static.contour_levels(with_gaps, 2), [0.01, 50.0])


def test_all_nan_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LandscapeError, match="every value is NaN"):
        static.plot_surface(grid_result(np.full((11, 11), np.nan)), tmp_path / "x.png")
    with pytest.raises(LandscapeError, match="every value is NaN"):
        interactive.write_html(grid_result(np.full((11, 11), np.nan)), tmp_path / "x.html")


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
@pytest.mark.parametrize("kind", ["grid", "plane"])
def test_surface_files_are_written_in_the_suffix_format(tmp_path: Path, suffix: str, magic: bytes, kind: str) -> None:
    path = static.plot_surface(grid_result(bowl(), kind), tmp_path / f"s{suffix}")
    assert path.read_bytes().startswith(magic)
    assert path.stat().st_size > 10_000


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LandscapeError, match=r"\.png, \.pdf, \.svg"):
        static.plot_surface(grid_result(bowl()), tmp_path / "s.jpg")
    assert not list(tmp_path.iterdir())


def test_3d_surface_is_not_blank(tmp_path: Path) -> None:
    """The 3D panel alone, colorbar cropped off (right quarter): an empty 3D box is gray only
    (no colored pixel, std ~0.10 from panes and text); the drawn surface fills it with viridis."""
    path = static.plot_surface(grid_result(bowl()), tmp_path / "s3d.png", styles=["3d"])
    image = imread(path)[..., :3]
    panel = image[:, : int(0.75 * image.shape[1])]
    colored = np.ptp(panel, axis=-1) > 0.15  # gray pixels have equal channels
    assert colored.mean() > 0.08
    assert panel.std() > 0.18


def test_nan_and_inf_are_drawn_as_gaps(tmp_path: Path) -> None:
    """A hole of NaN in the heatmap stays background-colored; inf does not crash either."""
    values = bowl()
    values[3:8, 3:8] = np.nan
    values[0, 0] = np.inf
    full = imread(static.plot_surface(grid_result(bowl()), tmp_path / "full.png", styles=["heatmap"]))
    holed = imread(static.plot_surface(grid_result(values), tmp_path / "hole.png", styles=["heatmap"]))
    assert full.shape == holed.shape
    white = lambda im: (im[..., :3] > 0.99).all(-1).mean()  # noqa: E731
    assert white(holed) > white(full) + 0.02
    for path in [static.plot_surface(grid_result(values), tmp_path / "all.png"),
                 interactive.write_html(grid_result(values), tmp_path / "all.html")]:
        assert path.stat().st_size > 10_000


def test_line_and_volume_results(tmp_path: Path) -> None:
    line = {
        "kind": "line", "axes": [AXIS], "axis_labels": ["interpolation"],
        "values": {"train/loss": AXIS**2 + 0.1, "test/loss": np.where(AXIS > 0.5, np.nan, AXIS**2 + 0.2),
                   "train/accuracy": 1 - AXIS**2, "test/accuracy": 0.9 - AXIS**2},
        "markers": [{"label": "A", "role": None, "coords": [0.0], "distance": 0.0}], "metadata": {},
    }
    assert static.plot_surface(line, tmp_path / "line.png").stat().st_size > 10_000
    html = interactive.write_html([line, line], tmp_path / "line.html", labels=["FedAvg", "FedSAM"]).read_text()
    assert '"FedSAM"' in html
    cube = bowl()[:, :, None] + AXIS[None, None, :] ** 2
    volume = {"kind": "volume", "axes": [AXIS, AXIS, AXIS], "values": {"train/loss": cube}, "markers": [], "metadata": {}}
    assert static.plot_surface(volume, tmp_path / "vol.pdf").read_bytes().startswith(b"%PDF")
    html = interactive.write_html(volume, tmp_path / "vol.html").read_text()
    assert "gamma = 0" in html  # the centre slice is on the slider


def test_html_is_offline_and_holds_the_data(tmp_path: Path) -> None:
    values = bowl()
    values[5, 5] = 0.123456789  # a value to find in the file
    values[1, 1] = np.nan
    path = interactive.write_html(
        [grid_result(values, round_=10), grid_result(bowl(2.0), round_=20)], tmp_path / "s.html"
    )
    html = path.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.IGNORECASE)  # nothing loaded from anywhere
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']https?:", html, re.IGNORECASE)
    assert "plotly.js v" in html and len(html) > 1_000_000  # plotly.js inline, several MB
    call = html[html.index("Plotly.newPlot("):]
    assert "0.123456789" in call
    assert "NaN" not in call and "null" in call  # the NaN point is a JSON null: a gap
    for text in ('"global"', '"client 3"', "off-surface distance 0.25", '"round 10"', '"round 20"', '"sliders"'):
        assert text in call
    data = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", html, re.DOTALL).group(1))
    assert [t["type"] for t in data] == ["surface", "contour", "scatter3d", "scatter"] * 2
    assert data[0]["contours"]["z"]["project"]["z"] is True
    # client 3 sits on the grid point (0.4, -0.6): loss 0.16 + 0.18 + 0.1, accuracy 1/1.44
    assert data[2]["hovertext"][1].endswith("train/loss 0.44<br>train/accuracy 0.69444")
    assert [t.get("visible") for t in data[::4]] == [True, False]
    # both rounds share one color range so the slider compares like with like
    assert data[0]["cmax"] == data[4]["cmax"] == pytest.approx(float(np.nanmax(bowl(2.0))))


def test_html_is_written_atomically_and_refuses_mixed_kinds(tmp_path: Path) -> None:
    target = tmp_path / "s.html"
    target.write_text("old")
    line = {"kind": "line", "axes": [AXIS], "values": {"train/loss": AXIS**2}, "markers": [], "metadata": {}}
    with pytest.raises(LandscapeError, match="different kinds"):
        interactive.write_html([grid_result(bowl()), line], target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.html"]


def test_density_and_flatness_figures(tmp_path: Path) -> None:
    grid = np.linspace(-1, 60, 300)
    density = np.exp(-(grid**2)) + 1e-7
    path = static.plot_density(grid, density, np.array([55.0, 40.0]), tmp_path / "density.png", title="spectrum")
    assert path.stat().st_size > 10_000
    metrics = {
        "perturbation_distance": {"rho": 0.05, "distance": 0.04, "client_distances": [0.03, 0.05],
                                  "cosines": [0.8, 0.5], "client_gradient_norms": [1.0, 2.0], "gradient_norm": 1.2,
                                  "weights": [0.5, 0.5]},
        "sharpness_gap": {"rho": 0.05, "num_ascent_steps": 3, "client_losses": [1.0, 1.1],
                          "client_first_order": [0.02, 0.03], "client_ascent": [0.025, 0.035], "global_loss": 1.05,
                          "global_first_order": 0.01, "global_ascent": 0.012, "gap_first_order": 0.015,
                          "gap_ascent": 0.018},
        "lambda_max": {"local_at_client": [5.0, 6.0], "global_at_client": [7.0, 8.0], "global_at_global": 6.5,
                       "converged": True, "tol": 1e-3},
        "parameter_distances": {"distances": [0.3, 0.4], "relative": [0.01, 0.02], "global_norm": 30.0},
    }
    path = static.plot_flatness(metrics, tmp_path / "flatness.pdf", client_labels=["client 0", "client 5"])
    assert path.read_bytes().startswith(b"%PDF")
