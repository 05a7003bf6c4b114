"""The project's own files: citation metadata, packaging, CI script and README agree."""

import doctest
import importlib
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_citation_cff_is_valid_cff_1_2_0():
    # The schema is the official CFF 1.2.0 JSON schema, vendored so the test runs offline.
    schema = json.loads((ROOT / "tests" / "data" / "cff-schema-1.2.0.json").read_text())
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    jsonschema.validate(cff, schema)
    titles = " ".join(ref["title"] for ref in cff["references"])
    for needle in ("Flat Minima", "FedNSAM", "PyHessian", "Visualizing the Loss Landscape"):
        assert needle in titles


def test_citation_validation_would_catch_errors():
    schema = json.loads((ROOT / "tests" / "data" / "cff-schema-1.2.0.json").read_text())
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    del cff["authors"]
    try:
        jsonschema.validate(cff, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("a CFF file without authors validated")


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci.splitlines()
    # torch (CPU build) is installed before the project, so pip never pulls a CUDA build.
    assert test_command.index("torch==2.13.0") < test_command.index("-e '.[test]'") < test_command.index("pytest")


def test_pyproject_declares_the_console_script_and_a_torch_range_2_13_satisfies():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["landscape"] == "landscape.cli:main"
    torch_req = next(d for d in meta["dependencies"] if d.startswith("torch"))
    lo, hi = re.search(r">=([\d.]+),<([\d.]+)", torch_req).groups()
    assert tuple(map(int, lo.split("."))) <= (2, 13) < tuple(map(int, hi.split(".")))
    for dep in ("numpy", "scipy", "matplotlib", "plotly", "scikit-learn", "tqdm"):
        assert any(d.startswith(dep) for d in meta["dependencies"]), dep
    assert any(d.startswith("pyhessian") for d in meta["optional-dependencies"]["test"])


#: Folder -> the import name it installs under (pyproject's package-dir).
PACKAGES = {"landscape": "landscape", "train": "landscape.train", "figures": "landscape.figures"}
DOCTESTED = sorted(
    ".".join([PACKAGES[folder], *path.relative_to(ROOT / folder).with_suffix("").parts]).removesuffix(".__init__")
    for folder in PACKAGES
    for path in (ROOT / folder).rglob("*.py")
    if ">>>" in path.read_text()
)


def test_the_docstring_examples_are_found():
    assert {"landscape.data", "landscape.trace", "landscape.train.augment", "landscape.figures.common"} <= set(DOCTESTED)


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples(name: str):
    outcome = doctest.testmod(importlib.import_module(name))
    assert outcome.attempted > 0 and outcome.failed == 0


def test_commands_run_from_a_folder_holding_a_train_py_and_a_figures_py(tmp_path):
    """Our import names are our own: a user's train.py / figures.py (here: ones that raise on
    import) neither shadow nor are shadowed by what landscape installs."""
    import subprocess
    import sys

    for name in ("train", "figures"):
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('the user\\'s own {name}.py was imported')\n")
    runs = [
        [sys.executable, "-m", "landscape", "train", "--dataset", "digits", "--rounds", "1", "--clients-per-round",
         "2", "--eval-every", "0", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run")],
        [sys.executable, "-m", "landscape", "figures"],
        [sys.executable, "-c", "import landscape.train.run, landscape.figures.common"],
    ]
    for argv in runs:
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (argv, done.stderr[-800:])
        assert "own" not in done.stderr
    # --dataset digits without --model picked the model that fits the data.
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["model"] == "mlp"
