"""`landscape demo` runs end to end on tiny settings and writes every promised file."""

import json

from landscape.cli import main


def test_demo_runs_every_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rounds", "2", "--resolution", "3", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    for command in ("landscape train", "landscape hessian", "landscape surface", "landscape flatness",
                    "landscape plane", "landscape figures fig01", "landscape figures table1"):
        assert f"$ {command}" in stdout, command
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"fedavg", "fedsam", "fedasam"}
    for algo, row in summary.items():
        hess = json.loads((out / f"hessian_{algo}.json").read_text())
        assert row["lambda_max"] == hess["eigenvalues"][0] > 0
        assert 0 <= row["test_accuracy"] <= 1
    for name in ("surfaces.html", "plane.html", "plane.png", "fig01_surfaces.png", "table1_hessian.md"):
        assert (out / name).stat().st_size > 0, name
    # A second run continues the finished runs instead of failing or retraining.
    assert main(["demo", "--out", str(out), "--rounds", "2", "--resolution", "3", "--device", "cpu"]) == 0
