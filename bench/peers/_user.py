"""What a peer's user script needs besides the peer: the model, the data, the result file.

Kept tiny on purpose: a user of PyHessian or curvlinops has their own model definition and a
plain ``state_dict``; here the definition is ``landscape.models.build("cnn", num_classes=10)``
(importing it costs ~15 ms on top of torch, so the peers' start-up is theirs, not ours).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("weights", help="a plain state_dict of the CIFAR CNN (torch.save(model.state_dict(), ...))")
    ap.add_argument("data", help="a .pt dict {'x': float32 (N, 3, 32, 32), 'y': int64 (N,)}")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--out", help="write {'eigenvalues', 'num_matvecs', 'seconds', ...} as JSON")
    return ap


def load(weights: str, data: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from landscape.models import build

    model = build("cnn", num_classes=10)
    model.load_state_dict(torch.load(weights, weights_only=True))
    d = torch.load(data, weights_only=True)
    return model.eval(), d["x"], d["y"]


def finish(args: argparse.Namespace, t_start: float, t_imported: float, t_loaded: float, values, products: int,
           **extra) -> None:
    """Print the eigenvalues and write the result: values descending, products, phase times."""
    values = sorted((float(v) for v in values), reverse=True)
    out = {"eigenvalues": values, "num_matvecs": int(products), "seconds": time.perf_counter() - t_loaded,
           "import_s": t_imported - t_start, "load_s": t_loaded - t_imported, **extra}
    print("eigenvalues: " + ", ".join(f"{v:.6g}" for v in values))
    print(f"{products} Hessian-vector products, {out['seconds']:.2f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f)
