"""One federated round on two interchangeable engines.

- :class:`SequentialEngine`, the reference: clients one after another, one ``functional_call``
  and ``torch.autograd.grad`` per forward pass.
- :class:`BatchedEngine`: the whole cohort at once. Client parameters are stacked along a new
  leading dimension; ``vmap(functional_call)`` gives the per-client mean batch losses, whose sum
  is differentiated once (client k's loss depends only on slice k, so the gradient of the sum is
  the stack of per-client gradients). SAM/ASAM norms are taken per client. Clients whose batch at
  step s has a different size (the last partial batch) run in their own vmapped group, so no
  padding ever enters a loss or a BatchNorm statistic; clients that have no step s left are
  masked in the update (not only in the loss: weight decay would move them otherwise).

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
from landscape.train.algorithms import Algorithm, ClientStart, State
from landscape.train.sam import asam_perturbation, sam_perturbation

ENGINES = ("sequential", "batched", "auto")
# Stream ids keep the random streams of one (seed, round, client) independent.
STREAM_COHORT, STREAM_CLIENT, STREAM_INIT = 1, 2, 3


def derive_seed(seed: int, round: int, client_id: int, stream: int) -> int:
    """A 63-bit seed for the stream ``stream`` of ``(seed, round, client_id)`` (SeedSequence hash)."""
    ss = np.random.SeedSequence([int(seed), int(stream), int(round), int(client_id) + 1])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def sample_cohort(seed: int, round: int, num_clients: int, clients_per_round: int) -> list[int]:
    """C distinct clients, uniformly, from a generator seeded by (seed, round); sorted."""
    if clients_per_round > num_clients:
        raise LandscapeError(
            f"--clients-per-round {clients_per_round} is more than the {num_clients} clients; lower it"
        )
    rng = np.random.default_rng(derive_seed(seed, round, -1, STREAM_COHORT))
    return sorted(int(k) for k in rng.choice(num_clients, clients_per_round, replace=False))


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


def weighted_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    """``sum_k n_k w_k / sum_k n_k`` per tensor; integer buffers rounded."""
    total = float(sum(weights))
    out = {}
    for k, ref in states[0].items():
        if ref.is_floating_point():
            acc = sum(s[k] * w for s, w in zip(states, weights))
            out[k] = acc / total
        else:
            acc = sum(s[k].double() * w for s, w in zip(states, weights))
            out[k] = torch.round(acc / total).to(ref.dtype)
    return out


def _sgd(p: Tensor, g: Tensor, buf: Tensor, lr: float, cfg: Any) -> tuple[Tensor, Tensor]:
    """Client SGD: ``d = g + wd p``; ``buf <- mu buf + d``; ``p <- p - lr buf`` (buf = d when mu = 0)."""
    d = g + cfg.weight_decay * p
    if cfg.client_momentum:
        d = cfg.client_momentum * buf + d
    return p - lr * d, d


class Engine:
    """Shared set-up: the model template (never modified), names, autocast."""

    name = "engine"

    def __init__(self, model: nn.Module, data: FederatedData, cfg: Any, device: torch.device) -> None:
        # A private copy: the engine only uses it as a stateless template for functional_call.
        self.model = copy.deepcopy(model).to(device).train()
        self.data, self.cfg, self.device = data, cfg, device
        self.param_names = tuple(n for n, _ in model.named_parameters())
        self.buffer_names = tuple(n for n, _ in model.named_buffers())
        # BatchNorm cannot normalize one sample in training mode: such a last batch is left out.
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.min_batch = 2 if has_bn else 1

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(self.cfg.bf16))

    def plans(self, cohort: Sequence[int], round: int) -> list[list[Step]]:
        """The cohort's schedules (drawn on the CPU), moved to the device in one transfer."""
        plans = [plan_client(self.data, self.cfg.seed, round, k, self.cfg.batch_size, self.cfg.local_epochs,
                             self.min_batch) for k in cohort]
        return plans if self.device.type == "cpu" else _plans_to_device(plans, self.device)

    def run_round(self, algo: Algorithm, state: Any, round: int, cohort: Sequence[int], lr: float,
                  keep_clients: bool = False) -> RoundResult:
        raise NotImplementedError


class SequentialEngine(Engine):
    """The reference path: one client after another, one step after another."""

    name = "sequential"

    def _loss_grad(self, params: State, buffers: State, x: Tensor, y: Tensor) -> tuple[Tensor, State, State]:
        """Batch loss, its gradient at ``params`` and the buffers after the forward pass."""
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        new_buffers = {k: v.clone() for k, v in buffers.items()}
        with self.autocast():
            out = functional_call(self.model, (leaves, new_buffers), (x,))
        loss = F.cross_entropy(out.float() if self.cfg.bf16 else out, y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads)), new_buffers

    def local_step(self, params: State, buffers: State, momentum: State, x: Tensor, y: Tensor, lr: float,
                   kind: str, start: ClientStart) -> tuple[State, State, State, Tensor]:
        """One client step: (perturbed) gradient, then SGD with weight decay at the unperturbed w."""
        cfg = self.cfg
        if kind == "none" or (kind == "global_momentum" and start.direction is None):
            loss, g, buffers = self._loss_grad(params, buffers, x, y)
        elif kind == "global_momentum":  # eps = -rho m / ||m||, one pass at u + eps [L26]
            shifted = {k: v - cfg.effective_rho * start.direction[k] for k, v in params.items()}
            loss, g, buffers = self._loss_grad(shifted, buffers, x, y)
        elif kind in ("sam", "asam"):
            loss, g0, first = self._loss_grad(params, buffers, x, y)
            if kind == "sam":
                e = sam_perturbation(g0, cfg.effective_rho)
            else:
                e = asam_perturbation(params, g0, cfg.effective_rho, cfg.eta, cfg.asam_variant)
            # w + e is a new tensor; w itself is kept, so "restoring" it is exact.
            _, g, second = self._loss_grad({k: v + e[k] for k, v in params.items()}, first, x, y)
            buffers = first if cfg.bn_first_pass_only else second
        else:
            raise ValueError(f"unknown perturbation kind {kind!r}")
        new_params, new_momentum = {}, {}
        for k, p in params.items():
            new_params[k], new_momentum[k] = _sgd(p, g[k], momentum[k], lr, cfg)
        return new_params, buffers, new_momentum, loss

    def train_client(self, start: ClientStart, kind: str, steps: Sequence[Step], lr: float) -> tuple[State, float]:
        """Local training of one client from ``start.weights``; returns its weights and mean loss."""
        params = {k: start.weights[k].clone() for k in self.param_names}
        buffers = {k: start.weights[k].clone() for k in self.buffer_names}
        momentum = {k: torch.zeros_like(v) for k, v in params.items()}
        losses = []
        for step in steps:
            x, y = self.data.batch([step])
            params, buffers, momentum, loss = self.local_step(params, buffers, momentum, x[0], y[0], lr, kind, start)
            losses.append(loss)
        mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        return {**params, **buffers}, mean_loss

    def run_round(self, algo: Algorithm, state: Any, round: int, cohort: Sequence[int], lr: float,
                  keep_clients: bool = False) -> RoundResult:
        start = algo.broadcast(state, self.cfg)
        kind = algo.perturbation(self.cfg)
        finals, losses = [], {}
        for k, steps in zip(cohort, self.plans(cohort, round)):
            final, losses[k] = self.train_client(start, kind, steps, lr)
            finals.append(final)
        sizes = [self.data.num_samples(k) for k in cohort]
        mean = weighted_mean(finals, sizes)
        new_state = algo.server_update(state, start, mean, self.cfg)
        train_loss = float(np.average([losses[k] for k in cohort], weights=sizes))
        return RoundResult(new_state, train_loss, losses, dict(zip(cohort, finals)) if keep_clients else None)


class BatchedEngine(Engine):
    """The cohort engine: stacked client parameters, vmapped forward, one backward per pass."""

    name = "batched"

    def _client_loss(self, params: State, buffers: State, x: Tensor, y: Tensor) -> Tensor:
        with self.autocast():
            out = functional_call(self.model, (params, buffers), (x,))
        return F.cross_entropy(out.float() if self.cfg.bf16 else out, y)

    def _loss_grad(self, params: State, buffers: State, groups: list[tuple[Tensor | None, Tensor, Tensor]]
                   ) -> tuple[Tensor, State, State]:
        """Per-client losses ``(K,)``, per-client gradients (stacked) and the updated buffers.

        ``groups`` holds (client positions or None for all, X (G, b, ...), Y (G, b)); clients
        outside every group get zero gradient, zero loss and unchanged buffers.
        """
        K = next(iter(params.values())).shape[0]
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        new_buffers = dict(buffers)
        losses = torch.zeros(K, device=self.device, dtype=torch.float32 if self.cfg.bf16 else next(iter(params.values())).dtype)
        total = 0
        vloss = vmap(self._client_loss)
        for pos, x, y in groups:
            if pos is None:
                p = leaves
                b = {k: v.clone() for k, v in buffers.items()}
            else:
                p = {k: v.index_select(0, pos) for k, v in leaves.items()}
                b = {k: v.index_select(0, pos) for k, v in buffers.items()}
            group_losses = vloss(p, b, x, y)  # BatchNorm updates the stacked buffers b in place
            total = total + group_losses.sum()
            if pos is None:
                new_buffers = b
                losses = group_losses.detach()
            else:
                new_buffers = {k: new_buffers[k].index_copy(0, pos, b[k]) for k in b}
                losses = losses.index_copy(0, pos, group_losses.detach().to(losses.dtype))
        grads = torch.autograd.grad(total, list(leaves.values()))
        return losses, dict(zip(leaves, grads)), new_buffers

    def _groups(self, plans: list[list[Step]], s: int) -> tuple[list[tuple[Tensor | None, Tensor, Tensor]], Tensor]:
        """Clients with a step s, grouped by batch size; and the (K,) activity mask."""
        K = len(plans)
        by_size: dict[int, list[int]] = {}
        for j, steps in enumerate(plans):
            if s < len(steps):
                by_size.setdefault(steps[s].idx.numel(), []).append(j)
        groups = []
        for members in by_size.values():
            x, y = self.data.batch([plans[j][s] for j in members])
            pos = None if len(members) == K else torch.tensor(members, device=self.device)
            groups.append((pos, x, y))
        return groups, self._num_steps > s

    def run_round(self, algo: Algorithm, state: Any, round: int, cohort: Sequence[int], lr: float,
                  keep_clients: bool = False) -> RoundResult:
        cfg = self.cfg
        start = algo.broadcast(state, cfg)
        kind = algo.perturbation(cfg)
        plans = self.plans(cohort, round)
        K = len(cohort)
        self._num_steps = torch.tensor([len(p) for p in plans], device=self.device)

        def stack(t: Tensor) -> Tensor:
            return t.unsqueeze(0).repeat(K, *([1] * t.ndim))

        params = {k: stack(start.weights[k]) for k in self.param_names}
        buffers = {k: stack(start.weights[k]) for k in self.buffer_names}
        momentum = {k: torch.zeros_like(v) for k, v in params.items()}
        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        num_steps = torch.tensor([len(p) for p in plans], dtype=torch.float64, device=self.device)
        direction = None
        if kind == "global_momentum" and start.direction is not None:
            direction = {k: -cfg.effective_rho * v for k, v in start.direction.items()}

        for s in range(max(len(p) for p in plans)):
            groups, active = self._groups(plans, s)
            if kind == "none" or (kind == "global_momentum" and direction is None):
                losses, g, new_buffers = self._loss_grad(params, buffers, groups)
            elif kind == "global_momentum":
                shifted = {k: v + direction[k] for k, v in params.items()}  # broadcasts over clients
                losses, g, new_buffers = self._loss_grad(shifted, buffers, groups)
            elif kind in ("sam", "asam"):
                losses, g0, first = self._loss_grad(params, buffers, groups)
                if kind == "sam":
                    e = sam_perturbation(g0, cfg.effective_rho, batch_dims=1)
                else:
                    e = asam_perturbation(params, g0, cfg.effective_rho, cfg.eta, cfg.asam_variant, batch_dims=1)
                _, g, second = self._loss_grad({k: v + e[k] for k, v in params.items()}, first, groups)
                new_buffers = first if cfg.bn_first_pass_only else second
            else:
                raise ValueError(f"unknown perturbation kind {kind!r}")
            for k, p in params.items():
                mask = active.view((K,) + (1,) * (p.ndim - 1))
                new_p, new_m = _sgd(p, g[k], momentum[k], lr, cfg)
                params[k] = torch.where(mask, new_p, p)
                momentum[k] = torch.where(mask, new_m, momentum[k])
            buffers = new_buffers  # inactive clients' buffers were left unchanged
            loss_sum += losses.double() * active
        sizes = torch.tensor([self.data.num_samples(k) for k in cohort], dtype=torch.float64, device=self.device)
        stacked = {**params, **buffers}
        mean = {}
        for k, v in stacked.items():
            w = sizes.to(v.dtype if v.is_floating_point() else torch.float64).view((K,) + (1,) * (v.ndim - 1))
            if v.is_floating_point():
                mean[k] = (v * w).sum(0) / w.sum()
            else:
                mean[k] = torch.round((v.double() * w).sum(0) / w.sum()).to(v.dtype)
        new_state = algo.server_update(state, start, mean, cfg)
        client_loss = (loss_sum / num_steps).cpu()
        losses_by_id = {k: float(client_loss[j]) for j, k in enumerate(cohort)}
        train_loss = float((client_loss * sizes.cpu()).sum() / sizes.sum().cpu())
        clients = None
        if keep_clients:
            clients = {k: {n: v[j].clone() for n, v in stacked.items()} for j, k in enumerate(cohort)}
        return RoundResult(new_state, train_loss, losses_by_id, clients)


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
