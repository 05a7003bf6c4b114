"""Every figure and table in one command: train the runs they need, compute their results, draw them.

::

    landscape figures all --quick --out figs                   # digits on the CPU: a minute or two
    landscape figures all --paper --data-dir ~/data --out paper  # the papers' presets: CIFAR, GPU, days
    landscape figures all --quick --out figs --only fig03,table2
    landscape figures all --paper --data-dir ~/data --dry-run  # what it would train and run

Each figure script says what it draws from with ``outputs(plan) -> [Output]``: the runs of
:mod:`landscape.figures.runs`, the ``landscape`` commands that compute its result files, and its
own arguments. The runs are trained into ``RUNS/NAME`` (default ``OUT/runs``) through ``landscape
train``, or reused: a run folder whose ``config.json`` holds the same resolved config is kept
(continued with ``--resume`` if it stopped early); one holding another config is an error, never
overwritten. The results go to ``OUT/results/``, figures (PNG and vector PDF) and tables (Markdown
and CSV) to ``OUT/``. ``OUT/manifest.json`` lists every output with the commands that made it, run
from ``OUT``: ``{"version": 1, "mode": "quick", "runs": {NAME: run}, "outputs": {NAME: output}}``
(:func:`manifest_entry`); a later call with ``--only`` updates its entries.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.errors import LandscapeError
from landscape.figures.runs import MODES, RunSpec
from landscape.run_folder import RunFolder

MANIFEST = "manifest.json"
DEFAULT_OUT = {"quick": "figures-quick", "paper": "figures-paper"}
#: The manifest's layout version.
MANIFEST_VERSION = 1
#: Flags of the analysis commands by mode: a quick 5 x 5 surface on 300 samples; [C22]'s 21 x 21 [C22 §3.2]
#: with batches that fit a GPU.
ANALYSIS = {"quick": {"surface": ("--resolution", "5", "--num-samples", "300"), "batches": ()},
            "paper": {"surface": ("--resolution", "21"), "batches": ("--batch-size", "1000")}}


@dataclass(frozen=True)
class Labeled:
    """A ``LABEL=PATH`` argument of a figure script."""

    label: str
    path: Path


#: A command-line argument: a word, a path, or a labelled path (paths are written relative to OUT).
Arg = str | Path | Labeled


@dataclass(frozen=True)
class Output:
    """One figure or table: what it is drawn from and the files it writes.

    Attributes:
        name: its name in the manifest (``fig03``, ``fig11``, ...).
        script: the figure script that draws it (a name of :data:`landscape.figures.SCRIPTS`).
        runs: the runs it reads, trained (or reused) first.
        steps: the ``landscape`` commands (without the word ``landscape``) that compute its inputs.
        args: the figure script's arguments.
        files: the files it writes.
        title: what it shows (default: the first line of the script's docstring).
    """

    name: str
    script: str
    runs: tuple[RunSpec, ...]
    steps: tuple[tuple[Arg, ...], ...]
    args: tuple[Arg, ...]
    files: tuple[Path, ...]
    title: str = ""


@dataclass(frozen=True)
class Plan:
    """Where a mode's runs, results and outputs go, and the compute flags of its commands."""

    mode: str
    out: Path
    runs: Path
    device: str | None
    data_dir: str | None

    def run(self, spec: RunSpec) -> Path:
        return self.runs / spec.name

    def final(self, spec: RunSpec) -> Path:
        """The global checkpoint of the run's last round."""
        return RunFolder(self.run(spec)).global_checkpoint(spec.config().num_rounds)

    def swa(self, spec: RunSpec) -> Path:
        return RunFolder(self.run(spec)).swa_checkpoint

    def clients(self, spec: RunSpec) -> list[Path]:
        """The client checkpoints of the run's last round: its cohort, drawn as training draws it."""
        from landscape.train.engine import sample_cohort

        cfg = spec.config()
        cohort = sample_cohort(cfg.seed, cfg.num_rounds - 1, cfg.num_clients, cfg.clients_per_round,
                               cfg.cohort_sampling)
        return [RunFolder(self.run(spec)).client_checkpoint(cfg.num_rounds, k) for k in cohort]

    def result(self, name: str) -> Path:
        return self.out / "results" / name

    def files(self, stem: str, suffixes: Sequence[str] = (".png", ".pdf")) -> tuple[Path, ...]:
        return tuple(self.out / f"{stem}{s}" for s in suffixes)

    def compute(self) -> tuple[str, ...]:
        """``--device`` (cpu in quick mode unless named) and ``--data-dir``, as given."""
        device = self.device or ("cpu" if self.mode == "quick" else None)
        return (*(("--device", device) if device else ()), *(("--data-dir", self.data_dir) if self.data_dir else ()))

    def hessian(self, spec: RunSpec, swa: bool = False) -> tuple[tuple[Arg, ...], Path]:
        """The command computing the top 5 eigenvalues and the spectral density of a run's last global
        (or SWA) model ([C22] Table 1 and Fig. 5), and its result file."""
        result = self.result(f"hessian_{spec.name}{'_swa' if swa else ''}.json")
        return ("hessian", self.swa(spec) if swa else self.final(spec), "--top-k", "5", "--density", "--out", result,
                *ANALYSIS[self.mode]["batches"], *self.compute()), result

    def surface(self) -> tuple[str, ...]:
        """The grid and compute flags of ``landscape surface`` and ``landscape plane``."""
        return (*ANALYSIS[self.mode]["surface"], *ANALYSIS[self.mode]["batches"], *self.compute())


def render(argv: Sequence[Arg], base: Path | None = None) -> list[str]:
    """The words of a command; paths relative to ``base`` (as the manifest writes them) when given.

    >>> render(["hessian", Path("o/runs/a.pt"), Labeled("FedAvg", Path("o/r.json"))], Path("o"))
    ['hessian', 'runs/a.pt', 'FedAvg=r.json']
    """
    def path(p: Path) -> str:
        return os.path.relpath(p, base) if base is not None else str(p)

    return [f"{a.label}={path(a.path)}" if isinstance(a, Labeled) else path(a) if isinstance(a, Path) else a
            for a in argv]


def landscape(argv: Sequence[str]) -> None:
    """Print and run one ``landscape`` command in this process.

    Raises:
        LandscapeError: the command's own error, naming the command.
    """
    from landscape.cli import parse

    print(f"\n$ landscape {shlex.join(argv)}", flush=True)
    try:
        args = parse(argv)
        code = args.run(args)
    except LandscapeError as exc:
        raise LandscapeError(f"{exc}", where=f"in `landscape {shlex.join(argv)}`") from None
    if code:
        raise LandscapeError(f"`landscape {shlex.join(argv)}` failed with exit status {code}")


def run_status(spec: RunSpec, path: Path, data_dir: str | None) -> str:
    """``train`` (no run yet), ``resume`` (this config, stopped early) or ``reuse`` (this config, finished).

    The config is resolved against the data as training resolves it (clients, model kwargs), so
    this also checks that the data is there before anything is trained.

    Raises:
        LandscapeError: the data is missing, or the folder holds a run of another config.
    """
    from landscape.train.config import TrainConfig
    from landscape.train.folder import config_difference, read_config
    from landscape.train.run import load_federation

    cfg, _ = load_federation(spec.config(), data_dir)
    run = RunFolder(path)
    if not run.is_run():
        return "train"
    diff = config_difference(TrainConfig.from_dict(read_config(path)), cfg)
    if diff:
        raise LandscapeError(f"{path} holds a run of another config than run '{spec.name}' ({'; '.join(diff[:3])})",
                             fix="remove that folder, or pass another --runs")
    done = run.global_checkpoint(cfg.num_rounds).is_file() and any(
        r["round"] == cfg.num_rounds for r in run.metrics())
    return "reuse" if done else "resume"


def collect(plan: Plan, names: Sequence[str]) -> list[Output]:
    """The outputs of every figure script, or those named.

    Raises:
        LandscapeError: a name that is none of them.
    """
    from landscape import figures

    every = [o for script in figures.SCRIPTS for o in figures.load(script).outputs(plan)]
    unknown = [n for n in names if n not in {o.name for o in every}]
    if unknown:
        raise LandscapeError(f"no figure or table named {', '.join(unknown)}", where="--only",
                             fix=f"choose among {', '.join(o.name for o in every)}")
    return [o for o in every if not names or o.name in names]


def make(mode: str, names: Sequence[str] = (), *, work: str | None = None, runs: str | None = None,
         data_dir: str | None = None, device: str | None = None, dry_run: bool = False,
         out_flag: str = "--out") -> int:
    """Train, compute and draw the outputs ``names`` (all when empty) of ``mode``; see the module docstring.

    ``work`` is the output folder (the flag ``out_flag`` names it in messages), ``runs`` the runs folder.

    Raises:
        LandscapeError: anything the runs' configs or data refuse (before any training), a run
            folder of another config, a failing command.
    """
    from landscape.files import check_writable_folder, write_json
    from landscape.operators import resolve_device

    if device is not None:
        resolve_device(device)  # an unknown or absent device is refused before anything runs
    out = Path(work or DEFAULT_OUT[mode])
    plan = Plan(mode, out, Path(runs) if runs else out / "runs", device,
                str(Path(data_dir).expanduser().resolve()) if data_dir else None)
    outputs = collect(plan, names)
    for folder, flag in ((out, out_flag), (plan.runs, "--runs")):
        if folder.exists() and not folder.is_dir():
            raise LandscapeError(f"{flag} {folder} is a file", fix="give a folder")
        check_writable_folder(folder, flag)
    # Every run's config resolved against its data before anything is trained.
    specs = {s.name: s for o in outputs for s in o.runs}
    status = {name: run_status(spec, plan.run(spec), plan.data_dir) for name, spec in specs.items()}
    manifest = read_manifest(out, mode)
    if dry_run:
        for name, spec in specs.items():
            print(f"{status[name]:<7} landscape {shlex.join(render([*spec.argv(), '--out', plan.run(spec)]))}")
    with threads(plan):
        if not dry_run:
            train_runs(plan, specs, status, manifest["runs"])
            print("\nruns: " + ", ".join(f"{n} {manifest['runs'][n]['status']}" for n in specs))
        done: set[tuple[str, ...]] = set()  # a result file two outputs read is computed once
        for o in outputs:
            start = time.perf_counter()
            for argv in (*o.steps, ("figures", o.script, *o.args)):
                words = tuple(render(argv))
                if words in done:
                    continue
                done.add(words)
                if dry_run:
                    print(f"{o.name:<7} landscape {shlex.join(words)}")
                else:
                    landscape(words)
            if not dry_run:
                manifest["outputs"][o.name] = manifest_entry(o, out, time.perf_counter() - start)
                write_json(out / MANIFEST, manifest)
    if not dry_run:
        print(f"\nwrote {out / MANIFEST}: {len(manifest['outputs'])} figures and tables; their commands run from {out}")
    return 0


@contextlib.contextmanager
def threads(plan: Plan) -> Iterator[None]:
    """One intra-op thread for the quick mode's tiny models on the CPU, the previous count after.

    More threads only contend on so little work: on a loaded 2-core machine ``fig05 --quick``
    took 52 s with torch's default of 2 threads and 21 s with 1.
    """
    import torch

    before = torch.get_num_threads()
    if plan.mode == "quick" and plan.device in (None, "cpu"):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_runs(plan: Plan, specs: dict[str, RunSpec], status: dict[str, str], entries: dict[str, Any]) -> None:
    """Train (or continue) the runs that need it; record each in the manifest's ``runs``."""
    for name, spec in specs.items():
        command = [*spec.argv(), "--out", plan.run(spec), *plan.compute()]
        entry = {**entries.get(name, {}), "path": render([plan.run(spec)], plan.out)[0],
                 "command": command_line(command, plan.out),
                 "status": {"train": "trained", "resume": "resumed", "reuse": "reused"}[status[name]]}
        if status[name] != "reuse":
            start = time.perf_counter()
            landscape(render([*command, *(["--resume"] if status[name] == "resume" else [])]))
            entry["seconds"] = round(time.perf_counter() - start, 2)
        entries[name] = entry


def command_line(argv: Sequence[Arg], out: Path) -> str:
    """A command as the manifest writes it: ``landscape ...`` run from ``out``."""
    return "landscape " + shlex.join(render(argv, out))


def manifest_entry(o: Output, out: Path, seconds: float) -> dict[str, Any]:
    """One output in ``manifest.json``::

        {"script": "fig03", "title": "[C22] Fig. 3: ...",
         "files": ["fig03_client_accuracy.png", "fig03_client_accuracy.pdf"],
         "command": "landscape figures fig03 'FedAvg, alpha=0=runs/fedavg-a0' ... --out fig03_...png ...",
         "steps": ["landscape hessian runs/.../global_r000030.pt --top-k 5 --out results/...json ..."],
         "runs": ["fedavg-a0", ...], "seconds": 2.1}

    Paths are relative to the manifest's folder, from which every command runs; ``steps`` make the
    result files the command reads, ``runs`` name entries of the manifest's ``runs`` (each with
    its ``path``, its ``landscape train`` command, whether it was trained, resumed or reused, and
    the seconds its last training took); ``seconds`` is the time of the steps and the drawing.
    """
    from landscape import figures

    return {"script": o.script, "title": o.title or figures.summary(figures.load(o.script)),
            "files": render(o.files, out), "command": command_line(("figures", o.script, *o.args), out),
            "steps": [command_line(s, out) for s in o.steps], "runs": [s.name for s in o.runs],
            "seconds": round(seconds, 2)}


def read_manifest(out: Path, mode: str) -> dict[str, Any]:
    """The manifest in ``out`` to update, or a new one.

    Raises:
        LandscapeError: a manifest of the other mode, or one that is not a manifest.
    """
    from landscape.figures.common import read_json

    path = out / MANIFEST
    if not path.exists():
        return {"version": MANIFEST_VERSION, "mode": mode, "runs": {}, "outputs": {}}
    manifest = read_json(path)
    if not (isinstance(manifest.get("runs"), dict) and isinstance(manifest.get("outputs"), dict)):
        raise LandscapeError(f"{path} is not a manifest of `landscape figures all`",
                             fix="remove it or choose another --out")
    if manifest.get("mode") != mode:
        raise LandscapeError(f"{out} holds the outputs of --{manifest.get('mode')}", fix="choose another --out")
    return manifest


def names(text: str) -> list[str]:
    """argparse type of ``--only``: a comma-separated list of at least one name."""
    import argparse

    listed = [n.strip() for n in text.split(",") if n.strip()]
    if not listed:
        raise argparse.ArgumentTypeError(f"names no figure or table: {text!r}")
    return listed


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Make the figures and tables; see the module docstring."""
    from landscape.figures import common

    parser = common.make_parser(__doc__, prog)
    mode = parser.add_mutually_exclusive_group(required=True)
    for name, what in zip(MODES, ("tiny digits runs on the CPU (a minute or two)",
                                  "the papers' presets: CIFAR from --data-dir, on the GPU (days)")):
        mode.add_argument(f"--{name}", action="store_const", const=name, dest="mode", help=what)
    parser.add_argument("--out", metavar="DIR", help="folder of the outputs, results/ and manifest.json "
                        f"(default: {DEFAULT_OUT['quick']} or {DEFAULT_OUT['paper']})")
    parser.add_argument("--runs", metavar="DIR",
                        help="folder of the run folders, reused across calls (default: OUT/runs)")
    parser.add_argument("--only", metavar="NAMES", type=names, default=[],
                        help="comma-separated figure scripts or outputs, e.g. fig03,fig11,table2 (default: all)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding CIFAR in its python format (for --paper)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu with --quick, else cuda when available)")
    parser.add_argument("--dry-run", action="store_true", help="print which runs would be trained or reused and "
                        "every command, and stop")
    args = parser.parse_args(argv)
    return make(args.mode, args.only, work=args.out, runs=args.runs, data_dir=args.data_dir, device=args.device,
                dry_run=args.dry_run)


if __name__ == "__main__":
    from landscape.figures.common import run_script

    run_script(main)
