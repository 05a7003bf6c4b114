"""Directions: filter normalization, roles, seeds, orthogonalization, eigenvectors, PCA, planes, files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape import directions as D
from landscape.errors import LandscapeError
from landscape.objective import Objective


class Mixed(nn.Module):
    """Every role: conv/linear weights and biases, BatchNorm, a 2-D LayerNorm, a 1-D non-norm weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 5)
        self.ln = nn.LayerNorm((5,), elementwise_affine=True)
        self.ln2 = nn.LayerNorm((2, 3))  # 2-D norm parameters: zeroed by role although ndim = 2
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 5))  # 1-D but a weight, not a bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.ln(self.fc(h)) * self.scale


def mixed() -> Mixed:
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # norm weights away from exactly 1
    return model


def test_roles_by_module_type_not_ndim() -> None:
    roles = D.parameter_roles(mixed())
    assert roles == {
        "scale": "weight", "conv.weight": "weight", "conv.bias": "bias", "bn.weight": "norm", "bn.bias": "norm",
        "fc.weight": "weight", "fc.bias": "bias", "ln.weight": "norm", "ln.bias": "norm",
        "ln2.weight": "norm", "ln2.bias": "norm",
    }


def test_filter_normalization_slice_norms_and_ignored_roles() -> None:
    model = mixed()
    params = D.trainable_parameters(model)
    roles = D.parameter_roles(model)
    dirs = D.random_directions(model, 2, seed=3)
    for d in dirs.vectors:
        for name, w in params.items():
            if roles[name] in ("bias", "norm"):
                assert torch.count_nonzero(d[name]) == 0, name
            else:
                slices = d[name].reshape(w.shape[0], -1).norm(dim=1)
                torch.testing.assert_close(slices, w.reshape(w.shape[0], -1).norm(dim=1), rtol=1e-5, atol=0)


def test_ignore_nothing_normalizes_every_slice() -> None:
    model = mixed()
    params = D.trainable_parameters(model)
    (d,) = D.random_directions(model, 1, seed=0, ignore=()).vectors
    for name, w in params.items():
        torch.testing.assert_close(d[name].reshape(w.shape[0], -1).norm(dim=1), w.reshape(w.shape[0], -1).norm(dim=1))


def test_zero_weight_slice_gives_zero_direction() -> None:
    out = D.filter_normalize({"w": torch.ones(2, 3)}, {"w": torch.tensor([[0.0, 0, 0], [1, 2, 2]])})
    assert torch.equal(out["w"][0], torch.zeros(3))
    torch.testing.assert_close(out["w"][1].norm(), torch.tensor(3.0))


def test_seeded_and_different_seeds_differ() -> None:
    model = mixed()
    a, b, c = (D.random_directions(model, 2, seed=s) for s in (5, 5, 6))
    assert a.sha256() == b.sha256() != c.sha256()
    assert a.describe()["seed"] == 5 and a.describe()["kind"] == "random"


def test_orthogonalization_reports_cosine_and_keeps_norms() -> None:
    model = mixed()
    raw = D.random_directions(model, 3, seed=1)
    ortho = D.random_directions(model, 3, seed=1, orthogonal=True)
    names = list(raw.vectors[0])
    fr = [D.flatten(v, names) for v in raw.vectors]
    fo = [D.flatten(v, names) for v in ortho.vectors]
    cos01 = float(fr[0] @ fr[1] / (fr[0].norm() * fr[1].norm()))
    assert ortho.info["cosines"][0][1] == pytest.approx(cos01, abs=1e-12)
    assert raw.info["cosines"][0][1] == pytest.approx(cos01, abs=1e-12)
    for i in range(3):
        assert float(fo[i].norm()) == pytest.approx(float(fr[i].norm()), rel=1e-5)
        for j in range(i):
            assert abs(float(fo[i] @ fo[j])) < 1e-5 * float(fo[i].norm() * fo[j].norm())
    torch.testing.assert_close(fo[0], fr[0])


def test_orthogonalize_parallel_directions_is_an_error() -> None:
    v = {"w": torch.ones(4)}
    with pytest.raises(LandscapeError, match="parallel"):
        D.orthogonalize([v, {"w": 2 * torch.ones(4)}])


def test_eigen_directions_are_the_top_hessian_eigenvectors() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    obj = Objective(model, [(x, y)], dtype=torch.float64)
    dense = torch.func.hessian(lambda flat: nn.functional.cross_entropy(
        torch.func.functional_call(obj.model, obj.unflatten(flat), (x,)), y))(obj.flatten(obj.params))
    evals, evecs = torch.linalg.eigh(dense)
    dirs = D.eigen_directions(obj, 2, tol=1e-8)
    assert dirs.info["eigenvalues"] == pytest.approx(evals.flip(0)[:2].tolist(), rel=1e-6)
    for i, v in enumerate(dirs.vectors):
        flat = obj.flatten(v)
        assert float(flat.norm()) == pytest.approx(1.0)
        assert abs(float(flat @ evecs[:, -1 - i])) == pytest.approx(1.0, abs=1e-6)
        assert float(flat[flat.abs().argmax()]) > 0


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T


def _params(flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """A parameter dict with two tensors (6x2 weight, 3-bias) from a 15-vector."""
    return {"w": flat[:12].reshape(6, 2).clone(), "b": flat[12:].clone()}


def test_plane_three_models_at_expected_coordinates_and_a_fourth_off_plane() -> None:
    e = _orthonormal(15, 3, seed=0)  # u_hat, v_hat and a normal to the plane
    w1 = torch.randn(15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w2, w3 = w1 + 3.0 * e[0], w1 + 1.0 * e[0] + 2.0 * e[1]
    w4 = w1 + 0.5 * e[0] - 1.5 * e[1] + 4.0 * e[2]
    plane = D.plane_through(_params(w1), _params(w2), _params(w3))
    assert plane.coords == [[0.0, 0.0], [pytest.approx(3.0), 0.0], [pytest.approx(1.0), pytest.approx(2.0)]]
    for w, expected in ((w1, [0, 0]), (w2, [3, 0]), (w3, [1, 2])):
        coords, distance = D.project(plane.origin, plane.directions.vectors, _params(w))
        assert coords == pytest.approx(expected, abs=1e-12) and distance == pytest.approx(0.0, abs=1e-12)
    coords, distance = D.project(plane.origin, plane.directions.vectors, _params(w4))
    assert coords == pytest.approx([0.5, -1.5]) and distance == pytest.approx(4.0)
    names = ["w", "b"]
    u, v = (D.flatten(d, names) for d in plane.directions.vectors)
    assert float(u @ v) == pytest.approx(0.0, abs=1e-12) and float(u.norm()) == pytest.approx(1.0)


@pytest.mark.parametrize("case", ["collinear", "identical"])
def test_plane_through_degenerate_models_is_an_error(case: str) -> None:
    w1 = torch.randn(15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    step = torch.randn(15, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w2 = w1 + step if case == "collinear" else w1.clone()
    with pytest.raises(LandscapeError, match="collinear" if case == "collinear" else "identical"):
        D.plane_through(_params(w1), _params(w2), _params(w1 - 2.5 * step))


def test_different_architectures_are_an_error() -> None:
    a = D.trainable_parameters(nn.Linear(3, 2))
    b = D.trainable_parameters(nn.Linear(4, 2))
    with pytest.raises(LandscapeError, match="different architectures: a.pt and b.pt differ"):
        D.require_same_shapes([a, b], ["a.pt", "b.pt"])


def test_pca_recovers_a_planar_trajectory() -> None:
    e = _orthonormal(15, 3, seed=4)
    origin = torch.zeros(15, dtype=torch.float64) + 0.3
    steps = [(0.0, 0.0), (1.0, 0.5), (2.0, -0.5), (4.0, 1.0), (5.0, 0.0)]
    trajectory = [_params(origin + a * e[0] + b * e[1]) for a, b in steps]
    dirs, projected = D.pca_directions(_params(origin), trajectory)
    basis = torch.stack([D.flatten(v, ["w", "b"]) for v in dirs.vectors])
    # The two principal directions span the plane of e0, e1: projecting them onto it loses nothing.
    torch.testing.assert_close((basis @ e[:2].T).norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert sum(dirs.info["explained_variance"]) == pytest.approx(1.0)
    for (coords, distance), (a, b) in zip(projected, steps):
        back = coords[0] * basis[0] + coords[1] * basis[1]
        torch.testing.assert_close(back, a * e[0] + b * e[1])
        assert distance == pytest.approx(0.0, abs=1e-10)


def test_pca_needs_enough_distinct_checkpoints() -> None:
    w = _params(torch.ones(15, dtype=torch.float64))
    with pytest.raises(LandscapeError, match="at least 3 trajectory checkpoints"):
        D.pca_directions(w, [w, w])
    with pytest.raises(LandscapeError, match="spans fewer than 2"):
        D.pca_directions(w, [w, w, w])


def test_direction_file_roundtrip_and_mismatch(tmp_path) -> None:
    model = mixed()
    dirs = D.random_directions(model, 2, seed=9)
    path = D.save_directions(tmp_path / "d.pt", dirs, {"name": "mixed", "kwargs": {}})
    back = D.load_directions(path, D.trainable_parameters(model))
    assert back.sha256() == dirs.sha256() and back.kind == "random" and back.seed == 9
    with pytest.raises(LandscapeError, match=r"direction file .*d\.pt \(made for model 'mixed' \{\}\) does not match the model"):
        D.load_directions(path, D.trainable_parameters(nn.Linear(3, 2)))
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(LandscapeError, match="cannot read direction file"):
        D.load_directions(tmp_path / "junk.pt", D.trainable_parameters(model))
