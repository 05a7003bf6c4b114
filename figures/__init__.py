"""The paper's figures and tables, one script each: read result files -> draw -> save.

Every script is a module with ``main(argv, prog) -> int`` (argparse) that reads files
written by the ``landscape`` commands (Hessian JSON, surface/plane ``.npz``, run folders of
``landscape train``) and draws them with :mod:`landscape.plots`; no script computes an
analysis. Run one as ``landscape figures NAME ARGS...`` or ``python -m landscape.figures.MODULE ARGS...``;
``landscape figures`` lists them. Inputs are ``LABEL=PATH`` pairs (see :mod:`landscape.figures.common`).

The figure and table numbers are those of [C22] (Caldarola, Caputo, Ciccone, ECCV 2022).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from landscape.errors import LandscapeError

#: Short name -> module, in the paper's order.
SCRIPTS: dict[str, str] = {
    "fig01": "fig01_surfaces",
    "fig02": "fig02_plane",
    "table1": "table1_hessian",
    "fig04": "fig04_client_lambda_max",
    "fig05": "fig05_spectra",
    "table2": "table2_accuracy",
}


def load(name: str) -> ModuleType:
    """The script module for a short name (``table1``) or a module name (``table1_hessian``).

    Raises:
        LandscapeError: an unknown name (the message lists the known ones).
    """
    module = SCRIPTS.get(name, name)
    if module not in SCRIPTS.values():
        raise LandscapeError(f"no figure script '{name}'; choose one of {', '.join(SCRIPTS)}")
    return importlib.import_module(f"landscape.figures.{module}")


def summary(module: ModuleType) -> str:
    """The first line of a script's docstring (what it draws)."""
    return (module.__doc__ or "").strip().splitlines()[0]
