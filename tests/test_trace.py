"""Trace and density estimators against exact values, with fixed seeds."""

import numpy as np
import pytest
import torch

from landscape.spectrum import slq
from landscape.trace import estimate_trace, hutchinson, hutchpp
from tests.test_eigen import matrix_with_spectrum


def decaying(n: int = 200) -> torch.Tensor:
    values = [100.0 / (i + 1) ** 1.5 for i in range(20)]
    return matrix_with_spectrum(values, n=n, seed=1) + 0.0


def test_hutchinson_is_within_its_standard_error():
    A = decaying()
    exact = float(torch.trace(A))
    result = hutchinson(A, max_samples=400, tol=1e-9, seed=0)
    assert result.num_matvecs == 400
    assert abs(result.trace - exact) <= 4 * result.stderr
    assert result.stderr < 0.1 * abs(exact)


def test_hutchinson_error_shrinks_with_samples():
    A = decaying()
    exact = float(torch.trace(A))
    errs = [np.mean([abs(hutchinson(A, m, tol=0, seed=s).trace - exact) for s in range(8)]) for m in (10, 160)]
    assert errs[1] < errs[0] / 2  # 1/sqrt(m): 4x fewer errors expected, 2x asserted


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum():
    A = decaying()
    exact = float(torch.trace(A))
    pp = [abs(hutchpp(A, 60, seed=s).trace - exact) for s in range(6)]
    h = [abs(hutchinson(A, 60, tol=0, seed=s).trace - exact) for s in range(6)]
    assert np.mean(pp) < np.mean(h) / 3


def test_hutchpp_reports_a_standard_error():
    A = decaying()
    result = estimate_trace(A, "hutch++", budget=90, seed=2)
    assert result.num_matvecs == 90 and result.stderr > 0
    assert abs(result.trace - float(torch.trace(A))) <= 4 * result.stderr + 1e-9


def test_each_slq_probe_integrates_polynomials_exactly():
    # Gauss quadrature from m Lanczos steps is exact for v^T A^p v, p <= 2m - 1.
    A = decaying(120)
    density = slq(A, num_steps=6, num_runs=1, seed=3)
    g = torch.Generator().manual_seed(3)
    v = (torch.randint(0, 2, (1, 120), generator=g) * 2 - 1).to(torch.float64)[0]
    v = v / v.norm()
    for p in range(0, 12):
        exact = float(v @ torch.linalg.matrix_power(A, p) @ v)
        quad = float(np.sum(density.weights[0] * density.nodes[0] ** p))
        assert quad == pytest.approx(exact, rel=1e-8)


def test_slq_moments_converge_to_the_exact_ones():
    g = torch.Generator().manual_seed(0)
    values = (1 + 2 * torch.rand(150, generator=g, dtype=torch.float64)).tolist()
    A = matrix_with_spectrum(values, n=150)
    exact = [float(torch.trace(torch.linalg.matrix_power(A, p))) / 150 for p in (1, 2)]
    few, many = slq(A, 15, 2, seed=0), slq(A, 15, 200, seed=0)
    assert many.moment(0) == pytest.approx(1.0)
    assert many.moment(1) == pytest.approx(exact[0], rel=0.01)
    assert many.moment(2) == pytest.approx(exact[1], rel=0.02)
    assert abs(many.moment(2) - exact[1]) < abs(few.moment(2) - exact[1])


def test_slq_nodes_find_the_extreme_eigenvalues_and_the_density_integrates_to_one():
    A = decaying(120)
    true = torch.linalg.eigvalsh(A)
    density = slq(A, num_steps=40, num_runs=2, seed=0)
    assert density.nodes.max() == pytest.approx(float(true.max()), rel=1e-6)
    grid = np.linspace(float(true.min()) - 5, float(true.max()) + 5, 20000)
    assert np.trapezoid(density.evaluate(grid), grid) == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# blocks of probes: the estimates of one probe at a time
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block_size", [2, 3, 8])
def test_hutchinson_in_blocks_is_hutchinson_one_probe_at_a_time(block_size):
    A = decaying()
    for tol in (0.2, 1e-9):  # stops at sample 19 (inside a block) / runs to max_samples (37: a partial last block)
        one = hutchinson(A, max_samples=37, tol=tol, seed=4, block_size=1)
        block = hutchinson(A, max_samples=37, tol=tol, seed=4, block_size=block_size)
        assert block.num_matvecs == one.num_matvecs
        assert block.trace == pytest.approx(one.trace, rel=1e-12)
        assert block.stderr == pytest.approx(one.stderr, rel=1e-10)
    assert hutchinson(A, max_samples=37, tol=0.2, seed=4).num_matvecs == 19


@pytest.mark.parametrize("block_size", [2, 4, 30])
def test_hutchpp_in_blocks_is_hutchpp_one_column_at_a_time(block_size):
    A = decaying()
    one, block = hutchpp(A, 60, seed=2, block_size=1), hutchpp(A, 60, seed=2, block_size=block_size)
    assert block.trace == pytest.approx(one.trace, rel=1e-12) and block.stderr == pytest.approx(one.stderr, rel=1e-9)


@pytest.mark.parametrize("matrix", ["decaying", "few distinct values"])
def test_slq_runs_in_blocks_are_the_runs_alone(matrix):
    # "few distinct values": every run reaches an invariant subspace and draws random vectors (its own seed)
    A = decaying(60) if matrix == "decaying" else torch.diag(torch.tensor([1.0, 2.0, 3.0] * 20, dtype=torch.float64))
    one = slq(A, num_steps=12, num_runs=5, seed=1, block_size=1)
    for block_size in (2, 5, 9):
        block = slq(A, num_steps=12, num_runs=5, seed=1, block_size=block_size)
        np.testing.assert_allclose(block.nodes, one.nodes, atol=1e-10, rtol=0)
        np.testing.assert_allclose(block.weights, one.weights, atol=1e-10, rtol=0)
        assert block.num_matvecs == one.num_matvecs == 60


def test_block_products_of_an_operator_give_the_single_product_estimates():
    from landscape.objective import Objective
    from landscape.operators import HessianOperator
    from tests.test_operators import _cases

    model, (x, y) = _cases()["cnn"]
    objective = Objective(model, [(x[:7], y[:7]), (x[7:], y[7:])], dtype=torch.float64)
    single, block = HessianOperator(objective, block_size=1), HessianOperator(objective, block_size=4)
    for run in (lambda op: hutchinson(op, max_samples=30, tol=0.05, seed=1),
                lambda op: hutchpp(op, 30, seed=1)):
        a, b = run(single), run(block)  # block_size None: the operator's
        assert (a.trace, a.stderr, a.num_matvecs) == pytest.approx((b.trace, b.stderr, b.num_matvecs), rel=1e-10)
    a, b = slq(single, 10, 6, seed=1), slq(block, 10, 6, seed=1)
    np.testing.assert_allclose(b.nodes, a.nodes, atol=1e-10, rtol=0)
    np.testing.assert_allclose(b.weights, a.weights, atol=1e-10, rtol=0)
    assert block._vmap_blocks is True and block.num_matvecs >= single.num_matvecs
