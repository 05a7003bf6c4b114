"""Whether torchrun started this process, and as which rank: read from its environment alone
(no torch import, so ``landscape --help`` and the argument checks start fast)."""

from __future__ import annotations

import os


def launched() -> bool:
    """Whether this process is one of several that torchrun started (``WORLD_SIZE > 1``).

    Raises:
        ValueError: a ``WORLD_SIZE`` that is not a number.
    """
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched).

    Raises:
        ValueError: a ``WORLD_SIZE`` or ``RANK`` that is not a number.
    """
    return int(os.environ.get("RANK", "0") or 0) if launched() else 0
