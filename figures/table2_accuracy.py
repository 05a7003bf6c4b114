"""[C22] Table 2: final test accuracy of training runs, beside the paper's value for the same setting.

Inputs are run folders of ``landscape train`` (``config.json`` and ``metrics.jsonl``, where the
test accuracy is logged every ``--eval-every`` rounds and at the last round)::

    landscape train --preset c22-cifar100-a0-fedasam-swa --data-dir ~/data --out runs/fedasam-swa
    landscape figures table2 runs/fedavg runs/fedasam runs/fedasam-swa --out table2.md

One row per run: the label (default: the folder name), data set, alpha, clients per round,
the last evaluated round and its test accuracy in percent, and the SWA model's test accuracy
when the run keeps one. The paper column holds the [C22] Table 2 entry of the run's own
setting (data set CIFAR-10/100, alpha in {0, 0.05, 100} / {0, 0.5, 1000}, 5, 10 or 20 clients per
round, algorithm, local epochs, SWA), compared with the SWA accuracy for SWA runs; it is empty
for any other setting (and for runs on a split file, which record no alpha). [C22] trained
10k (CIFAR-10) and 20k (CIFAR-100) rounds: compare at those rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from landscape.figures import common, make, runs
from landscape.errors import LandscapeError
from landscape.run_folder import RunFolder

#: [C22] Table 2 columns: alpha per data set (clients per round vary fastest: 5, 10, 20).
ALPHAS = {"cifar100": (0.0, 0.5, 1000.0), "cifar10": (0.0, 0.05, 100.0)}
CLIENTS_PER_ROUND = (5, 10, 20)
#: [C22] Table 2: test accuracy (%), rows by algorithm, 9 columns ordered (alpha, clients per round).
PAPER: dict[str, dict[str, tuple[float, ...]]] = {
    "cifar100": {
        "fedavg": (30.25, 36.74, 38.59, 40.43, 41.27, 42.17, 49.92, 50.25, 50.66),
        "fedavg-e2": (24.94, 31.81, 35.18, 38.21, 39.59, 40.94, 48.72, 48.64, 48.45),
        "fedsam": (31.04, 36.93, 38.56, 44.73, 44.84, 46.05, 54.01, 53.39, 53.97),
        "fedasam": (36.04, 39.76, 40.81, 45.61, 46.58, 47.78, 54.81, 54.97, 54.50),
        "fedavg-swa": (39.34, 39.74, 39.85, 43.90, 44.02, 42.09, 50.98, 50.87, 50.92),
        "fedsam-swa": (39.30, 39.51, 39.24, 47.96, 46.76, 46.47, 53.90, 53.67, 54.36),
        "fedasam-swa": (42.01, 42.64, 41.62, 49.17, 48.72, 48.27, 53.86, 54.79, 54.10),
    },
    "cifar10": {
        "fedavg": (65.00, 65.54, 68.52, 69.24, 72.50, 73.07, 84.46, 84.50, 84.59),
        "fedavg-e2": (61.49, 62.22, 66.36, 69.23, 69.77, 73.48, 83.93, 84.10, 84.21),
        "fedsam": (70.16, 71.09, 72.90, 73.52, 74.81, 76.04, 84.58, 84.67, 84.82),
        "fedasam": (73.66, 74.10, 76.09, 75.61, 76.22, 76.98, 84.77, 84.72, 84.75),
        "fedavg-swa": (69.71, 69.54, 70.19, 73.48, 72.80, 73.81, 84.35, 84.32, 84.47),
        "fedsam-swa": (74.97, 73.73, 73.06, 76.61, 75.84, 76.22, 84.23, 84.37, 84.63),
        "fedasam-swa": (76.44, 75.51, 76.36, 76.12, 76.16, 76.86, 84.88, 84.80, 84.79),
    },
}
HEADER = ["run", "data", "alpha", "clients/round", "round", "test acc %", "SWA test acc %", "paper %"]
NOTES = ("paper: [C22] Table 2 at the run's setting (CIFAR-100 @ 20k rounds, CIFAR-10 @ 10k rounds), "
         "compared with the SWA accuracy for SWA runs; accuracies are the last logged test_acc (and "
         "swa_test_acc) of metrics.jsonl.")


def paper_value(config: dict[str, Any], dataset: str, alpha: float | None) -> float | None:
    """The [C22] Table 2 entry for a run's setting, or None when the paper has no such setting.

    >>> cfg = {"algorithm": "fedasam", "swa": True, "local_epochs": 1, "clients_per_round": 5}
    >>> paper_value(cfg, "cifar100", 0.0), paper_value(cfg, "cifar100", 0.3), paper_value(cfg, "digits", 0.0)
    (42.01, None, None)
    """
    if (dataset not in PAPER or alpha not in ALPHAS[dataset] or config["clients_per_round"] not in CLIENTS_PER_ROUND
            or config["local_epochs"] not in (1, 2)):
        return None
    row = config["algorithm"] + ("-e2" if config["local_epochs"] == 2 else "") + ("-swa" if config["swa"] else "")
    values = PAPER[dataset].get(row)
    if values is None:
        return None
    return values[3 * ALPHAS[dataset].index(alpha) + CLIENTS_PER_ROUND.index(config["clients_per_round"])]


def table_row(item: common.Input) -> list[common.Cell]:
    """The row (columns :data:`HEADER`) of one run folder.

    Raises:
        LandscapeError: not a run folder of ``landscape train``, or no test accuracy logged yet.
    """
    run_dir = item.path
    run = RunFolder(run_dir)
    if not run.is_run() or not run.metrics_file.is_file():
        raise LandscapeError(f"{item.label}: {run_dir} is not a run folder of `landscape train` "
                             "(it needs config.json and metrics.jsonl)")
    stored = common.read_json(run.config_file)
    config, data = stored.get("config"), stored.get("data") or {}
    if not isinstance(config, dict):
        raise LandscapeError(f"{item.label}: {run_dir}/config.json is not the config of `landscape train`")
    evaluated = [r for r in run.metrics() if "test_acc" in r]
    if not evaluated:
        raise LandscapeError(f"{item.label}: {run_dir}/metrics.jsonl holds no test accuracy yet "
                             "(it is logged every --eval-every rounds and at the last round)")
    last = evaluated[-1]
    swa = last.get("swa_test_acc")
    dataset = data.get("dataset")
    alpha = (data.get("partition") or {}).get("alpha")
    return [item.label, dataset, None if alpha is None else f"{alpha:g}", config.get("clients_per_round"),
            last["round"], 100 * last["test_acc"], None if swa is None else 100 * swa,
            paper_value(config, dataset, alpha)]


def outputs(plan: make.Plan) -> list[make.Output]:
    """FedAvg, FedSAM and FedASAM with and without SWA at alpha = 0, FedAvg and FedASAM at alpha = 1000."""
    specs = [runs.c22(plan.mode, a, swa=swa) for swa in (False, True) for a in ("fedavg", "fedsam", "fedasam")]
    specs += [runs.c22(plan.mode, a, 1000.0) for a in ("fedavg", "fedasam")]
    files = plan.files("table2_accuracy", (".md", ".csv"))
    return [make.Output("table2", "table2", tuple(specs), (), (*map(plan.run, specs), "--out", files[0]), files)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Print (and with ``--out`` write) the table; see the module docstring."""
    parser = common.make_parser(__doc__, prog)
    common.add_inputs(parser, "run folders of `landscape train`")
    parser.add_argument("--out", metavar="TABLE.md", help="write the table to TABLE.md and TABLE.csv")
    args = parser.parse_args(argv)
    code = common.made(args, __name__)
    if code is not None:
        return code
    inputs = common.parse_inputs(args.inputs)
    out = common.check_suffix(args.out, (".md", ".csv"), "--out", inputs, (".md", ".csv")) if args.out else None
    rows = [table_row(item) for item in inputs]
    common.report_table(HEADER, rows, NOTES, out)
    return 0


if __name__ == "__main__":
    common.run_script(main)
