"""Solvers against torch.linalg.eigh on matrices with known spectra."""

import pytest
import torch

from landscape.eigen import KrylovBasis, as_block_operator, certify, lanczos, power_iteration, top_eigenvalues
from landscape.errors import LandscapeError
from landscape.objective import Objective
from landscape.operators import HessianOperator
from tests.conftest import flat_hessian_and_gradient, tiny_cnn


def matrix_with_spectrum(values: list[float], n: int = 120, seed: int = 0) -> torch.Tensor:
    """Q diag(values + filler) Q^T with a random orthogonal Q; filler eigenvalues in [-0.5, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    filler = torch.rand(n - len(values), generator=g, dtype=torch.float64) - 0.5
    spectrum = torch.cat([torch.tensor(values, dtype=torch.float64), filler])
    return q @ torch.diag(spectrum) @ q.T


SPECTRA = {
    "separated": [10.0, 7.0, 5.0, 3.0, 2.0],
    "clustered": [5.0, 4.99, 4.98, 4.97, 1.5],
    "negative": [6.0, 4.0, 3.0, 2.0, 1.0, -8.0, -9.0],
    "degenerate": [8.0, 8.0, 8.0, 3.0, 2.0],
}


@pytest.mark.parametrize("name", SPECTRA)
def test_lanczos_finds_the_algebraically_largest(name):
    A = matrix_with_spectrum(SPECTRA[name])
    k = 5
    expected = torch.linalg.eigvalsh(A).flip(0)[:k]
    result = lanczos(A, k, tol=1e-9, vector_tol=1e-9, block_size=3 if name == "degenerate" else 1)
    torch.testing.assert_close(result.eigenvalues, expected, atol=1e-7, rtol=1e-8)
    assert all(result.converged)
    # The residuals are exact: recompute them.
    for lam, v, r in zip(result.eigenvalues, result.eigenvectors, result.residuals):
        assert float((A @ v - lam * v).norm()) == pytest.approx(float(r), abs=1e-9)
        assert float(r) <= 1e-9 * abs(float(lam)) + 1e-12
    gram = result.eigenvectors @ result.eigenvectors.T
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", SPECTRA)
def test_power_iteration_finds_the_largest_in_magnitude(name):
    A = matrix_with_spectrum(SPECTRA[name])
    k = 5
    values = torch.linalg.eigvalsh(A)
    expected = values[values.abs().argsort(descending=True)][:k].sort(descending=True).values
    result = power_iteration(A, k, tol=1e-7, max_iter=5000)
    torch.testing.assert_close(result.eigenvalues, expected, atol=1e-5, rtol=1e-6)
    assert result.num_matvecs <= 5 * 5000


def test_residual_certificate_bounds_the_error():
    # Bauer-Fike: a symmetric matrix has an eigenvalue within the residual of each Ritz value.
    A = matrix_with_spectrum(SPECTRA["clustered"], seed=3)
    result = lanczos(A, 3, tol=1e-2)
    true = torch.linalg.eigvalsh(A)
    for lam, r in zip(result.eigenvalues, result.residuals):
        assert float((true - lam).abs().min()) <= float(r) + 1e-12


def test_lanczos_uses_far_fewer_products_than_power_iteration():
    A = matrix_with_spectrum([10.0, 9.5, 9.0, 8.5, 8.0], n=300)
    fast = lanczos(A, 5, tol=1e-6)
    slow = power_iteration(A, 5, tol=1e-6, max_iter=10000)
    torch.testing.assert_close(fast.eigenvalues, slow.eigenvalues, atol=1e-4, rtol=1e-5)
    assert fast.num_matvecs * 5 < slow.num_matvecs


def test_unconverged_pairs_are_flagged():
    A = matrix_with_spectrum(SPECTRA["clustered"])
    with pytest.warns(UserWarning, match="missed tol"):
        result = lanczos(A, 4, tol=1e-12, max_iter=6)
    assert not all(result.converged)


def test_small_matrices_are_solved_exactly():
    A = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))
    assert lanczos(A, 3, tol=1e-12).eigenvalues.tolist() == pytest.approx([3.0, 2.0, 1.0])


@pytest.mark.parametrize("k, match", [(0, "at least 1"), (4, "exceeds the number of parameters")])
def test_bad_k(k, match):
    with pytest.raises(LandscapeError, match=match):
        top_eigenvalues(torch.eye(3), k)


def test_unknown_method():
    with pytest.raises(LandscapeError, match="unknown eigen method"):
        top_eigenvalues(torch.eye(3), 1, method="arnoldi")


# ----------------------------------------------------------------------------------------------
# certified eigenvalue bounds
# ----------------------------------------------------------------------------------------------
CERTIFIED = {**SPECTRA, "close-pair": [4.0, 4.0 - 1e-6, 2.0, 1.0, 0.9], "all-negative": [-0.6, -1.0, -2.0, -3.0, -4.0]}


def _true_top(A: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigvalsh(A).flip(0)[:k]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-8])
@pytest.mark.parametrize("name", CERTIFIED)
def test_every_reported_eigenvalue_bound_holds(name, tol, seed):
    values = CERTIFIED[name]
    if name == "all-negative":  # the whole spectrum below zero: the filler must be too
        values = values + [-5.0 - 0.01 * i for i in range(115)]
    A = matrix_with_spectrum(values, seed=seed)
    k = 5
    block = 3 if name == "degenerate" else 1
    result = lanczos(A, k, tol=tol, block_size=block, seed=seed)
    true = _true_top(A, k)
    errors = (result.eigenvalues - true).abs()
    assert (errors <= result.bounds).all(), (errors, result.bounds, result.certified_by)
    scale = torch.maximum(result.eigenvalues.abs(), 0.01 * result.eigenvalues.abs().max())
    for ok, err, bound, s in zip(result.converged, errors, result.bounds, scale):
        if ok:
            assert bound <= tol * s and err <= tol * s
    # The gap bound r^2/gap is used only where the gap is resolved, and is never looser than r.
    assert (result.bounds <= result.residuals.clamp_min(1e-13) + 1e-15).all()
    assert set(result.certified_by) <= {"gap", "residual"}


def test_one_start_vector_misses_a_repeated_eigenvalue_but_its_bounds_still_hold_for_the_nearest():
    A = matrix_with_spectrum(SPECTRA["degenerate"])
    result = lanczos(A, 3, tol=1e-8)  # one Krylov space holds one copy of the triple 8
    spectrum = torch.linalg.eigvalsh(A)
    for theta, bound in zip(result.eigenvalues, result.bounds):
        assert float((spectrum - theta).abs().min()) <= float(bound)


def test_the_gap_bound_stops_long_before_the_residual_does():
    A = matrix_with_spectrum(SPECTRA["separated"], n=400)
    values = lanczos(A, 5, tol=1e-8)
    vectors = lanczos(A, 5, tol=1e-8, vector_tol=1e-8)
    assert values.num_matvecs < vectors.num_matvecs
    assert "gap" in values.certified_by
    true = _true_top(A, 5)
    assert ((values.eigenvalues - true).abs() <= 1e-8 * true.abs()).all()
    assert (values.residuals > 1e-8 * true.abs()).any()  # the vectors are not that accurate, nor asked to be
    assert (vectors.residuals <= 1e-8 * true.abs()).all()


def test_certify_falls_back_to_the_residual_where_the_gap_is_not_resolved():
    theta = torch.tensor([2.0, 1.99, 0.0], dtype=torch.float64)
    residuals = torch.tensor([0.02, 0.02, 0.1], dtype=torch.float64)
    bounds, how = certify(theta, residuals, k=2)
    assert how == ["residual", "residual"] and bounds.tolist() == pytest.approx([0.02, 0.02])
    # nothing is known below the lowest Ritz value of a partial subspace ...
    assert certify(theta[:1], residuals[:1] / 100, k=1)[1] == ["residual"]
    # ... unless the subspace is the whole space
    bounds, how = certify(theta[[0, 2]], torch.tensor([1e-3, 1e-3], dtype=torch.float64), k=1, complete=True)
    assert how == ["gap"] and float(bounds[0]) == pytest.approx(1e-6 / (2.0 - 1e-3))


def test_power_iteration_reports_its_residual_as_the_bound():
    A = matrix_with_spectrum(SPECTRA["separated"])
    result = power_iteration(A, 3, tol=1e-6, max_iter=2000)
    assert result.certified_by == ["residual"] * 3
    assert ((result.eigenvalues - _true_top(A, 3)).abs() <= result.bounds).all()


def test_vector_tol_is_checked():
    A = matrix_with_spectrum(SPECTRA["separated"])
    with pytest.raises(LandscapeError, match="--vector-tol"):
        lanczos(A, 2, vector_tol=2.0)


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_bounds_hold_on_a_dense_float64_network_hessian(tol):
    torch.manual_seed(0)
    model = tiny_cnn(None).double()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    H, _ = flat_hessian_and_gradient(model, x, y)
    true = torch.linalg.eigvalsh(H).flip(0)[:5]
    op = HessianOperator(Objective(model, [(x, y)], dtype=torch.float64))
    result = lanczos(op, 5, tol=tol)
    assert all(result.converged)
    errors = (result.eigenvalues - true).abs()
    assert (errors <= result.bounds).all(), (errors, result.bounds)
    assert (errors <= tol * true.abs().clamp_min(0.01 * true.abs().max())).all()
# block steps: one block product per step, the basis of single steps
# ----------------------------------------------------------------------------------------------
def _basis(A: torch.Tensor, start: torch.Tensor, count: int, block_size: int, seed: int = 5) -> KrylovBasis:
    matmat, n, dtype, device, _ = as_block_operator(A, block_size)
    basis = KrylovBasis(matmat, n, dtype, device, start, torch.Generator().manual_seed(seed))
    while basis.size < n:
        basis.step(count)
    return basis


@pytest.mark.parametrize("spectrum", ["random", "few distinct values"])
def test_block_steps_build_the_basis_of_single_steps(spectrum):
    # "few distinct values": the block Krylov space of 2 start vectors is invariant after 6 vectors,
    # so vanished vectors are replaced at random, in the same order with or without blocks.
    n = 24
    A = matrix_with_spectrum(SPECTRA["separated"], n=n) if spectrum == "random" else \
        torch.diag(torch.tensor([1.0, 2.0, 3.0] * 8, dtype=torch.float64))
    start = torch.randn(2, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    single = _basis(A, start, 1, 1)
    for count, block_size in [(2, 2), (4, 4), (5, 2)]:
        block = _basis(A, start, count, block_size)
        assert block.size == single.size == n
        for name in ("Q", "W", "H"):
            torch.testing.assert_close(getattr(block, name), getattr(single, name), atol=1e-12, rtol=0)
        assert block.beta == pytest.approx(single.beta, abs=1e-12)


def test_block_lanczos_equals_lanczos_with_single_products():
    from tests.test_operators import _cases

    model, (x, y) = _cases()["cnn"]
    objective = Objective(model, [(x[:7], y[:7]), (x[7:], y[7:])], dtype=torch.float64)
    # the same block Krylov space of 3 start vectors, products one by one or 3 (then 2 + 1) per graph
    single = lanczos(HessianOperator(objective, block_size=1), k=4, tol=1e-8, block_size=3, seed=2)
    block = lanczos(HessianOperator(objective, block_size=2), k=4, tol=1e-8, block_size=3, seed=2)
    assert all(block.converged) and block.num_matvecs == single.num_matvecs
    assert block.num_matvecs % 3 == 0  # the stopping test runs after each block
    torch.testing.assert_close(block.eigenvalues, single.eigenvalues, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(block.residuals, single.residuals, atol=1e-9, rtol=0)
    torch.testing.assert_close(block.eigenvectors.abs(), single.eigenvectors.abs(), atol=1e-9, rtol=0)
    dense = torch.linalg.eigvalsh(HessianOperator(objective).dense()).flip(0)[:4]
    torch.testing.assert_close(block.eigenvalues, dense, atol=1e-8, rtol=1e-6)


def test_as_block_operator_chunks_and_checks_the_block_size():
    A = matrix_with_spectrum(SPECTRA["separated"], n=10)
    V = torch.randn(7, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for size in (1, 3, 7, 20):
        matmat, n, _, _, got = as_block_operator(A, size)
        assert (n, got) == (10, size)
        torch.testing.assert_close(matmat(V), V @ A, atol=1e-13, rtol=0)
    assert as_block_operator(A)[4] == 1
    with pytest.raises(LandscapeError, match="--block-size must be at least 1, got 0"):
        as_block_operator(A, 0)
