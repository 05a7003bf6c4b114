"""`landscape demo` runs end to end on tiny settings and writes every promised file."""

import json
import math
import re
from pathlib import Path

from landscape.cli import demo, main


def test_demo_runs_every_step(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--rounds", "10", "--resolution", "3", "--device", "cpu"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    for command in ("landscape train", "landscape hessian", "landscape surface", "landscape flatness",
                    "landscape plane", "landscape figures fig01", "landscape figures table1",
                    "landscape figures l26"):
        assert f"$ {command}" in stdout, command
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["settings"]) == set(demo.SETTINGS)
    for setting, rows in summary["settings"].items():
        assert set(rows) == set(demo.ALGORITHMS)
        for name, row in rows.items():
            for key, _, _ in demo.COLUMNS:  # a finite value in every cell
                assert isinstance(row[key], float) and math.isfinite(row[key]), (setting, name, key)
            hess = json.loads((out / f"hessian_{setting}_{name.replace('+', '_')}.json").read_text())
            assert row["lambda_max"] == hess["eigenvalues"][0] > 0
            assert 0 <= row["test_accuracy"] <= 1
            tracked = [m for m in (out / row["run"] / "metrics.jsonl").read_text().splitlines() if "curvature" in m]
            assert len(tracked) == 1  # round 10 of 10, --track-every 10
    page = (out / "index.html").read_text()
    links = re.findall(r"(?:href|src)='([^']+)'", page)
    assert len(links) > 40
    for link in links:  # every link on the page resolves to a non-empty file
        assert (out / link).is_file() and (out / link).stat().st_size > 0, link
    for name in ("surfaces.html", "plane_heterogeneous.html", "plane_homogeneous.png", "fig01_surfaces.png",
                 "table1_heterogeneous.md", "curvature_heterogeneous.png", "curvature_homogeneous.png",
                 "summary.md"):
        assert f"'{name}'" in page or name == "summary.md", name
        assert (out / name).stat().st_size > 0, name
    assert "| fednsam |" in (out / "summary.md").read_text()
    # A second run continues the finished runs instead of failing or retraining.
    assert main(argv) == 0
