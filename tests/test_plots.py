"""Plots: files written in the right format, not blank, offline HTML holding the data, gaps for NaN."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
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
    # per round: surface, contour, then the path, the models and their labels, in 3D and in 2D
    assert [t["type"] for t in data] == (["surface", "contour"] + ["scatter3d", "scatter"] * 3) * 2
    assert data[0]["contours"]["z"]["project"]["z"] is True
    # client 3 sits on the grid point (0.4, -0.6): loss 0.16 + 0.18 + 0.1, accuracy 1/1.44
    assert data[4]["hovertext"][1].endswith("train/loss 0.44<br>train/accuracy 0.69444")
    assert data[7]["text"] == ["global", "client 3"]
    assert [t.get("visible") for t in data[::8]] == [True, False]
    # both rounds share one color range so the slider compares like with like
    assert data[0]["cmax"] == data[8]["cmax"] == pytest.approx(float(np.nanmax(bowl(2.0))))


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


# -- pictures for a paper: the training path, labels, volume slices, vector output, the browser ----------------


def trajectory_result(kind: str = "grid") -> dict[str, Any]:
    """A result whose trajectory (rounds 0..60) lies well inside the grid; the global model is its last round,
    two clients sit next to it (labels that would collide)."""
    rounds = [0, 20, 40, 60]
    path = [[-0.8, 0.6], [-0.5, -0.3], [-0.2, -0.2], [0.0, 0.0]]
    traj = [{"label": f"round {r}", "role": "trajectory", "coords": c, "distance": 0.1}
            for r, c in zip(rounds, path)]
    result = grid_result(bowl(), kind)
    result["axis_labels"] = ["PC 1 (Euclidean distance)", "PC 2 (Euclidean distance)"]
    result["markers"] = [{"label": "global", "role": "global", "coords": [0.0, 0.0], "distance": 0.0},
                         {"label": "client 1", "role": "client", "coords": [0.03, 0.0], "distance": 0.2},
                         {"label": "client 2", "role": "client", "coords": [0.0, 0.03], "distance": 0.2}, *traj]
    return result


def model_labels(fig: Any) -> dict[Any, list[Any]]:
    """The text artists of the models' labels on each axes of a laid-out figure."""
    fig.draw_without_rendering()
    return {ax: [t for t in ax.texts if t.get_gid() == static.LABEL_GID] for ax in fig.axes}


def plotly_data(path: Path) -> list[dict[str, Any]]:
    html = path.read_text()
    return json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", html, re.DOTALL).group(1))


def test_the_trajectory_is_a_path_in_round_order_with_its_start_and_end_marked(tmp_path: Path) -> None:
    result = trajectory_result()
    fig = static.surface_figure(result, styles=["filled", "heatmap"])
    expected = np.array([m["coords"] for m in result["markers"][3:]])
    for ax in fig.axes[::2]:  # the panels (the others are colorbars)
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "training path"]
        np.testing.assert_array_equal(np.column_stack(line.get_data()), expected)
        assert line.get_marker() == "o" and line.get_linestyle() == "-"
        ends = {c.get_label(): c.get_offsets()[0].tolist() for c in ax.collections if "of training" in c.get_label()}
        assert ends == {"start of training": [-0.8, 0.6], "end of training": [0.0, 0.0]}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["training path", "start of training",
                                                                  "end of training"]
    data = plotly_data(interactive.write_html(result, tmp_path / "t.html"))
    path3d, path2d = data[2], data[3]
    assert path2d["mode"] == "lines+markers" and path2d["x"] == expected[:, 0].tolist()
    assert path2d["marker"]["symbol"] == ["circle-open", "circle", "circle", "square"]  # start ... end
    assert path3d["x"] == expected[:, 0].tolist() and None not in path3d["z"]


def test_labels_of_coincident_and_near_models_do_not_overlap(tmp_path: Path) -> None:
    """The global model and round 60 share a point: one label; the clients beside it get labels of their own,
    moved to free spots; every label box is clear of every other."""
    fig = static.surface_figure(trajectory_result(), styles=["contour", "filled"])
    for ax, texts in model_labels(fig).items():
        if ax.get_label() == "<colorbar>":
            continue
        shown = sorted(t.get_text() for t in texts)
        assert shown.count("global, round 60") == 1 and "round 60" not in shown and "global" not in shown
        assert {"client 1", "client 2", "round 0"} <= set(shown)
        boxes = [t.get_window_extent() for t in texts]
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[i + 1:]), shown
    data = plotly_data(interactive.write_html(trajectory_result(), tmp_path / "t.html"))
    assert data[7]["text"] == ["global, round 60", "client 1", "client 2", "round 0"]  # inner rounds: on hover


def test_the_figure_shows_every_model_even_beyond_the_grid() -> None:
    result = trajectory_result()
    result["markers"][3]["coords"] = [-3.0, 2.0]  # round 0 far outside the +-1 grid
    fig = static.surface_figure(result, styles=["contour"])
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for m in result["markers"]:
        assert x0 < m["coords"][0] < x1 and y0 < m["coords"][1] < y1
    assert (x1, y0) == (1.0, -1.0)  # the grid's own edges where no model lies beyond them


def test_volume_slider_shows_a_model_on_its_own_slice_only(tmp_path: Path) -> None:
    cube = bowl()[:, :, None] + AXIS[None, None, :] ** 2
    markers = [{"label": "global", "role": "global", "coords": [0.0, 0.0, 0.0], "distance": 0.0},
               {"label": "client 1", "role": "client", "coords": [0.4, -0.6, 0.62], "distance": 0.1},
               {"label": "round 0", "role": "trajectory", "coords": [-0.6, 0.4, -0.97], "distance": 0.1},
               {"label": "round 5", "role": "trajectory", "coords": [-0.3, 0.2, 0.03], "distance": 0.1}]
    volume = {"kind": "volume", "axes": [AXIS, AXIS, AXIS], "values": {"train/loss": cube}, "markers": markers,
              "axis_labels": ["alpha (u)", "beta (u)", "gamma (u)"], "metadata": {}}
    data = plotly_data(interactive.write_html(volume, tmp_path / "v.html"))
    per_frame = interactive.TRACES_PER_FRAME
    assert len(data) == per_frame * len(AXIS)
    own = {"global": 5, "client 1": 8}  # nearest slices: gamma 0 and 0.6
    for k in range(len(AXIS)):
        path2d, models2d, labels2d = data[per_frame * k + 3], data[per_frame * k + 5], data[per_frame * k + 7]
        assert models2d["x"] == [m["coords"][0] for m in markers[:2] if own[m["label"]] == k]
        assert labels2d.get("text", []) == [lab for lab, s in
                                            (("global", 5), ("client 1", 8), ("round 0", 0), ("round 5", 5)) if s == k]
        assert path2d["x"] == [-0.6 if k == 0 else None, -0.3 if k == 5 else None]
    fig = static.surface_figure(volume)  # panels at slices 0, 2, 5, 8, 10
    labels = [sorted(t.get_text() for t in texts) for ax, texts in model_labels(fig).items()
              if ax.get_label() != "<colorbar>"]
    assert labels == [["round 0"], [], ["global", "round 5"], ["client 1"], []]


@pytest.mark.parametrize("draw", ["grid", "plane", "line", "volume", "density", "flatness"])
def test_static_figures_are_vector_pdfs_in_the_house_style(tmp_path: Path, draw: str) -> None:
    """Every static figure writes a PDF with TrueType text (no Type 3 fonts, which journals refuse), its fonts
    at the sizes of STYLE, every colorbar labelled."""
    path = tmp_path / f"{draw}.pdf"
    line = {"kind": "line", "axes": [AXIS], "axis_labels": ["interpolation (0 = A, 1 = B)"],
            "values": {"train/loss": AXIS**2 + 0.1, "train/accuracy": 1 - AXIS**2},
            "markers": [{"label": "A", "role": None, "coords": [0.0], "distance": 0.0}], "metadata": {}}
    volume = {"kind": "volume", "axes": [AXIS, AXIS, AXIS], "values": {"train/loss": bowl()[:, :, None] + AXIS**2},
              "markers": [], "metadata": {}}
    if draw == "density":
        static.plot_density(np.linspace(0, 5, 50), np.exp(-np.linspace(0, 5, 50)) + 1e-6, np.array([4.0]), path)
    elif draw == "flatness":
        metrics = {
            "perturbation_distance": {"rho": 0.05, "distance": 0.04, "client_distances": [0.03], "cosines": [0.8]},
            "sharpness_gap": {"client_first_order": [0.02], "client_ascent": [0.025], "num_ascent_steps": 3,
                              "global_first_order": 0.01, "global_ascent": 0.012, "gap_first_order": 0.015,
                              "gap_ascent": 0.018},
            "lambda_max": {"local_at_client": [5.0], "global_at_client": [7.0], "global_at_global": 6.5},
            "parameter_distances": {"distances": [0.3], "relative": [0.01], "global_norm": 30.0},
        }
        static.plot_flatness(metrics, path)
    else:
        result = {"grid": trajectory_result(), "plane": trajectory_result("plane"), "line": line, "volume": volume}[draw]
        static.plot_surface(result, path)
        fig = static.surface_figure(result)
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                assert ax.get_ylabel(), "an unlabelled colorbar"
            else:
                assert ax.xaxis.label.get_fontsize() == static.STYLE["axes.labelsize"] and ax.get_xlabel()
                assert {t.get_fontsize() for t in ax.get_xticklabels()} <= {static.STYLE["xtick.labelsize"]}
    pdf = path.read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 5_000
    assert b"/Type3" not in pdf and b"/FontFile2" in pdf  # TrueType fonts embedded


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def test_the_interactive_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The page runs in a real browser: plotly draws its plot (the div gets its class, the SVG layers exist) and
    no script error is logged, for a surface with a path and for a volume on a slider."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless browser installed ({', '.join(BROWSERS)} not on PATH)")
    volume = {"kind": "volume", "axes": [AXIS, AXIS, AXIS[:3]], "values": {"train/loss": bowl()[:, :, None] + AXIS[:3]},
              "markers": [{"label": "global", "role": "global", "coords": [0.0, 0.0, 0.0], "distance": 0.0}],
              "metadata": {}}
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    pages = [interactive.write_html(trajectory_result(), tmp_path / "s.html"),
             interactive.write_html(volume, tmp_path / "v.html")]
    for page in [broken, *pages]:
        run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                              "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                              f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=180)
        errors = [line for line in run.stderr.splitlines() if "Uncaught" in line]
        if page == broken:  # the check itself sees a script error
            assert errors and "undefinedFunction" in errors[0]
            continue
        assert run.returncode == 0 and not errors, errors
        assert 'class="plotly-graph-div js-plotly-plot"' in run.stdout and 'class="main-svg"' in run.stdout
