"""[L26]: flatness distance and lambda_max as rounds pass, FedAvg vs FedSAM, FedASAM and FedNSAM.

Inputs are run folders of ``landscape train --track-every K``: every K-th round's record of
``metrics.jsonl`` holds the tracked curvature (``curvature``: lambda_max of the global model and
of each sampled client's local model on its own data, and the flatness distance between the
global and the local models [L26] where the record holds ``flatness_distance``). Left: the
flatness distance (a note where no record holds it); right: lambda_max of the global model
(solid) and the mean over the round's clients of their local lambda_max (dashed, same color)::

    landscape train --preset l26-cifar100-fednsam --track-every 25 --data-dir ~/data --out runs/fednsam
    landscape train --preset l26-cifar100-fednsam --algorithm fedsam --track-every 25 --data-dir ~/data \\
        --out runs/fedsam
    landscape figures l26 FedNSAM=runs/fednsam FedSAM=runs/fedsam --out l26.png l26.pdf

[L26]'s point: local flatness (small client lambda_max, as SAM gives) need not make the global
model flat; FedNSAM shrinks the flatness distance between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from landscape.figures import common, make, runs
from landscape.plots import static

STEM = "l26_flatness"


@static.styled
def draw(tracked: dict[str, list[common.Tracked]]) -> Figure:
    """Two panels: flatness distance; global (solid) and mean client (dashed) lambda_max."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    distance, sharpness = fig.subplots(1, 2)
    for k, (label, points) in enumerate(tracked.items()):
        color = f"C{k % 10}"
        rounds = [p.round for p in points]
        measured = [(p.round, p.flatness_distance) for p in points if p.flatness_distance is not None]
        if measured:
            distance.plot(*zip(*measured), marker="o", markersize=3, color=color, label=label)
        sharpness.plot(rounds, [p.global_lambda_max for p in points], marker="o", markersize=3, color=color,
                       label=f"{label}: global model")
        clients = [(p.round, float(np.mean(list(p.client_lambda_max.values())))) for p in points if p.client_lambda_max]
        if clients:
            sharpness.plot(*zip(*clients), linestyle="--", color=color, label=f"{label}: clients (mean)")
    distance.set_ylabel("flatness distance")
    sharpness.set_ylabel("lambda_max")
    for ax in (distance, sharpness):
        ax.set_xlabel("round")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not in the tracked records", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("flatness distance and lambda_max as rounds pass (tracked during training)")
    return fig


def outputs(plan: make.Plan) -> list[make.Output]:
    """The [L26] comparison: FedAvg, FedSAM, FedASAM and FedNSAM, tracked."""
    specs = {label: runs.l26(plan.mode, algorithm) for label, algorithm in runs.L26.items()}
    files = plan.files(STEM)
    args = (*(make.Labeled(label, plan.run(s)) for label, s in specs.items()), "--out", *files)
    return [make.Output("l26", "l26", tuple(specs.values()), (), args, files)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    return common.figure_main(argv, prog, __doc__, __name__, "run folders of `landscape train --track-every K`", STEM,
                              lambda inputs, _: draw(common.by_label(inputs, common.read_tracked)))


if __name__ == "__main__":
    common.run_script(main)
