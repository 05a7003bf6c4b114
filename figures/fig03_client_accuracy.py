"""[C22] Fig. 3: accuracy of the global model on each client's own data as rounds pass, one panel per run.

Inputs are run folders of ``landscape train``; every global checkpoint they keep (``--save-every
K``) is evaluated on the training data of every client of its partition (rebuilt from the
checkpoint, as ``landscape hessian --data client:K`` does; :mod:`landscape.figures.clients`), and
the test accuracy of ``metrics.jsonl`` is drawn in black::

    landscape train --preset c22-cifar100-a0-fedavg --save-every 500 --data-dir ~/data --out runs/a0
    landscape train --preset c22-cifar100-a1000-fedavg --save-every 500 --data-dir ~/data --out runs/a1000
    landscape figures fig03 "alpha=0=runs/a0" "alpha=1000=runs/a1000" --data-dir ~/data

With alpha = 0 each client holds one class and the global model of each round is good on a
few of them only (catastrophic interference [C22 §3.1]); with alpha = 1000 the lines coincide.
``landscape figures all`` also makes ``fig03c``: the test accuracy of both runs on one axis
(Fig. 3c, drawn by ``fig10``; ``--only fig03c``).
"""

from __future__ import annotations

from collections.abc import Sequence

from landscape.figures import clients, make, runs

STEM = "fig03_client_accuracy"
#: The runs of the made figure, by label: FedAvg, heterogeneous and homogeneous.
RUNS = {"FedAvg, alpha=0": 0.0, "FedAvg, alpha=1000": 1000.0}


def outputs(plan: make.Plan) -> list[make.Output]:
    """Fig. 3 (a, b) from the global checkpoints, and (c) the test accuracy of the same runs."""
    specs = {label: runs.c22(plan.mode, "fedavg", alpha) for label, alpha in RUNS.items()}
    inputs = tuple(make.Labeled(label, plan.run(s)) for label, s in specs.items())
    files, curves = plan.files(STEM), plan.files("fig03c_test_accuracy")
    return [make.Output("fig03", "fig03", tuple(specs.values()), (), (*inputs, "--out", *files, *plan.compute()),
                        files),
            make.Output("fig03c", "fig10", tuple(specs.values()), (), (*inputs, "--out", *curves), curves,
                        "[C22] Fig. 3c: test accuracy of FedAvg at alpha = 0 and 1000 as rounds pass")]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    return clients.main(argv, prog, __doc__, __name__, STEM, "accuracy", "accuracy of the global model on the "
                        "client's data", "the global model on each client's data as rounds pass (black: test set)")


if __name__ == "__main__":
    from landscape.figures.common import run_script

    run_script(main)
