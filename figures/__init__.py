"""The paper's figures and tables, one script each: read result files -> draw -> save.

Every script is a module with ``main(argv, prog) -> int`` (argparse) that reads files written
by the ``landscape`` commands (Hessian JSON, surface/plane ``.npz``, run folders of ``landscape
train``, with the curvature ``--track-every`` logs) and draws them with :mod:`landscape.plots`;
no script computes an analysis, except that [C22] Fig. 3 and 7 run the saved global models on
each client's data (:mod:`landscape.figures.clients`). Run one as ``landscape figures NAME
ARGS...`` or ``python -m landscape.figures.MODULE ARGS...``; ``landscape figures --list`` lists
them. Inputs are ``LABEL=PATH`` pairs (see :mod:`landscape.figures.common`).

Every script also says what it is made from, ``outputs(plan)``: the runs of
:mod:`landscape.figures.runs`, the commands computing its results, its own arguments. With
``--quick`` (digits, CPU) or ``--paper`` (the papers' presets) a script makes its inputs that way
before drawing, and ``landscape figures all`` makes every figure and table
(:mod:`landscape.figures.make`).

The figure and table numbers are those of [C22] (Caldarola, Caputo, Ciccone, ECCV 2022); ``l26`` is
the flatness-distance figure of [L26] (FedNSAM)."""

from __future__ import annotations

import importlib
from types import ModuleType

from landscape.errors import LandscapeError

#: Short name -> module, in the paper's order.
SCRIPTS: dict[str, str] = {
    "fig01": "fig01_surfaces",
    "fig02": "fig02_plane",
    "fig03": "fig03_client_accuracy",
    "table1": "table1_hessian",
    "fig04": "fig04_client_lambda_max",
    "fig05": "fig05_spectra",
    "table2": "table2_accuracy",
    "fig07": "fig07_output_norms",
    "fig10": "fig10_convergence",
    "l26": "l26_flatness",
}
#: The name that runs every script (:mod:`landscape.figures.make`).
ALL = "all"


def load(name: str) -> ModuleType:
    """The script module for a short name (``table1``) or a module name (``table1_hessian``), or
    :mod:`landscape.figures.make` for ``all``.

    Raises:
        LandscapeError: an unknown name (the message lists the known ones).
    """
    module = "make" if name == ALL else SCRIPTS.get(name, name)
    if module not in (*SCRIPTS.values(), "make"):
        raise LandscapeError(f"no figure script '{name}'; choose one of {', '.join(SCRIPTS)} or {ALL}")
    return importlib.import_module(f"landscape.figures.{module}")


def summary(module: ModuleType) -> str:
    """The first line of a script's docstring (what it draws)."""
    return (module.__doc__ or "").strip().splitlines()[0]
