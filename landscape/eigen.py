"""Top Hessian eigenpairs: Lanczos with full reorthogonalization and power iteration.

Both solvers take a symmetric operator (a dense tensor or anything with ``matvec``,
``shape``, ``dtype`` and ``device``, e.g. :class:`~landscape.operators.HessianOperator`)
and stop on the same certificate: every returned pair satisfies

    ||A v - lambda v|| <= tol * max(|lambda|, 0.01 |lambda_1|),

and for a symmetric matrix some true eigenvalue then lies within that residual of
lambda (Bauer-Fike), usually far closer (error ~ residual^2 / gap). Residuals are
exact, computed from stored products, never estimates.

- :func:`lanczos` (the fast default): the Krylov basis Q and the products W = A Q are
  kept; Ritz pairs come from the projected matrix Q^T A Q; every new vector is
  orthogonalized twice against the whole basis (full reorthogonalization, so no
  ghost eigenvalues). ``block_size`` > 1 builds a block Krylov space, which resolves
  eigenvalues repeated up to that multiplicity (a single Krylov space holds only one
  copy of an exactly repeated eigenvalue); each step then adds ``block_size`` vectors
  with one block product (``matmat``: one vmapped graph on a curvature operator), and the
  stopping test runs after each block.
- :func:`power_iteration` with deflation: the method of [Y20] and [C22 §5] (the paper
  caps it at 20 iterations per eigenvalue), kept to reproduce published numbers.

Eigenvalues are the algebraically largest (Lanczos) or largest in magnitude (power
iteration), returned in descending order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from landscape.errors import LandscapeError

METHODS = ("lanczos", "power")


class Operator(Protocol):
    """What the solvers need from an operator. One may also have ``matmat(V)`` (the rows A v_i
    of a (k, n) block in one call) and ``block_size`` (the rows it multiplies best at once), as
    :class:`~landscape.operators.CurvatureOperator` has; :func:`as_block_operator` uses them."""

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EigenResult:
    """Eigenpairs with their certificates.

    Attributes:
        eigenvalues: (k,) descending.
        eigenvectors: (k, n), orthonormal rows, flat in the operator's parameter order.
        residuals: (k,) exact ||A v - lambda v||.
        num_matvecs: operator products used.
        converged: whether each pair met the tolerance.
        method: "lanczos" or "power".
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    num_matvecs: int
    converged: list[bool]
    method: str
    info: dict[str, Any] = field(default_factory=dict)


def as_operator(A: torch.Tensor | Operator) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, torch.dtype, torch.device]:
    """(matvec, n, dtype, device) for a dense square tensor or an operator."""
    if isinstance(A, torch.Tensor):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
        return (lambda v: A @ v), A.shape[0], A.dtype, A.device
    return A.matvec, A.shape[0], A.dtype, A.device


BlockProduct = Callable[[torch.Tensor], torch.Tensor]


def as_block_operator(A: torch.Tensor | Operator, block_size: int | None = None
                      ) -> tuple[BlockProduct, int, torch.dtype, torch.device, int]:
    """(matmat, n, dtype, device, block_size) for a dense square tensor or an operator.

    ``matmat(V)`` gives the rows A v_i of a (k, n) block V, ``block_size`` rows per call of the
    operator's own ``matmat`` (a dense matrix: one matrix product per block; an operator
    without ``matmat``: one ``matvec`` per row). ``block_size`` None: the operator's
    ``block_size`` (:func:`landscape.operators.default_block_size` of its device), 1 for
    dense tensors and plain operators, so their products are the single ones.

    >>> matmat, n, _, _, size = as_block_operator(torch.diag(torch.tensor([1.0, 2.0])), block_size=2)
    >>> matmat(torch.eye(2)).tolist(), size
    ([[1.0, 0.0], [0.0, 2.0]], 2)

    Raises:
        LandscapeError: a block size below 1.
    """
    matvec, n, dtype, device = as_operator(A)
    if isinstance(A, torch.Tensor):
        block: BlockProduct = lambda V: (A @ V.T).T  # noqa: E731
    elif callable(getattr(A, "matmat", None)):
        block = A.matmat
    else:
        block = lambda V: torch.stack([matvec(v) for v in V])  # noqa: E731
    size = getattr(A, "block_size", 1) if block_size is None else block_size
    if size < 1:
        raise LandscapeError(f"--block-size must be at least 1, got {size}")

    def matmat(V: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(chunk) for chunk in V.split(size)])

    return matmat, n, dtype, device, size


def rademacher(n: int, g: torch.Generator, dtype: torch.dtype, device: torch.device,
               cols: int | None = None) -> torch.Tensor:
    """Random signs (+-1) of shape (n,) or (n, cols), drawn on the CPU from ``g`` for reproducibility."""
    shape = (n,) if cols is None else (n, cols)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)


def _check_k(k: int, n: int, tol: float | None = None, max_iter: int | None = None) -> None:
    """One line for an impossible request: k outside [1, n], a tolerance outside (0, 1), no iterations."""
    if tol is not None and not (math.isfinite(tol) and 0 < tol < 1):
        raise LandscapeError(f"--tol must be a finite number in (0, 1), got {tol}")
    if max_iter is not None and max_iter < 1:
        raise LandscapeError(f"--max-iter must be at least 1, got {max_iter}")
    if k < 1:
        raise LandscapeError(f"--top-k must be at least 1, got {k}")
    if k > n:
        raise LandscapeError(f"--top-k {k} exceeds the number of parameters ({n}); ask for at most {n}")


def _tolerance_met(residuals: torch.Tensor, values: torch.Tensor, tol: float) -> torch.Tensor:
    scale = torch.maximum(values.abs(), 0.01 * values.abs().max())
    return residuals <= tol * scale


class KrylovBasis:
    """An orthonormal basis Q of a (block) Krylov space with W = A Q and H = Q^T A Q.

    Each new basis vector is orthogonalized twice against the whole basis (classical
    Gram-Schmidt, repeated: "twice is enough"), and its product A q is queued as a future
    basis vector, so ``block_size`` start vectors give the block Krylov space. When a
    queued vector vanishes (an invariant subspace), a random vector orthogonal to the basis
    replaces it. H grows by one column per vector (m n work), and storage grows by
    doubling, so a vector costs O(m n) besides its product. Memory: 2 m n numbers.

    ``step(count)`` adds up to ``count`` vectors with one block product: the queued vectors
    of a block Krylov space do not depend on each other's products, so Q, W and H are those
    of ``count`` single steps (to the rounding of the block product). :meth:`step_all`
    advances several bases with one block product (SLQ's runs).

    Args:
        matmat: the block product: rows A v_i of a (k, n) block (:func:`as_block_operator`).
        n, dtype, device: the operator's size and kind.
        start: (j, n) start vectors.
        generator: draws the random replacements of vanished vectors.
    """

    def __init__(self, matmat: BlockProduct, n: int, dtype: torch.dtype, device: torch.device,
                 start: torch.Tensor, generator: torch.Generator) -> None:
        self.matmat, self.n, self.generator = matmat, n, generator
        self.dtype, self.device = dtype, device
        self.size = 0
        self._Q = torch.empty(8, n, dtype=dtype, device=device)
        self._W = torch.empty(8, n, dtype=dtype, device=device)
        self.H = torch.empty(0, 0, dtype=torch.float64, device=device)
        self.beta: list[float] = []  # norm of each product's part outside the basis when it was added
        self.queue = list(start)

    @property
    def Q(self) -> torch.Tensor:
        return self._Q[: self.size]

    @property
    def W(self) -> torch.Tensor:
        return self._W[: self.size]

    def _random(self) -> torch.Tensor:
        return torch.randn(self.n, generator=self.generator, dtype=self.dtype).to(self.device)

    def _orthonormal(self, v: torch.Tensor) -> torch.Tensor | None:
        basis = self.Q
        norm0 = v.norm()
        for _ in range(2):
            v = v - basis.T @ (basis @ v)
        norm = v.norm()
        if norm <= 1e-10 * norm0 or norm == 0:
            return None
        return v / norm

    def _take(self, count: int) -> int:
        """Append up to ``count`` new basis vectors (their products still to come); how many.

        The first comes from the queue or, when every queued vector has vanished, at random;
        later ones only from the queue: a single step would take the products of this
        block's vectors next, so the block stops there.
        """
        start = self.size
        while self.size - start < min(count, self.n - start):
            q = None
            while q is None and self.queue:
                q = self._orthonormal(self.queue.pop(0))
            while q is None and self.size == start:
                q = self._orthonormal(self._random())
            if q is None:
                break
            if self.size == self._Q.shape[0]:
                grow = lambda t: torch.cat([t, torch.empty_like(t)])  # noqa: E731
                self._Q, self._W = grow(self._Q), grow(self._W)
            self._Q[self.size] = q
            self.size += 1
        return self.size - start

    def _record(self, m: int, w: torch.Tensor) -> None:
        """Store the product w = A q_m and H's column m (over the basis up to q_m)."""
        self._W[m] = w
        column = (self._Q[: m + 1] @ w).double()  # H[:, m] = Q^T A q_m (= H[m, :] by symmetry)
        H = torch.zeros(m + 1, m + 1, dtype=torch.float64, device=self.device)
        H[:-1, :-1] = self.H
        H[:, -1] = column
        H[-1, :] = column
        self.H = H
        self.beta.append(max(float(w.double().square().sum()) - float(column.square().sum()), 0.0) ** 0.5)
        if m + 1 < self.n:
            self.queue.append(w)

    @staticmethod
    def step_all(bases: Sequence[KrylovBasis], count: int = 1) -> int:
        """Add up to ``count`` basis vectors to each basis, with one block product for all of them
        (the first basis's ``matmat``); returns the number of vectors added."""
        starts = [b.size for b in bases]
        taken = [b._take(count) for b in bases]
        W = bases[0].matmat(torch.cat([b._Q[s:s + t] for b, s, t in zip(bases, starts, taken)]))
        for b, s, w in zip(bases, starts, W.split(taken)):
            for i, row in enumerate(w):
                b._record(s + i, row)
        return sum(taken)

    def step(self, count: int = 1) -> int:
        """Add up to ``count`` basis vectors and their products (one block product); returns how many."""
        return KrylovBasis.step_all([self], count)

    def estimate(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``k`` Ritz values and cheap residual estimates (no pass over the basis).

        A Q = Q H + R where only the columns of the last ``len(queue)`` vectors are nonzero
        (each earlier product already lies in the basis), so ||A Q s - theta Q s|| = ||R s||
        <= sum_j |s_j| beta_j over those columns; exact in exact arithmetic for one start vector.
        """
        theta, S = torch.linalg.eigh(self.H)
        theta, S = theta.flip(0)[:k], S.flip(1)[:, :k]
        tail = len(self.queue) if self.size < self.n else 0
        if tail == 0:
            return theta, torch.zeros_like(theta)
        beta = torch.tensor(self.beta[-tail:], dtype=torch.float64, device=S.device)
        return theta, (S[-tail:].abs() * beta[:, None]).sum(0)

    def ritz(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top ``k`` Ritz pairs with exact residuals: values, unit vectors (k, n), ||A y - theta y||.

        The values are Rayleigh quotients y^T A y / y^T y accumulated in float64, so float32
        rounding in the basis (||q|| = 1 only to ~1e-6 for n ~ 1e6) does not bias them.
        """
        _, S = torch.linalg.eigh(self.H)
        S = S.flip(1)[:, :k].to(self.dtype)
        y, Ay = (S.T @ self.Q).double(), (S.T @ self.W).double()
        norms = y.norm(dim=1)
        theta = (y * Ay).sum(1) / norms**2
        residuals = (Ay - theta[:, None] * y).norm(dim=1) / norms
        return theta.to(self.dtype), (y / norms[:, None]).to(self.dtype), residuals.to(self.dtype)


def lanczos(
    A: torch.Tensor | Operator,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int | None = None,
    block_size: int = 1,
    seed: int = 0,
    progress: bool = False,
    start: torch.Tensor | None = None,
) -> EigenResult:
    """The k algebraically largest eigenpairs by Lanczos with full reorthogonalization.

    Args:
        A: symmetric dense matrix or operator.
        k: number of eigenpairs.
        tol: residual tolerance relative to |lambda| (see the module docstring).
        max_iter: maximum basis size (products); default min(n, max(100, 8 k)).
        block_size: start vectors (>= the largest multiplicity to resolve), and the vectors
            added per step with one block product (the stopping test runs after each step).
        seed: seed of the start vectors.
        progress: show a progress bar.
        start: a warm start, e.g. the eigenvectors of a nearby matrix (the previous round's
            model): ``(n,)`` or ``(j, n)``; it replaces the first j random start vectors.

    Returns:
        An :class:`EigenResult`; ``converged`` is False for pairs that missed the
        tolerance within ``max_iter`` (a warning says so).

    >>> A = torch.diag(torch.tensor([5.0, 3.0, 1.0, -2.0], dtype=torch.float64))
    >>> [round(x, 9) for x in lanczos(A, k=2, tol=1e-10).eigenvalues.tolist()]
    [5.0, 3.0]
    """
    matmat, n, dtype, device, _ = as_block_operator(A, block_size)
    _check_k(k, n, tol, max_iter)
    if max_iter is not None and max_iter < min(n, k + block_size - 1):
        raise LandscapeError(f"--max-iter {max_iter} is smaller than the Lanczos basis that {k} eigenvalues need "
                             f"({k + block_size - 1}); raise --max-iter or leave it out")
    max_iter = min(n, max(100, 8 * k)) if max_iter is None else min(max_iter, n)
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(block_size, n, generator=g, dtype=dtype).to(device)
    if start is not None:
        warm = start.reshape(-1, n).to(device=device, dtype=dtype)[:block_size]
        vectors[: len(warm)] = warm
    basis = KrylovBasis(matmat, n, dtype, device, vectors, g)
    bar = tqdm(total=max_iter, desc=f"lanczos top-{k}", unit="hvp", disable=not progress, leave=False)
    exact_checks = 0
    while basis.size < max_iter:
        bar.update(basis.step(min(block_size, max_iter - basis.size)))  # one block product
        if basis.size < k + block_size - 1:
            continue
        theta, estimate = basis.estimate(k)
        likely = _tolerance_met(estimate, theta, tol)
        bar.set_postfix(converged=f"{int(likely.sum())}/{k}", lam1=f"{float(theta[0]):.4g}")
        # The cheap estimate says when to pay for exact residuals (k passes over the basis);
        # only exact residuals stop the iteration.
        if bool(likely.all()):
            exact_checks += 1
            values, _, residuals = basis.ritz(k)
            if bool(_tolerance_met(residuals, values, tol).all()):
                break
    bar.close()
    theta, vectors, res = basis.ritz(k)
    converged = _tolerance_met(res, theta, tol).tolist()
    if not all(converged):
        warnings.warn(f"lanczos: {k - sum(converged)} of {k} eigenpairs missed tol={tol} after {basis.size} products; "
                      "raise max_iter", stacklevel=2)
    return EigenResult(theta, vectors, res, basis.size, converged, "lanczos",
                       {"basis_size": basis.size, "block_size": block_size, "tol": tol, "exact_checks": exact_checks})


def power_iteration(
    A: torch.Tensor | Operator,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> EigenResult:
    """The k largest-magnitude eigenpairs by power iteration with deflation [Y20, C22].

    For each i, iterate v <- P A P v / ||.|| with P the projector orthogonal to the
    pairs found so far, lambda = v^T A v, until ||A v - lambda v|| <= tol |lambda| or
    ``max_iter`` products ([C22] uses 20).

    >>> A = torch.diag(torch.tensor([4.0, -3.0, 1.0], dtype=torch.float64))
    >>> [round(x, 6) for x in power_iteration(A, k=2, tol=1e-7, max_iter=500).eigenvalues.tolist()]
    [4.0, -3.0]
    """
    matvec, n, dtype, device = as_operator(A)
    _check_k(k, n, tol, max_iter)
    g = torch.Generator().manual_seed(seed)
    V = torch.empty(0, n, dtype=dtype, device=device)
    W = torch.empty(0, n, dtype=dtype, device=device)
    bar = tqdm(total=k * max_iter, desc=f"power top-{k}", unit="hvp", disable=not progress, leave=False)

    def project(v: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            v = v - V.T @ (V @ v)
        return v

    products = 0
    for _ in range(k):
        v = project(torch.randn(n, generator=g, dtype=dtype).to(device))
        v = v / v.norm()
        for it in range(max_iter):
            w = matvec(v)
            products += 1
            bar.update(1)
            pw = project(w)  # the deflated operator P A P applied to v (v = P v)
            lam = v @ pw
            if (pw - lam * v).norm() <= tol * lam.abs() or it == max_iter - 1:
                break
            v = pw / pw.norm()
        V, W = torch.cat([V, v[None]]), torch.cat([W, w[None]])
    bar.close()
    # Rayleigh-Ritz on the span of the k vectors: removes the leakage that deflation
    # against slightly inexact earlier vectors leaves, and gives exact residuals.
    H = V @ W.T
    theta, S = torch.linalg.eigh((H + H.T) / 2)
    order = torch.argsort(theta.abs(), descending=True)
    theta, S = theta[order], S[:, order]
    residuals = (S.T @ W - theta[:, None] * (S.T @ V)).norm(dim=1)
    desc = torch.argsort(theta, descending=True)
    theta, S, residuals = theta[desc], S[:, desc], residuals[desc]
    converged = _tolerance_met(residuals, theta, tol).tolist()
    if not all(converged):
        warnings.warn(f"power iteration: {k - sum(converged)} of {k} eigenpairs missed tol={tol} within "
                      f"{max_iter} iterations each", stacklevel=2)
    return EigenResult(theta, S.T @ V, residuals, products, converged, "power", {"max_iter": max_iter, "tol": tol})


def top_eigenvalues(
    A: torch.Tensor | Operator,
    k: int = 1,
    method: str = "lanczos",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    block_size: int = 1,
    progress: bool = False,
    start: torch.Tensor | None = None,
) -> EigenResult:
    """The top-k eigenpairs by ``method`` ("lanczos", the default, or "power"); ``start`` warm-starts Lanczos.

    Raises:
        LandscapeError: unknown method, k < 1 or k larger than the dimension.
    """
    if method == "lanczos":
        return lanczos(A, k, tol, max_iter, block_size, seed, progress, start)
    if method == "power":
        return power_iteration(A, k, tol, 100 if max_iter is None else max_iter, seed, progress)
    raise LandscapeError(f"unknown eigen method '{method}'; choose one of {', '.join(METHODS)}")
