"""``landscape download cifar10|cifar100 --data-dir DIR``: fetch CIFAR in its python format."""

from __future__ import annotations

import argparse

from landscape import cifar
from landscape.cli import SUMMARIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help=SUMMARIES["download"],
                       description="Download and unpack CIFAR-10 or CIFAR-100 (needs internet). An archive "
                                   "already in the folder is used as it is. Unpacking is all or nothing: a "
                                   "damaged or foreign archive, or one with members that would land outside "
                                   "the folder, is refused and leaves the folder as it was.")
    p.add_argument("dataset", choices=sorted(cifar.CIFAR_URLS))
    p.add_argument("--data-dir", default="data", help="destination folder (default: ./data)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = cifar.download_cifar(args.dataset, args.data_dir)
    print(f"{args.dataset} ready in {folder}")
    return 0
