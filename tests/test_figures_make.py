"""``landscape figures all`` and each script's ``--quick``: every figure and table made from tiny runs,
the runs reused, the manifest's commands remake their outputs, the new readers are right."""

from __future__ import annotations

import csv
import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from landscape import checkpoint, data
from landscape.cli import main, parse
from landscape.figures import clients, common, fig04_client_lambda_max, fig10_convergence, make, runs
from landscape.figures import table1_hessian, table2_accuracy
from landscape.partition import client_data
from landscape.run_folder import RunFolder
from landscape.train.config import TrainConfig, make_config

#: Every output of `landscape figures all`: [C22] Fig. 1-5, 7, 10, 11, Tables 1-2 and the [L26] figure.
OUTPUTS = {"fig01", "fig02", "fig03", "fig03c", "table1", "fig04", "fig05", "table2", "fig07", "fig10", "fig11", "l26"}
#: Figures of lines and markers only: their PDFs hold no raster image.
LINE_FIGURES = {"fig03", "fig03c", "fig04", "fig05", "fig07", "fig10", "fig11", "l26"}


def run(argv: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / make.MANIFEST).read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_picture(path: Path) -> None:
    """A PNG that is not blank, or a PDF that is one."""
    assert path.stat().st_size > 1000, path
    if path.suffix == ".png":
        assert float(np.std(imread(path)[..., :3])) > 0.01, path
    else:
        assert path.read_bytes().startswith(b"%PDF"), path


# -- the whole set ----------------------------------------------------------------------------------


def test_all_quick_makes_every_figure_and_table_with_its_command(quick_figures: Path) -> None:
    made = manifest(quick_figures)
    assert made["mode"] == "quick" and set(made["outputs"]) == OUTPUTS
    for name, entry in made["outputs"].items():
        assert entry["command"].startswith(f"landscape figures {entry['script']} ")
        assert set(entry["runs"]) <= set(made["runs"]) and entry["files"]
        for file in entry["files"]:
            path = quick_figures / file
            if path.suffix in (".png", ".pdf"):
                assert_picture(path)
            if path.suffix == ".pdf" and name in LINE_FIGURES:
                assert b"/Subtype /Image" not in path.read_bytes(), path  # vector: nothing rasterized
            assert path.stat().st_size > 0
    for name, entry in made["runs"].items():
        assert entry["seconds"] > 0 and RunFolder(quick_figures / entry["path"]).is_run()  # trained here
        assert entry["command"].startswith("landscape train --preset digits-demo ") and entry["path"] == f"runs/{name}"


def test_tables_have_their_rows_and_columns(quick_figures: Path) -> None:
    rows = read_csv(quick_figures / "table1_hessian.csv")
    assert list(rows[0]) == table1_hessian.HEADER
    assert [r["algorithm"] for r in rows] == ["fedavg", "fedsam", "fedasam", "fedavg-swa", "fedsam-swa", "fedasam-swa"]
    for row in rows:
        assert float(row["lambda_max"]) > 0 and float(row["lambda_max/lambda_5"]) >= 1
        assert float(row["paper lambda_max alpha=0"]) == table1_hessian.PAPER[row["algorithm"]][0]
    rows = read_csv(quick_figures / "table2_accuracy.csv")
    assert list(rows[0]) == table2_accuracy.HEADER and len(rows) == 8
    for row in rows:
        assert 0 <= float(row["test acc %"]) <= 100 and row["round"] == str(runs.QUICK["num_rounds"])
        assert (row["SWA test acc %"] != "") == ("-swa-" in row["run"])
    markdown = (quick_figures / "table2_accuracy.md").read_text().splitlines()
    assert markdown[0].startswith("| run |") and sum(line.startswith("| ") for line in markdown) == 1 + 8


def test_a_manifest_command_run_from_its_folder_remakes_its_output(quick_figures: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    entry = manifest(quick_figures)["outputs"]["table1"]
    table = quick_figures / "table1_hessian.csv"
    before = read_csv(table)
    for step in entry["steps"]:
        words = shlex.split(step)
        (quick_figures / words[words.index("--out") + 1]).unlink()
    table.unlink()
    monkeypatch.chdir(quick_figures)
    for command in (*entry["steps"], entry["command"]):
        assert main(shlex.split(command)[1:]) == 0
    capsys.readouterr()
    after = read_csv(table)
    assert [r["algorithm"] for r in after] == [r["algorithm"] for r in before]
    for a, b in zip(after, before):
        assert float(a["lambda_max"]) == pytest.approx(float(b["lambda_max"]), rel=1e-4)


def test_a_second_call_trains_nothing(quick_figures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["figures", "all", "--quick", "--out", quick_figures, "--only", "table2,fig11"], capsys)
    assert code == 0 and "$ landscape figures table2" in out and "$ landscape train" not in out
    made = manifest(quick_figures)
    used = {name for entry in (made["outputs"]["table2"], made["outputs"]["fig11"]) for name in entry["runs"]}
    assert {name: made["runs"][name]["status"] for name in used} == dict.fromkeys(used, "reused")
    assert set(made["outputs"]) == OUTPUTS  # the other entries are kept


def test_a_dry_run_prints_each_command_once_and_runs_none(quick_figures: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    stamp = (quick_figures / make.MANIFEST).stat().st_mtime_ns
    code, out, _ = run(["figures", "all", "--quick", "--out", quick_figures, "--only", "fig05,table1", "--dry-run"],
                       capsys)
    lines = out.splitlines()
    assert code == 0 and "$ landscape" not in out and (quick_figures / make.MANIFEST).stat().st_mtime_ns == stamp
    assert sum(line.startswith("reuse   landscape train --preset digits-demo") for line in lines) == 7
    shared = [line for line in lines if "hessian_fedavg-a0.json" in line and "landscape hessian" in line]
    assert len(shared) == 1 and shared[0].startswith("table1 ")  # Table 1 and Fig. 5 read one result


@pytest.mark.parametrize("name", ["fig01", "fig02", "fig03", "table1", "fig04", "fig05", "table2", "fig07", "fig10",
                                  "l26"])
def test_each_script_makes_its_inputs_with_quick(name: str, quick_figures: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    files = [quick_figures / f for f in manifest(quick_figures)["outputs"][name]["files"]]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    code, out, _ = run(["figures", name, "--quick", "--work", quick_figures], capsys)
    assert code == 0 and f"$ landscape figures {name}" in out and "$ landscape train" not in out
    assert all(f.stat().st_mtime_ns > stamps[f] for f in files)  # drawn again, from the runs already there


# -- runs reused by config, not by name -------------------------------------------------------------


def test_a_run_of_another_config_is_an_error_not_reused(quick_figures: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "runs" / "fedavg-a0"
    shutil.copytree(quick_figures / "runs" / "fedavg-a0", copy)
    stored = json.loads((copy / "config.json").read_text())
    stored["config"]["lr"] = 0.05
    (copy / "config.json").write_text(json.dumps(stored))
    code, out, err = run(["figures", "fig07", "--quick", "--work", tmp_path], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "holds a run of another config than run 'fedavg-a0' (lr: 0.05 -> 0.1)" in err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["fedavg-a0"] and "$ landscape" not in out


def test_run_status_reuses_a_finished_run_and_resumes_a_stopped_one(quick_figures: Path, tmp_path: Path) -> None:
    spec = runs.c22("quick", "fedavg", 1000.0)
    copy = tmp_path / spec.name
    assert make.run_status(spec, copy, None) == "train"
    shutil.copytree(quick_figures / "runs" / spec.name, copy)
    assert make.run_status(spec, copy, None) == "reuse"
    RunFolder(copy).global_checkpoint(spec.config().num_rounds).unlink()
    assert make.run_status(spec, copy, None) == "resume"


@pytest.mark.parametrize("mode", runs.MODES)
def test_every_run_command_makes_its_config(mode: str, tmp_path: Path) -> None:
    """The `landscape train` command of each run (the manifest's) gives the config its reuse is checked against."""
    plan = make.Plan(mode, tmp_path, tmp_path / "runs", None, None)
    specs = {s.name: s for o in make.collect(plan, []) for s in o.runs}
    assert len(specs) >= 15
    for spec in specs.values():
        args = parse([*spec.argv(), "--out", "x"])
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
        cfg = make_config(args.preset, **flags)
        assert cfg == spec.config() and spec.name.removeprefix("l26-").startswith(cfg.algorithm)
        assert (cfg.track_every > 0) == (spec.name in runs.TRACKED or spec.name.startswith("l26-"))
        assert cfg.dataset == ("digits" if mode == "quick" else "cifar100")


def test_the_plane_names_the_clients_training_saved(quick_figures: Path) -> None:
    spec = runs.c22("quick", "fedavg")
    plan = make.Plan("quick", quick_figures, quick_figures / "runs", None, None)
    assert plan.clients(spec) == RunFolder(plan.run(spec)).client_checkpoints(spec.config().num_rounds)


# -- the readers ------------------------------------------------------------------------------------


def test_client_accuracy_and_output_norm_equal_a_direct_evaluation(quick_figures: Path) -> None:
    folder = quick_figures / "runs" / "fedavg-a0"
    curves = clients.evaluate_run(common.Input("a", folder), None, torch.device("cpu"))
    assert curves.rounds == list(range(0, runs.QUICK["num_rounds"] + 1, runs.QUICK["save_every"]))
    assert curves.test == [(r["round"], r["test_acc"]) for r in RunFolder(folder).metrics() if "test_acc" in r]
    ckpt = checkpoint.load(RunFolder(folder).global_checkpoint(12))
    model = ckpt.build_model().eval()
    full = data.load({"dataset": "digits", "split": "train"})
    assert len(curves.accuracy) == ckpt.data["partition"]["num_clients"]
    for k in (0, 7, 19):
        mine = client_data(full, ckpt.data["partition"], k)
        with torch.no_grad():
            logits = model(mine.x)
        i = curves.rounds.index(12)
        assert curves.accuracy[k][i] == pytest.approx(float((logits.argmax(1) == mine.y).float().mean()))
        assert curves.output_norm[k][i] == pytest.approx(float(logits.norm(dim=1).mean()), rel=1e-5)


def fake_run(path: Path, dataset: str, records: list[dict[str, Any]]) -> Path:
    """A run folder in the layout of train/folder.py: config.json and metrics.jsonl."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": TrainConfig().to_dict(), "data": {"dataset": dataset}}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def curvature(global_max: float, client_max: dict[str, float], distance: float | None) -> dict[str, Any]:
    """A ``curvature`` record as ``landscape train --track-every K`` logs it (with the flatness distance, or not)."""
    flatness = {} if distance is None else {"flatness_distance": distance, "flatness": {"perturbation": distance}}
    return {"global_lambda_max": global_max, "client_lambda_max": client_max, **flatness, "hvps": 40, "seconds": 0.1}


def test_fig04_and_l26_read_the_tracked_curvature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tracked = fake_run(tmp_path / "tracked", "digits", [
        {"round": 1, "train_loss": 2.0},
        {"round": 5, "train_loss": 1.5, "curvature": curvature(10.0, {"3": 4.0, "7": 6.0}, 0.5)},
        {"round": 6, "train_loss": 1.4},
        {"round": 10, "train_loss": 1.0, "curvature": curvature(8.0, {"1": 2.0}, None)}])
    points = common.read_tracked(common.Input("a", tracked))
    assert [(p.round, p.global_lambda_max, p.client_lambda_max, p.flatness_distance) for p in points] == [
        (5, 10.0, {3: 4.0, 7: 6.0}, 0.5), (10, 8.0, {1: 2.0}, None)]
    panel = fig04_client_lambda_max.collect([common.Input("A", tracked)])["A"]
    assert dict(panel.clients) == {3: [(5, 4.0)], 7: [(5, 6.0)], 1: [(10, 2.0)]}
    assert panel.global_model == [(5, 10.0), (10, 8.0)]
    for name in ("fig04", "l26"):
        png = tmp_path / f"{name}.png"
        code, _, _ = run(["figures", name, f"FedAvg={tracked}", "--out", png, png.with_suffix(".pdf")], capsys)
        assert code == 0
        assert_picture(png)
        assert_picture(png.with_suffix(".pdf"))


def test_fig10_curves_and_one_panel_per_data_set(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", "cifar10", [{"round": 1, "test_acc": 0.25}, {"round": 2, "train_loss": 1.0},
                                            {"round": 3, "test_acc": 0.5, "swa_test_acc": 0.625}])
    b = fake_run(tmp_path / "b", "cifar100", [{"round": 2, "test_acc": 0.125}])
    curves = common.by_label(common.parse_inputs([f"A={a}", f"B={b}"]), fig10_convergence.read_curve)
    assert curves["A"].test == [(1, 0.25), (3, 0.5)] and curves["A"].swa == [(3, 0.625)]
    assert curves["B"].dataset == "cifar100" and curves["B"].swa == []
    assert [ax.get_title() for ax in fig10_convergence.draw(curves).axes] == ["cifar10", "cifar100"]


# -- the command ------------------------------------------------------------------------------------


def test_list_names_every_script_and_all(capsys: pytest.CaptureFixture[str]) -> None:
    from landscape import figures

    code, out, _ = run(["figures", "--list"], capsys)
    assert code == 0 and out == run(["figures"], capsys)[1]
    for name in (*figures.SCRIPTS, "all"):
        assert f"\n{name} " in f"\n{out}" and figures.summary(figures.load(name)) in out


def bad_inputs(tmp: Path) -> list[tuple[list[Any], str]]:
    untracked = fake_run(tmp / "untracked", "digits", [{"round": 1, "test_acc": 0.5}])
    (tmp / "file").write_text("x")
    return [
        (["figures", "all", "--out", tmp / "o"], "one of the arguments --quick --paper is required"),
        (["figures", "all", "--quick", "--out", tmp / "o", "--only", "fig99"], "no figure or table named fig99"),
        (["figures", "all", "--quick", "--out", tmp / "file"], "--out"),
        (["figures", "all", "--paper", "--out", tmp / "o", "--data-dir", tmp / "nodata"], "cifar"),
        (["figures", "fig03", "--quick", f"a={untracked}"], "makes the inputs and names the outputs itself"),
        (["figures", "fig03", "--quick", "--out", tmp / "x.png"], "drop --out"),
        (["figures", "fig10", "--work", tmp / "o"], "--work only applies with --quick or --paper"),
        (["figures", "fig03"], "no inputs"),
        (["figures", "fig10", f"a={tmp}"], "not a run folder"),
        (["figures", "fig10", f"a={untracked}", f"a={untracked}"], "the label 'a' names 2 inputs"),
        (["figures", "l26", untracked], "holds no tracked curvature: train the run with --track-every K"),
        (["figures", "fig04", untracked], "holds no tracked curvature"),
        (["figures", "fig07", f"a={tmp / 'file'}"], "not a run folder"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_inputs_are_one_line_and_make_nothing(case: int, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv, match = bad_inputs(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(argv, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and match.lower() in err.lower(), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and "$ landscape" not in out
