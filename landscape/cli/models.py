"""``landscape models``: the registered architectures and their keyword arguments."""

from __future__ import annotations

import argparse

from landscape import models
from landscape.cli import SUMMARIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help=SUMMARIES["models"],
                       description="List model names usable with --model, with their keyword arguments.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    table = models.describe()
    width = max(map(len, table))
    for name, kwargs in table.items():
        params = models.num_parameters(models.build(name))
        text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        print(f"{name:<{width}} {params:>11,} params  kwargs: {text}")
    print("or any package.module:factory on the Python path (with --model-kwargs JSON)")
    return 0
