"""[C22] Fig. 10 and 11: test accuracy as rounds pass, with and without SWA and server momentum.

Inputs are run folders of ``landscape train``; the test accuracy logged every ``--eval-every``
rounds in ``metrics.jsonl`` is drawn as a solid line per run and, for a run with SWA, the SWA
model's accuracy as a dashed line of the same color. Runs on different data sets are drawn in
panels side by side (one per data set, as [C22] shows CIFAR-10 and CIFAR-100)::

    landscape train --preset c22-cifar100-a0-fedavgm --clients-per-round 20 --data-dir ~/data --out runs/fedavgm
    landscape train --preset c22-cifar100-a0-fedasam-swa --clients-per-round 20 --data-dir ~/data --out runs/fedasam-swa
    landscape figures fig10 FedAvgM=runs/fedavgm "FedASAM + SWA=runs/fedasam-swa" --out fig10.png

``landscape figures all`` makes Fig. 10 with it (alpha = 0, 20 clients per round: FedAvg,
FedAvgM, FedASAM and FedAvgM / FedSAM / FedASAM with SWA; also ``fig10 --quick``), Fig. 11 (alpha =
0, 5 clients per round: FedAvg, FedSAM, FedASAM with and without SWA; ``--only fig11``) and Fig. 3c. [C22] Fig. 10 also combines
FedASAM with server momentum, which no algorithm of ``landscape train`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from matplotlib.figure import Figure

from landscape.errors import LandscapeError
from landscape.figures import common, make, runs
from landscape.plots import static
from landscape.run_folder import RunFolder

STEM = "fig10_convergence"
NAMES = {"fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedsam": "FedSAM", "fedasam": "FedASAM"}
#: (algorithm, SWA) of the made figures: Fig. 10 with more clients per round, Fig. 11 with 5.
FIG10 = (("fedavg", False), ("fedavgm", False), ("fedasam", False), ("fedavgm", True), ("fedsam", True),
         ("fedasam", True))
FIG11 = tuple((a, s) for s in (False, True) for a in ("fedavg", "fedsam", "fedasam"))


@dataclass
class Curve:
    """The logged test accuracy of one run (and of its SWA model), by round."""

    dataset: str
    test: list[tuple[int, float]] = field(default_factory=list)
    swa: list[tuple[int, float]] = field(default_factory=list)


def read_curve(item: common.Input) -> Curve:
    """The test accuracy curves of a run folder.

    Raises:
        LandscapeError: not a run folder, or no test accuracy logged.
    """
    run = RunFolder(item.path)
    if not run.is_run():
        raise LandscapeError(f"{item.label}: {item.path} is not a run folder of `landscape train` (no config.json)")
    data = common.read_json(run.config_file).get("data")
    records = run.metrics()
    curve = Curve(str((data if isinstance(data, dict) else {}).get("dataset", "?")),
                  [(r["round"], float(r["test_acc"])) for r in records if isinstance(r.get("test_acc"), (int, float))],
                  [(r["round"], float(r["swa_test_acc"])) for r in records
                   if isinstance(r.get("swa_test_acc"), (int, float))])
    if not curve.test:
        raise LandscapeError(f"{item.label}: {run.metrics_file} holds no test accuracy yet "
                             "(it is logged every --eval-every rounds and at the last round)")
    return curve


@static.styled
def draw(curves: dict[str, Curve]) -> Figure:
    """One panel per data set; a color per run, solid: the global model, dashed: its SWA model."""
    datasets = list(dict.fromkeys(c.dataset for c in curves.values()))
    fig = Figure(figsize=(5.5 * len(datasets), 4), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False).ravel()
    for k, (label, curve) in enumerate(curves.items()):
        ax, color = axes[datasets.index(curve.dataset)], f"C{k % 10}"
        ax.plot(*zip(*curve.test), color=color, label=label)
        if curve.swa:
            ax.plot(*zip(*curve.swa), color=color, linestyle="--", label=f"{label} (SWA model)")
    for ax, dataset in zip(axes, datasets):
        ax.set_title(dataset)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.legend()
    fig.suptitle("test accuracy as rounds pass")
    return fig


def made(plan: make.Plan, name: str, stem: str, settings: Sequence[tuple[str, bool]], many: bool,
         title: str) -> make.Output:
    """A made convergence figure of the [C22] runs at alpha = 0 with the (algorithm, SWA) ``settings``."""
    specs = {f"{NAMES[a]}{' + SWA' if s else ''}": runs.c22(plan.mode, a, swa=s, many_clients=many)
             for a, s in settings}
    files = plan.files(stem)
    args = (*(make.Labeled(label, plan.run(s)) for label, s in specs.items()), "--out", *files)
    return make.Output(name, "fig10", tuple(specs.values()), (), args, files, title)


def outputs(plan: make.Plan) -> list[make.Output]:
    """Fig. 10 (more clients per round) and Fig. 11 (5 clients per round), alpha = 0."""
    return [made(plan, "fig10", STEM, FIG10, True, "[C22] Fig. 10: test accuracy at alpha = 0 with more clients "
                 "per round, with server momentum and SWA"),
            made(plan, "fig11", "fig11_convergence", FIG11, False, "[C22] Fig. 11: test accuracy at alpha = 0 with 5 "
                 "clients per round, with and without SWA")]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    return common.figure_main(argv, prog, __doc__, __name__, "run folders of `landscape train`", STEM,
                              lambda inputs, _: draw(common.by_label(inputs, read_curve)))


if __name__ == "__main__":
    common.run_script(main)
