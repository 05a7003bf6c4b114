"""Curvature tracked during training (--track-every) equals the same quantities computed afterwards
from the saved checkpoints, with dense float64 Hessians as the ground truth [C22 Fig. 4, L26]."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscape import checkpoint, data, partition
from landscape.run_folder import RunFolder
from landscape.train.config import TrainConfig
from landscape.train.run import train
from landscape.train.track import TOL
from tests.conftest import flat_hessian_and_gradient


def dense_lambda_max(ckpt: checkpoint.Checkpoint, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest eigenvalue of the dense float64 Hessian of the mean cross-entropy on (x, y)."""
    H, _ = flat_hessian_and_gradient(ckpt.build_model().eval(), x, y)
    return float(torch.linalg.eigvalsh((H + H.T) / 2)[-1])


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunFolder, TrainConfig]:
    out = tmp_path_factory.mktemp("track") / "run"
    cfg = TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": [4]}, num_clients=6,
                      samples_per_client=40, alpha=1.0, clients_per_round=3, num_rounds=4, lr=0.2, batch_size=16,
                      local_epochs=1, algorithm="fedsam", eval_every=0, save_every=2, save_clients_every=2,
                      track_every=2, track_samples=10_000, dtype="float64")
    train(cfg, out, engine="sequential")
    return RunFolder(out), cfg


def test_tracked_lambda_max_equals_dense_hessians_of_the_saved_checkpoints(tracked_run) -> None:  # noqa: ANN001
    run, cfg = tracked_run
    records = [r for r in run.metrics() if "curvature" in r]
    assert [r["round"] for r in records] == [2, 4]
    train_set = data.load("digits")
    for record in records:
        R, cur = record["round"], record["curvature"]
        ckpt = checkpoint.load(run.global_checkpoint(R))
        spec = ckpt.data["partition"]
        clients = [partition.client_data(train_set, spec, k) for k in range(cfg.num_clients)]
        pooled_x = torch.cat([c.x for c in clients])
        pooled_y = torch.cat([c.y for c in clients])
        # track_samples exceeds the pooled data: the global objective is all of it (order is irrelevant)
        truth = dense_lambda_max(ckpt, pooled_x, pooled_y)
        assert cur["global_lambda_max"] == pytest.approx(truth, rel=TOL)
        assert sorted(int(k) for k in cur["client_lambda_max"]) == record["clients"]
        for path in run.client_checkpoints(R):
            client = checkpoint.load(path)
            own = clients[client.client_id]
            local = dense_lambda_max(client, own.x, own.y)
            assert cur["client_lambda_max"][str(client.client_id)] == pytest.approx(local, rel=TOL)
        assert cur["hvps"] >= 1 + len(record["clients"]) and cur["seconds"] >= 0
        local = list(cur["client_lambda_max"].values())
        assert cur["flatness_distance"] == pytest.approx(cur["global_lambda_max"] / (sum(local) / len(local)))
    values = [r["curvature"]["global_lambda_max"] for r in records]
    assert values[0] != values[1]  # the models moved: not one number repeated


def test_tracking_does_not_change_the_trained_weights(tracked_run, tmp_path) -> None:  # noqa: ANN001
    run, cfg = tracked_run
    plain = train(cfg.replace(track_every=0, save_clients_every=0), tmp_path / "plain", engine="sequential")
    final = checkpoint.load(run.global_checkpoint(cfg.num_rounds))
    for k, v in plain.state.weights.items():
        assert torch.equal(final.state_dict[k], v.cpu()), k


def test_the_cli_reports_the_tracking_cost(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "landscape", "train", "--dataset", "digits", "--model", "mlp",
                           "--model-kwargs", '{"hidden": [4]}', "--num-clients", "4", "--samples-per-client", "30",
                           "--clients-per-round", "2", "--rounds", "4", "--track-every", "2", "--eval-every", "0",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "curvature tracked at 2 rounds" in proc.stdout and "% of the run" in proc.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("curvature" in r) for r in lines] == [False, True, False, True]
    assert np.isfinite(lines[-1]["curvature"]["global_lambda_max"])


def test_the_tracked_objective_is_cut_into_pieces_with_the_same_lambda_max(monkeypatch) -> None:  # noqa: ANN001
    """On data larger than the cache budget the tracker's objective is in pieces (as `landscape hessian`
    cuts it); lambda_max is the one-batch value to rounding (float64), and the dense one within TOL."""
    from landscape import models, pieces
    from landscape.train.engine import FederatedData
    from landscape.train.track import CurvatureTracker

    torch.manual_seed(0)
    digits = data.load("digits").sample(60)
    model = models.build("mlp", num_classes=10, hidden=[4]).double().eval()
    fdata = FederatedData.build(digits.x, digits.y, [np.arange(60)], torch.device("cpu"), torch.float64)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def tracked() -> tuple[float, int]:
        tracker = CurvatureTracker(model, fdata, every=1, samples=60, seed=0)
        return tracker.lambda_max(weights, fdata.client_indices[0], "global"), len(
            list(tracker._objective(weights, fdata.client_indices[0]).batches()))

    whole, one = tracked()
    per_sample = pieces.activation_bytes(model, fdata.x[:1], torch.float64, torch.device("cpu"))
    monkeypatch.setattr(pieces, "BATCH_MEMORY_BYTES", 25 * per_sample)  # 25 fit: 60 = 3 x 20
    cut, three = tracked()
    assert (one, three) == (1, 3)
    assert cut == pytest.approx(whole, rel=1e-10)
    H, _ = flat_hessian_and_gradient(model, fdata.x, fdata.y)
    assert cut == pytest.approx(float(torch.linalg.eigvalsh((H + H.T) / 2)[-1]), rel=TOL)
