"""Top Hessian eigenpairs: Lanczos with full reorthogonalization and power iteration.

Both solvers take a symmetric operator (a dense tensor or anything with ``matvec``,
``shape``, ``dtype`` and ``device``, e.g. :class:`~landscape.operators.HessianOperator`)
and report, for every Ritz pair (theta_i, y_i) with exact residual r_i = ||A y_i - theta_i y_i||,
a certified bound on the eigenvalue error (:func:`certify`):

- **Bauer-Fike** (for a symmetric matrix): some eigenvalue lies within r_i of theta_i.
- **Kato-Temple**, where the gap is resolved: if the interval around theta_i that reaches
  to the neighbouring Ritz values' own intervals [theta_j - r_j, theta_j + r_j] has width
  gap_i > r_i on both sides, it holds exactly one eigenvalue lambda_i and
  |lambda_i - theta_i| <= r_i^2 / gap_i ([Parlett 1998, The Symmetric Eigenvalue Problem, §11.7];
  [Kato 1949]).

``tol`` bounds that eigenvalue error relative to the eigenvalue: a pair is converged when
``bound_i <= tol * max(|theta_i|, 0.01 |theta_1|)`` (the floor keeps eigenvalues near zero from
asking for infinite relative accuracy). Because the eigenvalue error is of order r^2/gap, this
stops long before the residual is small; users who need eigenvectors (surface directions)
also ask ``vector_tol``, a bound on ``r_i`` relative to the same scale (the eigenvector's angle
to the true one is at most r_i / gap_i). Residuals are exact, computed from stored products,
never estimates.

What no Krylov method can certify: an eigenvalue the Krylov space never saw (a start vector
orthogonal to its eigenvector, or the second copy of an exactly repeated eigenvalue with one
start vector: use ``block_size`` >= the multiplicity). The bounds are of the operator as its
products are computed; they carry a floor of 16 unit roundoffs of ``|theta_1|`` for the rounding of those products.

- :func:`lanczos` (the fast default): the Krylov basis Q and the products W = A Q are
  kept; Ritz pairs come from the projected matrix Q^T A Q; every new vector is
  orthogonalized twice against the whole basis (full reorthogonalization, so no
  ghost eigenvalues). ``block_size`` > 1 builds a block Krylov space, which resolves
  eigenvalues repeated up to that multiplicity (a single Krylov space holds only one
  copy of an exactly repeated eigenvalue); each step then adds ``block_size`` vectors
  with one block product (``matmat``: one vmapped graph on a curvature operator), and the
  stopping test runs after each block.
- :func:`power_iteration` with deflation: the method of [Y20] and [C22 §5] (the paper
  caps it at 20 iterations per eigenvalue), kept to reproduce published numbers. It stops
  on the residual (r_i <= tol * scale), itself a Bauer-Fike bound on the eigenvalue error,
  and reports only that bound.

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
        converged: whether each pair met the tolerance(s).
        method: "lanczos" or "power".
        bounds: (k,) certified bounds on |lambda_i - theta_i| (see :func:`certify`).
        certified_by: per pair, "gap" (Kato-Temple, r^2/gap) or "residual" (Bauer-Fike, r).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    num_matvecs: int
    converged: list[bool]
    method: str
    bounds: torch.Tensor
    certified_by: list[str]
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


def _check_k(k: int, n: int, tol: float | None = None, max_iter: int | None = None,
             vector_tol: float | None = None) -> None:
    """One line for an impossible request: k outside [1, n], a tolerance outside (0, 1), no iterations."""
    for flag, value in (("--tol", tol), ("--vector-tol", vector_tol)):
        if value is not None and not (math.isfinite(value) and 0 < value < 1):
            raise LandscapeError(f"{flag} must be a finite number in (0, 1), got {value}")
    if max_iter is not None and max_iter < 1:
        raise LandscapeError(f"--max-iter must be at least 1, got {max_iter}")
    if k < 1:
        raise LandscapeError(f"--top-k must be at least 1, got {k}")
    if k > n:
        raise LandscapeError(f"--top-k {k} exceeds the number of parameters ({n}); ask for at most {n}")


ROUNDING_FLOOR = 16
"""Bounds are at least this many unit roundoffs of |theta_1|: the products' own rounding."""


def _scale(values: torch.Tensor) -> torch.Tensor:
    """What relative tolerances multiply: max(|theta_i|, 0.01 |theta_1|)."""
    return torch.maximum(values.abs(), 0.01 * values.abs().max())


def certify(theta: torch.Tensor, residuals: torch.Tensor, k: int, complete: bool = False,
            dtype: torch.dtype = torch.float64, moved: torch.Tensor | None = None) -> tuple[torch.Tensor, list[str]]:
    """Certified bounds on the error of the top ``k`` of the Ritz values ``theta`` (descending).

    ``theta`` (m,) are all the Ritz values of a subspace, ``residuals`` (m,) their residual
    norms (exact for the top k; for the others an upper bound is enough: it only makes the
    gaps smaller). For pair i the neighbours' intervals [theta_j - r_j, theta_j + r_j] each
    hold an eigenvalue (Bauer-Fike); the gap is

        gap_i = min over j != i of (|theta_i - theta_j| - r_j),

    and when gap_i > r_i on both sides of theta_i (below the lowest Ritz value nothing is known
    unless the subspace is the whole space, ``complete``), the Kato-Temple bound r_i^2 / gap_i
    holds (certified_by "gap"); otherwise the Bauer-Fike bound r_i ("residual"). Each bound is
    at least 16 unit roundoffs of ``dtype`` times |theta_1|.

    The gap bound trusts that the neighbours' intervals are all the eigenvalues near theta_i:
    an eigenvalue the subspace has not seen yet (a member of a cluster the Ritz value still
    blends, or one above theta_1) breaks it. ``moved`` (k,), how far each Ritz value moved when
    the subspace last grew, guards against the common case: each top Ritz value rises
    monotonically towards its eigenvalue (Cauchy interlacing), so the gap bound is never
    claimed smaller than the last rise, max(r^2/gap, moved). Bauer-Fike needs no such trust.

    >>> bounds, how = certify(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1e-3, 1e-3, 0.5]), k=2)
    >>> [round(b, 12) for b in bounds.tolist()], how   # r^2/gap: 1e-6/1.999, then 1e-6/(1 - 0.5)
    ([5.0025e-07, 2e-06], ['gap', 'gap'])
    """
    theta, residuals = theta.double(), residuals.double()
    m = len(theta)
    floor = ROUNDING_FLOOR * torch.finfo(dtype).eps * float(theta.abs().max()) if m else 0.0
    bounds, how = [], []
    for i in range(k):
        r = float(residuals[i])
        reach = (theta - theta[i]).abs() - residuals  # how far each neighbour's interval stays away
        above = float(reach[:i].min()) if i > 0 else math.inf
        below = float(reach[i + 1 :].min()) if i + 1 < m else (math.inf if complete else -math.inf)
        gap = min(above, below)
        tight = max(r * r / gap, floor, 0.0 if moved is None else float(moved[i]))
        if gap > r and tight < r:
            bounds.append(tight)
            how.append("gap")
        else:
            bounds.append(max(r, floor))
            how.append("residual")
    return torch.tensor(bounds, dtype=torch.float64), how


def _converged(bounds: torch.Tensor, residuals: torch.Tensor, values: torch.Tensor, tol: float,
               vector_tol: float | None) -> torch.Tensor:
    """Per pair: the eigenvalue bound within ``tol`` and, if asked, the residual within ``vector_tol``."""
    scale = _scale(values.double())
    met = bounds.double() <= tol * scale
    if vector_tol is not None:
        met &= residuals.double() <= vector_tol * scale
    return met


class KrylovBasis:
    """An orthonormal basis Q of a (block) Krylov space with W = A Q and H = Q^T A Q.

    Each new basis vector is orthogonalized twice against the whole basis (classical
    Gram-Schmidt, repeated: "twice is enough"), and its product A q is queued as a future
    basis vector, so ``block_size`` start vectors give the block Krylov space. When a
    queued vector vanishes (an invariant subspace), a random vector orthogonal to the basis
    replaces it. H grows by one column per vector (m n work), which is also the first
    Gram-Schmidt pass of the product when it joins the basis (kept with it in the queue), and
    storage grows by doubling, so a vector costs 4 passes over the basis besides its product.
    Memory: 2 m n numbers.

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
        # vectors still to join the basis, each with its coefficients on the first rows of Q (None: unknown)
        self.queue: list[tuple[torch.Tensor, torch.Tensor | None]] = [(v, None) for v in start]

    @property
    def Q(self) -> torch.Tensor:
        return self._Q[: self.size]

    @property
    def W(self) -> torch.Tensor:
        return self._W[: self.size]

    def _random(self) -> torch.Tensor:
        return torch.randn(self.n, generator=self.generator, dtype=self.dtype).to(self.device)

    def _orthonormal(self, v: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor | None:
        """v orthonormalized against the basis (None if nothing is left of it); ``known``: Q[:j] v."""
        basis = self.Q
        norm0 = v.norm()
        c = basis @ v if known is None else torch.cat([known, basis[len(known):] @ v])
        v = v - basis.T @ c
        v = v - basis.T @ (basis @ v)  # twice is enough
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
                q = self._orthonormal(*self.queue.pop(0))
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
        projection = self._Q[: m + 1] @ w  # H[:, m] = Q^T A q_m (= H[m, :] by symmetry)
        column = projection.double()
        H = torch.zeros(m + 1, m + 1, dtype=torch.float64, device=self.device)
        H[:-1, :-1] = self.H
        H[:, -1] = column
        H[-1, :] = column
        self.H = H
        norm2 = float(torch.linalg.vector_norm(w, dtype=torch.float64)) ** 2
        self.beta.append(max(norm2 - float(column.square().sum()), 0.0) ** 0.5)
        if m + 1 < self.n:
            self.queue.append((w, projection))

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
    vector_tol: float | None = None,
) -> EigenResult:
    """The k algebraically largest eigenpairs by Lanczos with full reorthogonalization.

    Args:
        A: symmetric dense matrix or operator.
        k: number of eigenpairs.
        tol: certified eigenvalue error relative to |lambda| (see the module docstring).
        max_iter: maximum basis size (products); default min(n, max(100, 8 k)).
        block_size: start vectors (>= the largest multiplicity to resolve), and the vectors
            added per step with one block product (the stopping test runs after each step).
        seed: seed of the start vectors.
        progress: show a progress bar.
        start: a warm start, e.g. the eigenvectors of a nearby matrix (the previous round's
            model): ``(n,)`` or ``(j, n)``; it replaces the first j random start vectors.
        vector_tol: also bound each residual ||A v - lambda v|| relative to |lambda| (for
            eigenvectors); None asks nothing of the vectors.

    Returns:
        An :class:`EigenResult`; ``converged`` is False for pairs that missed a tolerance
        within ``max_iter`` (a warning says so).

    >>> A = torch.diag(torch.tensor([5.0, 3.0, 1.0, -2.0], dtype=torch.float64))
    >>> [round(x, 9) for x in lanczos(A, k=2, tol=1e-10).eigenvalues.tolist()]
    [5.0, 3.0]
    """
    matmat, n, dtype, device, _ = as_block_operator(A, block_size)
    _check_k(k, n, tol, max_iter, vector_tol)
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

    def ritz_values() -> tuple[torch.Tensor, torch.Tensor]:
        """Every Ritz value of the basis, with cheap residual estimates (float64, on the CPU)."""
        theta, estimate = basis.estimate(basis.size)
        return theta.double().cpu(), estimate.double().cpu()

    def certified(exact: bool, before: torch.Tensor, now: tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
        """Of the top k: Ritz values, vectors (if exact), residuals, how certified, bounds, converged;
        ``now`` the basis's :func:`ritz_values`, ``before`` the top Ritz values one step ago (how far
        they moved guards the gap bound)."""
        theta, estimate = now
        vectors, residuals = None, estimate[:k]
        if exact:
            values, vectors, residuals = basis.ritz(k)
            theta, estimate = theta.clone(), estimate.clone()
            theta[:k], estimate[:k] = values.double().cpu(), residuals.double().cpu()
        moved = (theta[:k] - before[:k]).abs() if len(before) >= k else torch.full((k,), math.inf)
        bounds, how = certify(theta, estimate, k, complete=basis.size == n, dtype=dtype, moved=moved)
        met = _converged(bounds, residuals, theta[:k], tol, vector_tol)
        return theta[:k], vectors, residuals, how, bounds, met

    exact_checks = 0
    before = after = torch.empty(0, dtype=torch.float64)
    while basis.size < max_iter:
        bar.update(basis.step(min(block_size, max_iter - basis.size)))  # one block product
        now = ritz_values()
        before, after = after, now[0]
        if basis.size < k + block_size - 1:
            continue
        theta, _, _, _, _, likely = certified(False, before, now)
        bar.set_postfix(converged=f"{int(likely.sum())}/{k}", lam1=f"{float(theta[0]):.4g}")
        # The cheap estimate says when to pay for exact residuals (k passes over the basis);
        # only exact residuals stop the iteration.
        if bool(likely.all()):
            exact_checks += 1
            if bool(certified(True, before, now)[-1].all()):
                break
    bar.close()
    theta, vectors, res, how, bounds, met = certified(True, before, ritz_values())
    converged = met.tolist()
    if not all(converged):
        warnings.warn(f"lanczos: {k - sum(converged)} of {k} eigenpairs missed tol={tol}"
                      + (f" / vector_tol={vector_tol}" if vector_tol is not None else "")
                      + f" after {basis.size} products; raise max_iter", stacklevel=2)
    return EigenResult(theta.to(dtype), vectors, res, basis.size, converged, "lanczos", bounds, how,
                       {"basis_size": basis.size, "block_size": block_size, "tol": tol, "vector_tol": vector_tol,
                        "exact_checks": exact_checks})


def power_iteration(
    A: torch.Tensor | Operator,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    progress: bool = False,
    vector_tol: float | None = None,
) -> EigenResult:
    """The k largest-magnitude eigenpairs by power iteration with deflation [Y20, C22].

    For each i, iterate v <- P A P v / ||.|| with P the projector orthogonal to the
    pairs found so far, lambda = v^T A v, until ||A v - lambda v|| <= min(tol, vector_tol) |lambda|
    or ``max_iter`` products ([C22] uses 20). The residual is the (Bauer-Fike) bound reported.

    >>> A = torch.diag(torch.tensor([4.0, -3.0, 1.0], dtype=torch.float64))
    >>> [round(x, 6) for x in power_iteration(A, k=2, tol=1e-7, max_iter=500).eigenvalues.tolist()]
    [4.0, -3.0]
    """
    matvec, n, dtype, device = as_operator(A)
    _check_k(k, n, tol, max_iter, vector_tol)
    stop = tol if vector_tol is None else min(tol, vector_tol)
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
            if (pw - lam * v).norm() <= stop * lam.abs() or it == max_iter - 1:
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
    floor = ROUNDING_FLOOR * torch.finfo(dtype).eps * float(theta.abs().max())
    bounds = residuals.double().clamp_min(floor)
    converged = _converged(bounds, residuals, theta, tol, vector_tol).tolist()
    if not all(converged):
        warnings.warn(f"power iteration: {k - sum(converged)} of {k} eigenpairs missed tol={stop} within "
                      f"{max_iter} iterations each", stacklevel=2)
    return EigenResult(theta, S.T @ V, residuals, products, converged, "power", bounds, ["residual"] * k,
                       {"max_iter": max_iter, "tol": tol, "vector_tol": vector_tol})


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
    vector_tol: float | None = None,
) -> EigenResult:
    """The top-k eigenpairs by ``method`` ("lanczos", the default, or "power"); ``start`` warm-starts Lanczos.

    ``tol`` bounds each eigenvalue's certified relative error, ``vector_tol`` (optional) each
    eigenvector's relative residual (see the module docstring).

    Raises:
        LandscapeError: unknown method, k < 1 or k larger than the dimension.
    """
    if method == "lanczos":
        return lanczos(A, k, tol, max_iter, block_size, seed, progress, start, vector_tol)
    if method == "power":
        return power_iteration(A, k, tol, 100 if max_iter is None else max_iter, seed, progress, vector_tol)
    raise LandscapeError(f"unknown eigen method '{method}'; choose one of {', '.join(METHODS)}")
