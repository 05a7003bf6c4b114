"""Surfaces against closed forms; batching, resuming and BN recalibration against plain loops; the CLI."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from landscape import checkpoint, data, pieces
from landscape import directions as D
from landscape import surface as S
from landscape.cli import main
from landscape.data import Dataset
from landscape.errors import LandscapeError
from landscape.models import build
from landscape.partition import client_data
from tests.test_pieces import CNN_ACTIVATIONS, BatchCoupled

C0 = 0.7  # the quadratic's minimum value


class Quadratic(nn.Module):
    """A model whose mean cross-entropy is exactly q(w) = c + (w - w*)^T A (w - w*) / 2.

    Logits [log(expm1(q)), 0] with label 1 give CE = log(1 + expm1(q)) - 0 = q, and the
    prediction is right iff expm1(q) < 1, i.e. q < log 2.
    """

    def __init__(self, a: torch.Tensor, w_star: torch.Tensor, w: torch.Tensor, c: float = C0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.bias = nn.Parameter(torch.zeros(2))  # unused by the loss; zero in random directions
        self.register_buffer("a", a)
        self.register_buffer("w_star", w_star)
        self.c = c

    def q(self) -> torch.Tensor:
        r = (self.w - self.w_star).reshape(-1)
        return self.c + 0.5 * r @ self.a @ r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z0 = torch.log(torch.expm1(self.q()))
        return torch.stack([z0, torch.zeros_like(z0)]).expand(x.shape[0], 2) + 0 * self.bias


def quadratic(at_minimum: bool, dtype: torch.dtype = torch.float64) -> Quadratic:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T / 12 + 0.1 * torch.eye(12, dtype=torch.float64)
    w_star = torch.randn(3, 4, generator=g, dtype=torch.float64)
    w = w_star if at_minimum else w_star + 0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    return Quadratic(a, w_star, w).to(dtype)


def q_closed_form(model: Quadratic, point: torch.Tensor) -> float:
    r = (point.double() - model.w_star.double()).reshape(-1)
    return float(C0 + 0.5 * r @ model.a.double() @ r)


def label_ones(n: int = 5, dtype: torch.dtype = torch.float32) -> Dataset:
    return Dataset(torch.zeros(n, 1, dtype=dtype), torch.ones(n, dtype=torch.long), 2, {"dataset": "ones", "n": n})


@pytest.mark.parametrize("kind", ["line", "grid", "volume"])
def test_quadratic_surface_matches_closed_form(kind: str) -> None:
    model = quadratic(at_minimum=False)
    num = S.KINDS[kind]
    dirs = D.random_directions(model, num, seed=1)
    axes = [S.symmetric_axis(0.8, 5)] * num
    res = S.evaluate(model, dirs, axes, {"train": label_ones()}, kind=kind, dtype=torch.float64, progress=False)
    assert res["values"]["train/loss"].shape == (5,) * num and res["done"].all()
    for idx in np.ndindex(*res["values"]["train/loss"].shape):
        point = model.w.detach() + sum(float(axes[i][j]) * dirs.vectors[i]["w"] for i, j in enumerate(idx))
        q = q_closed_form(model, point)
        assert res["values"]["train/loss"][idx] == pytest.approx(q, rel=1e-12)
        assert res["values"]["train/accuracy"][idx] == float(q < math.log(2))


def test_quadratic_grid_centre_symmetry_and_axis_scale() -> None:
    model = quadratic(at_minimum=True)
    dirs = D.random_directions(model, 2, seed=2)
    axis = S.symmetric_axis(1.5, 7)
    res = S.evaluate(model, dirs, [axis, axis], {"train": label_ones()}, dtype=torch.float64, progress=False)
    loss = res["values"]["train/loss"]
    assert loss[3, 3] == pytest.approx(C0, abs=1e-14)
    np.testing.assert_allclose(loss, loss[::-1, ::-1], rtol=1e-13)
    for i, d in enumerate(dirs.vectors):
        curvature = float(d["w"].reshape(-1) @ model.a @ d["w"].reshape(-1))  # d^T A d
        along = loss[:, 3] if i == 0 else loss[3, :]
        np.testing.assert_allclose(along, C0 + 0.5 * axis**2 * curvature, rtol=1e-12)
    assert res["markers"] == [] and res["axis_labels"] == ["alpha", "beta"]


def test_interpolation_line_hits_both_models_and_extrapolates() -> None:
    a, b = quadratic(at_minimum=False), quadratic(at_minimum=True)
    wa, wb = D.trainable_parameters(a), D.trainable_parameters(b)
    axis = S.interval_axis(-0.5, 1.5, 9)  # 0 and 1 are grid points 2 and 6
    res = S.evaluate(a, D.interpolation(wa, wb), [axis], {"train": label_ones()}, kind="line",
                     dtype=torch.float64, progress=False)
    for t, value in zip(axis, res["values"]["train/loss"]):
        assert value == pytest.approx(q_closed_form(a, (1 - t) * wa["w"] + t * wb["w"]), rel=1e-12)
    assert res["values"]["train/loss"][6] == pytest.approx(C0, abs=1e-14)


def test_plane_surface_passes_through_the_three_models() -> None:
    model = quadratic(at_minimum=False)
    q, _ = torch.linalg.qr(torch.randn(12, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    e = [q[:, i].reshape(3, 4) for i in range(3)]
    w1 = D.trainable_parameters(model)
    w2 = {"w": w1["w"] + 3 * e[0], "bias": w1["bias"]}
    w3 = {"w": w1["w"] + e[0] + 2 * e[1], "bias": w1["bias"]}
    w4 = {"w": w1["w"] + 0.5 * e[0] + 1.5 * e[1] - 2 * e[2], "bias": w1["bias"]}
    plane = D.plane_through(w1, w2, w3)
    markers = S.plane_markers(plane, [("A", "global", w1), ("B", "client", w2), ("C", "client", w3), ("D", "swa", w4)])
    # x: 0..3 step .5, y: 0..2 step 1/3
    axes = S.covering_axes([m["coords"] for m in markers[:3]], 7, margin=0.0, equal=True)
    res = S.evaluate(model, plane.directions, axes, {"train": label_ones()}, kind="plane", origin=plane.origin,
                     markers=markers, dtype=torch.float64, progress=False)
    loss = res["values"]["train/loss"]
    for (i, j), w in (((0, 0), w1), ((6, 0), w2), ((2, 6), w3)):
        assert loss[i, j] == pytest.approx(q_closed_form(model, w["w"]), rel=1e-12)
    assert res["markers"][3]["coords"] == pytest.approx([0.5, 1.5]) and res["markers"][3]["distance"] == pytest.approx(2.0)
    assert [m["distance"] for m in res["markers"][:3]] == [0.0, 0.0, 0.0]


class SmallCNN(nn.Module):
    """conv 3x3 -> optional norm -> tanh -> linear, on 1x5x5 inputs."""

    def __init__(self, norm: str | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = {"group": nn.GroupNorm(2, 4), "batch": nn.BatchNorm2d(4), None: nn.Identity()}[norm]
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.tanh(self.norm(self.conv(x))), 1))


def tiny_cnn(norm: str | None = None) -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN(norm)
    if norm == "batch":  # non-trivial running statistics, as after training
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    return model


def tiny_data(n: int = 12, seed: int = 1, dtype: torch.dtype = torch.float32) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.randn(n, 1, 5, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g), 3,
                   {"dataset": "tiny", "seed": seed})


def loop_reference(
    model: nn.Module, dirs: D.Directions, axes: list[np.ndarray], data: Dataset, calibration: Dataset | None
) -> tuple[np.ndarray, np.ndarray]:
    """One point at a time on a deep copy, plain module calls (and a plain BN recalibration)."""
    shape = tuple(len(a) for a in axes)
    loss, acc = np.zeros(shape), np.zeros(shape)
    base = D.trainable_parameters(model)
    for idx in np.ndindex(*shape):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(base[name] + sum(float(axes[i][j]) * dirs.vectors[i][name] for i, j in enumerate(idx)))
            if calibration is not None:
                for mod in m.modules():
                    if isinstance(mod, nn.BatchNorm2d):
                        mod.reset_running_stats()
                        mod.momentum = None
                        mod.train()
                m(calibration.x)
                m.eval()
            z = m(data.x)
        loss[idx] = float(nn.functional.cross_entropy(z, data.y))
        acc[idx] = float((z.argmax(1) == data.y).double().mean())
    return loss, acc


@pytest.mark.parametrize("bn", ["eval", "recalibrate"])
@pytest.mark.parametrize("points_per_batch", [1, 4, 25])
def test_batched_equals_one_point_at_a_time(bn: str, points_per_batch: int) -> None:
    model = tiny_cnn("batch").double().eval()
    data, cal = tiny_data(dtype=torch.float64), tiny_data(8, seed=2, dtype=torch.float64)
    dirs = D.random_directions(model, 2, seed=0)
    axes = [S.symmetric_axis(1.0, 5), S.symmetric_axis(0.5, 3)]
    res = S.evaluate(model, dirs, axes, {"train": data}, bn=bn, calibration=cal if bn == "recalibrate" else None,
                     points_per_batch=points_per_batch, dtype=torch.float64, progress=False)
    loss, acc = loop_reference(model, dirs, axes, data, cal if bn == "recalibrate" else None)
    np.testing.assert_allclose(res["values"]["train/loss"], loss, rtol=1e-11)
    np.testing.assert_array_equal(res["values"]["train/accuracy"], acc)
    if bn == "recalibrate":  # the statistics really were re-estimated
        eval_loss, _ = loop_reference(model, dirs, axes, data, None)
        assert np.abs(eval_loss - loss).max() > 1e-3


@pytest.mark.parametrize("norm", ["batch", "group", None])
@pytest.mark.parametrize("bn", ["eval", "recalibrate"])
def test_model_parameters_and_buffers_bit_identical(norm: str | None, bn: str) -> None:
    model = tiny_cnn(norm).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dirs = D.random_directions(model, 2, seed=0)
    axis = S.symmetric_axis(1.0, 3)
    S.evaluate(model, dirs, [axis, axis], {"train": tiny_data(), "test": tiny_data(seed=3)}, bn=bn,
               calibration=tiny_data(seed=4), points_per_batch=4, progress=False)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v) and after[k].dtype == v.dtype, k
    assert model.training and all(p.grad is None for p in model.parameters())


def test_several_sources_in_one_evaluation() -> None:
    model = tiny_cnn().eval()
    dirs = D.random_directions(model, 1, seed=0)
    axis = S.symmetric_axis(1.0, 3)
    sources = {"train": tiny_data(), "test": tiny_data(seed=7), "client 0": tiny_data(5, seed=8)}
    res = S.evaluate(model, dirs, [axis], sources, kind="line", progress=False)
    assert sorted(res["values"]) == sorted(f"{s}/{m}" for s in sources for m in ("loss", "accuracy"))
    for name, ds in sources.items():
        with torch.no_grad():
            centre = float(nn.functional.cross_entropy(model(ds.x), ds.y))
        assert res["values"][f"{name}/loss"][1] == pytest.approx(centre, rel=1e-5)
    assert res["metadata"]["data"]["client 0"]["num_samples"] == 5


class Interrupt(Exception):
    """Raised by the patched evaluator to simulate Ctrl-C / a killed job."""


def interrupt_at_batch(monkeypatch: pytest.MonkeyPatch, n: int):
    """Make the evaluator raise :class:`Interrupt` on its n-th batch of points; returns the real one."""
    original, calls = S._Evaluator.__call__, {"n": 0}

    def flaky(self: S._Evaluator, coords: np.ndarray) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupt
        return original(self, coords)

    monkeypatch.setattr(S._Evaluator, "__call__", flaky)
    return original


def test_interrupted_and_continued_equals_uninterrupted(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_cnn().eval()
    dirs = D.random_directions(model, 2, seed=0)
    axis = S.symmetric_axis(1.0, 5)
    kwargs = dict(points_per_batch=3, progress=False, save_every=0.0, metadata={"checkpoints": ["x"]})
    full = S.evaluate(model, dirs, [axis, axis], {"train": tiny_data()}, out=tmp_path / "full.npz", **kwargs)

    original = interrupt_at_batch(monkeypatch, 4)
    with pytest.raises(Interrupt):
        S.evaluate(model, dirs, [axis, axis], {"train": tiny_data()}, out=tmp_path / "part.npz", **kwargs)
    partial = S.load_result(tmp_path / "part.npz")
    assert partial["done"].sum() == 9 and not partial["metadata"]["complete"]
    assert np.isnan(partial["values"]["train/loss"][~partial["done"]]).all()
    monkeypatch.setattr(S._Evaluator, "__call__", original)
    resumed = S.evaluate(model, dirs, [axis, axis], {"train": tiny_data()}, out=tmp_path / "part.npz",
                         progress=False, metadata={"checkpoints": ["x"]})  # points_per_batch from the file
    on_disk = S.load_result(tmp_path / "part.npz")
    for res in (resumed, on_disk):
        for k, v in full["values"].items():
            assert np.array_equal(res["values"][k], v), k
        assert res["metadata"] == full["metadata"]


def test_overwrite_replaces_the_old_result_only_once_the_new_one_is_complete(tmp_path, monkeypatch) -> None:
    model = tiny_cnn().eval()
    axis = S.symmetric_axis(1.0, 5)
    out = tmp_path / "r.npz"
    kwargs = dict(points_per_batch=3, progress=False, save_every=0.0)
    old = S.evaluate(model, D.random_directions(model, 2, seed=0), [axis, axis], {"train": tiny_data()}, out=out,
                     **kwargs)
    before = out.read_bytes()
    original = interrupt_at_batch(monkeypatch, 4)
    new_dirs = D.random_directions(model, 2, seed=1)  # another run: without overwrite it would be refused
    with pytest.raises(Interrupt):
        S.evaluate(model, new_dirs, [axis, axis], {"train": tiny_data()}, out=out, overwrite=True, **kwargs)
    assert out.read_bytes() == before  # the old, complete result is intact
    monkeypatch.setattr(S._Evaluator, "__call__", original)
    new = S.evaluate(model, new_dirs, [axis, axis], {"train": tiny_data()}, out=out, overwrite=True, **kwargs)
    on_disk = S.load_result(out)
    assert on_disk["metadata"]["complete"] and on_disk["metadata"]["directions"] == new["metadata"]["directions"]
    assert not np.array_equal(on_disk["values"]["train/loss"], old["values"]["train/loss"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]  # the work file is gone


@pytest.mark.parametrize(
    "change, field",
    [({"seed": 1}, "directions"), ({"bn": "recalibrate"}, "bn"), ({"data_seed": 9}, "data"), ({"range": 2.0}, "axes"),
     ({"precision": "bf16"}, "precision")],
)
def test_refuses_to_continue_another_run(tmp_path, change: dict, field: str) -> None:
    model = tiny_cnn().eval()

    def run(seed: int = 0, bn: str = "eval", data_seed: int = 1, range: float = 1.0, precision: str = "float32") -> None:
        axis = S.symmetric_axis(range, 3)
        S.evaluate(model, D.random_directions(model, 2, seed=seed), [axis, axis], {"train": tiny_data(seed=data_seed)},
                   bn=bn, calibration=tiny_data(), out=tmp_path / "r.npz", progress=False, precision=precision)

    run()
    with pytest.raises(LandscapeError, match=f"refusing to continue .*r.npz: it holds another run.*{field}"):
        run(**change)


def test_nonfinite_points_recorded_not_raised() -> None:
    model = quadratic(at_minimum=True, dtype=torch.float32)
    dirs = D.random_directions(model, 2, seed=3)
    axis = S.symmetric_axis(40.0, 9)
    res = S.evaluate(model, dirs, [axis, axis], {"train": label_ones()}, progress=False)
    loss = res["values"]["train/loss"]
    bad = ~np.isfinite(loss)
    assert 0 < bad.sum() < bad.size and res["metadata"]["nonfinite"]["train/loss"] == bad.sum()
    for idx in np.ndindex(*loss.shape):
        point = model.w.detach() + float(axis[idx[0]]) * dirs.vectors[0]["w"] + float(axis[idx[1]]) * dirs.vectors[1]["w"]
        q = q_closed_form(model, point)
        if q < 80:  # expm1 overflows float32 only beyond q = 88.7
            assert loss[idx] == pytest.approx(q, rel=1e-4)
        elif bad[idx]:
            assert q > 88


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.symmetric_axis(1.0, 1), "resolution must be at least 2"),
        (lambda: S.symmetric_axis(0.0, 5), "range must be a positive number"),
        (lambda: S.interval_axis(1.0, 1.0, 5), "start < stop"),
    ],
)
def test_bad_grid_arguments(call, match: str) -> None:
    with pytest.raises(LandscapeError, match=match):
        call()


def test_result_file_roundtrip_and_not_a_result(tmp_path) -> None:
    model = tiny_cnn().eval()
    axis = S.symmetric_axis(1.0, 3)
    res = S.evaluate(model, D.random_directions(model, 1, seed=0), [axis], {"client 3": tiny_data()}, kind="line",
                     out=tmp_path / "s.npz", progress=False)
    back = S.load_result(tmp_path / "s.npz")
    assert back["kind"] == "line" and back["metadata"] == res["metadata"]
    np.testing.assert_array_equal(back["values"]["client 3/loss"], res["values"]["client 3/loss"])
    np.testing.assert_array_equal(back["axes"][0], axis)
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(LandscapeError, match="not a surface result file"):
        S.load_result(tmp_path / "other.npz")


# -- command line -----------------------------------------------------------------------------------


def save_mlp(path, hidden: int = 8, seed: int = 0, state: dict | None = None, partition: dict | None = None) -> str:
    """A digits MLP checkpoint (random weights from ``seed``, or the given state_dict)."""
    torch.manual_seed(seed)
    model = build("mlp", hidden=[hidden])
    if state is not None:
        model.load_state_dict(state)
    recorded = {"dataset": "digits", **({"partition": partition} if partition else {})}
    ckpt = checkpoint.from_model(model, "mlp", {"hidden": [hidden]}, role="global", data=recorded)
    return str(checkpoint.save(ckpt, path))


FAST = ["--num-samples", "40", "--resolution", "3", "--device", "cpu", "--sources", "train"]


def test_cli_surface_plane_view(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c, d = (save_mlp(tmp_path / f"m{i}.pt", seed=i) for i in range(4))
    out = tmp_path / "s.npz"
    assert main(["surface", a, "--out", str(out), *FAST]) == 0
    res = S.load_result(out)
    assert res["kind"] == "grid" and res["done"].all() and res["values"]["train/loss"].shape == (3, 3)
    assert res["metadata"]["checkpoints"][0]["sha256"] == checkpoint.load(a).sha256
    assert res["markers"][0]["coords"] == [0.0, 0.0]
    assert main(["plane", a, b, c, "--project", d, "--out", str(tmp_path / "p.npz"), *FAST]) == 0
    plane = S.load_result(tmp_path / "p.npz")
    assert [m["distance"] for m in plane["markers"][:3]] == [0.0, 0.0, 0.0] and plane["markers"][3]["distance"] > 0
    assert main(["surface", a, "--to", b, "--dim", "1", "--out", str(tmp_path / "l.npz"), *FAST]) == 0
    line = S.load_result(tmp_path / "l.npz")
    assert line["axes"][0][0] == -0.5 and line["axes"][0][-1] == 1.5 and line["kind"] == "line"
    assert main(["view", str(out), "--png", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()


def test_cli_each_clients_own_data(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    part = {"num_clients": 3, "samples_per_client": 20, "alpha": 0.5, "seed": 0}
    path = save_mlp(tmp_path / "g.pt", partition=part)
    out = tmp_path / "c.npz"
    assert main(["surface", path, "--dim", "1", "--out", str(out), *FAST, "--sources", "train,clients"]) == 0
    res = S.load_result(out)
    assert res["metadata"]["sources"] == ["train", "client 0", "client 1", "client 2"]
    model, full = checkpoint.load(path).build_model(), data.load("digits")
    for k in range(3):
        own = client_data(full, {"partition": part}, k)
        with torch.no_grad():
            expected = float(nn.functional.cross_entropy(model(own.x), own.y))
        assert res["values"][f"client {k}/loss"][1] == pytest.approx(expected, rel=1e-5)
        assert res["metadata"]["data"][f"client {k}"]["num_samples"] == 20
    capsys.readouterr()


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = save_mlp(tmp_path / "a.pt", seed=0), save_mlp(tmp_path / "b.pt", seed=1)
    wa, wb = torch.load(a)["state_dict"], torch.load(b)["state_dict"]
    collinear = save_mlp(tmp_path / "c.pt", state={k: wa[k] + 2 * (wb[k] - wa[k]) for k in wa})
    small = save_mlp(tmp_path / "small.pt", hidden=4)
    model = checkpoint.load(small).build_model()
    D.save_directions(tmp_path / "d.pt", D.random_directions(model, 2), {"name": "mlp", "kwargs": {"hidden": [4]}})
    out = str(tmp_path / "s.npz")
    assert main(["surface", a, "--out", out, *FAST]) == 0
    capsys.readouterr()
    cases = [
        (["plane", a, b, collinear, *FAST], "collinear"),
        (["plane", a, b, small, *FAST], "different architectures"),
        (["surface", a, "--to", small, *FAST], "different architectures"),
        (["surface", a, *FAST, "--resolution", "1"], "--resolution: must be in \\[2, 10,000\\], got 1"),
        (["surface", a, *FAST, "--range", "0"], "--range: must be a finite number > 0"),
        (["surface", a, "--out", out, "--seed", "1", *FAST], "refusing to continue .*directions.seed"),
        (["surface", a, "--directions-file", str(tmp_path / "d.pt"), *FAST], "does not match the model"),
        (["surface", a, *FAST, "--sources", "train,clients"], "records no federated partition"),
        (["surface", a, *FAST, "--sources", "train,valid"], "--sources: takes a comma-separated subset"),
    ]
    for argv, match in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(match, err), (match, err)


def test_view_puts_several_results_on_one_slider(tmp_path, capsys):
    import torch

    from landscape import checkpoint, models
    from landscape.cli import main

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpt = checkpoint.from_model(models.build("mlp", hidden=[4]), "mlp", {"hidden": [4]},
                                     data={"dataset": "digits", "split": "train"})
        checkpoint.save(ckpt, tmp_path / f"m{seed}.pt")
        out = tmp_path / f"s{seed}.npz"
        assert main(["surface", str(tmp_path / f"m{seed}.pt"), "--resolution", "3", "--num-samples", "50",
                     "--sources", "train", "--out", str(out)]) == 0
        paths.append(str(out))
    html = tmp_path / "both.html"
    assert main(["view", *paths, "--labels", "first", "second", "--html", str(html)]) == 0
    text = html.read_text()
    assert "first" in text and "second" in text and "sliders" in text
    assert main(["view", *paths, "--labels", "one"]) == 2
    assert "--labels names 1 results but 2" in capsys.readouterr().err


def test_cli_trajectory_surface_covers_the_path_and_range_still_wins(tmp_path, capsys) -> None:
    """A trajectory reaching 8 direction units from the final model (far beyond the old +-1 grid): the default
    grid holds every projected checkpoint with margins, in round order, and so do the figure's axes; the PDF
    and the HTML are written; --range R gives +-R again (the figure still shows the whole path)."""
    from landscape.plots import static

    torch.manual_seed(0)
    model = build("mlp", hidden=[8])
    end = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    d1, d2 = ({k: torch.randn(v.shape, generator=g) for k, v in end.items()} for _ in range(2))
    paths = []
    for t in (3, 0, 4, 1, 2):  # given out of round order
        a, b = -2.0 * (4 - t), math.sin(t)  # alpha -8..0, beta wiggles
        state = {k: end[k] + a * d1[k] / 20 + b * d2[k] / 20 for k in end}
        model.load_state_dict(state)
        ckpt = checkpoint.from_model(model, "mlp", {"hidden": [8]}, role="global", round=10 * t,
                                     data={"dataset": "digits"})
        paths.append(str(checkpoint.save(ckpt, tmp_path / f"global_r{10 * t}.pt")))
    final = str(tmp_path / "global_r40.pt")
    out, pdf, html = tmp_path / "s.npz", tmp_path / "s.pdf", tmp_path / "s.html"
    argv = ["surface", final, "--directions", "pca", "--trajectory", *paths, *FAST]
    assert main([*argv, "--resolution", "5", "--out", str(out), "--png", str(pdf), "--html", str(html)]) == 0
    assert "grid: " in capsys.readouterr().out
    res = S.load_result(out)
    traj = [m for m in res["markers"] if m["role"] == "trajectory"]
    assert [m["label"] for m in traj] == [f"round {10 * t}" for t in range(5)]
    coords = np.array([m["coords"] for m in res["markers"]])
    spread = np.ptp(coords, axis=0)
    assert spread[0] > 2.0  # the old +-1 grid could not hold it
    for k, axis in enumerate(res["axes"]):
        assert axis[0] <= coords[:, k].min() - 0.15 * spread[k] and axis[-1] >= coords[:, k].max() + 0.15 * spread[k]
        assert axis[-1] - axis[0] <= 2 * spread[k] + 1e-9  # margins, not a grid of empty space
    assert res["metadata"]["grid"] == {"extent": [[a[0], a[-1]] for a in res["axes"]], "rule": "cover",
                                       "margin": S.MARGIN, "models": 6}
    assert all(label.endswith("(Euclidean distance)") for label in res["axis_labels"])
    fig = static.surface_figure(res, styles=["filled"])
    (x0, x1), (y0, y1) = fig.axes[0].get_xlim(), fig.axes[0].get_ylim()
    assert (x0, x1, y0, y1) == (res["axes"][0][0], res["axes"][0][-1], res["axes"][1][0], res["axes"][1][-1])
    assert ((x0 <= coords[:, 0]) & (coords[:, 0] <= x1) & (y0 <= coords[:, 1]) & (coords[:, 1] <= y1)).all()
    assert pdf.read_bytes().startswith(b"%PDF") and 'class="plotly-graph-div"' in html.read_text()

    assert main([*argv, "--range", "0.5", "--out", str(tmp_path / "r.npz")]) == 0
    ranged = S.load_result(tmp_path / "r.npz")
    assert [a.tolist() for a in ranged["axes"]] == [[-0.5, 0.0, 0.5]] * 2
    assert ranged["metadata"]["grid"]["rule"] == "range" and ranged["metadata"]["grid"]["range"] == 0.5
    ax = static.surface_figure(ranged, styles=["filled"]).axes[0]
    assert ax.get_xlim()[0] < coords[:, 0].min() and ax.get_ylim()[1] > coords[:, 1].max()
    capsys.readouterr()
    assert main([*argv, "--range", "0.5", "--margin", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --margin sets the grid around a --trajectory")


@pytest.mark.parametrize("name", ["cnn", "mlp", "plain"])
def test_bf16_on_a_cpu_reports_a_small_finite_error_against_float32(name: str, monkeypatch) -> None:
    """bf16 autocast on each path (the first layer from responses, the linear chain, the plain vmap): the
    recorded error equals the difference from a float32 run at its points, and is small."""
    torch.manual_seed(0)
    if name == "mlp":
        model, ds = build("mlp"), data.load("digits").sample(200)
    else:
        model, ds = build("cnn", num_classes=10).eval(), data.load("synthetic:n=32")
    if name == "plain":
        monkeypatch.setattr(S._Evaluator, "_fast_path", lambda self: None)
    dirs = D.random_directions(model, 2, seed=0)
    axis = S.symmetric_axis(1.0, 3)
    kwargs = dict(progress=False, points_per_batch=4)
    low = S.evaluate(model, dirs, [axis, axis], {"train": ds, "test": ds.sample(16)}, precision="bf16", **kwargs)
    ref = S.evaluate(model, dirs, [axis, axis], {"train": ds, "test": ds.sample(16)}, **kwargs)
    error = low["metadata"]["precision_error"]
    assert low["metadata"]["precision"] == "bf16" and "precision_error" not in ref["metadata"]
    assert [tuple(p) for p in error["points"]] == [(-1.0, -1.0), (0.0, 0.0), (1.0, 1.0)]
    at = np.array([0, 4, 8])  # those points' indices in the 3x3 grid
    want = max(np.abs(low["values"][k].reshape(-1)[at] - ref["values"][k].reshape(-1)[at]).max()
               for k in ("train/loss", "test/loss"))
    assert error["max_abs_loss"] == pytest.approx(want, abs=1e-5)  # its float32 reference: the plain path
    assert math.isfinite(error["max_rel_loss"]) and 0.0 <= error["max_rel_loss"] < 0.02
    np.testing.assert_allclose(low["values"]["train/loss"], ref["values"]["train/loss"], rtol=0.02)


@pytest.mark.parametrize("kwargs, match", [
    (dict(precision="tf32"), "TF32 needs a CUDA device"),
    (dict(precision="bf16", dtype=torch.float64), "applies to float32 only"),
    (dict(precision="fp8"), "precision must be one of"),
    (dict(precision="bf16", loss="mse"), "default cross-entropy"),
])
def test_bad_precision(kwargs: dict, match: str) -> None:
    model = tiny_cnn().eval()
    axis = S.symmetric_axis(1.0, 3)
    with pytest.raises(LandscapeError, match=match):
        S.evaluate(model, D.random_directions(model, 2, seed=0), [axis, axis], {"train": tiny_data()},
                   progress=False, **kwargs)


# --- how the points are computed: pieces of a batch, memory layouts, the measured path ----------------
# The CIFAR CNN's activations per sample (tests/test_pieces.py) and its parameters (C = 10).
CNN_PARAMS = (3 * 64 * 25 + 64) + (64 * 64 * 25 + 64) + (1600 * 384 + 384) + (384 * 192 + 192) + (192 * 10 + 10)


def test_auto_chunks_cuts_a_batch_that_overflows_the_budget_into_pieces_that_fit() -> None:
    model = build("cnn", num_classes=10).eval()
    assert sum(p.numel() for p in model.parameters()) == CNN_PARAMS
    x, cpu = torch.randn(512, 3, 32, 32), torch.device("cpu")
    k, s = S.auto_chunks(model, x, 512, CNN_PARAMS, torch.float32, cpu)
    cost = lambda samples, points=1: points * (samples * CNN_ACTIVATIONS + CNN_PARAMS) * 4  # noqa: E731
    assert k == 1 and cost(s) <= pieces.BATCH_MEMORY_BYTES < cost(s + 1)
    k4, s4 = S.auto_chunks(model, x, 512, CNN_PARAMS, torch.float32, cpu, points_per_batch=4)
    assert k4 == 4 and cost(s4, 4) <= pieces.BATCH_MEMORY_BYTES < cost(s4 + 1, 4) and s4 < s
    # a batch that fits stays whole, with as many points per forward as fit
    assert S.auto_chunks(model, x, 8, CNN_PARAMS, torch.float32, cpu) == (pieces.BATCH_MEMORY_BYTES // cost(8), 8)
    mlp = build("mlp")
    k, s = S.auto_chunks(mlp, torch.randn(100, 64), 100, sum(p.numel() for p in mlp.parameters()), torch.float32, cpu)
    assert k > 1 and s == 100  # small model, small batch: several points per forward on the whole batch


def test_auto_chunks_keeps_the_batch_of_a_model_that_couples_its_samples(monkeypatch) -> None:
    # room for the 15 parameters and 10 samples of 6 activations (the Linear's 3 outputs and the model's 3)
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 4 * (15 + 6 * 10))
    x, cpu = torch.randn(40, 4), torch.device("cpu")
    assert S.auto_chunks(nn.Sequential(nn.Linear(4, 3)), x, 40, 15, torch.float32, cpu) == (1, 10)
    assert S.auto_chunks(BatchCoupled(), x, 40, 15, torch.float32, cpu) == (1, 40)


class ViewNet(nn.Module):
    """A CNN that flattens with ``view``: it cannot run on channels-last batches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def _images(n: int, size: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(torch.randn(n, 3, size, size, generator=g, dtype=torch.float64),
                   torch.randint(0, 10, (n,), generator=g), 10, {"name": "images"})


@pytest.mark.parametrize("layout", S.LAYOUTS)
@pytest.mark.parametrize("fast", [True, False])
def test_every_way_of_evaluating_gives_the_same_surface(fast: bool, layout: str) -> None:
    """Plain or first-layer path, contiguous or channels-last, in pieces of 5 samples: the values of
    the plain path on the whole batch (float64)."""
    model = build("cnn", num_classes=10).double().eval()
    ds = _images(12)
    dirs = D.random_directions(model, 2, seed=0)
    origin = dict(D.trainable_parameters(model))
    coords = np.random.default_rng(1).uniform(-1, 1, (4, 2))
    want = S._Evaluator(model, origin, dirs, {"train": ds.batches(None)}, "eval", [], torch.float64,
                        torch.device("cpu"), fast=False)(coords)
    evaluator = S._Evaluator(model, origin, dirs, {"train": ds.batches(5)}, "eval", [], torch.float64,
                             torch.device("cpu"), fast=fast, layout=layout)
    assert evaluator.path == ("first-layer" if fast else "plain") and evaluator.layout == layout
    assert evaluator.sources["train"][0][0].is_contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    got = evaluator(coords)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12)


def test_a_large_grid_runs_the_measured_fastest_evaluation_in_pieces(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 4 * (CNN_PARAMS + 16 * CNN_ACTIVATIONS))  # 16 fit: 40 = 3 x 14
    model = build("cnn", num_classes=10).eval()
    ds = data.load("synthetic:n=40")
    dirs = D.random_directions(model, 2, seed=0)
    axis = S.symmetric_axis(1.0, 6)  # 36 points on 3 pieces: 108 forwards >= MEASURE_MIN_FORWARDS
    out = tmp_path / "s.npz"
    result = S.evaluate(model, dirs, [axis, axis], {"train": ds}, progress=False, out=out)
    meta = result["metadata"]
    how = meta["evaluation"]
    assert meta["samples_per_forward"] == 14 and meta["points_per_batch"] == 1 and meta["batch_size"] is None
    assert set(how["seconds"]) == {f"{p}/{lay}" for p in ("plain", "first-layer") for lay in S.LAYOUTS}
    assert how["seconds"][f"{how['path']}/{how['layout']}"] == min(how["seconds"].values())
    # the default way (small grid: no measuring; one batch) computes the same values
    monkeypatch.setattr(S, "MEASURE_MIN_FORWARDS", 10**9)
    whole = S.evaluate(model, dirs, [axis, axis], {"train": ds}, progress=False, batch_size=40, points_per_batch=1)
    assert whole["metadata"]["evaluation"] == {"path": "first-layer", "layout": "contiguous"}
    for key in whole["values"]:
        np.testing.assert_allclose(result["values"][key], whole["values"][key], rtol=1e-5, atol=1e-6)
    # a continued run keeps the file's choices (nothing is measured again) and computes the same values
    monkeypatch.setattr(S, "MEASURE_MIN_FORWARDS", 1)
    partial = S.load_result(out)
    partial["done"][3:] = False
    for v in partial["values"].values():
        v[~partial["done"]] = np.nan
    S.save_result(out, partial)
    monkeypatch.setattr(S, "fastest_evaluation", lambda *a, **k: pytest.fail("measured again"))
    again = S.evaluate(model, dirs, [axis, axis], {"train": ds}, progress=False, out=out)
    assert again["metadata"]["evaluation"] == how and again["metadata"]["samples_per_forward"] == 14
    for key in result["values"]:
        np.testing.assert_array_equal(again["values"][key], result["values"][key])


def test_the_evaluation_is_measured_when_the_surface_takes_enough_forwards(monkeypatch) -> None:
    """The measuring threshold counts forwards (chunks of points times pieces of data), not points: 25
    points on 3 pieces (75 forwards) are measured, 16 points on 3 pieces (48) and 25 on 1 piece are not."""
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 4 * (CNN_PARAMS + 16 * CNN_ACTIVATIONS))  # 16 fit: 40 = 3 x 14
    model = build("cnn", num_classes=10).eval()
    ds = data.load("synthetic:n=40")
    dirs = D.random_directions(model, 2, seed=0)

    def how(steps: int, **kw: object) -> dict:
        axis = S.symmetric_axis(1.0, steps)
        return S.evaluate(model, dirs, [axis, axis], {"train": ds}, progress=False, **kw)["metadata"]["evaluation"]

    assert "seconds" in how(5)
    assert how(4) == {"path": "first-layer", "layout": "contiguous"}
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 1 << 40)  # one piece, 25 points per forward
    assert how(5) == {"path": "first-layer", "layout": "contiguous"}


def test_a_model_that_cannot_run_channels_last_is_measured_without_it() -> None:
    model = ViewNet().double().eval()
    ds = _images(8, size=8)
    dirs = D.random_directions(model, 1, seed=0)
    how = S.fastest_evaluation(model, dict(D.trainable_parameters(model)), dirs, ds.batches(None)[0], "eval", [],
                               torch.float64, torch.device("cpu"), "float32", 1)
    assert how["layout"] == "contiguous" and set(how["seconds"]) == {"plain/contiguous", "first-layer/contiguous"}
