"""The README's "your own model" examples run as written (and say what they claim)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def own_model_examples() -> list[str]:
    section = README.read_text().split("## Your own model, loss and batches", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_there_are_three_examples():
    assert len(own_model_examples()) == 3


@pytest.mark.parametrize("index", range(3))
def test_each_example_runs(index, capsys):
    exec(compile(own_model_examples()[index], f"README example {index + 1}", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert printed.strip(), "the example prints its results"
