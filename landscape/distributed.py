"""Data-parallel analysis under ``torchrun``: the process group, the data shard, the reductions.

``torchrun --nproc-per-node N -m landscape hessian ...`` (and ``surface``, ``plane``,
``flatness``) runs N copies of the command. :func:`start` joins torchrun's process group
when ``WORLD_SIZE > 1`` (gloo on a CPU, NCCL on GPUs, each rank on ``cuda:LOCAL_RANK``);
with one process nothing here runs, and :func:`current` is None.

Where the work is split (the one place each analysis inherits it from):

- :class:`~landscape.objective.Objective` holds this rank's shard of the data
  (:meth:`World.shard`) and sums over ranks: its ``num_samples`` is the global count, its
  loss, metrics and gradient are all-reduced, and every curvature operator's product is
  all-reduced in :meth:`~landscape.operators.CurvatureOperator.matvec`. The objective is
  f(w) = sum_b c_b L_b / N, a sum over samples, so the reduced value is the single-process
  one up to the order of the summation (1e-15 relative in float64).
- The solvers (Lanczos, power iteration, Hutchinson, SLQ) run redundantly on every rank:
  their random vectors come from seeded CPU generators and every product they see is the
  same all-reduced tensor, so every rank takes the same steps (checked once, on the first
  product: :meth:`World.check_same`).
- Surfaces split grid points instead (:func:`landscape.surface.evaluate`): whole points per
  rank on all the data, one small all-gather of the values per round of chunks.

Rank 0 alone prints and writes; a rank that fails leaves its one-line message in torchrun's
store (:func:`post_failure`) and rank 0 reports which rank failed and why
(:func:`describe_failure`); torchrun's SIGTERM to the survivors unwinds them like an
interrupt (:class:`Stopped`), so no half-written result is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from landscape.errors import LandscapeError
from landscape.launch import launched

T = TypeVar("T")
#: Where a failing rank leaves its message for rank 0, in torchrun's store.
FAILURE_KEY = "landscape/failure/"
#: How long rank 0 waits for the store when it looks for a failed rank's message.
STORE_TIMEOUT = timedelta(seconds=2)
#: How long rank 0 waits for a rank whose connection broke to be gone (or to have left a message).
GONE_SECONDS = 3.0


class Stopped(BaseException):
    """torchrun stopped this rank (SIGTERM, because another rank failed): unwinds like Ctrl-C,
    so ``finally`` blocks remove half-written files, and no ``except Exception`` swallows it."""


@dataclass
class World:
    """The ranks of one analysis: who this is, how to reach the others.

    Attributes:
        rank, size: this rank and the number of ranks.
        device: where collectives run (the rank's GPU for NCCL, else the CPU).
        store: torchrun's key-value store (None for a process group the caller started).
        peers: ``(host, pid)`` of every rank (None when unknown): which rank died.
    """

    rank: int
    size: int
    device: torch.device
    store: Any = None
    peers: list[tuple[str, int]] | None = field(default=None, repr=False)

    # -- reductions ----------------------------------------------------------------------
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce ``tensor`` in place (sum over ranks); every rank gets the same bits."""
        if tensor.device == self.device:
            dist.all_reduce(tensor)
            return tensor
        moved = tensor.to(self.device)
        dist.all_reduce(moved)
        return tensor.copy_(moved)

    def sum_values(self, *values: float) -> list[float]:
        """Python numbers summed over ranks (in float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def min_int(self, value: int) -> int:
        """The smallest of the ranks' values (e.g. a memory-bound chunk size every rank can afford)."""
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def check_same(self, tensor: torch.Tensor, what: str) -> None:
        """Refuse to go on when the ranks hold different ``tensor`` s (they would take different
        solver steps and wait for each other forever).

        Raises:
            LandscapeError: the ranks disagree (the same on every rank).
        """
        s = tensor.detach().double().sum().reshape(1).to(self.device)
        both = torch.cat([s, -s])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        spread = float(both[0] + both[1])
        if spread != 0 and spread == spread:  # NaN everywhere is the same NaN; the caller reports it
            raise LandscapeError(f"the ranks got different {what} (checksums differ by {spread:.3g})",
                                 where=f"rank {self.rank} of {self.size}",
                                 fix="run every rank on the same kind of device with the same torch build")

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype on every rank), in rank order, on every rank."""
        t = tensor.to(self.device)
        out = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(out, t)
        return [o.to(tensor.device) for o in out]

    def from_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 alone, its result (or its one-line error) handed to every rank.

        For what one reader must decide for all (a result file to continue, which may exist
        only on rank 0's disk).

        Raises:
            LandscapeError: the error ``fn`` raised on rank 0, on every rank.
        """
        box: list[Any] = [None]
        if self.rank == 0:
            try:
                box[0] = ("ok", fn())
            except LandscapeError as exc:
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0, device=self.device)
        kind, value = box[0]
        if kind == "error":
            raise LandscapeError(value)
        return value

    # -- the data --------------------------------------------------------------------------
    def shard(self, data: Iterable[Any]) -> Iterable[Any]:
        """This rank's part of the batches: rows split, or whole batches dealt out.

        A batch of tensors that share dim 0 (an ``(inputs, targets)`` pair, a dict of
        tensors) is split into ``size`` contiguous row blocks (sizes differing by at most
        one), block ``rank`` kept: every rank gets an equal share even of one batch holding
        all the data, and as the objective is a sum over samples, the blocks add up to the
        batch exactly. Any other batch goes whole to rank ``index % size``. A list stays a
        list; anything else is split lazily on every pass.
        """
        shard = _Shard(data, self.rank, self.size)
        return list(shard) if isinstance(data, (list, tuple)) else shard


class _Shard:
    """A re-iterable view of one rank's part of a re-iterable of batches (:meth:`World.shard`)."""

    def __init__(self, data: Iterable[Any], rank: int, size: int) -> None:
        self.data, self.rank, self.size = data, rank, size

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.data):
            rows = split_rows(batch, self.rank, self.size)
            if rows is None:
                if index % self.size == self.rank:
                    yield batch
            elif rows is not EMPTY:
                yield rows


EMPTY = object()


def split_rows(batch: Any, rank: int, size: int) -> Any:
    """Block ``rank`` of ``size`` contiguous row blocks of a batch of tensors sharing dim 0
    (:data:`EMPTY` when the block has no rows), or None for a batch that cannot be split."""
    if isinstance(batch, Mapping):
        tensors = list(batch.values())
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        tensors = list(batch)
    else:
        return None
    if not tensors or not all(isinstance(t, torch.Tensor) and t.ndim > 0 for t in tensors) or \
            len({t.shape[0] for t in tensors}) != 1:
        return None
    n = tensors[0].shape[0]
    lo, hi = rank * n // size, (rank + 1) * n // size
    if hi == lo:
        return EMPTY
    if isinstance(batch, Mapping):
        return {k: t[lo:hi] for k, t in batch.items()}
    return type(batch)(t[lo:hi] for t in batch)


# ----------------------------------------------------------------------------------------------
# the process group
# ----------------------------------------------------------------------------------------------
_WORLD: World | None = None


def current() -> World | None:
    """The ranks this process computes with: the group :func:`start` joined, or one the caller
    initialized itself (``torch.distributed.init_process_group``); None for a single process."""
    if _WORLD is not None:
        return _WORLD
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return World(dist.get_rank(), dist.get_world_size(), device)
    return None


def is_main() -> bool:
    """Whether this process prints and writes (rank 0, or the only process)."""
    world = current()
    return world is None or world.rank == 0


def start(device: torch.device) -> World | None:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (once; None for one process).

    The backend follows the device the analysis runs on: NCCL for CUDA (this rank then
    computes on ``cuda:LOCAL_RANK``), gloo otherwise. SIGTERM (torchrun stopping the
    survivors of a failed rank) raises :class:`Stopped` from then on.

    Raises:
        LandscapeError: a ``--device cuda:N`` that is not this rank's GPU, more ranks on a
            node than it has GPUs, or a rendezvous torchrun's variables do not describe.
    """
    global _WORLD
    if _WORLD is not None or not launched():
        return _WORLD
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    backend = "gloo"
    if device.type == "cuda":
        backend = "nccl"
        if local >= torch.cuda.device_count():
            raise LandscapeError(f"torchrun started local rank {local} but this node has "
                                 f"{torch.cuda.device_count()} GPU(s)", fix="lower --nproc-per-node to the GPUs")
        if device.index is not None and device.index != local:
            raise LandscapeError(f"--device {device} under torchrun: each rank computes on its own GPU "
                                 f"(cuda:LOCAL_RANK, here cuda:{local})", fix="pass --device cuda")
        torch.cuda.set_device(local)
    try:
        store, rank, size = next(dist.rendezvous("env://"))
        dist.init_process_group(backend, store=store, rank=rank, world_size=size)
    except (ValueError, RuntimeError) as exc:
        raise LandscapeError(f"cannot join the torchrun process group ({str(exc).splitlines()[0]})",
                             where=f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}",
                             fix="start the command with torchrun, or unset WORLD_SIZE for one process") from None
    comm = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    peers: list[Any] = [None] * size
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    _WORLD = World(rank, size, comm, store, [tuple(p) for p in peers])
    signal.signal(signal.SIGTERM, _stop)
    return _WORLD


def stop() -> None:
    """Leave the process group :func:`start` joined (after a successful run)."""
    global _WORLD
    if _WORLD is not None:
        _WORLD = None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        dist.destroy_process_group()


def _stop(signum: int, frame: object) -> None:
    if sys.exc_info()[1] is not None:  # already failing (handling the broken collective): let that finish
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the clean-up finish
    raise Stopped(f"signal {signum}")


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold torchrun's SIGTERM while a file is written (then raise :class:`Stopped`): a surface's
    progress is saved whole even when another rank died just before."""
    if _WORLD is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


# ----------------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------------
#: How gloo words a collective whose peer is gone (it raises a plain RuntimeError).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says another rank is gone (a broken collective, torchrun's SIGTERM), not
    that this rank did something wrong."""
    return isinstance(exc, (Stopped, dist.DistError)) or (
        isinstance(exc, RuntimeError) and any(words in str(exc) for words in PEER_GONE))


def post_failure(message: str) -> None:
    """Leave this rank's one-line failure where rank 0 looks for it (best effort)."""
    world = _WORLD
    if world is None or world.store is None:
        return
    try:
        world.store.set(f"{FAILURE_KEY}{world.rank}", message)
    except Exception:  # noqa: BLE001 - the store may be gone with the job; rank 0 then reports what it sees
        pass


def describe_failure(exc: BaseException, command: str) -> LandscapeError:
    """Rank 0's one line for a peer failure (:func:`is_peer_failure`): which rank, and what it
    said or that it died.

    Looks in the store for the messages failing ranks left (:func:`post_failure`), then for
    ranks on this host whose process no longer runs.
    """
    world = _WORLD
    size = world.size if world is not None else "?"
    where = f"landscape {command} under torchrun, {size} ranks"
    fix = "rerun (no result was written; a surface keeps its progress in --out and continues from it)"
    deadline = time.monotonic() + GONE_SECONDS
    while True:  # a killed rank's sockets close before its process is gone: look again for a moment
        failed, dead = _failed_ranks(world), _dead_ranks(world)
        if failed or dead or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if failed:
        r, message = failed[0]
        return LandscapeError(f"rank {r} of {size} failed: {message}")
    if dead:
        r, pid = dead[0]
        return LandscapeError(f"rank {r} of {size} (pid {pid}) died without a message, killed or out of memory",
                              where=where, fix=f"check the system log (dmesg) for the out-of-memory killer, then {fix}")
    if isinstance(exc, Stopped):
        return LandscapeError("torchrun stopped this rank before the analysis finished", where=where, fix=fix)
    return LandscapeError("another rank stopped (this rank lost its connection to it)", where=where, fix=fix)


def _failed_ranks(world: World | None) -> list[tuple[int, str]]:
    """(rank, message) of the other ranks that left a failure in the store."""
    failed: list[tuple[int, str]] = []
    if world is None or world.store is None:
        return failed
    try:
        world.store.set_timeout(STORE_TIMEOUT)
        for r in range(world.size):
            key = f"{FAILURE_KEY}{r}"
            if r != world.rank and world.store.check([key]):
                failed.append((r, world.store.get(key).decode(errors="replace")))
    except Exception:  # noqa: BLE001 - a store that went down with the job says nothing
        pass
    return failed


def _dead_ranks(world: World | None) -> list[tuple[int, int]]:
    """(rank, pid) of the other ranks on this host whose process is gone."""
    if world is None or world.peers is None:
        return []
    host = socket.gethostname()
    return [(r, pid) for r, (h, pid) in enumerate(world.peers) if r != world.rank and h == host and not _running(pid)]


def _running(pid: int) -> bool:
    """Whether a process of this host runs (not gone, not a zombie waiting for torchrun to reap it)."""
    if Path("/proc/self").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
