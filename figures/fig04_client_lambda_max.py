"""[C22] Fig. 4: lambda_max of each client's local model as the rounds pass, one panel per label.

Inputs are results of ``landscape hessian --out`` on client checkpoints (saved by ``landscape
train --save-clients-every N``); the round and the client id are read from the checkpoint
record in each result (``metadata.checkpoint``). The label names the panel, e.g. algorithm and
alpha as in [C22] Fig. 4; results of global or SWA checkpoints given under the same label are
drawn as a black line, to compare the clients' curvature with the global model's::

    landscape train --preset digits-demo --algorithm fedavg --save-clients-every 50 --out runs/fedavg
    for f in runs/fedavg/clients/r*_c*.pt; do
        landscape hessian "$f" --top-k 1 --data client --out "hess/fedavg/$(basename "$f" .pt).json"; done
    for f in runs/fedavg/checkpoints/global_r*.pt; do
        landscape hessian "$f" --top-k 1 --out "hess/fedavg/$(basename "$f" .pt).json"; done
    landscape figures fig04 "FedAvg=hess/fedavg/*.json" "FedASAM=hess/fedasam/*.json" --out fig04.png

[C22] computes each client's lambda_max on that client's own data: ``--data client`` rebuilds
it from the partition the client checkpoint records (without it, ``landscape hessian`` uses the
checkpoint's whole training set).

An input may also be a run folder of ``landscape train --track-every K``: the curvature tracked
during training (``curvature`` in every K-th record of ``metrics.jsonl``) holds lambda_max of each
sampled client's local model on its own data and of the global model, with no checkpoint saved::

    landscape train --preset c22-cifar100-a0-fedavg --track-every 500 --data-dir ~/data --out runs/fedavg
    landscape figures fig04 "FedAvg=runs/fedavg" "FedASAM=runs/fedasam" --out fig04.png fig04.pdf

The made figure (``--quick``, ``landscape figures all``) has [C22]'s four panels: FedAvg and
FedASAM at alpha = 0 and 1000, from tracked runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from matplotlib import colormaps
from matplotlib.figure import Figure

from landscape.figures import common, make, runs
from landscape.hessian import load_result
from landscape.errors import LandscapeError
from landscape.plots import static

STEM = "fig04_client_lambda_max"
#: The panels of the made figure: (algorithm, alpha) by label.
PANELS = {"FedAvg, alpha=0": ("fedavg", 0.0), "FedASAM, alpha=0": ("fedasam", 0.0),
          "FedAvg, alpha=1000": ("fedavg", 1000.0), "FedASAM, alpha=1000": ("fedasam", 1000.0)}
MAX_COLUMNS = 4
#: Clients are colored by id from this qualitative colormap (ids beyond 20 reuse colors).
CLIENT_COLORS = colormaps["tab20"]
#: Label every client in the legend only up to this many clients per panel.
MAX_LEGEND_CLIENTS = 10


@dataclass
class Panel:
    """The (round, lambda_max) points of one label: per client id, and of the global/SWA model."""

    clients: dict[int, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    global_model: list[tuple[int, float]] = field(default_factory=list)


def collect(inputs: Sequence[common.Input]) -> dict[str, Panel]:
    """Group the results (and tracked runs) by label (panel) and by client id, in input order.

    Raises:
        LandscapeError: a file that is not a Hessian result, or whose checkpoint records no round
            or no client id; a folder that is not a tracked run.
    """
    panels: dict[str, Panel] = {}
    for item in inputs:
        if item.path.is_dir():
            panel = panels.setdefault(item.label, Panel())
            for point in common.read_tracked(item):
                for client_id, value in point.client_lambda_max.items():
                    panel.clients[client_id].append((point.round, value))
                panel.global_model.append((point.round, point.global_lambda_max))
            continue
        result = load_result(item.path)
        ckpt = common.checkpoint_of(result)
        role, round_ = ckpt.get("role"), ckpt.get("round")
        if round_ is None or role not in ("client", "global", "swa"):
            raise LandscapeError(f"{item.label}: {item.path} is not the Hessian of a checkpoint saved by "
                                 "`landscape train` (its checkpoint records no round or role)")
        panel = panels.setdefault(item.label, Panel())
        if role == "client":
            if ckpt.get("client_id") is None:
                raise LandscapeError(f"{item.label}: {item.path} is a client checkpoint without a client id")
            panel.clients[int(ckpt["client_id"])].append((int(round_), float(result["lambda_max"])))
        else:
            panel.global_model.append((int(round_), float(result["lambda_max"])))
    empty = [label for label, panel in panels.items() if not panel.clients]
    if empty:
        raise LandscapeError(f"no client checkpoint among the results labelled {', '.join(empty)}; Fig. 4 needs "
                             "`landscape hessian` of runs/NAME/clients/rNNNNNN_cNNNN.pt, or a run tracked with "
                             "--track-every K")
    return panels


@static.styled
def draw(panels: dict[str, Panel]) -> Figure:
    """One panel per label (shared y axis): a line per client colored by id, the global model in black."""
    fig, axes, columns = common.panel_grid(len(panels), MAX_COLUMNS)
    for ax, (label, panel) in zip(axes, panels.items()):
        show_clients = len(panel.clients) <= MAX_LEGEND_CLIENTS
        for client_id, points in sorted(panel.clients.items()):
            rounds, values = zip(*sorted(points))
            ax.plot(rounds, values, marker="o", markersize=3.5, linewidth=0.8,
                    color=CLIENT_COLORS(client_id % CLIENT_COLORS.N),
                    label=f"client {client_id}" if show_clients else None)
        if panel.global_model:
            rounds, values = zip(*sorted(panel.global_model))
            ax.plot(rounds, values, marker="*", markersize=8, color="black", label="global model")
        ax.set_title(f"{label} ({len(panel.clients)} clients)")
    return common.finish_panels(fig, axes, len(panels), columns, "lambda_max of the local model",
                                "lambda_max of each client's local model as rounds pass")


def outputs(plan: make.Plan) -> list[make.Output]:
    """[C22] Fig. 4's panels from tracked runs."""
    specs = {label: runs.c22(plan.mode, algorithm, alpha) for label, (algorithm, alpha) in PANELS.items()}
    files = plan.files(STEM)
    args = (*(make.Labeled(label, plan.run(s)) for label, s in specs.items()), "--out", *files)
    return [make.Output("fig04", "fig04", tuple(specs.values()), (), args, files)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    return common.figure_main(argv, prog, __doc__, __name__, "results of `landscape hessian --out` on client "
                              "checkpoints, or run folders of `landscape train --track-every K`, labelled by panel",
                              STEM, lambda inputs, _: draw(collect(inputs)))


if __name__ == "__main__":
    common.run_script(main)
