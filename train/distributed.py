"""Training under torchrun: each rank trains its block of every round's cohort, the blocks add up.

``torchrun --nproc-per-node N -m landscape train ...`` starts N copies of the command. With
``WORLD_SIZE > 1`` in the environment (torchrun sets it, with RANK, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) :func:`landscape.train.run.train` joins the other ranks in one torch.distributed
process group (gloo on the CPU; NCCL for CUDA tensors with gloo for the small Python objects,
each rank on ``cuda:LOCAL_RANK``) and runs its rounds through :class:`DistributedEngine`:

1. every rank trains :func:`block` of the round's cohort (contiguous chunks in cohort order) with
   its own engine (``Engine.run_block``; ``--engine`` as in one process);
2. the ranks all-gather their clients' losses and sizes and their total weights, and all-reduce
   (sum) the weighted sums of their client models: :class:`~landscape.train.aggregate.ClientSums`
   of blocks add up to the round's;
3. every rank applies the same server update to the same sums, so all hold the same server state.

Rank 0 alone touches the run folder (the lock, checkpoints, metrics, ``state.pt``) and prints; the
client models it saves or measures (``--save-clients-every``, ``--track-every``) are gathered to it.
The weights equal the single-process run's up to the order of the summation (float64, digits MLP,
5 clients on 2 ranks: 1e-16 after 4 rounds, 3e-15 after 20, weights up to 1.6; the tests allow 1e-13);
losses, cohorts and ``state.pt`` do not depend on N, so a run resumes on any number of ranks.

Failures. A rank whose own code fails reports it (``error: rank R of N: ...``); a rank that is
killed cannot, so the others learn it at the next exchange (the collective fails, or times out
after ``--collective-timeout`` seconds) and the first of them names it: every rank records in
torchrun's store the exchange it reached last, so the ranks that did not reach the current one
are the lost ones. The store also picks one reporter (the first failure to count itself); the
other ranks stop quietly with exit status 2, and torchrun stops the rest (SIGTERM, turned into
:class:`Stopped`). Whatever stops it, rank 0 saves the last completed round before it exits,
as after Ctrl-C, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape.errors import LandscapeError
from landscape.operators import resolve_device
from landscape.train.aggregate import ClientSums, mean_delta
from landscape.train.engine import BlockResult, Engine, RoundResult, train_loss

#: Seconds a rank waits for the others at an exchange; rank 0 evaluates, measures and saves
#: between rounds while the others wait (``--collective-timeout``).
DEFAULT_TIMEOUT = 1800.0
RESUME = "continue the run with the same command plus --resume"


class LostRank(LandscapeError):
    """An exchange failed: another rank stopped, or did not answer within the timeout."""


class Stopped(LandscapeError):
    """This rank received SIGTERM."""


#: What the training loop treats like Ctrl-C: rank 0 saves the last completed round.
FAILURES = (LostRank, Stopped)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise LandscapeError(f"the environment variable {name}={value!r} is not a number",
                             fix="launch with torchrun, which sets it, or unset it") from None


def world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it; 1 outside torchrun."""
    return _env_int("WORLD_SIZE", 1)


def block(cohort: Sequence[int], rank: int, size: int) -> list[int]:
    """Rank ``rank``'s clients of ``cohort``: contiguous chunks in cohort order, the first ones longer.

    >>> [block([3, 5, 8, 9, 11], r, 2) for r in range(2)]
    [[3, 5, 8], [9, 11]]
    """
    q, extra = divmod(len(cohort), size)
    lo = rank * q + min(rank, extra)
    return list(cohort[lo : lo + q + (rank < extra)])


@dataclass
class Ranks:
    """This process's place among the ranks, and the exchanges with them.

    Attributes:
        rank, size: RANK and WORLD_SIZE.
        store: torchrun's key-value store (it outlives the ranks): where each rank was last, who reports.
        timeout: seconds an exchange waits.
    """

    rank: int
    size: int
    store: Any
    timeout: float
    _waiting: bool = False  # inside a collective
    _failing: bool = False  # a failure is on its way out
    _stopped: bool = False  # SIGTERM came

    @property
    def writer(self) -> bool:
        """Whether this rank writes the run folder and prints (rank 0)."""
        return self.rank == 0

    def connect(self, device: str | torch.device | None) -> torch.device:
        """Join the process group with the backend of this rank's device (cuda:LOCAL_RANK, or cpu).

        Raises:
            LandscapeError: a device other than cpu or cuda, ``cuda:N`` named, fewer GPUs than ranks on the node.
        """
        import torch.distributed as dist

        dev = device if isinstance(device, torch.device) else resolve_device(device)
        if dev.type == "cuda":
            local = _env_int("LOCAL_RANK", 0)
            if dev.index is not None:
                raise LandscapeError(f"--device {device}: under torchrun each rank takes cuda:LOCAL_RANK",
                                     fix="pass --device cuda (or leave it out)")
            if local >= torch.cuda.device_count():
                raise LandscapeError(f"rank {self.rank} has LOCAL_RANK {local} but the node has "
                                     f"{torch.cuda.device_count()} GPU(s)", fix="lower --nproc-per-node")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        elif dev.type != "cpu":
            raise LandscapeError(f"device '{dev}' cannot train under torchrun", fix="use --device cpu or cuda")
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        self.exchange("the set-up", dist.init_process_group, backend, store=self.store, rank=self.rank,
                      world_size=self.size, timeout=datetime.timedelta(seconds=self.timeout),
                      device_id=dev if dev.type == "cuda" else None)
        return dev

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The run on this rank: SIGTERM raises :class:`Stopped`; a failure is marked for the command
        line (``rank_label`` on the one reporter, ``reported_by_another_rank`` on the others); at the
        end every rank waits for rank 0 to finish writing."""
        import torch.distributed as dist

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if main else None
        try:
            yield
            self.exchange("the end", dist.barrier)
            dist.destroy_process_group()
        except (Exception, KeyboardInterrupt) as exc:
            self._failing = True
            self._mark(exc)
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """Raise :class:`Stopped`, unless a collective is under way (it fails on its own, or ends and
        raises it then: a collective's error is the more telling one) or a failure is already leaving."""
        self._stopped = True
        if self._waiting or self._failing:
            return
        self._failing = True
        raise Stopped("stopped by SIGTERM (torchrun stops every rank once one fails; a scheduler at the job's "
                      "time limit)", fix=RESUME)

    def _mark(self, exc: BaseException) -> None:
        """The first failure to count itself in the store reports; the others stop quietly."""
        try:
            first = self.store.add("landscape/failures", 1) == 1
        except Exception:  # noqa: BLE001 - no store left (its host is gone): report
            first = True
        if first:
            exc.rank_label = f"rank {self.rank} of {self.size}"  # type: ignore[attr-defined]
        else:
            exc.reported_by_another_rank = True  # type: ignore[attr-defined]

    def exchange(self, label: str, collective: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one torch.distributed call at ``label`` (``the exchange of round 3``); a failure is :class:`LostRank`."""
        t0 = time.monotonic()
        self._waiting = True
        try:
            self.store.set(f"landscape/at/{self.rank}", label)
            result = collective(*args, **kwargs)
        except Exception:
            self._failing = True
            raise LostRank(self._lost(label, time.monotonic() - t0), fix=RESUME) from None
        finally:
            self._waiting = False
        if self._stopped:
            self._on_sigterm(signal.SIGTERM, None)
        return result

    def _lost(self, label: str, waited: float) -> str:
        """Which ranks did not reach ``label``, from where each one was last."""
        behind = []
        for r in range(self.size):
            try:
                at = self.store.get(f"landscape/at/{r}").decode() if self.store.check([f"landscape/at/{r}"]) else None
            except Exception:  # noqa: BLE001 - the store went with its host
                return f"{label} failed and torchrun's store is gone (rank 0 stopped?)"
            if r != self.rank and at != label:
                behind.append(f"rank {r} (last at {at or 'the start'})")
        if not behind:
            return f"a rank stopped during {label}"
        who = ", ".join(behind)
        if waited >= 0.99 * self.timeout:
            return f"{who} did not reach {label} within --collective-timeout {self.timeout:g} s (hung, or slower)"
        return f"{who} stopped before {label} without reporting an error (killed or crashed: torchrun's report " \
               f"gives the exit status)"

    def from_writer(self, value: Any, device: torch.device) -> Any:
        """Rank 0's ``value`` (tensors, dicts, lists, numbers, strings) on every rank, tensors on ``device``."""
        import torch.distributed as dist

        payload: list[Any] = [None]
        if self.writer:
            buffer = io.BytesIO()
            torch.save(value, buffer)
            payload = [buffer.getvalue()]
        self.exchange("the start", dist.broadcast_object_list, payload, src=0)
        return torch.load(io.BytesIO(payload[0]), map_location=device, weights_only=True)

    def sum(self, tensors: dict[str, Tensor], names: Sequence[str], label: str) -> dict[str, Tensor]:
        """``tensors`` summed over the ranks: one all-reduce per dtype, of the tensors flattened in ``names`` order."""
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[str]] = {}
        for k in names:
            by_dtype.setdefault(tensors[k].dtype, []).append(k)
        out = {}
        for keys in by_dtype.values():
            flat = torch.cat([tensors[k].reshape(-1) for k in keys])
            self.exchange(label, dist.all_reduce, flat)
            for k, piece in zip(keys, flat.split([tensors[k].numel() for k in keys])):
                out[k] = piece.view_as(tensors[k])
        return {k: out[k] for k in names}

    def to_writer(self, clients: dict[int, dict[str, Tensor]], label: str, device: torch.device
                  ) -> dict[int, dict[str, Tensor]] | None:
        """Every rank's client models on rank 0 (``device``), in rank order; None on the other ranks."""
        import torch.distributed as dist

        mine = {k: {n: v.cpu() for n, v in w.items()} for k, w in clients.items()}
        gathered: list[Any] | None = [None] * self.size if self.writer else None
        self.exchange(label, dist.gather_object, mine, gathered, dst=0)
        if gathered is None:
            return None
        return {k: {n: v.to(device) for n, v in w.items()} for part in gathered for k, w in part.items()}


def join(timeout: float = DEFAULT_TIMEOUT) -> Ranks:
    """Meet the other ranks in torchrun's store (the process group waits for the device: :meth:`Ranks.connect`).

    Raises:
        LandscapeError: RANK outside WORLD_SIZE, or no torchrun environment to meet in.
    """
    import torch.distributed as dist

    size, rank = world_size(), _env_int("RANK", -1)
    if not 0 <= rank < size:
        raise LandscapeError(f"RANK={os.environ.get('RANK')} is not a rank of WORLD_SIZE={size}",
                             fix="launch with torchrun --nproc-per-node N")
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, size, timeout=datetime.timedelta(seconds=timeout)))
    except (ValueError, RuntimeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LandscapeError(f"rank {rank} of {size} cannot meet the other ranks ({text})",
                             fix="launch with torchrun --nproc-per-node N") from None
    return Ranks(rank, size, store, timeout)


class DistributedEngine:
    """An engine whose rounds are split over the ranks (see the module docstring); the same ``run_round``.

    Args:
        engine: this rank's engine (for its device).
        ranks: this process among the ranks, connected.
        device: this rank's device (client models gathered to rank 0 land there).
    """

    failures = FAILURES

    def __init__(self, engine: Engine, ranks: Ranks, device: torch.device) -> None:
        self.engine, self.ranks, self.device = engine, ranks, device
        self.name, self.param_names = engine.name, engine.param_names

    def run_round(self, algo: Any, state: Any, round: int, cohort: Sequence[int], lr: float,
                  keep_clients: bool = False) -> RoundResult:
        """This rank's block, the sums of all blocks, the server update; client models on rank 0 only."""
        import torch.distributed as dist

        start = algo.broadcast(state)
        names = (*self.engine.param_names, *self.engine.buffer_names)
        mine = block(cohort, self.ranks.rank, self.ranks.size)
        if mine:
            own = self.engine.run_block(algo, start, round, mine, lr, keep_clients)
        else:  # more ranks than clients in the round: this one adds nothing
            own = BlockResult(ClientSums({k: torch.zeros_like(start.weights[k], dtype=start.weights[k].dtype if
                                              start.weights[k].is_floating_point() else torch.float64)
                                          for k in names}, 0.0), {}, {}, {})
        label = f"the exchange of round {round + 1}"
        blocks: list[Any] = [None] * self.ranks.size
        summary = BlockResult(ClientSums({}, own.sums.total_weight), own.client_losses, own.client_sizes)
        self.ranks.exchange(label, dist.all_gather_object, blocks, summary)
        sums = ClientSums(self.ranks.sum(own.sums.weighted_sum, names, label),
                          sum(b.sums.total_weight for b in blocks))
        new_state = algo.server_update(state, mean_delta(sums, start.weights))
        clients = self.ranks.to_writer(own.client_weights or {}, label, self.device) if keep_clients else None
        losses = {k: v for b in blocks for k, v in b.client_losses.items()}
        return RoundResult(new_state, train_loss(*blocks), losses, clients)
