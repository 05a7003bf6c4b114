"""Curvature tracked while training [C22 Fig. 4, L26], instead of re-analysing saved checkpoints.

Every K rounds (``--track-every K``) the round's record in ``metrics.jsonl`` gains

    "curvature": {"global_lambda_max": lambda_max(grad^2 f(x)),
                  "client_lambda_max": {"k": lambda_max(grad^2 f_k(x_k)), ...},
                  "flatness_distance": global_lambda_max / mean_k client_lambda_max,
                  "hvps": products, "seconds": wall time}

with x the new global model, x_k the local model client k of the round's cohort trained, f_k
the mean cross-entropy of client k's own training data and f the mean loss over a fixed subset
of the pooled client data (``--track-samples`` samples, seeded by the run's seed; all of it when
it is smaller). lambda_max of a local model on its own data is [C22] Fig. 4; their ratio is the
default flatness distance of :mod:`landscape.flatness` (a reconstruction of [L26], chosen in
docs/flatness.md because it separates the algorithms), here at no extra cost.

Cost. Each lambda_max is a Lanczos run (:func:`landscape.eigen.lanczos`) to a relative residual
of ``TOL`` (5e-2: the eigenvalue's error is of the order residual^2 / gap, within 0.4% of a 1e-2
run on the demo and checked against dense Hessians in the tests) warm-started from the previous top eigenvector of the same model family (the global
model's for x, client k's own for x_k, else the global one): the models move little in K rounds,
so a few Hessian-vector products suffice. ``hvps`` and ``seconds`` are logged per record and the
run's total is reported next to the training time. The run's first product is checked for
determinism as every analysis does (``landscape.operators``), the later ones are not. Un-augmented data, eval mode (running
statistics for BatchNorm), in the cache-sized pieces of :mod:`landscape.pieces`, as ``landscape hessian`` computes it.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import Tensor, nn

from landscape import pieces
from landscape.eigen import lanczos
from landscape.flatness import global_over_local
from landscape.objective import Objective
from landscape.operators import make_operator
from landscape.train.engine import STREAM_TRACK, FederatedData, derive_seed

State = dict[str, Tensor]
#: Relative residual ||H v - lambda v|| <= TOL |lambda| of each tracked lambda_max.
TOL = 5e-2


class CurvatureTracker:
    """Measures the curvature of the global model and of the round's local models.

    Args:
        model: the architecture (copied; its weights are replaced by the ones measured).
        data: the run's training data and client index arrays.
        every: K, the tracking period in rounds (0: never).
        samples: size of the global objective's fixed subset of the pooled client data.
        seed: the run's seed (it draws that subset).
    """

    def __init__(self, model: nn.Module, data: FederatedData, every: int, samples: int, seed: int) -> None:
        self.model = copy.deepcopy(model).eval()
        self.data, self.every = data, every
        pooled = torch.cat(data.client_indices)
        g = torch.Generator().manual_seed(derive_seed(seed, 0, -1, STREAM_TRACK))
        self.subset = pooled[torch.randperm(pooled.numel(), generator=g)[:samples]].sort().values
        self._starts: dict[Any, Tensor] = {}
        self._checked = False
        self.seconds, self.hvps = 0.0, 0

    def due(self, round: int) -> bool:
        """Whether 1-based round ``round`` is tracked."""
        return self.every > 0 and round % self.every == 0

    def _objective(self, weights: State, idx: Tensor) -> Objective:
        self.model.load_state_dict(weights)
        ref = next(iter(weights.values()))
        idx = idx.to(self.data.x.device)
        x, y = self.data.x[idx], self.data.y[idx]
        # in cache-sized pieces (landscape.pieces, as `landscape hessian` cuts a data set): the same sum
        # over the samples, cheaper products on a CPU
        size = pieces.samples_per_forward(self.model, x, len(x), ref.dtype, ref.device)
        batches = list(zip(x.split(size), y.split(size)))
        # rank 0 alone tracks under torchrun: its own data, not a shard of a data-parallel objective
        return Objective(self.model, batches, ref.dtype, ref.device, data_parallel=False)

    def lambda_max(self, weights: State, idx: Tensor, key: Any, fallback: Any = None) -> float:
        """lambda_max of the Hessian of the mean loss on samples ``idx`` at ``weights`` (warm-started)."""
        # The run's first product is checked for determinism (dropout left on in eval, ...); the
        # model and the data path are the same for every later one.
        op = make_operator(self._objective(weights, idx), "hessian", check_determinism=not self._checked)
        self._checked = True
        start = self._starts.get(key, self._starts.get(fallback))
        res = lanczos(op, k=1, tol=TOL, seed=0, start=start)
        self._starts[key] = res.eigenvectors[0].detach()
        self.hvps += res.num_matvecs
        return float(res.eigenvalues[0])

    def measure(self, global_weights: State, client_weights: dict[int, State]) -> dict[str, Any]:
        """The ``curvature`` entry of a round's record (see the module docstring)."""
        t0, hvps0 = time.perf_counter(), self.hvps
        out: dict[str, Any] = {"global_lambda_max": self.lambda_max(global_weights, self.subset, "global")}
        out["client_lambda_max"] = {
            str(k): self.lambda_max(w, self.data.client_indices[k], ("client", k), "global")
            for k, w in sorted(client_weights.items())}
        local = list(out["client_lambda_max"].values())
        out["flatness_distance"] = global_over_local(out["global_lambda_max"], local)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        out.update(hvps=self.hvps - hvps0, seconds=round(seconds, 4))
        return out
