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


DOCTESTED = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for folder in ("landscape", "train", "figures")
    for path in (ROOT / folder).rglob("*.py")
    if ">>>" in path.read_text()
)


def test_the_docstring_examples_are_found():
    assert {"landscape.data", "landscape.trace", "train.augment", "figures.common"} <= set(DOCTESTED)


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples(name: str):
    outcome = doctest.testmod(importlib.import_module(name))
    assert outcome.attempted > 0 and outcome.failed == 0
