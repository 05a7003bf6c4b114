"""The one place that imports code a user named as ``package.module:function``.

Models (``--model``), losses (``--loss``) and forward functions can be the user's own code.
Code runs only on the user's say-so: the command line or a Python call names it, never a
file (checkpoints, configs and result files only name registered things; see
:mod:`landscape.models` and ``docs/safety.md``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from landscape.errors import LandscapeError, user_code


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """``package.module:function`` imported and looked up (``what`` names it in errors, e.g. "model").

    Raises:
        LandscapeError: not of that form, a module that cannot be imported (or raises while it
            is), or no callable of that name.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LandscapeError(f"{what} '{spec}' is not of the form package.module:function")
    with user_code(f"importing module '{module_name}' for {what} '{spec}'", "put it on PYTHONPATH or install it"):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LandscapeError(f"cannot import module '{module_name}' for {what} '{spec}' ({exc})",
                                 fix="put it on PYTHONPATH or install it") from None
    found = getattr(module, attr, None)
    if not callable(found):
        raise LandscapeError(f"module '{module_name}' has no callable '{attr}' for {what} '{spec}'",
                             fix="check the function name")
    return found
