"""What the figure scripts share: ``LABEL=PATH`` inputs, reading result files, writing tables.

Inputs are given on the command line as ``LABEL=PATH`` (``fedavg=h_fedavg.json``) or as a
bare ``PATH`` (labelled by its file name without suffix). ``PATH`` may be a glob pattern
(``fedavg=hess/r*_c*.json``), expanded here in sorted order because a shell does not expand a
pattern that follows ``LABEL=``; every match gets the label. Every problem with an input is a
one-line :class:`~landscape.errors.LandscapeError` that names the input.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.cli import Parser, describe
from landscape.errors import LandscapeError
from landscape.files import atomic_write, check_outputs, writing

#: A table cell: a number, a text, or None for "no value" (``-`` in Markdown, empty in CSV).
Cell = float | int | str | None


@dataclass(frozen=True)
class Input:
    """One input file (or folder) and the label it is drawn or tabulated under."""

    label: str
    path: Path


def make_parser(doc: str, prog: str | None) -> argparse.ArgumentParser:
    """A script's parser: ``--help`` shows its whole docstring; a bad flag is one ``error:`` line (exit 2)."""
    return Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_inputs(parser: argparse.ArgumentParser, what: str) -> None:
    """The positional ``LABEL=PATH ...`` argument, with ``what`` saying which files."""
    parser.add_argument("inputs", nargs="+", metavar="LABEL=PATH",
                        help=f"{what}, as LABEL=PATH or PATH (labelled by its name); PATH may be a glob "
                        "pattern such as 'fedavg=dir/*.json' (quote it)")


def _matches(pattern: str) -> list[Path]:
    """The paths a pattern names: the sorted glob matches, or the path itself if it exists."""
    pattern = os.path.expanduser(pattern)
    if glob.has_magic(pattern):
        return [Path(p) for p in sorted(glob.glob(pattern))]
    return [Path(pattern)] if Path(pattern).exists() else []


def parse_inputs(specs: Sequence[str]) -> list[Input]:
    """Split ``LABEL=PATH`` specs, expand glob patterns and check that every path exists.

    A spec that names an existing path is a path even if it contains ``=``; otherwise it is
    split at the first ``=`` after which an existing path (or a matching pattern) follows, so
    labels may contain ``=`` themselves (``alpha=0=h.json`` is ``h.json`` labelled ``alpha=0``).

    >>> parse_inputs(["."])[0].path
    PosixPath('.')

    Raises:
        LandscapeError: a spec without a label and path, a pattern matching nothing, a missing path.
    """
    inputs = []
    for spec in specs:
        splits = [(None, spec)] + [(spec[:i], spec[i + 1:]) for i, c in enumerate(spec) if c == "="]
        found = next(((label, paths) for label, pattern in splits
                      if label != "" and pattern and (paths := _matches(pattern))), None)
        if found is None:
            label, pattern = splits[min(1, len(splits) - 1)]
            if label == "" or pattern == "":
                raise LandscapeError(f"bad input '{spec}': write LABEL=PATH, e.g. fedavg=hessian_fedavg.json")
            missing = "no file matches" if glob.has_magic(pattern) else "file not found:"
            raise LandscapeError(f"{missing} {pattern} (input '{spec}')")
        label, paths = found
        inputs.extend(Input(label if label is not None else p.stem, p) for p in paths)
    return inputs


def check_suffix(path: str | os.PathLike, suffixes: Sequence[str], flag: str,
                 inputs: Sequence[Input] = (), also: Sequence[str] = ()) -> Path:
    """``path`` as a Path if it ends in one of ``suffixes`` and overwrites no input (checked before any work).

    Args:
        also: other suffixes written beside ``path`` (a table's ``.md`` and ``.csv``), checked too.

    Raises:
        LandscapeError: any other suffix, or an output that is one of ``inputs``.
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise LandscapeError(f"{flag} {path}: use a file ending in {', '.join(suffixes)}")
    written = {f"{flag} ({s})": (path.with_suffix(s), [s]) for s in also} if also else {flag: (path, list(suffixes))}
    check_outputs(written, [item.path for item in inputs])
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file.

    Raises:
        LandscapeError: unreadable file, invalid JSON, or not an object.
    """
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise LandscapeError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise LandscapeError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise LandscapeError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def checkpoint_of(result: dict[str, Any]) -> dict[str, Any]:
    """The ``metadata.checkpoint`` entry of a Hessian result (round, role, client_id, data), or {}."""
    entry = (result.get("metadata") or {}).get("checkpoint") if isinstance(result.get("metadata"), dict) else None
    if not isinstance(entry, dict):
        return {}
    data = entry.get("data") if isinstance(entry.get("data"), dict) else {}
    part = data.get("partition") if isinstance(data.get("partition"), dict) else {}
    return {**entry, "data": {**data, "partition": part}}


def format_cell(value: Cell) -> str:
    """A cell for Markdown: two decimals as in [C22]'s tables (3 significant digits below 1).

    >>> [format_cell(v) for v in (93.456, 0.012345, 0.0, 7, "fedavg", None, float("nan"))]
    ['93.46', '0.0123', '0', '7', 'fedavg', '-', 'nan']
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned).

    >>> print(markdown_table(["run", "acc"], [["a", 0.5]]))
    | run | acc |
    |---|--:|
    | a | 0.5 |
    """
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("--:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """The table as CSV with numbers at full precision (``repr``), None as an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if c is None else repr(c) if isinstance(c, float) else c for c in row] for row in rows])
    return buffer.getvalue()


def write_table(out: Path, header: Sequence[str], rows: Sequence[Sequence[Cell]], notes: str) -> list[Path]:
    """Write ``out`` with suffix ``.md`` (table and notes) and ``.csv`` (table only).

    Returns:
        The two paths written.
    """
    markdown, table = f"{markdown_table(header, rows)}\n\n{notes}\n", csv_text(header, rows)
    return [atomic_write(out.with_suffix(".md"), lambda tmp: tmp.write_text(markdown)),
            atomic_write(out.with_suffix(".csv"), lambda tmp: tmp.write_text(table))]


def run_script(main: Callable[[Sequence[str] | None, str | None], int]) -> None:
    """Run a script's ``main`` as a program: a LandscapeError is one ``error:`` line, exit status 2."""
    try:
        code = main(None, None)
    except Exception as exc:  # noqa: BLE001 - the CLI's one funnel words every failure
        print(f"error: {describe(exc, Path(sys.argv[0]).name)}", file=sys.stderr)
        code = 2
    sys.exit(code)


def report_table(header: Sequence[str], rows: Sequence[Sequence[Cell]], notes: str, out: Path | None,
                 warnings: Sequence[str] = ()) -> None:
    """Print the Markdown table, its notes and any warnings; with ``out``, also write it (.md and .csv)."""
    print(markdown_table(header, rows))
    print(f"\n{notes}")
    for line in warnings:
        print(line)
    if out is not None:
        with writing(out.with_suffix(".md"), out.with_suffix(".csv")):
            written = write_table(out, header, rows, notes)
        for path in written:
            print(f"wrote {path}")
