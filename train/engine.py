"""One federated round on two interchangeable engines; the engines only run.

The algorithm (:mod:`landscape.train.algorithms`) owns every update rule: its ``client_step``
(one local step on one batch) and its ``server_update``. The engines run them on any block of a
round's clients and return the block's sample-weighted sum of client models and total weight
(:class:`~landscape.train.aggregate.ClientSums`), so blocks combine by adding them:

- :class:`SequentialEngine`, the reference: clients one after another, ``client_step`` with one
  ``functional_call`` and ``torch.autograd.grad`` per forward pass.
- :class:`BatchedEngine`: client states stacked along a new leading dimension and the same
  ``client_step`` under ``vmap``, so everything the step computes (SAM/ASAM norms, a user's own
  rule) is per client. Its loss-gradient oracle has its own vmap rule: one vmapped forward and one
  backward of the summed loss for all clients (:func:`_stacked_oracle`). Clients whose batch at
  step s has a different size (the last partial batch) run in their own vmapped group, so no padding ever enters a loss or a BatchNorm statistic; clients
  that have no step s left are not stepped at all (masked in the update, not only in the loss).

Both engines consume the same :func:`plan_client` schedule (batch indices and augmentation
draws from a generator seeded by (seed, round, client id)) and the same cohort
(:func:`sample_cohort`, seeded by (seed, round)), so they produce the same weights up to
floating-point summation order (tested in float64).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from landscape.errors import LandscapeError
from landscape.train import augment as aug
from landscape.train.aggregate import ClientSums, mean_delta, stacked_weighted_sum, weighted_sum
from landscape.train.algorithms import Algorithm, ClientStart, LocalState, State

ENGINES = ("sequential", "batched", "auto")
# Stream ids keep the random streams of one (seed, round, client) independent.
STREAM_COHORT, STREAM_CLIENT, STREAM_INIT, STREAM_TRACK = 1, 2, 3, 4


def derive_seed(seed: int, round: int, client_id: int, stream: int) -> int:
    """A 63-bit seed for the stream ``stream`` of ``(seed, round, client_id)`` (SeedSequence hash)."""
    ss = np.random.SeedSequence([int(seed), int(stream), int(round), int(client_id) + 1])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def sample_cohort(seed: int, round: int, num_clients: int, clients_per_round: int, sampling: str = "seeded"
                  ) -> list[int]:
    """C distinct clients of 0-based round ``round``, uniformly without replacement; sorted.

    ``seeded``: from a generator seeded by (seed, round). ``fedsam``: as fedsam's
    ``select_clients`` draws them, ``np.random.seed(round)`` then
    ``np.random.choice(clients, C, replace=False)`` (a private ``RandomState(round)`` here, so the
    global numpy state is left alone), the same cohorts for every seed. fedsam's ``clients`` are
    sorted by user id as strings ("0", "1", "10", ...) while client k here is user "k" (ids sorted
    as numbers, :mod:`landscape.splits`), so positions are drawn in fedsam's order and mapped back.

    >>> sample_cohort(0, 0, 12, 3, "fedsam")  # positions [6, 11, 4] of "0", "1", "10", "11", "2", ...
    [2, 4, 9]
    """
    if clients_per_round > num_clients:
        raise LandscapeError(
            f"--clients-per-round {clients_per_round} is more than the {num_clients} clients; lower it"
        )
    if sampling == "fedsam":
        order = sorted(range(num_clients), key=str)
        chosen = [order[p] for p in np.random.RandomState(round).choice(num_clients, clients_per_round, replace=False)]
    else:
        chosen = np.random.default_rng(derive_seed(seed, round, -1, STREAM_COHORT)).choice(
            num_clients, clients_per_round, replace=False)
    return sorted(int(k) for k in chosen)


@dataclass(frozen=True)
class Step:
    """One local step of one client: sample indices into the training set, augmentation draws."""

    idx: Tensor
    crop: Tensor | None = None
    flip: Tensor | None = None


@dataclass
class FederatedData:
    """Training data resident on the device, with each client's index tensor.

    Attributes:
        x, y: the whole training set (x already in the weight dtype).
        client_indices: client k's sample indices into x (CPU, int64).
        augment: apply random crop + flip (image inputs only).
        fill: the crop's padding per channel (the black pixel of normalized data), or None for 0.
    """

    x: Tensor
    y: Tensor
    client_indices: list[Tensor]
    augment: bool = False
    fill: Tensor | None = None

    @classmethod
    def build(cls, x: Tensor, y: Tensor, parts: Sequence[np.ndarray], device: torch.device,
              dtype: torch.dtype, augment: bool = False, fill: Tensor | None = None) -> FederatedData:
        """Move the data to ``device`` once; keep the index arrays as int64 tensors."""
        return cls(x.to(device=device, dtype=dtype), y.to(device), [torch.as_tensor(np.asarray(p), dtype=torch.long)
                                                                    for p in parts], augment and x.ndim == 4,
                   None if fill is None else fill.to(device=device, dtype=dtype))

    def num_samples(self, client_id: int) -> int:
        return int(self.client_indices[client_id].numel())

    def batch(self, steps: Sequence[Step]) -> tuple[Tensor, Tensor]:
        """Stack the inputs of steps of equal size: ``(len(steps), b, ...)`` (augmented)."""
        idx = torch.stack([s.idx for s in steps]).to(self.x.device)
        x = self.x[idx.flatten()]
        if self.augment:
            crop = torch.cat([s.crop for s in steps])
            flip = torch.cat([s.flip for s in steps])
            x = aug.apply(x, crop, flip, self.fill)
        return x.view(idx.shape + x.shape[1:]), self.y[idx]


def plan_client(data: FederatedData, seed: int, round: int, client_id: int, batch_size: int,
                local_epochs: int, min_batch: int = 1) -> list[Step]:
    """The local steps of client ``client_id`` in 0-based round ``round``.

    Each epoch is a fresh permutation of the client's samples cut into batches of
    ``batch_size`` (the last one smaller), all drawn from a generator seeded by
    (seed, round, client id) so that every engine and every resume sees the same batches.
    A last batch smaller than ``min_batch`` is left out (``min_batch=2`` for models with
    BatchNorm, which cannot normalize a single sample in training mode).
    """
    g = torch.Generator().manual_seed(derive_seed(seed, round, client_id, STREAM_CLIENT))
    own = data.client_indices[client_id]
    steps = []
    for _ in range(local_epochs):
        perm = own[torch.randperm(own.numel(), generator=g)]
        for i in range(0, perm.numel(), batch_size):
            idx = perm[i : i + batch_size]
            if idx.numel() < min_batch:
                break
            crop, flip = aug.draw(idx.numel(), g) if data.augment else (None, None)
            steps.append(Step(idx, crop, flip))
    return steps


def _plans_to_device(plans: list[list[Step]], device: torch.device) -> list[list[Step]]:
    """Move every step's indices and augmentation draws with one copy per kind of tensor."""
    flat = [s for p in plans for s in p]
    sizes = [s.idx.numel() for s in flat]
    idx = torch.cat([s.idx for s in flat]).to(device, non_blocking=True).split(sizes)
    if flat[0].crop is not None:
        crop = torch.cat([s.crop for s in flat]).to(device, non_blocking=True).split(sizes)
        flip = torch.cat([s.flip for s in flat]).to(device, non_blocking=True).split(sizes)
    else:
        crop = flip = [None] * len(flat)
    moved = iter(Step(i, c, f) for i, c, f in zip(idx, crop, flip))
    return [[next(moved) for _ in p] for p in plans]


@dataclass
class BlockResult:
    """What one block of a round's clients produced (blocks of one round combine by adding ``sums``).

    Attributes:
        sums: the weighted sum of the block's client models (weights :meth:`Engine.aggregation_weight`)
            and its total weight.
        client_losses: client id -> mean batch loss.
        client_sizes: client id -> number of samples n_k.
        client_weights: client id -> final local weights (only when asked for); its delta is
            ``client_weights[k] - start.weights``.
    """

    sums: ClientSums
    client_losses: dict[int, float]
    client_sizes: dict[int, int]
    client_weights: dict[int, State] | None = None


@dataclass
class RoundResult:
    """What one round produced.

    Attributes:
        state: the new server state.
        train_loss: sample-weighted mean over clients of each client's mean batch loss.
        client_losses: client id -> mean batch loss.
        client_weights: client id -> final local weights (only when asked for).
    """

    state: Any
    train_loss: float
    client_losses: dict[int, float]
    client_weights: dict[int, State] | None = None


class Engine:
    """Shared set-up: the model template (never modified), names, autocast; one round from blocks."""

    name = "engine"
    #: The exceptions of a failed round after which the training loop saves the last completed
    #: round, as after Ctrl-C (none in one process; a lost rank, a failed Flower node).
    failures: tuple[type[BaseException], ...] = ()

    def __init__(self, model: nn.Module, data: FederatedData, cfg: Any, device: torch.device) -> None:
        # A private copy: the engine only uses it as a stateless template for functional_call.
        self.model = copy.deepcopy(model).to(device).train()
        self.data, self.device = data, device
        # What running needs of the config: the batch schedule and the forward pass's precision.
        self.seed, self.batch_size, self.local_epochs = cfg.seed, cfg.batch_size, cfg.local_epochs
        self.bf16 = bool(cfg.bf16)
        self.uniform_weights = getattr(cfg, "client_weights", "samples") == "uniform"
        self.param_names = tuple(n for n, _ in model.named_parameters())
        self.buffer_names = tuple(n for n, _ in model.named_buffers())
        # BatchNorm cannot normalize one sample in training mode: such a last batch is left out.
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.min_batch = 2 if has_bn else 1

    def aggregation_weight(self, client_id: int) -> float:
        """Client k's weight in the mean: n_k [C22 eq. 1], or 1 with uniform client weights (FedNSAM's code)."""
        return 1.0 if self.uniform_weights else float(self.data.num_samples(client_id))

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def plans(self, cohort: Sequence[int], round: int) -> list[list[Step]]:
        """The cohort's schedules (drawn on the CPU), moved to the device in one transfer."""
        plans = [plan_client(self.data, self.seed, round, k, self.batch_size, self.local_epochs, self.min_batch)
                 for k in cohort]
        return plans if self.device.type == "cpu" else _plans_to_device(plans, self.device)

    def _forward_loss(self, params: State, buffers: State, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of one client's batch; BatchNorm updates ``buffers`` in place."""
        with self.autocast():
            out = functional_call(self.model, (params, buffers), (x,))
        return F.cross_entropy(out.float() if self.bf16 else out, y)

    def _loss_grad(self, params: State, buffers: State, x: Tensor, y: Tensor) -> tuple[Tensor, State, State]:
        """Batch loss, its gradient at ``params`` and the buffers after the forward pass."""
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        new_buffers = {k: v.clone() for k, v in buffers.items()}
        loss = self._forward_loss(leaves, new_buffers, x, y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads)), new_buffers

    def run_block(self, algo: Algorithm, start: ClientStart, round: int, clients: Sequence[int], lr: float,
                  keep_clients: bool = False) -> BlockResult:
        """Local training of any block of the clients of 0-based round ``round`` from ``start``."""
        raise NotImplementedError

    def run_round(self, algo: Algorithm, state: Any, round: int, cohort: Sequence[int], lr: float,
                  keep_clients: bool = False) -> RoundResult:
        """Broadcast, the cohort as one block, then the server update on the mean delta."""
        start = algo.broadcast(state)
        block = self.run_block(algo, start, round, cohort, lr, keep_clients)
        new_state = algo.server_update(state, mean_delta(block.sums, start.weights))
        return RoundResult(new_state, train_loss(block), block.client_losses, block.client_weights)


def train_loss(*blocks: BlockResult) -> float:
    """Sample-weighted mean of the clients' mean batch losses over one or more blocks."""
    losses = {k: v for b in blocks for k, v in b.client_losses.items()}
    sizes = {k: v for b in blocks for k, v in b.client_sizes.items()}
    return float(np.average([losses[k] for k in losses], weights=[sizes[k] for k in losses]))


class SequentialEngine(Engine):
    """The reference path: one client after another, one step after another (``algo.client_step``)."""

    name = "sequential"

    def train_client(self, algo: Algorithm, start: ClientStart, steps: Sequence[Step], lr: float
                     ) -> tuple[State, float]:
        """Local training of one client from ``start.weights``; returns its weights and mean loss."""
        local = LocalState({k: start.weights[k].clone() for k in self.param_names},
                           {k: start.weights[k].clone() for k in self.buffer_names}, {})
        local = local._replace(momentum={k: torch.zeros_like(v) for k, v in local.params.items()})
        losses = []
        for step in steps:
            x, y = self.data.batch([step])
            local, loss = algo.client_step(start, local, x[0], y[0], lr, self._loss_grad)
            losses.append(loss)
        mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        return {**local.params, **local.buffers}, mean_loss

    def run_block(self, algo: Algorithm, start: ClientStart, round: int, clients: Sequence[int], lr: float,
                  keep_clients: bool = False) -> BlockResult:
        finals, losses = [], {}
        for k, steps in zip(clients, self.plans(clients, round)):
            final, losses[k] = self.train_client(algo, start, steps, lr)
            finals.append(final)
        sizes = [self.data.num_samples(k) for k in clients]
        return BlockResult(weighted_sum(finals, [self.aggregation_weight(k) for k in clients]), losses,
                           dict(zip(clients, sizes)),
                           dict(zip(clients, finals)) if keep_clients else None)


def _stacked_oracle(engine: BatchedEngine) -> type[torch.autograd.Function]:
    """The loss-gradient oracle of ``engine`` as a function with its own ``vmap`` rule.

    Called on one client it is :meth:`Engine._loss_grad`. Under ``vmap`` (the batched engine
    vmaps ``client_step``), the rule receives the stacked tensors of the whole group and runs
    :meth:`BatchedEngine._stacked_loss_grad`: one vmapped forward and ONE backward of the summed
    loss instead of a backward per client. So ``client_step`` is written once, per client, and
    the batched engine still pays a single backward pass per forward pass. The oracle is never
    differentiated (its gradients are outputs, not a graph), so it has no backward.
    """

    class Oracle(torch.autograd.Function):
        @staticmethod
        def forward(*tensors: Tensor) -> tuple[Tensor, ...]:
            params, buffers, x, y = engine._unflatten(tensors)
            loss, grads, new_buffers = Engine._loss_grad(engine, params, buffers, x, y)
            return (loss, *grads.values(), *new_buffers.values())

        @staticmethod
        def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
            pass

        @staticmethod
        def vmap(info: Any, in_dims: tuple[int | None, ...], *tensors: Tensor) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
            size = info.batch_size
            stacked = [t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)
                       for t, d in zip(tensors, in_dims)]
            params, buffers, x, y = engine._unflatten(stacked)
            losses, grads, new_buffers = engine._stacked_loss_grad(params, buffers, x, y)
            out = (losses, *grads.values(), *new_buffers.values())
            return out, (0,) * len(out)

    return Oracle


class BatchedEngine(Engine):
    """The cohort engine: client states stacked, the same ``algo.client_step`` under ``vmap``.

    At step s the clients that have a step s run grouped by batch size (one vmapped call per
    size, so no padding enters a loss or a BatchNorm statistic); the others are left as they
    are, i.e. masked in the update, not only in the loss.
    """

    name = "batched"

    def __init__(self, model: nn.Module, data: FederatedData, cfg: Any, device: torch.device) -> None:
        super().__init__(model, data, cfg, device)
        self._oracle = _stacked_oracle(self)

    def _stacked_loss_grad(self, params: State, buffers: State, x: Tensor, y: Tensor) -> tuple[Tensor, State, State]:
        """Per-client losses ``(G,)``, gradients and buffers of G stacked clients, one backward.

        ``vmap(functional_call)`` gives the G mean batch losses; client k's loss depends only on
        slice k of the stacked parameters, so the gradient of their sum is the stack of the
        per-client gradients (one backward pass for the whole group, cheaper than
        ``vmap(grad)``, which differentiates each client under the vmap transform).
        """
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        new_buffers = {k: v.clone() for k, v in buffers.items()}
        with torch.enable_grad():
            losses = vmap(self._forward_loss)(leaves, new_buffers, x, y)  # BatchNorm updates new_buffers in place
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return losses.detach(), dict(zip(leaves, grads)), new_buffers

    def _loss_grad(self, params: State, buffers: State, x: Tensor, y: Tensor) -> tuple[Tensor, State, State]:
        """One client's loss, gradient and buffers; under ``vmap`` all clients' at once (see :func:`_stacked_oracle`)."""
        out = self._oracle.apply(*(params[k] for k in self.param_names), *(buffers[k] for k in self.buffer_names), x, y)
        n = len(self.param_names)
        return out[0], dict(zip(self.param_names, out[1 : 1 + n])), dict(zip(self.buffer_names, out[1 + n :]))

    def _unflatten(self, tensors: Sequence[Tensor]) -> tuple[State, State, Tensor, Tensor]:
        """(params, buffers, x, y) from the oracle's flat argument list."""
        n, m = len(self.param_names), len(self.buffer_names)
        return (dict(zip(self.param_names, tensors[:n])), dict(zip(self.buffer_names, tensors[n : n + m])),
                tensors[n + m], tensors[n + m + 1])

    def run_block(self, algo: Algorithm, start: ClientStart, round: int, clients: Sequence[int], lr: float,
                  keep_clients: bool = False) -> BlockResult:
        plans = self.plans(clients, round)
        K = len(clients)

        def stack(t: Tensor) -> Tensor:
            return t.unsqueeze(0).repeat(K, *([1] * t.ndim))

        params = {k: stack(start.weights[k]) for k in self.param_names}
        local = LocalState(params, {k: stack(start.weights[k]) for k in self.buffer_names},
                           {k: torch.zeros_like(v) for k, v in params.items()})

        def one(loc: LocalState, x: Tensor, y: Tensor) -> tuple[LocalState, Tensor]:
            return algo.client_step(start, loc, x, y, lr, self._loss_grad)

        step = vmap(one)
        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        for s in range(max((len(p) for p in plans), default=0)):
            by_size: dict[int, list[int]] = {}
            for j, steps in enumerate(plans):
                if s < len(steps):
                    by_size.setdefault(steps[s].idx.numel(), []).append(j)
            for members in by_size.values():
                x, y = self.data.batch([plans[j][s] for j in members])
                if len(members) == K:
                    local, losses = step(local, x, y)
                    loss_sum += losses.double()
                    continue
                pos = torch.tensor(members, device=self.device)
                part = LocalState(*({k: v.index_select(0, pos) for k, v in d.items()} for d in local))
                part, losses = step(part, x, y)
                local = LocalState(*({k: v.index_copy(0, pos, p[k]) for k, v in d.items()}
                                     for d, p in zip(local, part)))
                loss_sum = loss_sum.index_add(0, pos, losses.double())
        num_steps = torch.tensor([len(p) for p in plans], dtype=torch.float64, device=self.device)
        client_loss = (loss_sum / num_steps).cpu()
        sizes = [self.data.num_samples(k) for k in clients]
        stacked = {**local.params, **local.buffers}
        weights = [self.aggregation_weight(k) for k in clients]
        sums = stacked_weighted_sum(stacked, torch.tensor(weights, dtype=torch.float64, device=self.device))
        clients_out = None
        if keep_clients:
            clients_out = {k: {n: v[j].clone() for n, v in stacked.items()} for j, k in enumerate(clients)}
        return BlockResult(sums, {k: float(client_loss[j]) for j, k in enumerate(clients)}, dict(zip(clients, sizes)),
                           clients_out)


def make_engine(name: str, model: nn.Module, data: FederatedData, cfg: Any, device: torch.device) -> Engine:
    """``sequential``, ``batched`` or ``auto``: the faster engine for the device and model.

    ``auto`` is batched on CUDA, and on the CPU batched only for models without convolutions:
    there ``bench/train.py`` measured the batched engine at about half the speed of the
    sequential one for the CIFAR CNN (vmap turns per-client convolutions into grouped
    convolutions, which are slow on CPU) with 2.7x the memory, while for the digits MLP
    (preset ``digits-demo``, 200 rounds) it was 1.5x faster for FedAvg and FedSAM.

    Raises:
        LandscapeError: unknown engine name.
    """
    if name == "auto":
        has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
        name = "batched" if device.type == "cuda" or not has_conv else "sequential"
    if name == "sequential":
        return SequentialEngine(model, data, cfg, device)
    if name == "batched":
        return BatchedEngine(model, data, cfg, device)
    raise LandscapeError(f"unknown engine '{name}'; choose one of {', '.join(ENGINES)}")


def evaluate(model: nn.Module, weights: State, x: Tensor, y: Tensor, batch_size: int = 1024,
             bf16: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``weights`` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(y), batch_size):
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = functional_call(model, weights, (x[i : i + batch_size],)).float()
                total_loss += float(F.cross_entropy(out, y[i : i + batch_size], reduction="sum"))
                correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return total_loss / len(y), correct / len(y)
