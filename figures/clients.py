"""The global model on each client's own data as rounds pass ([C22] Fig. 3 and 7): evaluate, draw.

A run folder of ``landscape train`` keeps its global model every ``--save-every`` rounds; each
checkpoint records the data set and the partition, so every client's training data is rebuilt
from it (:class:`landscape.recorded.RecordedData`, as ``landscape hessian --data client:K`` does)
and the model is evaluated on it through :class:`landscape.objective.Objective`: the accuracy
and the mean L2 norm of the model's outputs (the classifier's logits) over the client's samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from landscape import checkpoint
from landscape.errors import LandscapeError
from landscape.figures import common
from landscape.objective import Objective
from landscape.plots import static
from landscape.operators import resolve_device
from landscape.recorded import RecordedData
from landscape.run_folder import RunFolder

#: Clients are colored by id from this colormap, spread over its range (100 one-class clients of CIFAR-100).
CLIENT_COLORS = colormaps["turbo"]
MAX_COLUMNS = 3
#: Label every client in the legend only up to this many clients per panel.
MAX_LEGEND_CLIENTS = 10
#: Samples per forward pass.
BATCH_SIZE = 1024


@dataclass
class ClientCurves:
    """Per client, the accuracy and the mean output norm of the global model at each saved round;
    the test accuracy logged in ``metrics.jsonl``."""

    rounds: list[int] = field(default_factory=list)
    accuracy: dict[int, list[float]] = field(default_factory=dict)
    output_norm: dict[int, list[float]] = field(default_factory=dict)
    test: list[tuple[int, float]] = field(default_factory=list)


def evaluate_run(item: common.Input, data_dir: str | None, device: torch.device) -> ClientCurves:
    """Evaluate every global checkpoint of a run folder on every client's training data.

    Raises:
        LandscapeError: not a run folder, no global checkpoint, a checkpoint without a partition,
            or data that cannot be rebuilt (e.g. CIFAR without ``--data-dir``).
    """
    run = RunFolder(item.path)
    rounds = run.global_rounds()
    if not run.is_run() or not rounds:
        raise LandscapeError(f"{item.label}: {item.path} is not a run folder of `landscape train` with global "
                             "checkpoints", fix="give a run folder (it saves them every --save-every rounds)")
    first = checkpoint.load(run.global_checkpoint(rounds[0]))
    recorded = RecordedData(first, data_dir)
    full = recorded.train()
    clients = [recorded.client(k, full) for k in range(recorded.num_clients(full))]
    curves = ClientCurves(rounds=rounds, test=[(r["round"], r["test_acc"]) for r in run.metrics() if "test_acc" in r])
    for r in rounds:
        ckpt = checkpoint.load(run.global_checkpoint(r))
        ckpt.check_finite()
        model = ckpt.build_model()
        for k, data in enumerate(clients):
            objective = Objective(model, data.batches(BATCH_SIZE), device=device)
            _, accuracy = objective.metrics()
            with torch.no_grad():
                norms = [objective.outputs(objective.params, b)[0].flatten(1).norm(dim=1) for b in objective.batches()]
            curves.accuracy.setdefault(k, []).append(float(accuracy))
            curves.output_norm.setdefault(k, []).append(float(torch.cat(norms).mean()))
    return curves


def evaluate(inputs: Sequence[common.Input], data_dir: str | None, device: str | None) -> dict[str, ClientCurves]:
    """:func:`evaluate_run` of each input, by label."""
    dev = resolve_device(device)
    return common.by_label(inputs, lambda item: evaluate_run(item, data_dir, dev))


@static.styled
def draw(curves: dict[str, ClientCurves], values: str, ylabel: str, title: str, test: bool) -> Figure:
    """One panel per run: a line per client (colored by id) of ``values`` (``accuracy`` or
    ``output_norm``) over the rounds; with ``test``, the test accuracy as a black line."""
    fig, axes, columns = common.panel_grid(len(curves), MAX_COLUMNS)
    for ax, (label, run) in zip(axes, curves.items()):
        per_client = getattr(run, values)
        for k, points in per_client.items():
            ax.plot(run.rounds, points, linewidth=0.9, color=CLIENT_COLORS(k / max(len(per_client) - 1, 1)),
                    label=f"client {k}" if len(per_client) <= MAX_LEGEND_CLIENTS else None)
        if test and run.test:
            rounds, accuracy = zip(*run.test)
            ax.plot(rounds, accuracy, color="black", linewidth=1.6, label="test set")
        ax.set_title(f"{label} ({len(per_client)} clients)")
    return common.finish_panels(fig, axes, len(curves), columns, ylabel, title)


def main(argv: Sequence[str] | None, prog: str | None, doc: str, module: str, stem: str, values: str, ylabel: str,
         title: str) -> int:
    """The command line of [C22] Fig. 3 and Fig. 7: run folders in, the figure in every ``--out`` format."""
    return common.figure_main(
        argv, prog, doc, module, "run folders of `landscape train` (global checkpoints every --save-every rounds)",
        stem, lambda inputs, args: draw(evaluate(inputs, args.data_dir, args.device), values, ylabel, title,
                                        test=values == "accuracy"))
