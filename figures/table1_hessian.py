"""[C22] Table 1: lambda_max and lambda_max / lambda_5 of global models, beside the paper's values.

Inputs are results of ``landscape hessian --out`` with at least 5 eigenvalues, one per
algorithm (and heterogeneity alpha), labelled by algorithm::

    landscape hessian runs/fedavg/checkpoints/global_r020000.pt --top-k 5 --out h_fedavg.json
    landscape hessian runs/fedasam-swa/checkpoints/swa.pt --top-k 5 --out h_fedasam_swa.json
    landscape figures table1 fedavg=h_fedavg.json fedasam-swa=h_fedasam_swa.json --out table1.md

One row per input: the label, the alpha of the checkpoint's partition (when the checkpoint
records it), the round, and lambda_max and lambda_max / lambda_5 as stored in the file. When the
label names a row of [C22] Table 1 (``fedavg``, ``fedavg-e2``, ``fedsam``, ``fedasam``,
``fedavg-swa``, ``fedsam-swa``, ``fedasam-swa``; case, spaces, ``+``, ``_`` and ``=`` ignored, so
``FedASAM + SWA`` matches) the paper's values at alpha = 0 and alpha = 1k are printed beside it.
They are CIFAR-100 CNN values from the top-50 eigenvalues by power iteration with 20
iterations [C22 §3.2]: on other data or models compare the ordering of the algorithms, not
magnitudes. The table is printed as Markdown and, with ``--out``, written to ``.md`` and ``.csv``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from landscape.figures import common, make, runs
from landscape.hessian import load_result
from landscape.errors import LandscapeError

#: [C22] Table 1 (CIFAR-100, CNN): lambda_max at alpha = 0 and 1k, lambda_max / lambda_5 at alpha = 0 and 1k.
PAPER: dict[str, tuple[float, float, float, float]] = {
    "fedavg": (93.46, 106.14, 2.00, 1.31),
    "fedavg-e2": (110.62, 118.35, 2.32, 1.30),
    "fedsam": (70.29, 51.28, 1.79, 1.48),
    "fedasam": (30.11, 20.19, 1.80, 1.27),
    "fedavg-swa": (97.24, 120.02, 1.49, 1.39),
    "fedsam-swa": (73.16, 54.20, 1.56, 1.61),
    "fedasam-swa": (24.57, 20.49, 1.51, 1.30),
}
#: Labels that name the same paper row ([C22] writes FedAvg's default as "FedAvg E=1").
ALIASES = {"fedavg-e1": "fedavg"}
HEADER = ["algorithm", "alpha", "round", "lambda_max", "lambda_max/lambda_5", "paper lambda_max alpha=0",
          "paper lambda_max alpha=1k", "paper ratio alpha=0", "paper ratio alpha=1k"]
NOTES = ("paper: [C22] Table 1, CIFAR-100, CNN, top-50 eigenvalues by power iteration (20 iterations); "
         "lambda_max and lambda_max/lambda_5 of the inputs are the values stored in their Hessian results.")


def paper_key(label: str) -> str:
    """The [C22] Table 1 row a label names.

    >>> paper_key("FedASAM + SWA"), paper_key("fedavg_E=1"), paper_key("FedSAM")
    ('fedasam-swa', 'fedavg', 'fedsam')
    """
    key = re.sub(r"[\s_+-]+", "-", label.strip().lower().replace("=", "")).strip("-")
    return ALIASES.get(key, key)


def table_rows(inputs: Sequence[common.Input]) -> tuple[list[list[common.Cell]], list[str]]:
    """One row per Hessian result (columns :data:`HEADER`), and warnings about unconverged eigenvalues.

    Raises:
        LandscapeError: an input that is not a Hessian result or holds fewer than 5 eigenvalues.
    """
    rows, warnings = [], []
    for item in inputs:
        result = load_result(item.path)
        ratio = result.get("lambda_max_over_lambda_5")
        if ratio is None:
            raise LandscapeError(f"{item.label} ({item.path}): {len(result['eigenvalues'])} eigenvalues, "
                                 "lambda_max/lambda_5 needs 5; rerun `landscape hessian` with --top-k 5")
        ckpt = common.checkpoint_of(result)
        alpha = ((ckpt.get("data") or {}).get("partition") or {}).get("alpha")
        paper = PAPER.get(paper_key(item.label), (None,) * 4)
        alpha = alpha if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) else None
        rows.append([item.label, None if alpha is None else f"{alpha:g}", ckpt.get("round"), result["lambda_max"],
                     ratio, *paper])
        if not all(result.get("converged", [True])):
            warnings.append(f"warning: {item.label}: not every eigenvalue converged (see the residuals in {item.path})")
    return rows, warnings


def outputs(plan: make.Plan) -> list[make.Output]:
    """The Hessians of FedAvg, FedSAM and FedASAM with and without SWA at alpha = 0 (Table 1's rows)."""
    specs = {f"{a}{'-swa' if swa else ''}": (runs.c22(plan.mode, a, swa=swa), swa)
             for swa in (False, True) for a in ("fedavg", "fedsam", "fedasam")}
    steps = {label: plan.hessian(spec, swa) for label, (spec, swa) in specs.items()}
    files = plan.files("table1_hessian", (".md", ".csv"))
    args = (*(make.Labeled(label, result) for label, (_, result) in steps.items()), "--out", files[0])
    return [make.Output("table1", "table1", tuple(spec for spec, _ in specs.values()),
                        tuple(step for step, _ in steps.values()), args, files)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Print (and with ``--out`` write) the table; see the module docstring."""
    parser = common.make_parser(__doc__, prog)
    common.add_inputs(parser, "results of `landscape hessian --top-k 5 --out`, labelled by algorithm")
    parser.add_argument("--out", metavar="TABLE.md", help="write the table to TABLE.md and TABLE.csv")
    args = parser.parse_args(argv)
    code = common.made(args, __name__)
    if code is not None:
        return code
    inputs = common.parse_inputs(args.inputs)
    out = common.check_suffix(args.out, (".md", ".csv"), "--out", inputs, (".md", ".csv")) if args.out else None
    rows, warnings = table_rows(inputs)
    common.report_table(HEADER, rows, NOTES, out, warnings)
    return 0


if __name__ == "__main__":
    common.run_script(main)
