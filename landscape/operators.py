"""Matrix-free curvature of an :class:`~landscape.objective.Objective`, and device helpers.

Three curvature matrices of the objective f(w) = sum_b (c_b/N) L_b(w) (any loss, forward
and parameter selection, see :mod:`landscape.objective`) are multiplied by without being
formed (curvlinops style): an operator only multiplies; the solvers in
:mod:`landscape.eigen`, :mod:`landscape.trace` and :mod:`landscape.spectrum` (or scipy,
through :meth:`CurvatureOperator.to_scipy`) work on it or on a dense matrix.

- ``"hessian"``, :class:`HessianOperator`: H = d^2 f / dw^2.
- ``"ggn"``, :class:`GGNOperator`: the generalized Gauss-Newton
  G = sum_b (c_b/N) J_b^T H_b J_b (J_b: the Jacobian of batch b's outputs w.r.t. w; H_b: the
  Hessian of its mean loss w.r.t. those outputs). PSD for convex losses.
- ``"fisher"``, :class:`FisherOperator`: the empirical Fisher
  F = sum_i (c_i/N) g_i g_i^T over the samples i (g_i: the gradient of sample i's loss alone).

Every operator shares :class:`CurvatureOperator`: ``op @ v``/``matvec``, ``matmat`` (a block of
vectors at once), ``shape``, ``dtype``, ``device``, ``num_matvecs``, ``dense()``, ``to_scipy()`` and a
determinism check on the first product. Build one by name with :func:`make_operator`. Under a
process group each product is this rank's sum over its batches, all-reduced once per block in
``matmat`` (:mod:`landscape.distributed`).

Block products: ``op.matmat(V)`` for V of shape (k, P) gives the rows A v_i in one graph per
``block_size`` rows: the backward (or jvp) pass is vmapped over the vectors (autograd's
``is_grads_batched``, ``torch.func.vmap`` over tangents), so the network's weights and the data
are read once for k vectors. Where vmap cannot batch a pass (an op without a batching rule, a
custom autograd function) the rows are computed one by one, the same numbers. The solvers use
it for block Lanczos, Hutchinson probes, Hutch++ sketches and SLQ runs.

Hessian-vector products come in two exact modes:

- ``"cached"`` (reverse-over-reverse with the first-order graph kept, as PyHessian
  does): g = grad f is built once with ``create_graph``; each product is then one
  backward pass through it, ``Hv = d(g . v)/dw``. Fastest (1.6-1.9 gradients per
  product measured on the CIFAR CNN; plain autograd here measured 15% faster than
  ``torch.func.vjp`` of ``torch.func.grad``), memory grows with the number of samples.
- ``"forward"`` (forward-over-reverse through torch.func): ``Hv = jvp(grad f, w; v)``,
  recomputed per product, constant memory (2.4-2.9 gradients per product).

``"auto"`` keeps the graph when the data (this rank's, under torchrun) holds at most
``CACHE_MAX_SAMPLES`` samples. The GGN has one mode (``"forward"``: a jvp and a backward pass
per batch, constant memory); the Fisher keeps its per-sample gradients (``"cached"``) when
they fit in ``FISHER_CACHE_BYTES``.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch.func import grad, jvp, vmap

from landscape.errors import LandscapeError, user_code
from landscape.objective import Batch, Objective

CACHE_MAX_SAMPLES = 8192
HVP_MODES = ("auto", "cached", "forward")
#: The per-sample gradients of the Fisher are kept (mode "auto") up to this size.
FISHER_CACHE_BYTES = 1 << 30
#: The curvature matrices :func:`make_operator` builds.
CURVATURES = ("hessian", "ggn", "fisher")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when present unless a device is named; a clear error for unavailable ones."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LandscapeError(f"unknown device '{device}'", fix="use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise LandscapeError(f"device '{device}' cannot run an analysis", fix="use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError(f"device '{device}' requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LandscapeError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)",
                             fix="use cuda:0 .. cuda:N-1")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LandscapeError(f"device '{device}' requested but MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``float32`` / ``float64`` (strings as on the command line) to a torch dtype."""
    table = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32, torch.float64: torch.float64}
    if dtype not in table:
        raise LandscapeError(f"dtype must be float32 or float64, got {dtype!r}")
    return table[dtype]


# ----------------------------------------------------------------------------------------------
# the shared parts
# ----------------------------------------------------------------------------------------------
def _flat(grads: tuple[torch.Tensor | None, ...], like: list[torch.Tensor], rows: int | None = None) -> torch.Tensor:
    """Concatenate gradients in parameter order, zeros for parameters that did not matter:
    a vector, or (``rows``, P) for gradients batched over ``rows`` vectors on dim 0."""
    if rows is None:
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, like)])
    return torch.cat([(g if g is not None else p.new_zeros(rows, *p.shape)).reshape(rows, -1)
                      for g, p in zip(grads, like)], dim=1)


def _loss_on(objective: Objective, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean loss of given outputs (as :meth:`Objective.batch_value` computes it, outputs given)."""
    name = objective.loss_fn.name
    with user_code(f"the loss '{name}'", "check --loss against the model's outputs and the targets"):
        value = objective.loss_fn.fn(outputs, targets)
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise LandscapeError(f"the loss '{name}' returned {shape}, not a scalar mean", fix="reduce it with .mean()")
    return value


def loss_hessian_product(objective: Objective, outputs: torch.Tensor, targets: torch.Tensor,
                         u: torch.Tensor, batched: bool = False) -> torch.Tensor:
    """H_b u: the Hessian of a batch's mean loss w.r.t. its outputs times ``u`` (double backward).

    Works for any twice-differentiable loss, user callables included; a loss linear in the
    outputs has H_b = 0. ``batched``: ``u`` holds k such vectors on dim 0 (one vmapped backward).

    >>> from landscape.objective import Objective
    >>> obj = Objective(torch.nn.Linear(1, 1), [(torch.zeros(2, 1), torch.zeros(2, 1))], loss="mse")
    >>> loss_hessian_product(obj, torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2, 1)).tolist()  # 2/N I
    [[1.0], [1.0]]
    """
    with torch.enable_grad():
        o = outputs.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_loss_on(objective, o, targets), o, create_graph=True)
        if not g.requires_grad:
            return torch.zeros_like(u)
        (hu,) = torch.autograd.grad(g, o, grad_outputs=u.to(o.dtype), allow_unused=True, is_grads_batched=batched)
    return torch.zeros_like(u) if hu is None else hu


#: The block sizes :meth:`CurvatureOperator.calibrate_block_size` times, in order.
BLOCK_CANDIDATES = (1, 2, 4, 8, 16)


def default_block_size(device: torch.device) -> int | None:
    """The rows per block product on ``device`` when none is given: 1 on the CPU (``bench/block.py``:
    a block product there is no cheaper per vector), None elsewhere: measured on the operator
    (:meth:`CurvatureOperator.calibrate_block_size`) before its first block product."""
    return 1 if device.type == "cpu" else None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def clock(fn: Callable[[], Any], device: torch.device, calls: int) -> list[float]:
    """Wall seconds of each of ``calls`` calls of ``fn``, the device's queue drained around each."""
    times = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class CurvatureOperator:
    """A symmetric P x P curvature matrix of an objective, matrix-free: ``op @ v`` for flat ``v``.

    Subclasses implement ``_block(V)``: the rows A v_i of a (k, P) block, vmapped over the
    rows when k > 1. The first product is computed twice and compared (with two evaluations
    of the loss), so a non-deterministic forward pass (dropout left on, atomics in a custom
    kernel) is caught before a solver builds on it; for a block, its first row is recomputed
    alone, which also checks the vmapped pass against the plain one. ``num_matvecs`` counts
    every product (k for a block of k), the check included.

    Args:
        objective: the loss.
        mode: one of the class's ``MODES``; ``"auto"`` picks by the size of the data.
        check_determinism: compare two evaluations of the first product.
        block_size: the most vectors one graph multiplies in ``matmat`` (memory grows with it);
            None: :func:`default_block_size` of the device (measured where it is None).

    Raises:
        LandscapeError: an unknown mode, a block size below 1.
    """

    #: What results and messages call the matrix.
    curvature: ClassVar[str] = ""
    title: ClassVar[str] = ""
    MODES: ClassVar[tuple[str, ...]] = ("auto",)

    def __init__(self, objective: Objective, mode: str = "auto", check_determinism: bool = True,
                 block_size: int | None = None) -> None:
        if mode not in self.MODES:
            raise LandscapeError(f"the {self.title} has modes {', '.join(self.MODES)}, not {mode!r}")
        if block_size is not None and block_size < 1:
            raise LandscapeError(f"--block-size must be at least 1, got {block_size}")
        self.objective = objective
        self.shape = (objective.num_params, objective.num_params)
        self.dtype, self.device = objective.dtype, objective.device
        self._block_size = default_block_size(self.device) if block_size is None else block_size
        self.num_matvecs = 0
        self._checked = not check_determinism
        self._vmap_blocks: bool | None = None  # decided on the first block: one vmapped graph, or row by row
        #: Time per vector of single products over that of ``block_size`` blocks, where measured (else 1).
        self.block_speedup = 1.0
        self.mode = self._auto_mode() if mode == "auto" else mode

    def _auto_mode(self) -> str:
        return self.MODES[-1]

    @property
    def block_size(self) -> int:
        """The most rows one graph multiplies (measured on first use where the device has no default)."""
        if self._block_size is None:
            self.calibrate_block_size()
        return self._block_size

    @block_size.setter
    def block_size(self, value: int) -> None:
        self._block_size = value

    def calibrate_block_size(self, candidates: tuple[int, ...] = BLOCK_CANDIDATES, reps: int = 2) -> int:
        """Measure the time per vector of block products on this operator (its model, data and
        device) and keep the cheapest block size; sets and returns ``block_size`` (and
        ``block_speedup``, its time per vector against single products).

        The sizes of ``candidates`` (ascending) are timed in turn on random vectors (the median
        of ``reps`` calls after a warm-up call); the search stops at the first size that is not
        10% cheaper per vector than the best so far, or after one whose peak memory on CUDA
        passed half of the device's (or that ran out of memory). Those products count in
        ``num_matvecs``. Under a process group each rank measures its own part and all take the
        smallest choice.
        """
        g = torch.Generator().manual_seed(0)

        def seconds_per_vector(b: int) -> float:
            V = torch.randn(b, self.shape[0], generator=g, dtype=self.dtype).to(self.device)

            def rows() -> None:
                self._rows(V)  # this rank's part: no collective, so ranks may stop at different sizes
                self.num_matvecs += b

            return statistics.median(clock(rows, self.device, reps + 1)[1:]) / b

        best, best_time, first_time = candidates[0], math.inf, None
        with torch.enable_grad():
            for b in candidates:
                try:
                    per_vector = seconds_per_vector(b)
                except torch.OutOfMemoryError:  # this block does not fit: the best one that did
                    torch.cuda.empty_cache()
                    break
                if per_vector > 0.9 * best_time:
                    break
                best, best_time = b, per_vector
                first_time = per_vector if first_time is None else first_time
                if self.device.type == "cuda" and torch.cuda.max_memory_allocated(self.device) > \
                        0.5 * torch.cuda.get_device_properties(self.device).total_memory:
                    break
        speedup = first_time / best_time if first_time is not None else 1.0
        if self.objective.world is not None:  # every rank must run the same blocks (and solvers)
            best = self.objective.world.min_int(best)
            speedup = self.objective.world.min_int(int(100 * speedup)) / 100  # the same on every rank
        self._block_size, self.block_speedup = best, speedup
        return best

    def _block(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _rows(self, V: torch.Tensor) -> torch.Tensor:
        """The rows A v_i: one vmapped graph when it works (decided on the first block), else row by row."""
        if V.shape[0] > 1 and self._vmap_blocks is not False:
            try:
                with warnings.catch_warnings():
                    # vmap's per-op loop for ops without a batching rule: slower than our own loop
                    warnings.filterwarnings("error", message=".*performance drop.*")
                    out = self._block(V)
            except Exception:  # noqa: BLE001 - vmap cannot batch every pass (custom autograd functions,
                # .item(), data-dependent control flow); the rows one by one run the same math and raise real errors
                if self._vmap_blocks:
                    raise
                self._vmap_blocks = False
            else:
                self._vmap_blocks = True
                return out
        return torch.cat([self._block(v[None]) for v in V])

    def _counted(self, V: torch.Tensor) -> torch.Tensor:
        out = self._rows(V)
        if self.objective.world is not None:  # this rank's batches -> all of them, once per block
            self.objective.world.sum_(out)
        self.num_matvecs += V.shape[0]
        return out

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """The rows A v_i of a block V of shape (k, num_params), ``block_size`` rows per graph.

        Equal to ``torch.stack([op.matvec(v) for v in V])`` up to rounding, in fewer passes.
        """
        if V.ndim != 2 or V.shape[1] != self.shape[0]:
            raise ValueError(f"expected a block of shape (k, {self.shape[0]}), got shape {tuple(V.shape)}")
        V = V.to(self.device, self.dtype)
        if not len(V):
            return V.clone()
        with torch.enable_grad():  # (a single vector needs no block size: none is measured for it)
            out = torch.cat([self._counted(chunk) for chunk in ([V] if len(V) == 1 else V.split(self.block_size))])
            if not self._checked:
                self._check_determinism(V[0], out[0])
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The matrix times a flat vector ``v`` of length ``num_params``."""
        if v.shape != (self.shape[0],):
            raise ValueError(f"expected a vector of length {self.shape[0]}, got shape {tuple(v.shape)}")
        return self.matmat(v[None])[0]

    def _check_determinism(self, v: torch.Tensor, out: torch.Tensor) -> None:
        """Two losses and two products must agree (to rounding, for GPU atomics).

        The losses are two passes the analysis runs anyway where it can: the NaN check
        (:meth:`Objective.check_finite`) and the forward of the first product (the kept graph
        in cached mode); only a missing one costs a forward here.
        """
        tol = 1e-5 if self.dtype == torch.float32 else 1e-11
        first = self.objective.recorded_loss
        if first is None:
            self.objective.loss()
            first = self.objective.recorded_loss
        second = self._recorded_by_product()
        if second is None:
            self.objective.loss()
            second = self.objective.recorded_loss
        errors = [abs(first - second) / max(abs(first), 1e-30), self._repeat_error(v, out)]
        if max(errors) > tol:
            raise LandscapeError(
                f"the loss or its {self.title}-vector products are not deterministic (relative difference "
                f"{max(errors):.1e}); remove dropout/noise from the model's eval forward pass"
            )
        if self.objective.world is not None:  # the solvers on every rank must see the same vectors
            self.objective.world.check_same(out, f"{self.title}-vector products")
        self._checked = True

    def _recorded_by_product(self) -> float | None:
        """The loss a product's own forward computed (a second, independent pass), if it keeps one."""
        return None

    def _repeat_error(self, v: torch.Tensor, out: torch.Tensor) -> float:
        """The relative difference between the product ``out = A v`` and the same product again
        (counted: one more product)."""
        again = self._counted(v[None])[0]
        return float((out - again).norm() / out.norm().clamp_min(1e-30))

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def dense(self) -> torch.Tensor:
        """The full matrix, ``block_size`` columns at a time (only for small models and tests)."""
        return self.matmat(torch.eye(self.shape[0], device=self.device, dtype=self.dtype)).T

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 numpy vectors in and out).

        ``scipy.sparse.linalg.eigsh(op.to_scipy(), k=3)`` gives the top eigenvalues with
        ARPACK; the products run in torch on the operator's device and dtype, blocks of
        columns (``matmat``) as block products.
        """
        from scipy.sparse.linalg import LinearOperator

        def mm(X: np.ndarray) -> np.ndarray:
            V = torch.from_numpy(np.array(X, dtype=np.float64).reshape(self.shape[0], -1).T.copy())
            return self.matmat(V).detach().to("cpu", torch.float64).numpy().T

        def mv(x: np.ndarray) -> np.ndarray:
            return mm(x)[:, 0]

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# the Hessian
# ----------------------------------------------------------------------------------------------
class HessianOperator(CurvatureOperator):
    """Matrix-free H = d^2 f / dw^2 at a point: ``op @ v`` for flat vectors ``v``.

    Args:
        objective: the loss.
        mode: ``"auto"``, ``"cached"`` or ``"forward"`` (see the module docstring).
        check_determinism: compare two evaluations of the first product.
    """

    curvature, title, MODES = "hessian", "Hessian", HVP_MODES

    def __init__(self, objective: Objective, mode: str = "auto", check_determinism: bool = True,
                 block_size: int | None = None) -> None:
        self._graph: tuple[list[torch.Tensor], torch.Tensor] | None = None
        self._graph_loss: float | None = None
        self._first_term: torch.Tensor | None = None  # the first batch's term of the gradient (with its graph)
        super().__init__(objective, mode, check_determinism, block_size)

    def _auto_mode(self) -> str:
        # the graph kept is of this rank's samples
        return "cached" if self.objective.local_samples <= CACHE_MAX_SAMPLES else "forward"

    def _cached_graph(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Leaves and the flat gradient with its graph, built once (the PyHessian trick, exact)."""
        if self._graph is None:
            leaves, losses, terms = self.objective.leaves(), [], []
            self._graph = (list(leaves.values()),
                           self.objective.gradient_of(leaves, create_graph=True, losses=losses, terms=terms))
            self._graph_loss = sum(losses)
            self._first_term = terms[0] if len(terms) > 1 else None
        return self._graph

    def _recorded_by_product(self) -> float | None:
        return self._graph_loss if self.mode == "cached" else None

    def _repeat_error(self, v: torch.Tensor, out: torch.Tensor) -> float:
        """In cached mode over several batches, the first batch's term of the product twice (through
        its part of the kept graph: a fraction of a product, counted as one); else the whole product
        again. The forward, where a noisy model would differ, is checked by the losses."""
        if self.mode != "cached" or self._first_term is None:
            return super()._repeat_error(v, out)
        leaves, _ = self._cached_graph()
        once, twice = (_flat(torch.autograd.grad(self._first_term @ v, leaves, retain_graph=True, allow_unused=True),
                             leaves, 1)[0] for _ in range(2))
        self.num_matvecs += 1
        return float((once - twice).norm() / once.norm().clamp_min(1e-30))

    def _block(self, V: torch.Tensor) -> torch.Tensor:
        obj, k = self.objective, V.shape[0]
        batched = k > 1
        if self.mode == "cached":
            leaves, g = self._cached_graph()
            # d(g . v)/dw = H v: one backward pass through the kept graph of the gradient, vmapped over the
            # rows. One row differentiates the scalar g . v: a tensor grad_outputs would make autograd import
            # torch's symbolic shapes (sympy, 0.5 s of a process's start) to compare its shape.
            if not batched:
                return _flat(torch.autograd.grad(g @ V[0], leaves, retain_graph=True, allow_unused=True), leaves, 1)
            return _flat(torch.autograd.grad(g, leaves, grad_outputs=V, retain_graph=True, allow_unused=True,
                                             is_grads_batched=True), leaves, k)
        out = torch.zeros(k, obj.num_params, device=self.device, dtype=self.dtype)
        for batch in obj.batches():
            def term(p: dict[str, torch.Tensor], batch: Batch = batch) -> torch.Tensor:
                value, count = obj.batch_value(p, batch)
                return value * (count / obj.num_samples)

            def hvp(v: torch.Tensor, term: Callable = term) -> torch.Tensor:  # jvp(grad f_b; v) = H_b v
                return obj.flatten(jvp(grad(term), (obj.params,), (obj.unflatten(v),))[1])

            out += vmap(hvp)(V) if batched else hvp(V[0])[None]
        return out


# ----------------------------------------------------------------------------------------------
# the generalized Gauss-Newton
# ----------------------------------------------------------------------------------------------
class GGNOperator(CurvatureOperator):
    r"""Matrix-free generalized Gauss-Newton matrix of the objective.

        G = sum_b (c_b/N) J_b^T H_b J_b,   J_b = d o_b / dw,   H_b = d^2 L_b / do_b^2,

    o_b the outputs of batch b, L_b its mean loss over c_b counted targets. G is the Hessian
    with the second derivative of the network dropped (f's curvature through a network
    linearized at w), so it is positive semi-definite whenever the loss is convex in the
    outputs (mse, cross-entropy, bce-with-logits), and equals H for a linear model. As L
    is sum_b (c_b/N) L_b, G does not depend on how the data is split into batches; it is
    curvlinops' ``GGNLinearOperator`` with ``reduction="mean"``.

    Each product, per batch: ``torch.func.jvp`` of the forward pass at autograd leaves gives
    the outputs and J_b v in one pass; H_b (J_b v) by double backward on the outputs (any
    loss, user callables included); J_b^T by one backward pass through the jvp's primal
    outputs (measured 1.5x faster than a second forward under ``torch.func.vjp``).
    Constant memory, one mode (``"forward"``).

    >>> from landscape.objective import Objective
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> G = GGNOperator(Objective(model, [(x, torch.zeros(2, 1))], torch.float64, loss="mse")).dense()
    >>> G.tolist()  # (2/N) X^T X with N = 2, the Hessian of the mse of a linear model
    [[1.0, 0.0], [0.0, 4.0]]

    Args:
        objective: the loss.
        mode: ``"auto"`` or ``"forward"`` (the same).
        check_determinism: compare two evaluations of the first product.
    """

    curvature, title, MODES = "ggn", "GGN", ("auto", "forward")

    def _block(self, V: torch.Tensor) -> torch.Tensor:
        obj, k = self.objective, V.shape[0]
        batched = k > 1
        leaves = obj.leaves()
        like = list(leaves.values())
        out = torch.zeros(k, obj.num_params, device=self.device, dtype=self.dtype)
        for batch in obj.batches():
            def forward(v: torch.Tensor, batch: Batch = batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                # outputs (with their autograd graph to the leaves) and J v in one forward pass
                outputs, jv, targets = jvp(lambda p: obj.outputs(p, batch), (leaves,), (obj.unflatten(v),),
                                           has_aux=True)
                return outputs, jv, targets

            if batched:  # the outputs and targets do not depend on v: one copy of them (out_dims None)
                outputs, jv, targets = vmap(forward, out_dims=(None, 0, None))(V)
            else:
                outputs, jv, targets = forward(V[0])
            count = obj.count(targets)
            if count == 0 or not outputs.requires_grad:
                continue
            hjv = loss_hessian_product(obj, outputs, targets, jv.detach(), batched)
            out += _flat(torch.autograd.grad(outputs, like, grad_outputs=hjv * (count / obj.num_samples),
                                             allow_unused=True, is_grads_batched=batched), like, k)
        return out


# ----------------------------------------------------------------------------------------------
# the empirical Fisher
# ----------------------------------------------------------------------------------------------
def _num_samples_on_dim0(batch: Batch) -> int:
    """The number of samples of a pair or dict of tensors that agree on dim 0 (else one line)."""
    tensors = list(batch.values()) if isinstance(batch, Mapping) else \
        list(batch) if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
    if tensors and all(isinstance(t, torch.Tensor) and t.ndim > 0 for t in tensors) and \
            len({t.shape[0] for t in tensors}) == 1:
        return int(tensors[0].shape[0])
    if isinstance(batch, Mapping) or isinstance(batch, (tuple, list)):
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                  for t in (batch.values() if isinstance(batch, Mapping) else batch)]
        got = f"a {type(batch).__name__} of {', '.join(map(str, shapes))}"
    else:
        got = f"a batch of type {type(batch).__name__}"
    raise LandscapeError(f"the Fisher needs batches whose tensors hold the samples on dim 0 "
                         f"((inputs, targets) pairs or dicts of tensors), got {got}")


def _map_batch(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    """The batch with ``fn`` applied to each of its tensors (a pair or a dict, type kept)."""
    if isinstance(batch, Mapping):
        return {k: fn(t) for k, t in batch.items()}
    return type(batch)(fn(t) for t in batch)


class FisherOperator(CurvatureOperator):
    r"""Matrix-free empirical Fisher (uncentered gradient covariance) of the objective.

        F = sum_i (c_i/N) g_i g_i^T,   g_i = d L_i / dw,

    over the samples i of every batch (the batch split on dim 0), L_i the mean loss of
    sample i alone over its c_i counted targets (one for a class label; its non-ignored
    pixels for cross-entropy with ``ignore_index``; its elements for mse), N = sum_i c_i the
    objective's ``num_samples``. Samples whose targets are all ignored add nothing. With one
    target per sample this is (1/N) sum_i g_i g_i^T, curvlinops' ``EFLinearOperator`` with
    ``reduction="mean"``; with several targets per sample it stays per sample (curvlinops
    treats each pixel as a term, and for mse with C outputs sums them, a factor C).

    Per-sample losses come from ``torch.func.vmap`` over the samples (each runs the forward
    on a batch of one), or a loop over the samples when the forward cannot be vmapped.

    - ``"cached"``: the per-sample gradients R (rows sqrt(c_i/N) g_i, num samples x P) are
      computed once (``vmap(grad)``); each product is R^T (R v). Memory: R.
    - ``"forward"``: per batch, g_i . v for all i by one ``jvp`` of the vector of per-sample
      losses, then sum_i (c_i/N) (g_i . v) g_i by one backward pass of it; constant memory.
    - ``"auto"``: cached when R fits in ``FISHER_CACHE_BYTES``.

    Block products: cached, rows (V R^T) R (two matrix products for the block); forward,
    one vector at a time (each already vmaps over the samples).

    Args:
        objective: the loss; its batches must be pairs or dicts of tensors with the
            samples on dim 0.
        mode: ``"auto"``, ``"cached"`` or ``"forward"``.
        check_determinism: compare two evaluations of the first product.

    Raises:
        LandscapeError: a batch that cannot be split into samples.
    """

    curvature, title, MODES = "fisher", "Fisher", HVP_MODES

    def __init__(self, objective: Objective, mode: str = "auto", check_determinism: bool = True,
                 block_size: int | None = None) -> None:
        #: Per batch (in order): the samples with counted targets and their weights c_i/N.
        self._kept: list[tuple[torch.Tensor | None, torch.Tensor]] = []
        for batch in objective.batches():
            n = _num_samples_on_dim0(batch)
            counts = torch.tensor([objective.count(objective.targets(_map_batch(batch, lambda t: t[i:i + 1])))
                                   for i in range(n)], dtype=torch.long)
            keep = None if bool((counts > 0).all()) else torch.nonzero(counts > 0).reshape(-1)
            kept = counts if keep is None else counts[keep]
            self._kept.append((keep, kept.to(objective.device, objective.dtype) / objective.num_samples))
        self.num_rows = sum(int(w.numel()) for _, w in self._kept)
        self._vectorized: bool | None = None  # decided on the first batch: vmap, or a loop
        self._R: list[torch.Tensor] | None = None
        super().__init__(objective, mode, check_determinism, block_size)

    def _auto_mode(self) -> str:
        itemsize = torch.empty((), dtype=self.objective.dtype).element_size()
        return "cached" if self.num_rows * self.objective.num_params * itemsize <= FISHER_CACHE_BYTES else "forward"

    # -- per batch ---------------------------------------------------------------------
    def _samples(self) -> Any:
        """(samples of a batch with counted targets, their weights c_i/N), batch by batch."""
        for batch, (keep, weights) in zip(self.objective.batches(), self._kept):
            if weights.numel():
                yield (batch if keep is None else _map_batch(batch, lambda t: t[keep.to(t.device)])), weights

    def _sample_loss(self, params: dict[str, torch.Tensor], sample: Batch) -> torch.Tensor:
        """L_i: the mean loss of one sample (tensors without their dim 0) alone."""
        outputs, targets = self.objective.outputs(params, _map_batch(sample, lambda t: t.unsqueeze(0)))
        return _loss_on(self.objective, outputs, targets)

    def _sample_gradients_loop(self, samples: Batch, n: int) -> torch.Tensor:
        """(n, P): g_i one sample at a time (forward passes that vmap cannot batch)."""
        obj, rows = self.objective, []
        for i in range(n):
            leaves = obj.leaves()
            value, _ = obj.batch_value(leaves, _map_batch(samples, lambda t: t[i:i + 1]))
            like = list(leaves.values())
            rows.append(_flat(torch.autograd.grad(value, like, allow_unused=True), like))
        return torch.stack(rows)

    def _sample_gradients(self, samples: Batch, n: int) -> torch.Tensor:
        """(n, P): the per-sample gradients g_i of a batch."""
        def vectorized() -> torch.Tensor:
            g = vmap(grad(self._sample_loss), in_dims=(None, 0))(self.objective.params, samples)
            return torch.cat([g[name].reshape(n, -1) for name in self.objective.params], dim=1)

        return self._either(vectorized, lambda: self._sample_gradients_loop(samples, n))

    def _either(self, vectorized: Callable[[], torch.Tensor], loop: Callable[[], torch.Tensor]) -> torch.Tensor:
        """vmap when it works on the first batch, the loop from then on when it does not."""
        if self._vectorized is not False:
            try:
                out = vectorized()
            except Exception:  # noqa: BLE001 - vmap cannot batch every forward (.item(), data-dependent
                # control flow, in-place updates); the loop runs the same math and raises real errors itself
                if self._vectorized:
                    raise
                self._vectorized = False
            else:
                self._vectorized = True
                return out
        return loop()

    # -- products ------------------------------------------------------------------------
    def _cached_rows(self) -> list[torch.Tensor]:
        if self._R is None:
            with torch.enable_grad():
                self._R = [self._sample_gradients(s, w.numel()) * w.sqrt()[:, None] for s, w in self._samples()]
        return self._R

    def _block(self, V: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(V.shape[0], self.objective.num_params, device=self.device, dtype=self.dtype)
        if self.mode == "cached":  # rows (R^T R v_i)^T = (V R^T) R
            for r in self._cached_rows():
                out += (V @ r.T) @ r
            return out
        # forward mode: one vector at a time (its jvp already vmaps over the samples)
        obj = self.objective
        for i, v in enumerate(V):
            tangent = obj.unflatten(v)
            for samples, weights in self._samples():
                n = weights.numel()

                def vectorized(samples: Batch = samples, weights: torch.Tensor = weights) -> torch.Tensor:
                    leaves = obj.leaves()
                    like = list(leaves.values())
                    losses, gv = jvp(lambda p: vmap(self._sample_loss, in_dims=(None, 0))(p, samples),
                                     (leaves,), (tangent,))  # L_i (with their graph) and g_i . v
                    return _flat(torch.autograd.grad(losses, like, grad_outputs=weights * gv.detach(),
                                                     allow_unused=True), like)

                def loop(samples: Batch = samples, weights: torch.Tensor = weights, n: int = n) -> torch.Tensor:
                    g = self._sample_gradients_loop(samples, n)
                    return g.T @ (weights * (g @ v))

                out[i] += self._either(vectorized, loop)
        return out


# ----------------------------------------------------------------------------------------------
# by name
# ----------------------------------------------------------------------------------------------
OPERATORS: dict[str, type[CurvatureOperator]] = {op.curvature: op for op in (HessianOperator, GGNOperator, FisherOperator)}
assert tuple(OPERATORS) == CURVATURES


def make_operator(objective: Objective, curvature: str = "hessian", mode: str = "auto",
                  check_determinism: bool = True, block_size: int | None = None) -> CurvatureOperator:
    """The curvature operator named ``curvature`` (one of :data:`CURVATURES`) of ``objective``.

    >>> from landscape.objective import Objective
    >>> obj = Objective(torch.nn.Linear(2, 1), [(torch.eye(2), torch.zeros(2, 1))], torch.float64, loss="mse")
    >>> [make_operator(obj, c).shape for c in CURVATURES]
    [(3, 3), (3, 3), (3, 3)]

    Raises:
        LandscapeError: an unknown curvature or a mode it does not have.
    """
    if curvature not in OPERATORS:
        raise LandscapeError(f"unknown curvature {curvature!r}", fix=f"choose one of {', '.join(CURVATURES)}")
    return OPERATORS[curvature](objective, mode=mode, check_determinism=check_determinism, block_size=block_size)
