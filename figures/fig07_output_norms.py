"""[C22] Fig. 7: L2 norm of the global classifier's outputs on each client's own data as rounds pass.

Inputs are run folders of ``landscape train``, as for ``fig03``: every global checkpoint they
keep is run on the training data of every client of its partition
(:mod:`landscape.figures.clients`), and the mean over the client's samples of the L2 norm of the
model's output vector (the logits) is drawn, one line per client::

    landscape figures fig07 "alpha=0=runs/a0" "alpha=1000=runs/a1000" --data-dir ~/data

With alpha = 0 the model attends to a different client's class at each round (the norms
alternate); with alpha = 1000 it attends to every client alike [C22 App. B].
"""

from __future__ import annotations

from collections.abc import Sequence

from landscape.figures import clients, make, runs
from landscape.figures.fig03_client_accuracy import RUNS

STEM = "fig07_output_norms"


def outputs(plan: make.Plan) -> list[make.Output]:
    """Fig. 7 (a, b): FedAvg at alpha = 0 and 1000, the runs of Fig. 3."""
    specs = {label: runs.c22(plan.mode, "fedavg", alpha) for label, alpha in RUNS.items()}
    files = plan.files(STEM)
    args = (*(make.Labeled(label, plan.run(s)) for label, s in specs.items()), "--out", *files, *plan.compute())
    return [make.Output("fig07", "fig07", tuple(specs.values()), (), args, files)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    return clients.main(argv, prog, __doc__, __name__, STEM, "output_norm", "mean L2 norm of the outputs",
                        "L2 norm of the global model's outputs on each client's data as rounds pass")


if __name__ == "__main__":
    from landscape.figures.common import run_script

    run_script(main)
