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
    """The positional ``LABEL=PATH ...`` argument, with ``what`` saying which files, and the
    options that make the inputs instead (:func:`add_make_args`)."""
    parser.add_argument("inputs", nargs="*", metavar="LABEL=PATH",
                        help=f"{what}, as LABEL=PATH or PATH (labelled by its name); PATH may be a glob "
                        "pattern such as 'fedavg=dir/*.json' (quote it); none with --quick or --paper")
    add_make_args(parser)


def add_make_args(parser: argparse.ArgumentParser) -> None:
    """``--quick`` / ``--paper`` / ``--work``: make the inputs (train, analyse) before drawing."""
    from landscape.figures import make

    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="make the inputs first: train (or reuse) tiny digits runs on the CPU and compute their "
                      "results, then draw; a minute or two (the same as `landscape figures all --quick --only NAME`)")
    mode.add_argument("--paper", action="store_const", const="paper", dest="mode",
                      help="make the inputs on the papers' presets instead: CIFAR from --data-dir, on the GPU "
                      "(days of training)")
    parser.add_argument("--work", metavar="DIR", help="with --quick/--paper: the folder of the runs, results, "
                        f"outputs and {make.MANIFEST} (default: {make.DEFAULT_OUT['quick']} or "
                        f"{make.DEFAULT_OUT['paper']})")
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding CIFAR in its python format (for --paper, "
                        "and for run folders on CIFAR)")
    parser.add_argument("--device", default=None, help="where models run (with --quick/--paper, and in the scripts "
                        "that evaluate models): cpu, cuda or cuda:N (default: cpu with --quick, else cuda when "
                        "available)")


def made(args: argparse.Namespace, module: str) -> int | None:
    """With ``--quick`` / ``--paper``: make this script's outputs (:mod:`landscape.figures.make`) and
    return the exit status; None when the inputs were given.

    Raises:
        LandscapeError: inputs given together with a mode, no inputs without one, or ``--work``
            without a mode.
    """
    from landscape.figures import SCRIPTS, make

    name = next(n for n, m in SCRIPTS.items() if f"landscape.figures.{m}" == module)
    given = [a for a in ("inputs", "plane") if getattr(args, a, None)]
    named = [f"--{a}" for a in ("out", "html") if getattr(args, a, None) is not None]
    if args.mode is None:
        if args.work is not None:
            raise LandscapeError("--work only applies with --quick or --paper", fix="add one, or drop --work")
        if not given:
            raise LandscapeError(f"no inputs (landscape figures {name})",
                                 fix="give result files as LABEL=PATH, or pass --quick to make them")
        return None
    if given or named:
        dropped = " and ".join(named + ["the inputs"] * bool(given))
        raise LandscapeError(f"--{args.mode} makes the inputs and names the outputs itself (landscape figures "
                             f"{name})", fix=f"drop {dropped}, or drop --{args.mode}")
    return make.make(args.mode, [name], work=args.work, data_dir=args.data_dir, device=args.device, out_flag="--work")


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


def add_image_outputs(parser: argparse.ArgumentParser, stem: str) -> None:
    """``--out IMAGE [IMAGE ...]``: the figure in every format named (default: ``stem`` as PNG and vector PDF)."""
    parser.add_argument("--out", nargs="+", metavar="IMAGE",
                        help=f"image files, each .png, .pdf or .svg (default: {stem}.png {stem}.pdf)")


def image_outputs(outs: Sequence[str] | None, stem: str, inputs: Sequence[Input] = ()) -> list[Path]:
    """The ``--out`` images (default: ``stem`` .png and .pdf), checked before any work.

    Raises:
        LandscapeError: a suffix other than .png, .pdf, .svg; an output that is an input; two on one file.
    """
    from landscape.plots import IMAGE_SUFFIXES

    paths = [Path(p) for p in (outs or [f"{stem}.png", f"{stem}.pdf"])]
    for path in paths:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise LandscapeError(f"--out {path}: use a file ending in {', '.join(IMAGE_SUFFIXES)}")
    check_outputs({f"--out {p}": (p, list(IMAGE_SUFFIXES)) for p in paths}, [item.path for item in inputs])
    return paths


def save_images(fig: Any, paths: Sequence[Path]) -> list[Path]:
    """Write ``fig`` to every path, its format by suffix (inside the caller's :func:`~landscape.files.writing`)."""
    from landscape.plots import static

    return [static.save_figure(fig, path) for path in paths]


def figure_main(argv: Sequence[str] | None, prog: str | None, doc: str, module: str, what: str, stem: str,
                figure: Callable[[list[Input], argparse.Namespace], Any],
                options: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The command line of a script that draws one figure from ``LABEL=PATH`` inputs.

    Args:
        doc, module: the script's docstring (its ``--help``) and module name.
        what: which files the inputs are; ``stem``: the default image name.
        figure: ``figure(inputs, args) -> matplotlib Figure``.
        options: adds the script's own options to the parser.
    """
    parser = make_parser(doc, prog)
    add_inputs(parser, what)
    add_image_outputs(parser, stem)
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    code = made(args, module)
    if code is not None:
        return code
    inputs = parse_inputs(args.inputs)
    outs = image_outputs(args.out, stem, inputs)
    fig = figure(inputs, args)
    with writing(*outs):
        written = save_images(fig, outs)
    for path in written:
        print(f"wrote {path}")
    return 0


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


def by_label(inputs: Sequence[Input], read: Callable[[Input], Any]) -> dict[str, Any]:
    """``read(item)`` of every input, by label, for scripts that draw one thing per label.

    Raises:
        LandscapeError: a label given to more than one input (e.g. by a glob pattern).
    """
    labels = [item.label for item in inputs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise LandscapeError(f"the label {twice[0]!r} names {labels.count(twice[0])} inputs",
                             fix="give each run its own LABEL=PATH")
    return {item.label: read(item) for item in inputs}


@dataclass(frozen=True)
class Tracked:
    """The curvature ``landscape train --track-every K`` logged at one round (``curvature`` in
    metrics.jsonl); ``flatness_distance`` is None in records that do not hold it."""

    round: int
    global_lambda_max: float
    client_lambda_max: dict[int, float]
    flatness_distance: float | None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_tracked(item: Input) -> list[Tracked]:
    """The tracked curvature of a run folder, by round.

    Raises:
        LandscapeError: not a run folder, no ``curvature`` record, or one without its numbers.
    """
    from landscape.run_folder import RunFolder

    run = RunFolder(item.path)
    if not run.is_run():
        raise LandscapeError(f"{item.label}: {item.path} is not a run folder of `landscape train` (no config.json)")
    tracked = []
    for record in run.metrics():
        c = record.get("curvature")
        if not isinstance(c, dict):
            continue
        clients, distance = c.get("client_lambda_max"), c.get("flatness_distance")
        if not (_is_number(c.get("global_lambda_max")) and isinstance(clients, dict)
                and all(str(k).isdigit() and _is_number(v) for k, v in clients.items())
                and (distance is None or _is_number(distance))):
            raise LandscapeError(f"{item.label}: the curvature of round {record['round']} in {run.metrics_file} lacks "
                                 "a number global_lambda_max or client_lambda_max {client id: number}")
        tracked.append(Tracked(record["round"], float(c["global_lambda_max"]),
                               {int(k): float(v) for k, v in clients.items()},
                               None if distance is None else float(distance)))
    if not tracked:
        raise LandscapeError(f"{item.label}: {run.metrics_file} holds no tracked curvature",
                             fix="train the run with --track-every K")
    return tracked


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


def panel_grid(count: int, max_columns: int) -> tuple[Any, Any, int]:
    """A figure of ``count`` panels with a shared y axis, at most ``max_columns`` a row:
    ``(figure, flat array of axes, columns)``; finish it with :func:`finish_panels`."""
    from matplotlib.figure import Figure

    columns = min(count, max_columns)
    rows = -(-count // columns)
    fig = Figure(figsize=(4.5 * columns, 3.6 * rows), layout="constrained")
    return fig, fig.subplots(rows, columns, sharey=True, squeeze=False).ravel(), columns


def finish_panels(fig: Any, axes: Any, count: int, columns: int, ylabel: str, title: str) -> Any:
    """Legends where a panel has labelled lines, the unused panels hidden, ``ylabel`` on the
    first column, ``title`` above; returns the figure."""
    for ax in axes[:count]:
        ax.set_xlabel("round")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    for ax in axes[count:]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    return fig

