"""A cross-entropy that fails on purpose after some calls: the failures of tests/test_analysis_distributed.py.

Workers started by torchrun load it by name (``--loss tests.faulty_loss:cross_entropy``). The
fault comes from ``LANDSCAPE_FAULT=RANK:CALLS:HOW``: on rank RANK, the CALLS-th call of the
loss kills its process (``kill``, SIGKILL: a rank that dies without a word), raises an error
(``raise``) or interrupts it (``interrupt``, as Ctrl-C). Without the variable it is plain
cross-entropy, so a run with and one without the fault are the same run for a result file.
"""

from __future__ import annotations

import os
import signal

import torch

_calls = {"spec": None, "count": 0}


def reset() -> None:
    """Start counting the calls again (in-process runs of one test session)."""
    _calls.update(spec=None, count=0)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    spec = os.environ.get("LANDSCAPE_FAULT")
    if spec:
        if spec != _calls["spec"]:
            _calls.update(spec=spec, count=0)
        rank, calls, how = spec.split(":")
        if int(os.environ.get("RANK", "0")) == int(rank):
            _calls["count"] += 1
            if _calls["count"] == int(calls):
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if how == "interrupt":
                    raise KeyboardInterrupt
                raise RuntimeError(f"injected failure at call {calls}")
    return torch.nn.functional.cross_entropy(outputs, targets)
