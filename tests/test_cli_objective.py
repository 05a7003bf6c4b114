"""The objective's flags end to end: --loss, --curvature, --params, --per-layer, named and real-valued data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from landscape import checkpoint, models
from landscape.cli import main
from tests.test_objective import Bag, dense_hessian


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def regression(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([[1.0, 0.5], [2.0, -1.0], [-1.0, 0.0]]) + 0.1 * g.normal(size=(40, 2))).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    torch.manual_seed(0)
    ckpt = checkpoint.from_model(models.build("mlp", in_features=3, hidden=[4], num_classes=2), "mlp",
                                 {"in_features": 3, "hidden": [4], "num_classes": 2})
    return checkpoint.save(ckpt, tmp_path / "reg.pt"), tmp_path / "reg.npz", x, y


def test_regression_with_mse_per_layer_and_a_block(regression, tmp_path, capsys):
    ckpt, data, x, y = regression
    out = tmp_path / "h.json"
    code, stdout, err = run(["hessian", ckpt, "--data", data, "--loss", "mse", "--top-k", 2, "--tol", 1e-8,
                             "--dtype", "float64", "--per-layer", "--out", out], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    dense = dense_hessian(checkpoint.load(ckpt).build_model(), nn.functional.mse_loss, torch.tensor(x).double(),
                          torch.tensor(y).double())
    assert result["eigenvalues"][0] == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-7)
    assert result["metadata"]["objective"]["loss"] == "mse" and result["metadata"]["curvature"] == "hessian"
    assert [layer["block"] for layer in result["per_layer"]] == ["net.0", "net.2"]
    assert "Hessian of the mean mse" in stdout and "lambda_max of net.0" in stdout
    first = dense[:16, :16]  # net.0.weight (4x3) and net.0.bias (4)
    assert result["per_layer"][0]["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(first)[-1]), rel=1e-7)
    code, _, err = run(["hessian", ckpt, "--data", data, "--loss", "mse", "--params", "^net\\.0\\.", "--top-k", 1,
                        "--tol", 1e-8, "--dtype", "float64", "--out", tmp_path / "b.json"], capsys)
    assert code == 0, err
    block = json.loads((tmp_path / "b.json").read_text())
    assert block["num_params"] == 16
    assert block["lambda_max"] == pytest.approx(result["per_layer"][0]["lambda_max"], rel=1e-6)


def test_ggn_of_a_linear_model_with_mse_is_its_hessian(tmp_path, capsys):
    g = np.random.default_rng(1)
    np.savez(tmp_path / "lin.npz", x=g.normal(size=(30, 3)).astype(np.float32),
             y=g.normal(size=(30, 2)).astype(np.float32))
    ckpt = checkpoint.save(checkpoint.from_model(models.build("mlp", in_features=3, hidden=[], num_classes=2), "mlp",
                                                 {"in_features": 3, "hidden": [], "num_classes": 2}), tmp_path / "l.pt")
    values = {}
    for curvature in ("hessian", "ggn"):
        out = tmp_path / f"{curvature}.json"
        code, _, err = run(["hessian", ckpt, "--data", tmp_path / "lin.npz", "--loss", "mse", "--curvature", curvature,
                            "--top-k", 1, "--tol", 1e-9, "--dtype", "float64", "--out", out], capsys)
        assert code == 0, err
        values[curvature] = json.loads(out.read_text())["lambda_max"]
    assert values["ggn"] == pytest.approx(values["hessian"], rel=1e-9)


def bag() -> Bag:
    """The factory ``--model tests.test_cli_objective:bag`` names."""
    torch.manual_seed(0)
    return Bag()


def test_named_arrays_feed_a_model_taking_keyword_inputs(tmp_path, capsys):
    g = np.random.default_rng(2)
    mask = (g.random((24, 6)) > 0.3).astype(np.int64)
    mask[:, 0] = 1
    np.savez(tmp_path / "tokens.npz", input_ids=g.integers(0, 7, (24, 6)), attention_mask=mask,
             labels=g.integers(0, 2, 24))
    torch.save(bag().state_dict(), tmp_path / "bag.pt")
    model = ["--model", "tests.test_cli_objective:bag"]
    code, stdout, err = run(["hessian", tmp_path / "bag.pt", *model, "--data", tmp_path / "tokens.npz", "--top-k", 2,
                             "--out", tmp_path / "h.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "h.json").read_text())["eigenvalues"][0] > 0
    code, stdout, err = run(["surface", tmp_path / "bag.pt", *model, "--data", tmp_path / "tokens.npz",
                             "--resolution", 3, "--sources", "train", "--out", tmp_path / "s.npz"], capsys)
    assert code == 0, err
    from landscape import surface
    result = surface.load_result(tmp_path / "s.npz")
    assert sorted(result["values"]) == ["train/accuracy", "train/loss"]
