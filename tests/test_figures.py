"""The figure/table scripts on tiny inputs: outputs written, table values equal to the inputs, clear errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from landscape import figures
from landscape.figures import common, fig04_client_lambda_max, table1_hessian, table2_accuracy
from landscape import checkpoint, models
from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.train.config import TrainConfig

FAST = ["--num-samples", "100", "--device", "cpu"]


def save_mlp(path: Path, seed: int, role: str, alpha: float = 0.0) -> str:
    """A digits MLP checkpoint with a partition record (as `landscape train` writes them)."""
    torch.manual_seed(seed)
    ckpt = checkpoint.from_model(models.build("mlp", hidden=[8]), "mlp", {"hidden": [8]}, role=role, round=5,
                                 client_id=seed if role == "client" else None,
                                 data={"dataset": "digits", "split": "train", "partition": {"alpha": alpha}})
    return str(checkpoint.save(ckpt, path))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real result files of the landscape commands on tiny digits MLPs: two surfaces, a plane, a Hessian."""
    root = tmp_path_factory.mktemp("results")
    a, b = save_mlp(root / "a.pt", 0, "global"), save_mlp(root / "b.pt", 1, "global", alpha=1000.0)
    c, d, e = (save_mlp(root / f"c{i}.pt", i, "client") for i in (2, 3, 4))
    out = {"surface_a": root / "sa.npz", "surface_b": root / "sb.npz", "plane": root / "plane.npz",
           "hessian": root / "h.json"}
    grid = ["--resolution", "3", "--sources", "train", *FAST]
    assert main(["surface", a, "--out", str(out["surface_a"]), *grid]) == 0
    assert main(["surface", b, "--out", str(out["surface_b"]), *grid]) == 0
    assert main(["plane", a, c, d, "--project", e, "--out", str(out["plane"]), *grid]) == 0
    assert main(["hessian", a, "--top-k", "5", "--density", "--density-steps", "10", "--out", str(out["hessian"]),
                 *FAST]) == 0
    return out


def hessian_json(path: Path, eigenvalues: list[float], round_: int | None = 10, role: str | None = "global",
                 client_id: int | None = None, alpha: float | None = None, density: bool = False) -> Path:
    """A hand-made result in the layout of `landscape hessian --out` with known values."""
    result: dict[str, Any] = {
        "eigenvalues": eigenvalues, "residuals": [1e-6] * len(eigenvalues), "converged": [True] * len(eigenvalues),
        "lambda_max": eigenvalues[0],
        "lambda_max_over_lambda_5": eigenvalues[0] / eigenvalues[4] if len(eigenvalues) >= 5 else None,
        "metadata": {"checkpoint": {"round": round_, "role": role, "client_id": client_id,
                                    "data": {"dataset": "digits", "partition": {"alpha": alpha}}}},
    }
    if density:
        result["density"] = {"nodes": [[-0.1, 0.0, 0.5 * eigenvalues[0], eigenvalues[0]]],
                             "weights": [[0.2, 0.7, 0.09, 0.01]]}
    path.write_text(json.dumps(result))
    return path


def run(argv: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_image(path: Path) -> None:
    """A non-empty image file that is not blank."""
    assert path.stat().st_size > 0
    pixels = imread(path)
    assert pixels.ndim == 3 and float(np.std(pixels[..., :3])) > 0.01


# -- inputs -----------------------------------------------------------------------------------------


def test_label_path_pairs_globs_and_labels_with_equals(tmp_path: Path) -> None:
    for name in ("r1_c0.json", "r1_c1.json", "other.txt"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "x=y.json").write_text("{}")
    inputs = common.parse_inputs([f"A={tmp_path}/r*_c*.json", f"alpha=0={tmp_path}/other.txt",
                                  str(tmp_path / "x=y.json"), str(tmp_path / "other.txt")])
    assert [(i.label, i.path.name) for i in inputs] == [
        ("A", "r1_c0.json"), ("A", "r1_c1.json"), ("alpha=0", "other.txt"), ("x=y", "x=y.json"), ("other", "other.txt")]


@pytest.mark.parametrize("spec, match", [
    ("=a.json", "bad input"),
    ("a=", "bad input"),
    ("a=missing.json", "file not found: missing.json"),
    ("a=missing*.json", "no file matches missing"),
])
def test_bad_inputs_name_the_problem(spec: str, match: str) -> None:
    with pytest.raises(LandscapeError, match=match):
        common.parse_inputs([spec])


# -- Table 1 ----------------------------------------------------------------------------------------


def test_table1_values_are_the_inputs_with_the_paper_beside(results: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    eig = [12.0, 6.0, 5.0, 4.5, 3.0]
    mine = hessian_json(tmp_path / "mine.json", eig, alpha=0.0)
    code, out, _ = run(["figures", "table1", f"FedASAM + SWA={mine}", f"fedavg={results['hessian']}",
                        f"mine={mine}", "--out", tmp_path / "t1.md"], capsys)
    assert code == 0 and "| FedASAM + SWA |" in out
    rows = read_csv(tmp_path / "t1.csv")
    assert (tmp_path / "t1.md").read_text().startswith("| algorithm |")
    assert [r["algorithm"] for r in rows] == ["FedASAM + SWA", "fedavg", "mine"]
    assert float(rows[0]["lambda_max"]) == 12.0 and float(rows[0]["lambda_max/lambda_5"]) == 12.0 / 3.0
    assert [float(rows[0][h]) for h in table1_hessian.HEADER[5:]] == list(table1_hessian.PAPER["fedasam-swa"])
    real = json.loads(results["hessian"].read_text())
    assert float(rows[1]["lambda_max"]) == real["lambda_max"]
    assert float(rows[1]["lambda_max/lambda_5"]) == real["eigenvalues"][0] / real["eigenvalues"][4]
    assert rows[1]["alpha"] == "0" and rows[1]["round"] == "5"
    assert float(rows[1]["paper lambda_max alpha=0"]) == 93.46
    assert rows[2]["paper lambda_max alpha=0"] == ""  # no paper row named "mine"


@pytest.mark.parametrize("make, match", [
    (lambda p: hessian_json(p, [3.0, 2.0, 1.0]), "3 eigenvalues, lambda_max/lambda_5 needs 5"),
    (lambda p: p.write_text('{"loss": 1.0}'), "not a result of `landscape hessian --out`"),
    (lambda p: p.write_text("[1, 2"), "not valid JSON"),
])
def test_table1_bad_input_is_one_line(make: Any, match: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.json"
    make(path)
    code, _, err = run(["figures", "table1", f"x={path}", "--out", tmp_path / "t.md"], capsys)
    assert code == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "t.md").exists()


# -- Table 2 ----------------------------------------------------------------------------------------


def fake_run(path: Path, config: TrainConfig, data: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """A run folder in the layout of train/folder.py: config.json and metrics.jsonl."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"config": config.to_dict(), "data": data}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_table2_last_accuracy_and_the_paper_cell_of_the_setting(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cifar = fake_run(tmp_path / "fedasam-swa", TrainConfig(algorithm="fedasam", swa=True, clients_per_round=5),
                     {"dataset": "cifar100", "partition": {"alpha": 0.0}},
                     [{"round": 1, "train_loss": 4.0}, {"round": 2, "test_acc": 0.25},
                      {"round": 3, "test_acc": 0.375, "swa_test_acc": 0.4375}, {"round": 4, "train_loss": 3.0}])
    digits = fake_run(tmp_path / "digits", TrainConfig(dataset="digits", model="mlp"),
                      {"dataset": "digits", "partition": {"alpha": 1.0}}, [{"round": 1, "test_acc": 0.5}])
    code, out, _ = run(["figures", "table2", cifar, f"mine={digits}", "--out", tmp_path / "t2.csv"], capsys)
    assert code == 0 and "| fedasam-swa | cifar100 |" in out
    swa_run, digits_run = read_csv(tmp_path / "t2.csv")
    assert swa_run["round"] == "3" and float(swa_run["test acc %"]) == 37.5
    assert float(swa_run["SWA test acc %"]) == 43.75
    assert float(swa_run["paper %"]) == 42.01  # [C22] Table 2: CIFAR-100, alpha 0, 5 clients, FedASAM + SWA
    assert digits_run["run"] == "mine" and float(digits_run["test acc %"]) == 50.0
    assert digits_run["SWA test acc %"] == "" and digits_run["paper %"] == ""
    assert (tmp_path / "t2.md").stat().st_size > 0


def test_table2_paper_cells() -> None:
    cfg = {"algorithm": "fedavg", "swa": False, "local_epochs": 2, "clients_per_round": 20}
    assert table2_accuracy.paper_value(cfg, "cifar10", 100.0) == 84.21
    assert table2_accuracy.paper_value({**cfg, "local_epochs": 1, "clients_per_round": 10}, "cifar100", 0.5) == 41.27
    assert table2_accuracy.paper_value({**cfg, "algorithm": "fednsam"}, "cifar10", 100.0) is None
    assert table2_accuracy.paper_value({**cfg, "local_epochs": 3}, "cifar10", 100.0) is None


def test_table2_not_a_run_or_nothing_evaluated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["figures", "table2", tmp_path], capsys)
    assert code == 2 and "not a run folder of `landscape train`" in err
    early = fake_run(tmp_path / "early", TrainConfig(), {"dataset": "cifar100"}, [{"round": 1, "train_loss": 4.0}])
    code, _, err = run(["figures", "table2", early], capsys)
    assert code == 2 and "holds no test accuracy yet" in err


# -- figures ----------------------------------------------------------------------------------------


def test_fig01_grid_of_surfaces_and_slider_html(results: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "fig01.png"
    code, _, _ = run(["figures", "fig01", f"FedAvg={results['surface_a']}", f"FedASAM={results['surface_b']}",
                      "--out", png], capsys)
    assert code == 0
    assert_image(png)
    html = png.with_suffix(".html").read_text()
    assert "FedAvg" in html and "FedASAM" in html and "sliders" in html


@pytest.mark.parametrize("extra, match", [
    (["--value", "test/loss"], "no value 'test/loss'"),
    (["--out", "fig.jpg"], "--out fig.jpg: use a file ending in .png"),
])
def test_fig01_bad_value_or_output(results: dict[str, Path], extra: list[str], match: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["figures", "fig01", results["surface_a"], *extra], capsys)
    assert code == 2 and match in err


def test_fig01_refuses_a_plane_and_fig02_a_grid(results: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["figures", "fig01", results["plane"]], capsys)
    assert code == 2 and "is a plane result" in err
    code, _, err = run(["figures", "fig02", results["surface_a"]], capsys)
    assert code == 2 and "is a grid result" in err


def test_fig02_plane_with_projected_clients(results: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    png, html = tmp_path / "fig02.png", tmp_path / "fig02.html"
    code, out, _ = run(["figures", "fig02", results["plane"], "--out", png, "--html", html,
                        "--styles", "filled", "3d"], capsys)
    assert code == 0
    assert_image(png)
    assert html.stat().st_size > 0
    assert "client 4" in out and "off the plane" in out


def test_fig04_client_points_grouped_by_label_and_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected: dict[str, dict[int, list[tuple[int, float]]]] = {"FedAvg": {}, "FedASAM": {}}
    for label, scale in (("FedAvg", 10.0), ("FedASAM", 2.0)):
        (tmp_path / label).mkdir()
        for client_id in (3, 7, 11):
            for round_ in (100, 50, 150):  # written out of order: drawn sorted by round
                value = scale + client_id + round_ / 100
                hessian_json(tmp_path / label / f"r{round_}_c{client_id}.json", [value], round_, "client", client_id)
                expected[label].setdefault(client_id, []).append((round_, value))
        hessian_json(tmp_path / label / "global.json", [5 * scale], 150, "global")
    inputs = common.parse_inputs([f"{label}={tmp_path / label}/*.json" for label in expected])
    panels = fig04_client_lambda_max.collect(inputs)
    assert list(panels) == ["FedAvg", "FedASAM"]
    for label, clients in expected.items():
        assert {k: sorted(v) for k, v in panels[label].clients.items()} == {k: sorted(v) for k, v in clients.items()}
    assert panels["FedAvg"].global_model == [(150, 50.0)]
    png = tmp_path / "fig04.png"
    code, _, _ = run(["figures", "fig04", f"FedAvg={tmp_path}/FedAvg/*.json", f"FedASAM={tmp_path}/FedASAM/*.json",
                      "--out", png], capsys)
    assert code == 0
    assert_image(png)


def test_fig04_needs_client_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = hessian_json(tmp_path / "plain.json", [1.0], round_=None, role=None)
    code, _, err = run(["figures", "fig04", plain], capsys)
    assert code == 2 and "records no round or role" in err
    only_global = hessian_json(tmp_path / "g.json", [1.0])
    code, _, err = run(["figures", "fig04", f"A={only_global}"], capsys)
    assert code == 2 and "no client checkpoint among the results labelled A" in err


def test_fig05_overlaid_densities(results: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = hessian_json(tmp_path / "a1000.json", [4.0, 3.0, 2.0, 1.5, 1.0], density=True)
    png = tmp_path / "fig05.png"
    code, out, _ = run(["figures", "fig05", f"alpha=0={results['hessian']}", f"alpha=1000={made}", "--out", png],
                       capsys)
    assert code == 0 and f"wrote {png}" in out
    assert_image(png)


def test_fig05_needs_a_density(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["figures", "fig05", hessian_json(tmp_path / "h.json", [1.0])], capsys)
    assert code == 2 and "holds no spectral density; rerun `landscape hessian` with --density" in err


# -- the command ------------------------------------------------------------------------------------


def test_cli_lists_every_script_and_refuses_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["figures"], capsys)
    assert code == 0
    for name in figures.SCRIPTS:
        assert f"{name} " in out and figures.summary(figures.load(name)) in out
    assert figures.load("table1_hessian") is figures.load("table1")
    code, _, err = run(["figures", "fig99"], capsys)
    assert code == 2 and "no figure script 'fig99'" in err


def test_script_run_as_a_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["table1_hessian.py", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit) as exit_info:
        common.run_script(table1_hessian.main)
    assert exit_info.value.code == 2 and "file not found" in capsys.readouterr().err
