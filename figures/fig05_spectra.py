"""[C22] Fig. 5: Hessian eigenspectrum densities of global models, overlaid on a log density axis.

Inputs are results of ``landscape hessian --density --out`` (the stochastic Lanczos quadrature
nodes and weights [Y20] are stored in the file), e.g. the global models trained with alpha = 0
and alpha = 1000 [C22]::

    landscape hessian runs/a0/checkpoints/global_r020000.pt --density --density-runs 3 --out h_a0.json
    landscape hessian runs/a1000/checkpoints/global_r020000.pt --density --density-runs 3 --out h_a1000.json
    landscape figures fig05 "alpha=0=h_a0.json" "alpha=1000=h_a1000.json" --out fig05.png

Each density is the Gaussian-smoothed quadrature of :meth:`landscape.spectrum.SpectralDensity.evaluate`
on a grid spanning its nodes (:func:`landscape.hessian.density_curve`, as ``landscape hessian
--plot`` draws it); the top eigenvalues of each result are ticks along the bottom in the
curve's color. The density axis is logarithmic (the bulk near zero and the outliers differ by
orders of magnitude); values below 1e-8 (``FLOOR``) times the highest peak are drawn at that floor
so that the gaps between separated outliers stay visible as a baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from landscape.figures import common, make, runs
from landscape.hessian import load_result
from landscape.errors import LandscapeError
from landscape.hessian import density_curve
from landscape.plots import static
from landscape.spectrum import SpectralDensity

STEM = "fig05_spectra"
#: Lowest density drawn, relative to the highest peak of all curves (8 decades).
FLOOR = 1e-8


def read_density(item: common.Input) -> tuple[dict[str, Any], SpectralDensity]:
    """A Hessian result and its stored SLQ density.

    Raises:
        LandscapeError: not a Hessian result, or one computed without ``--density``.
    """
    result = load_result(item.path)
    stored = result.get("density")
    if not stored:
        raise LandscapeError(f"{item.label}: {item.path} holds no spectral density; rerun `landscape hessian` "
                             "with --density")
    nodes = np.asarray(stored["nodes"], dtype=np.float64)
    return result, SpectralDensity(nodes, np.asarray(stored["weights"], dtype=np.float64), num_matvecs=nodes.size)


@static.styled
def draw(results: Sequence[dict[str, Any]], densities: Sequence[SpectralDensity], labels: Sequence[str]) -> Figure:
    """The densities overlaid (log density axis) with each result's top eigenvalues as ticks."""
    curves = [density_curve(d) for d in densities]
    floor = FLOOR * max(float(np.nanmax(dens)) for _, dens in curves)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for k, ((grid, dens), result, label) in enumerate(zip(curves, results, labels)):
        color = f"C{k % 10}"
        ax.plot(grid, np.maximum(static.finite_or_nan(dens), floor), color=color,
                label=f"{label} (lambda_max {result['lambda_max']:.4g})")
        eig = np.asarray(result["eigenvalues"], dtype=np.float64)
        ax.scatter(eig, np.full(eig.shape, 0.03 + 0.04 * k), marker="|", s=120, color=color,
                   transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("Hessian eigenspectrum density (SLQ); ticks: top eigenvalues")
    return fig


def outputs(plan: make.Plan) -> list[make.Output]:
    """The spectra of FedAvg's global models at alpha = 0 and 1000 [C22 Fig. 5]."""
    specs = {"alpha=0": runs.c22(plan.mode, "fedavg", 0.0), "alpha=1000": runs.c22(plan.mode, "fedavg", 1000.0)}
    steps = {label: plan.hessian(spec) for label, spec in specs.items()}
    files = plan.files(STEM)
    args = (*(make.Labeled(label, result) for label, (_, result) in steps.items()), "--out", *files)
    return [make.Output("fig05", "fig05", tuple(specs.values()), tuple(step for step, _ in steps.values()), args,
                        files)]


def figure(inputs: list[common.Input], _: object) -> Figure:
    results, densities = zip(*(read_density(item) for item in inputs))
    return draw(results, densities, [item.label for item in inputs])


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Draw the figure; see the module docstring."""
    return common.figure_main(argv, prog, __doc__, __name__, "results of `landscape hessian --density --out`", STEM,
                              figure)


if __name__ == "__main__":
    common.run_script(main)
