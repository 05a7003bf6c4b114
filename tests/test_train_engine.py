"""The batched cohort engine equals the sequential reference engine (float64, every algorithm)."""

from __future__ import annotations

import json


import numpy as np
import pytest
import torch

from tests.test_train_algorithms import TinyNet
from landscape.train import algorithms, augment, schedule
from landscape.train.config import TrainConfig
from landscape.train.engine import (BatchedEngine, FederatedData, SequentialEngine, _plans_to_device, derive_seed, make_engine,
                          plan_client, sample_cohort)

CPU = torch.device("cpu")


# Unequal clients (10, 13, 7, 18, 3 samples) with batch 4: 3, 4, 2, 5 and 1 steps per epoch and
# partial last batches of different sizes, so groups and masks are exercised.
PARTS = [np.arange(0, 10), np.arange(10, 23), np.arange(23, 30), np.arange(30, 48), np.arange(48, 51)]

CASES = [
    {"algorithm": "fedavg"},
    {"algorithm": "fedavgm", "server_momentum": 0.9},
    {"algorithm": "fedsam", "rho": 0.1},
    {"algorithm": "fedsam", "rho": 0.1, "bn_first_pass_only": True},
    {"algorithm": "fedasam", "rho": 0.5, "eta": 0.2},
    {"algorithm": "fedasam", "rho": 0.5, "asam_variant": "davda54"},
    {"algorithm": "fednsam", "rho": 0.1, "gamma": 0.85},
    {"algorithm": "fednsam", "rho": 0.1, "perturbation": "local_sam"},
    {"algorithm": "fednsam", "rho": 0.1, "fednsam_reference_momentum": True, "fednsam_extrapolate_buffers": True},
    {"algorithm": "fedavg", "client_momentum": 0.9, "swa": True, "swa_start": 0.0, "swa_cycle": 2},
    {"algorithm": "fednsam", "rho": 0.1, "perturbation": "local_sam", "max_grad_norm": 0.05,
     "client_weights": "uniform", "lr_schedule": "cosine", "fednsam_reference_momentum": True},
    {"algorithm": "fedasam", "rho": 0.5, "max_grad_norm": 0.05},
]
#: Options added after the first release; a config written without them must resume unchanged.
LATER_OPTIONS = ("cohort_sampling", "client_weights", "lr_schedule", "max_grad_norm", "swa_c1_keeps_lr")


def run(engine_cls: type, cfg: TrainConfig, norm: str | None, rounds: int = 3) -> tuple[object, list[float], dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    torch.manual_seed(0)
    model = TinyNet(norm).double()
    data = FederatedData.build(x, y, PARTS, CPU, torch.float64, augment=cfg.augment)
    engine = engine_cls(model, data, cfg, CPU)
    algo = algorithms.from_config(cfg)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    losses, clients = [], {}
    for t in range(rounds):
        cohort = sample_cohort(cfg.seed, t, cfg.num_clients, cfg.clients_per_round)
        result = engine.run_round(algo, state, t, cohort, schedule.client_lr(cfg, t), keep_clients=True)
        state = result.state
        losses.append(result.train_loss)
        clients = result.client_weights
    return state, losses, clients


@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_batched_equals_sequential(case: dict, norm: str | None) -> None:
    cfg = TrainConfig(**{"dataset": "synthetic", "num_clients": 5, "clients_per_round": 4, "batch_size": 4,
                         "local_epochs": 2, "lr": 0.1, "num_rounds": 3, "dtype": "float64", "augment": True, **case})
    seq, seq_losses, seq_clients = run(SequentialEngine, cfg, norm)
    bat, bat_losses, bat_clients = run(BatchedEngine, cfg, norm)
    for k, v in seq.weights.items():
        torch.testing.assert_close(bat.weights[k], v, rtol=0, atol=1e-12, msg=f"{k} differs")
    for name in ("velocity", "momentum"):
        for k, v in getattr(seq, name, {}).items():
            torch.testing.assert_close(getattr(bat, name)[k], v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bat_losses, seq_losses, rtol=1e-12)
    assert seq_clients.keys() == bat_clients.keys()
    for cid in seq_clients:
        for k, v in seq_clients[cid].items():
            torch.testing.assert_close(bat_clients[cid][k], v, rtol=0, atol=1e-12)
    if norm == "batch":  # the BatchNorm statistics did move
        assert not torch.equal(seq.weights["norm.running_mean"], torch.zeros(4, dtype=torch.float64))


def test_clients_with_fewer_steps_are_masked() -> None:
    """A client with one step must end exactly where one SGD step takes it, not 5 steps of decay."""
    cfg = TrainConfig(dataset="synthetic", num_clients=5, clients_per_round=5, batch_size=4, local_epochs=1,
                      lr=0.1, weight_decay=0.5, dtype="float64")
    _, _, seq = run(SequentialEngine, cfg, None, rounds=1)
    _, _, bat = run(BatchedEngine, cfg, None, rounds=1)
    for k, v in seq[4].items():  # client 4 has 3 samples: 1 step, the others up to 5
        torch.testing.assert_close(bat[4][k], v, rtol=0, atol=1e-13)


def test_plans_depend_only_on_seed_round_client() -> None:
    x, y = torch.zeros(51, 1, 6, 6), torch.zeros(51, dtype=torch.long)
    data = FederatedData.build(x, y, PARTS, CPU, torch.float32, augment=True)
    a = plan_client(data, 0, 3, 1, 4, 2)
    b = plan_client(data, 0, 3, 1, 4, 2)
    c = plan_client(data, 0, 4, 1, 4, 2)
    assert [s.idx.tolist() for s in a] == [s.idx.tolist() for s in b]
    assert [s.idx.tolist() for s in a] != [s.idx.tolist() for s in c]
    assert sorted(torch.cat([s.idx for s in a[:4]]).tolist()) == list(range(10, 23))  # epoch 1 = client 1's data
    assert [len(s.idx) for s in a] == [4, 4, 4, 1] * 2
    moved = _plans_to_device([a, c], CPU)  # the one-transfer path used on CUDA
    for before, after in zip(a + c, moved[0] + moved[1]):
        assert torch.equal(before.idx, after.idx) and torch.equal(before.crop, after.crop)
        assert torch.equal(before.flip, after.flip)
    assert sample_cohort(0, 5, 100, 10) == sample_cohort(0, 5, 100, 10) != sample_cohort(0, 6, 100, 10)
    assert len(set(sample_cohort(1, 0, 10, 10))) == 10
    assert derive_seed(0, 1, 2, 3) != derive_seed(0, 1, 3, 2)


def test_augmentation_is_crop_and_flip() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    crop = torch.tensor([[4, 4], [2, 5]])
    flip = torch.tensor([False, True])
    out = augment.apply(x, crop, flip, pad=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    torch.testing.assert_close(out[0], padded[0, :, 4:9, 4:9])  # offset (pad, pad) = identity
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], padded[1, :, 2:7, 5:10].flip(-1))


def test_crops_of_normalized_images_pad_with_black_as_the_reference_pipeline() -> None:
    """torchvision RandomCrop(padding=4) pads the raw image, then Normalize: padding = -mean/std."""
    from landscape.cifar import CIFAR_MEAN, CIFAR_STD
    from landscape.data import Dataset, black_pixel

    raw = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(CIFAR_MEAN["cifar10"]).view(1, 3, 1, 1), torch.tensor(CIFAR_STD["cifar10"]).view(1, 3, 1, 1)
    crop, flip = torch.tensor([[0, 3], [8, 1]]), torch.tensor([True, False])
    reference = (augment.apply(raw, crop, flip) - mean) / std  # crop the raw image, then normalize
    fill = black_pixel(Dataset((raw - mean) / std, torch.zeros(2), 10, {"dataset": "cifar10"}))
    torch.testing.assert_close(augment.apply((raw - mean) / std, crop, flip, fill), reference)
    assert black_pixel(Dataset(raw, torch.zeros(2), 10, {"dataset": "synthetic"})) is None


def test_unknown_engine() -> None:
    from landscape.errors import LandscapeError

    data = FederatedData.build(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), [np.arange(3)], CPU, torch.float32)
    with pytest.raises(LandscapeError, match="unknown engine 'fast'; choose one of sequential, batched, auto"):
        make_engine("fast", torch.nn.Linear(2, 2), data, TrainConfig(), CPU)
    # On the CPU the batched engine is faster for convolution-free models only (bench/train.py).
    assert make_engine("auto", torch.nn.Linear(2, 2), data, TrainConfig(), CPU).name == "batched"
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 2))
    assert make_engine("auto", conv, data, TrainConfig(), CPU).name == "sequential"


@pytest.mark.parametrize("engine_cls", [SequentialEngine, BatchedEngine])
def test_batchnorm_models_leave_out_a_last_batch_of_one_sample(engine_cls: type) -> None:
    """BatchNorm cannot normalize one sample in training mode; such a batch is skipped, not a crash."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(14, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (14,), generator=g)
    parts = [np.arange(0, 9), np.arange(9, 13), np.arange(13, 14)]  # batch 4: last batches of 1, 4 and 1
    data = FederatedData.build(x, y, parts, CPU, torch.float64)
    assert [s.idx.numel() for s in plan_client(data, 0, 0, 0, 4, 1)] == [4, 4, 1]
    assert [s.idx.numel() for s in plan_client(data, 0, 0, 0, 4, 1, min_batch=2)] == [4, 4]
    assert plan_client(data, 0, 0, 2, 4, 1, min_batch=2) == []
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(),
                                torch.nn.Linear(5, 3)).double()
    cfg = TrainConfig(dataset="synthetic", num_clients=3, clients_per_round=3, batch_size=4, local_epochs=1,
                      lr=0.1, dtype="float64")
    engine = engine_cls(model, data, cfg, CPU)
    algo = algorithms.from_config(cfg)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    result = engine.run_round(algo, state, 0, [0, 1, 2], 0.1, keep_clients=True)
    assert all(torch.isfinite(v).all() for v in result.state.weights.values())
    for k, v in result.client_weights[2].items():  # no step left: client 2 stays at the global model
        torch.testing.assert_close(v, state.weights[k], rtol=0, atol=0)


def run_algo(engine_cls: type, algo: object, cfg: TrainConfig, norm: str | None, rounds: int = 3) -> object:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    torch.manual_seed(0)
    model = TinyNet(norm).double()
    engine = engine_cls(model, FederatedData.build(x, y, PARTS, CPU, torch.float64), cfg, CPU)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    for t in range(rounds):
        state = engine.run_round(algo, state, t, sample_cohort(cfg.seed, t, 5, 4), cfg.lr).state
    return state


@pytest.mark.parametrize("norm", ["batch", None])
def test_an_algorithm_defined_in_a_test_runs_on_both_engines(norm: str | None) -> None:
    from tests.test_train_algorithms import fedprox

    cfg = TrainConfig(dataset="synthetic", num_clients=5, clients_per_round=4, batch_size=4, local_epochs=2, lr=0.1,
                      dtype="float64")
    client = algorithms.ClientSGD(weight_decay=cfg.weight_decay)
    prox = fedprox(0.5, client)
    seq = run_algo(SequentialEngine, prox, cfg, norm)
    bat = run_algo(BatchedEngine, prox, cfg, norm)
    for k, v in seq.weights.items():
        torch.testing.assert_close(bat.weights[k], v, rtol=0, atol=1e-12, msg=f"{k} differs")
    plain = run_algo(SequentialEngine, algorithms.fedavg(client=client), cfg, norm)
    assert max(float((plain.weights[k] - v).abs().max()) for k, v in seq.weights.items()) > 1e-6  # mu did act
    zero = run_algo(SequentialEngine, fedprox(0.0, client), cfg, norm)
    for k, v in plain.weights.items():
        torch.testing.assert_close(zero.weights[k], v, rtol=0, atol=1e-14)


@pytest.mark.parametrize("engine_cls", [SequentialEngine, BatchedEngine])
@pytest.mark.parametrize("name", ["fedavgm", "fednsam"])
def test_blocks_of_a_round_combine_to_the_round(engine_cls: type, name: str) -> None:
    """{a, b} and {c, d} as two blocks: sums added, / total weight, then the server update == {a, b, c, d}."""
    from landscape.train.aggregate import mean_delta

    cfg = TrainConfig(dataset="synthetic", num_clients=5, clients_per_round=4, batch_size=4, local_epochs=2, lr=0.1,
                      dtype="float64", algorithm=name, rho=0.1)
    algo = algorithms.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (60,), generator=g)
    torch.manual_seed(0)
    model = TinyNet("batch").double()
    engine = engine_cls(model, FederatedData.build(x, y, PARTS, CPU, torch.float64), cfg, CPU)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    state = engine.run_round(algo, state, 0, [0, 1, 2, 3], cfg.lr).state  # a non-zero momentum first
    whole = engine.run_round(algo, state, 1, [0, 1, 2, 3], cfg.lr).state
    start = algo.broadcast(state)
    ab = engine.run_block(algo, start, 1, [0, 1], cfg.lr)
    cd = engine.run_block(algo, start, 1, [2, 3], cfg.lr)
    combined = algo.server_update(state, mean_delta(ab.sums + cd.sums, start.weights))
    assert ab.sums.total_weight + cd.sums.total_weight == sum(len(p) for p in PARTS[:4])
    for k, v in whole.weights.items():
        torch.testing.assert_close(combined.weights[k], v, rtol=0, atol=1e-13, msg=k)
    buf = "velocity" if name == "fedavgm" else "momentum"
    for k, v in getattr(whole, buf).items():
        torch.testing.assert_close(getattr(combined, buf)[k], v, rtol=0, atol=1e-13)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedavgm", "fednsam"])
def test_a_state_file_in_the_first_release_layout_resumes(tmp_path, algorithm: str) -> None:  # noqa: ANN001
    """state.pt as train/folder.py wrote it before the algorithm records: {format, round, config,
    server: {type, fields}, swa, elapsed}, built here by hand; resuming from it equals the uninterrupted run."""
    from landscape.train.run import train

    cfg = TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": [16]}, alpha=1.0, clients_per_round=3,
                      num_rounds=4, lr=0.1, batch_size=16, local_epochs=1, eval_every=0, save_every=0,
                      algorithm=algorithm)
    full = train(cfg, tmp_path / "full", engine="sequential")

    def interrupt(r: int, record: dict) -> None:
        if r == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", engine="sequential", on_round=interrupt)
    saved = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    old = saved["server"]["fields"]
    fields = {"weights": {k: v.clone() for k, v in old["weights"].items()}, "param_names": list(old["param_names"])}
    extra = {"fedavg": None, "fedavgm": "velocity", "fednsam": "momentum"}[algorithm]
    if extra:
        fields[extra] = {k: v.clone() for k, v in old[extra].items()}
    fields["round"] = 2
    kind = {"fedavg": "FedAvgState", "fedavgm": "FedAvgMState", "fednsam": "FedNSAMState"}[algorithm]
    first_config = {k: v for k, v in saved["config"].items() if k not in LATER_OPTIONS}  # the resolved config
    assert len(first_config) == len(saved["config"]) - len(LATER_OPTIONS)
    torch.save({"format": "landscape-train-state", "round": 2, "config": first_config,
                "server": {"type": kind, "fields": fields}, "swa": {"weights": None, "num_models": 0},
                "elapsed": 1.5}, tmp_path / "cut" / "state.pt")
    config_json = tmp_path / "cut" / "config.json"
    stored = json.loads(config_json.read_text())
    stored["config"] = {k: v for k, v in stored["config"].items() if k not in LATER_OPTIONS}
    config_json.write_text(json.dumps(stored))
    resumed = train(cfg, tmp_path / "cut", engine="sequential", resume=True)
    assert resumed.state.round == 4
    for k, v in full.state.weights.items():
        assert torch.equal(resumed.state.weights[k], v), k


@pytest.mark.parametrize("engine_cls", [SequentialEngine, BatchedEngine])
def test_fedavg_lands_on_the_client_mean_to_the_last_bit(engine_cls: type) -> None:
    """FedAvg's new global model IS the weighted mean of the client models (float32, torch.equal),
    not start + (mean - start), which differs in the last bit; buffers too (MeanDelta.mean)."""
    cfg = TrainConfig(dataset="synthetic", num_clients=5, clients_per_round=4, batch_size=4, local_epochs=2, lr=0.3,
                      algorithm="fedavg")
    algo = algorithms.from_config(cfg)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 1, 6, 6, generator=g), torch.randint(0, 3, (60,), generator=g)
    torch.manual_seed(1)
    model = TinyNet("batch")
    engine = engine_cls(model, FederatedData.build(x, y, PARTS, CPU, torch.float32), cfg, CPU)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    out = engine.run_round(algo, state, 0, [0, 1, 2, 3], cfg.lr, keep_clients=True)
    sizes = [len(PARTS[k]) for k in range(4)]
    total = float(sum(sizes))
    differs = False
    for k, v in out.state.weights.items():
        clients = [out.client_weights[c][k] for c in range(4)]
        if v.is_floating_point():
            acc = (torch.stack(clients) * torch.tensor(sizes, dtype=v.dtype).view(-1, *[1] * v.ndim)).sum(0) \
                if engine_cls is BatchedEngine else sum(c * n for c, n in zip(clients, sizes))
            mean = acc / total
            assert torch.equal(v, mean), k
            differs |= not torch.equal(state.weights[k] + (mean - state.weights[k]), mean)
    assert differs, "no tensor where start + (mean - start) != mean: the test would not catch the rounding"
