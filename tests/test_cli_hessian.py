"""`landscape hessian` end to end, and every bad input as a one-line error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from landscape import checkpoint, models
from landscape.cli import main
from tests.conftest import tiny_cnn


@pytest.fixture
def digits_ckpt(tmp_path):
    torch.manual_seed(0)
    model = models.build("mlp", hidden=[6])
    ckpt = checkpoint.from_model(model, "mlp", {"hidden": [6]}, role="global", round=5,
                                 data={"dataset": "digits", "split": "train"})
    return checkpoint.save(ckpt, tmp_path / "global.pt")


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_hessian_end_to_end_on_a_checkpoint(digits_ckpt, tmp_path, capsys):
    out_json, plot, vecs = tmp_path / "h.json", tmp_path / "density.png", tmp_path / "ev.pt"
    code, stdout, _ = run_cli(["hessian", digits_ckpt, "--top-k", 5, "--trace", "--trace-samples", 30,
                               "--num-samples", 200, "--dtype", "float64", "--out", out_json,
                               "--plot", plot, "--save-eigenvectors", vecs, "--density-steps", 20], capsys)
    assert code == 0
    assert "lambda_max / lambda_5" in stdout and "matrix-vector products" in stdout
    result = json.loads(out_json.read_text())
    values = result["eigenvalues"]
    assert values == sorted(values, reverse=True) and len(values) == 5
    assert all(r <= 1e-3 * abs(v) for r, v in zip(result["residuals"], values))
    assert result["lambda_max_over_lambda_5"] == pytest.approx(values[0] / values[4])
    assert "trace" in result and result["trace_stderr"] > 0
    meta = result["metadata"]
    assert meta["checkpoint"]["sha256"] == checkpoint.load(digits_ckpt).sha256
    assert meta["data"]["num_samples"] == 200 and meta["settings"]["dtype"] == "float64"
    assert meta["landscape_version"]
    assert plot.stat().st_size > 1000
    saved = torch.load(vecs, weights_only=True)
    assert set(saved["vectors"][0]) == {n for n, _ in models.build("mlp", hidden=[6]).named_parameters()}

    # Ground truth: the dense float64 Hessian of the same objective.
    from landscape import data
    from landscape.objective import Objective
    from landscape.operators import HessianOperator

    dataset = data.load("digits").sample(200, seed=0)
    H = HessianOperator(Objective(checkpoint.load(digits_ckpt).build_model(), dataset.batches(None),
                                  dtype=torch.float64)).dense()
    top = torch.linalg.eigvalsh(H).flip(0)[:5].tolist()
    assert values == pytest.approx(top, rel=1e-3)


def test_power_method_gives_the_same_answer(digits_ckpt, tmp_path, capsys):
    outs = {}
    for method in ("lanczos", "power"):
        path = tmp_path / f"{method}.json"
        code, _, _ = run_cli(["hessian", digits_ckpt, "--top-k", 2, "--method", method, "--num-samples", 100,
                              "--dtype", "float64", "--tol", 1e-6, "--max-iter", 2000, "--out", path], capsys)
        assert code == 0
        outs[method] = json.loads(path.read_text())["eigenvalues"]
    assert outs["power"] == pytest.approx(outs["lanczos"], rel=1e-5)


def test_plain_state_dict_with_a_user_factory(tmp_path, capsys):
    torch.save(tiny_cnn("group").state_dict(), tmp_path / "sd.pt")
    g = torch.Generator().manual_seed(0)
    np.savez(tmp_path / "d.npz", x=torch.randn(20, 1, 4, 4, generator=g).numpy(), y=np.arange(20) % 3)
    code, stdout, _ = run_cli(["hessian", tmp_path / "sd.pt", "--model", "tests.conftest:tiny_cnn",
                               "--model-kwargs", '{"norm": "group"}', "--data", tmp_path / "d.npz",
                               "--top-k", 2, "--out", tmp_path / "h.json"], capsys)
    assert code == 0, stdout
    assert json.loads((tmp_path / "h.json").read_text())["metadata"]["checkpoint"]["model"]["name"] == "tests.conftest:tiny_cnn"


def test_python_dash_m_landscape_works(digits_ckpt):
    proc = subprocess.run([sys.executable, "-m", "landscape", "models"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0 and "815,332" in proc.stdout and "cnn" in proc.stdout


def _bad_inputs(tmp_path, digits_ckpt):
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(digits_ckpt.read_bytes()[:300])
    sd = tmp_path / "sd.pt"
    torch.save(models.build("mlp", hidden=[6]).state_dict(), sd)
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((3, 64)), y=np.zeros(3))
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((3, 64)), y=np.array([0, 1, 12]))
    nan = tmp_path / "nan.pt"
    model = models.build("mlp", hidden=[6])
    with torch.no_grad():
        model.net[0].bias.fill_(float("nan"))
    checkpoint.save(checkpoint.from_model(model, "mlp", {"hidden": [6]}, data={"dataset": "digits"}), nan)
    return [
        ([tmp_path / "missing.pt"], "checkpoint not found"),
        ([text], "not a PyTorch checkpoint"),
        ([truncated], "truncated or corrupt"),
        ([evil], "refused to load"),
        ([sd], "plain state_dict"),
        ([sd, "--model", "mlp"], "do not match model 'mlp'"),
        ([sd, "--model", "resnet"], "unknown model 'resnet'"),
        ([digits_ckpt, "--data", "imagenet"], "unknown data set 'imagenet'"),
        ([digits_ckpt, "--data", tmp_path / "nox.npz"], "must hold arrays 'x' and 'y'"),
        ([digits_ckpt, "--data", tmp_path / "badlabels.npz"], "labels go up to 12 but model"),
        ([digits_ckpt, "--top-k", 10**6], "exceeds the number of parameters"),
        ([digits_ckpt, "--top-k", 0], "at least 1"),
        ([nan], "the weights hold NaN or inf values"),
        ([digits_ckpt, "--data", "synthetic:n=8"], "model 'mlp' on inputs of shape (3, 32, 32) raised"),
        ([digits_ckpt, "--device", "cuda:3"] if not torch.cuda.is_available() else [tmp_path / "m.pt"],
         "CUDA is not available" if not torch.cuda.is_available() else "not found"),
    ]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch HESSIAN_PWNED",))


def test_every_bad_input_is_one_clear_line(tmp_path, digits_ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, match in _bad_inputs(tmp_path, digits_ckpt):
        out = tmp_path / "result.json"
        code, _, err = run_cli(["hessian", *args, "--out", out, "--num-samples", 50], capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], (args, err)
        assert "Traceback" not in err
        assert not out.exists(), args  # never a half-written result
    assert not (tmp_path / "HESSIAN_PWNED").exists()


def test_client_data_comes_from_the_recorded_partition(tmp_path, capsys):
    from landscape import data
    from landscape.objective import Objective
    from landscape.operators import HessianOperator
    from landscape.partition import client_data

    partition = {"num_clients": 10, "samples_per_client": 40, "alpha": 0.0, "seed": 1}
    torch.manual_seed(0)
    model = models.build("mlp", hidden=[4])
    path = checkpoint.save(checkpoint.from_model(
        model, "mlp", {"hidden": [4]}, role="client", client_id=3,
        data={"dataset": "digits", "split": "train", "partition": partition}), tmp_path / "client.pt")
    for spec, client in (("client", 3), ("client:7", 7)):
        out = tmp_path / f"{client}.json"
        code, _, err = run_cli(["hessian", path, "--data", spec, "--top-k", 1, "--dtype", "float64",
                                "--tol", 1e-8, "--out", out], capsys)
        assert code == 0, err
        result = json.loads(out.read_text())
        assert result["metadata"]["data"]["client_id"] == client
        own = client_data(data.load("digits"), {"partition": partition}, client)
        assert len(own) == 40 and len(set(own.y.tolist())) == 1  # alpha = 0: one class per client
        H = HessianOperator(Objective(model, own.batches(None), dtype=torch.float64)).dense()
        assert result["eigenvalues"][0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    code, _, err = run_cli(["hessian", path, "--data", "client:x", "--out", tmp_path / "bad.json"], capsys)
    assert code == 2 and "client id must be an integer" in err


def test_block_size_gives_the_same_trace_and_density(digits_ckpt, tmp_path, capsys):
    results = []
    for block in (1, 4):
        out = tmp_path / f"h{block}.json"
        code, _, _ = run_cli(["hessian", digits_ckpt, "--top-k", 2, "--tol", 1e-8, "--trace",
                              "--trace-method", "hutch++", "--trace-samples", 24, "--density", "--density-runs", 3, "--density-steps", 8,
                              "--num-samples", 100, "--dtype", "float64", "--block-size", block, "--out", out], capsys)
        assert code == 0
        results.append(json.loads(out.read_text()))
    one, four = results
    assert (one["metadata"]["settings"]["block_size"], four["metadata"]["settings"]["block_size"]) == (1, 4)
    assert four["trace"] == pytest.approx(one["trace"], rel=1e-10)
    np.testing.assert_allclose(four["density"]["nodes"], one["density"]["nodes"], atol=1e-9, rtol=0)
    # Lanczos from min(4, top-k) = 2 start vectors: another basis, the same certified eigenvalues
    np.testing.assert_allclose(four["eigenvalues"], one["eigenvalues"], rtol=1e-7)
