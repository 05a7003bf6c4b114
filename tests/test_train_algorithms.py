"""Client steps and server updates against closed forms and float64 equivalences [C22, K21, L26]."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from landscape.train import algorithms, schedule, swa
from landscape.train.algorithms import ClientStart, LocalState
from landscape.train.config import TrainConfig
from landscape.train.engine import FederatedData, SequentialEngine, sample_cohort

CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """conv3x3(1->4) + norm + tanh + linear on 1x6x6 inputs."""

    def __init__(self, norm: str | None = None, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = {"group": nn.GroupNorm(2, 4), "batch": nn.BatchNorm2d(4), None: nn.Identity()}[norm]
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.tanh(self.norm(self.conv(x))), 1))


def tiny_cnn(norm: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    return TinyNet(norm)


def config(**kw: object) -> TrainConfig:
    base = dict(dataset="synthetic", num_clients=4, samples_per_client=10, clients_per_round=3, batch_size=5,
                local_epochs=1, lr=0.1, weight_decay=1e-3, dtype="float64")
    return TrainConfig(**{**base, **kw})


# --- closed-form gradients of softmax regression: logits = X W^T + b, mean cross-entropy ---------

def ce_grad(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW = (P - Y)^T X / n, dL/db = mean(P - Y)."""
    P = torch.softmax(X @ W.T + b, dim=1)
    R = P - nn.functional.one_hot(y, W.shape[0]).double()
    return R.T @ X / len(y), R.mean(0)


def linear_setup(n: int = 8, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 3, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    return model, torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def one_step(cfg: TrainConfig) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ``client_step`` of the algorithm ``cfg`` names, on the sequential engine's loss_grad."""
    model, X, y = linear_setup()
    data = FederatedData.build(X, y, [np.arange(8)], CPU, torch.float64)
    engine = SequentialEngine(model, data, cfg, CPU)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    start = ClientStart({**params})
    local = LocalState(dict(params), {}, {k: torch.zeros_like(v) for k, v in params.items()})
    new, _ = algorithms.from_config(cfg).client_step(start, local, X, y, cfg.lr, engine._loss_grad)
    return new.params, params["weight"], params["bias"], X, y


def test_sam_step_matches_closed_form() -> None:
    cfg = config(algorithm="fedsam", rho=0.3, lr=0.2, weight_decay=0.01)
    new, W, b, X, y = one_step(cfg)
    gW, gb = ce_grad(W, b, X, y)
    norm = torch.sqrt((gW**2).sum() + (gb**2).sum())
    eW, eb = 0.3 * gW / norm, 0.3 * gb / norm  # e = rho g / ||g||, global norm
    gW2, gb2 = ce_grad(W + eW, b + eb, X, y)  # g' at w + e on the same batch
    torch.testing.assert_close(new["weight"], W - 0.2 * (gW2 + 0.01 * W), rtol=0, atol=1e-14)
    torch.testing.assert_close(new["bias"], b - 0.2 * (gb2 + 0.01 * b), rtol=0, atol=1e-14)


@pytest.mark.parametrize("variant", ["kwon", "davda54"])
def test_asam_step_matches_closed_form(variant: str) -> None:
    cfg = config(algorithm="fedasam", rho=0.5, eta=0.2, lr=0.2, weight_decay=0.01, asam_variant=variant)
    new, W, b, X, y = one_step(cfg)
    gW, gb = ce_grad(W, b, X, y)
    if variant == "kwon":  # T = |w| + eta on weights, 1 on biases
        TW, Tb, eps = W.abs() + 0.2, torch.ones_like(b), 1e-16
    else:  # T = |w| everywhere
        TW, Tb, eps = W.abs(), b.abs(), 1e-12
    n = torch.sqrt(((TW * gW) ** 2).sum() + ((Tb * gb) ** 2).sum())
    eW, eb = 0.5 * TW**2 * gW / (n + eps), 0.5 * Tb**2 * gb / (n + eps)
    gW2, gb2 = ce_grad(W + eW, b + eb, X, y)
    torch.testing.assert_close(new["weight"], W - 0.2 * (gW2 + 0.01 * W), rtol=0, atol=1e-14)
    torch.testing.assert_close(new["bias"], b - 0.2 * (gb2 + 0.01 * b), rtol=0, atol=1e-14)


def test_plain_step_is_sgd_with_weight_decay() -> None:
    cfg = config(lr=0.2, weight_decay=0.01)
    new, W, b, X, y = one_step(cfg)
    gW, gb = ce_grad(W, b, X, y)
    torch.testing.assert_close(new["weight"], W - 0.2 * (gW + 0.01 * W), rtol=0, atol=1e-14)


# --- float64 equivalences between algorithms ----------------------------------------------------

def synthetic_federation(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, [np.arange(0, 10), np.arange(10, 23), np.arange(23, 30), np.arange(30, 48)]


def run_rounds(cfg: TrainConfig, model: nn.Module, rounds: int = 3) -> object:
    x, y, parts = synthetic_federation()
    data = FederatedData.build(x, y, parts, CPU, torch.float64)
    engine = SequentialEngine(model, data, cfg, CPU)
    algo = algorithms.from_config(cfg)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    for t in range(rounds):
        cohort = sample_cohort(cfg.seed, t, cfg.num_clients, cfg.clients_per_round)
        state = engine.run_round(algo, state, t, cohort, schedule.client_lr(cfg, t)).state
    return state


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize(
    "left, right",
    [
        ({"algorithm": "fedsam", "rho": 0.0}, {"algorithm": "fedavg"}),
        ({"algorithm": "fedavgm", "server_momentum": 0.0, "server_lr": 1.0}, {"algorithm": "fedavg"}),
        ({"algorithm": "fednsam", "gamma": 0.0, "perturbation": "local_sam", "rho": 0.05},
         {"algorithm": "fedsam", "rho": 0.05}),
    ],
    ids=["fedsam-rho0=fedavg", "fedavgm-beta0=fedavg", "fednsam-gamma0-localsam=fedsam"],
)
def test_equivalences_float64(left: dict, right: dict) -> None:
    model = tiny_cnn(norm="group").double()
    a = run_rounds(config(**left), model)
    b = run_rounds(config(**right), model)
    assert max_diff(a.weights, b.weights) < 1e-13
    moved = run_rounds(config(algorithm="fedavg"), model, rounds=0).weights
    assert max_diff(a.weights, moved) > 1e-3  # training did move the weights


@pytest.mark.parametrize(
    "changed",
    [{"algorithm": "fedsam", "rho": 0.05}, {"algorithm": "fedavgm", "server_momentum": 0.9},
     {"algorithm": "fednsam", "gamma": 0.5, "perturbation": "local_sam", "rho": 0.05}],
)
def test_equivalences_are_not_vacuous(changed: dict) -> None:
    model = tiny_cnn(norm="group").double()
    reference = {"fedsam": {"algorithm": "fedavg"}, "fedavgm": {"algorithm": "fedavg"},
                 "fednsam": {"algorithm": "fedsam", "rho": 0.05}}[changed["algorithm"]]
    assert max_diff(run_rounds(config(**changed), model).weights, run_rounds(config(**reference), model).weights) > 1e-6


# --- FedNSAM: two rounds against the hand-derived momentum [L26] --------------------------------

def test_fednsam_two_rounds_by_hand() -> None:
    model, X, y = linear_setup(n=16, seed=1)
    parts = [np.arange(0, 6), np.arange(6, 16)]
    gamma, rho, lr, wd, steps = 0.5, 0.1, 0.3, 0.01, 2
    # Full-batch steps (batch >= client size), so the batch order cannot matter.
    cfg = config(algorithm="fednsam", gamma=gamma, rho=rho, lr=lr, weight_decay=wd, num_clients=2,
                 clients_per_round=2, batch_size=64, local_epochs=steps)
    data = FederatedData.build(X, y, parts, CPU, torch.float64)
    engine = SequentialEngine(model, data, cfg, CPU)
    algo = algorithms.from_config(cfg)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)

    x = (model.weight.detach().clone(), model.bias.detach().clone())
    m = (torch.zeros_like(x[0]), torch.zeros_like(x[1]))
    for t in range(2):
        z = (x[0] + gamma * m[0], x[1] + gamma * m[1])
        norm = torch.sqrt((m[0] ** 2).sum() + (m[1] ** 2).sum())
        eps = (torch.zeros_like(m[0]), torch.zeros_like(m[1])) if norm == 0 else (-rho * m[0] / norm, -rho * m[1] / norm)
        deltas = []
        for p in parts:
            u = z
            for _ in range(steps):
                gW, gb = ce_grad(u[0] + eps[0], u[1] + eps[1], X[p], y[p])
                u = (u[0] - lr * (gW + wd * u[0]), u[1] - lr * (gb + wd * u[1]))
            deltas.append((u[0] - z[0], u[1] - z[1]))
        n = [len(p) for p in parts]
        delta = tuple((n[0] * deltas[0][i] + n[1] * deltas[1][i]) / sum(n) for i in range(2))
        m = (gamma * m[0] + delta[0], gamma * m[1] + delta[1])
        x = (z[0] + delta[0], z[1] + delta[1])
        state = engine.run_round(algo, state, t, [0, 1], lr).state
        torch.testing.assert_close(state.momentum["weight"], m[0], rtol=0, atol=1e-13)
        torch.testing.assert_close(state.momentum["bias"], m[1], rtol=0, atol=1e-13)
        torch.testing.assert_close(state.weights["weight"], x[0], rtol=0, atol=1e-13)
        torch.testing.assert_close(state.weights["bias"], x[1], rtol=0, atol=1e-13)
    assert float(m[0].abs().max()) > 1e-3


def test_fednsam_reference_recursion_three_rounds_by_hand() -> None:
    """--fednsam-reference-momentum == main_FedNSAM.py's apply_weights_avgACG, three rounds in float64:
    clients start at z = x + gamma m; Delta = uniform mean of u_K - z (--client-weights uniform, unequal
    clients); m_1 = Delta_1, m_r = (1 + gamma) Delta_r; x_r = x_{r-1} + m_r. Local SAM with rho = 0 is
    plain gradient descent, so the client side is closed-form too."""
    model, X, y = linear_setup(n=16, seed=2)
    parts = [np.arange(0, 5), np.arange(5, 16)]
    gamma, lr, wd, steps = 0.6, 0.4, 0.01, 2
    cfg = config(algorithm="fednsam", gamma=gamma, rho=0.0, perturbation="local_sam", lr=lr, weight_decay=wd,
                 num_clients=2, clients_per_round=2, batch_size=64, local_epochs=steps,
                 fednsam_reference_momentum=True, client_weights="uniform")
    engine = SequentialEngine(model, FederatedData.build(X, y, parts, CPU, torch.float64), cfg, CPU)
    algo = algorithms.from_config(cfg)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    x = [model.weight.detach().clone(), model.bias.detach().clone()]
    m = [torch.zeros_like(x[0]), torch.zeros_like(x[1])]
    for r in range(3):
        z = [x[i] + gamma * m[i] for i in range(2)]
        deltas = []
        for p in parts:
            u = list(z)
            for _ in range(steps):
                gW, gb = ce_grad(u[0], u[1], X[p], y[p])
                u = [u[0] - lr * (gW + wd * u[0]), u[1] - lr * (gb + wd * u[1])]
            deltas.append([u[i] - z[i] for i in range(2)])
        delta = [(deltas[0][i] + deltas[1][i]) / 2 for i in range(2)]  # 1 / (num_workers * selection)
        m = [delta[i] if r == 0 else (1 + gamma) * delta[i] for i in range(2)]
        x = [x[i] + m[i] for i in range(2)]
        state = engine.run_round(algo, state, r, [0, 1], lr).state
        for i, k in enumerate(("weight", "bias")):
            torch.testing.assert_close(state.momentum[k], m[i], rtol=0, atol=1e-13)
            torch.testing.assert_close(state.weights[k], x[i], rtol=0, atol=1e-13)
    # the recursion is not the Nesterov rule: the default run ends elsewhere
    default = algorithms.from_config(cfg.replace(fednsam_reference_momentum=False))
    other = default.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    for r in range(3):
        other = engine.run_round(default, other, r, [0, 1], lr).state
    assert float((other.weights["weight"] - state.weights["weight"]).abs().max()) > 1e-3


def test_uniform_client_weights_are_the_plain_mean_of_unequal_clients() -> None:
    model, X, y = linear_setup(n=16, seed=3)
    parts = [np.arange(0, 3), np.arange(3, 16)]
    cfg = config(num_clients=2, clients_per_round=2, batch_size=4, client_weights="uniform")
    engine = SequentialEngine(model, FederatedData.build(X, y, parts, CPU, torch.float64), cfg, CPU)
    algo = algorithms.from_config(cfg)
    state = algo.init({k: v.detach().clone() for k, v in model.state_dict().items()}, engine.param_names)
    out = engine.run_round(algo, state, 0, [0, 1], cfg.lr, keep_clients=True)
    for k, v in out.state.weights.items():
        torch.testing.assert_close(v, (out.client_weights[0][k] + out.client_weights[1][k]) / 2, rtol=0, atol=1e-15)
    by_samples = SequentialEngine(model, engine.data, cfg.replace(client_weights="samples"), CPU)
    other = by_samples.run_round(algo, state, 0, [0, 1], cfg.lr).state
    assert float((other.weights["weight"] - out.state.weights["weight"]).abs().max()) > 1e-4


def test_gradient_clipping_is_torch_clip_grad_norm_before_weight_decay() -> None:
    """One plain step with --max-grad-norm c: w - lr (g min(1, c / (||g|| + 1e-6)) + wd w), ||.|| over all
    parameters, checked against torch.nn.utils.clip_grad_norm_ + torch.optim.SGD(weight_decay) itself."""
    cfg = config(max_grad_norm=0.05, lr=0.3, weight_decay=0.01)
    new, W, b, X, y = one_step(cfg)
    ref = nn.Linear(3, 2).double()
    with torch.no_grad():
        ref.weight.copy_(W), ref.bias.copy_(b)
    opt = torch.optim.SGD(ref.parameters(), lr=0.3, weight_decay=0.01)
    nn.functional.cross_entropy(ref(X), y).backward()
    gW, gb = ce_grad(W, b, X, y)
    assert float(torch.sqrt((gW ** 2).sum() + (gb ** 2).sum())) > 0.05  # the clip is active
    torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=0.05)
    opt.step()
    torch.testing.assert_close(new["weight"], ref.weight.detach(), rtol=0, atol=1e-15)
    torch.testing.assert_close(new["bias"], ref.bias.detach(), rtol=0, atol=1e-15)
    loose, *_ = one_step(cfg.replace(max_grad_norm=1e6))  # a bound above ||g|| changes nothing
    plain, *_ = one_step(cfg.replace(max_grad_norm=0.0))
    torch.testing.assert_close(loose["weight"], plain["weight"], rtol=0, atol=1e-15)


def test_cosine_schedule_and_swa_cycle_of_one() -> None:
    """Cosine: lr (1 + cos(pi t / T)) / 2 as main_FedNSAM.py (eta_min 0, t the 0-based round); SWA c = 1:
    eq. 8 gives gamma2 every round, fedsam's main.py keeps the client lr (it cycles only when c > 1)."""
    import math

    cfg = TrainConfig(num_rounds=10, lr=0.2, lr_schedule="cosine")
    assert [schedule.client_lr(cfg, t) for t in range(10)] == [0.5 * 0.2 * (1 + math.cos(math.pi * t / 10))
                                                               for t in range(10)]
    c1 = TrainConfig(num_rounds=8, lr=0.05, swa=True, swa_start=0.5, swa_cycle=1, swa_gamma1=0.01, swa_gamma2=1e-4)
    assert [schedule.client_lr(c1, t) for t in range(8)] == [0.05] * 4 + [1e-4] * 4
    assert [schedule.client_lr(c1.replace(swa_c1_keeps_lr=True), t) for t in range(8)] == [0.05] * 8
    assert [t for t in range(8) if swa.is_collection_round(c1, t)] == [4, 5, 6, 7]  # every round ends a cycle
    # SWA's cycle overrides the cosine base schedule, which runs until t0
    both = TrainConfig(num_rounds=8, lr=0.2, lr_schedule="cosine", swa=True, swa_start=0.5, swa_cycle=2)
    assert schedule.client_lr(both, 3) == 0.5 * 0.2 * (1 + math.cos(math.pi * 3 / 8))
    assert schedule.client_lr(both, 5) == both.swa_gamma2


def test_fedsam_cohorts_are_np_random_seed_round() -> None:
    """--cohort-sampling fedsam == fedsam's select_clients: np.random.seed(round); np.random.choice(clients, C,
    replace=False), clients sorted by their id as strings; independent of --seed."""
    ids = [str(k) for k in range(100)]
    clients = sorted(ids)  # fedsam's read_dir: sorted(data.keys())
    for r in (0, 1, 7, 123):
        np.random.seed(r)
        chosen = np.random.choice(clients, 10, replace=False)
        expected = sorted(int(u) for u in chosen)
        assert sample_cohort(0, r, 100, 10, "fedsam") == expected == sample_cohort(99, r, 100, 10, "fedsam")
    assert sample_cohort(0, 3, 100, 10) != sample_cohort(1, 3, 100, 10)  # the default depends on the seed


def test_fednsam_buffers_averaged_not_extrapolated() -> None:
    cfg = config(algorithm="fednsam", gamma=0.5)
    w = {"w": torch.ones(2, dtype=torch.float64), "bn.running_mean": torch.zeros(2, dtype=torch.float64)}
    algo = algorithms.from_config(cfg)
    state = algo.init(w, ("w",))
    assert set(state.momentum) == {"w"}
    extrap = algorithms.from_config(cfg.replace(fednsam_extrapolate_buffers=True)).init(w, ("w",))
    assert set(extrap.momentum) == {"w", "bn.running_mean"}


# --- SWA [C22 §4, eq. 8-9] ---------------------------------------------------------------------

def test_swa_learning_rate_schedule_and_collection() -> None:
    g1, g2, c, T = 1e-2, 1e-4, 4, 40
    cfg = TrainConfig(num_rounds=T, lr=0.05, swa=True, swa_start=0.75, swa_gamma1=g1, swa_gamma2=g2, swa_cycle=c)
    t0 = 30  # 75% of 40
    lrs = [schedule.client_lr(cfg, t) for t in range(T)]
    assert lrs[:t0] == [0.05] * t0
    cycle = [g1 - (g1 - g2) * j / c for j in (1, 2, 3, 4)]  # eq. 8: t(i) = (mod(i, c) + 1) / c
    np.testing.assert_allclose(lrs[t0:], cycle * 2 + cycle[:2], rtol=1e-12)
    # End of each cycle = after its lowest-lr round; fedsam's code: after the highest-lr round.
    assert [t for t in range(T) if swa.is_collection_round(cfg, t)] == [33, 37]
    early = cfg.replace(swa_collect_early=True)
    assert [t for t in range(T) if swa.is_collection_round(early, t)] == [34, 38]  # i > t0, (i - t0) % c == 0
    assert not any(swa.is_collection_round(cfg.replace(swa=False), t) for t in range(T))
    assert schedule.client_lr(cfg.replace(swa=False), 35) == 0.05


def test_swa_running_mean() -> None:
    models = [{"w": torch.tensor([float(i), 2.0 * i]), "bn.running_mean": torch.tensor([10.0 * i])} for i in (1, 2, 6)]
    state = swa.SWAState()
    for m in models:
        state = swa.collect(state, m, ("w",))
    assert state.num_models == 3
    torch.testing.assert_close(state.weights["w"], torch.tensor([3.0, 6.0]))  # mean of 1, 2, 6
    torch.testing.assert_close(state.weights["bn.running_mean"], torch.tensor([60.0]))  # latest buffers


# --- a new algorithm needs no engine edit: FedProx, defined here alone ---------------------------

def fedprox(mu: float, client: algorithms.ClientSGD) -> algorithms.Algorithm:
    """FedProx: FedAvg whose client gradient gains the proximal term ``mu (w - w_global)``."""
    from dataclasses import replace

    from landscape.train.algorithms.client import client_step

    def gradient(start, params, buffers, x, y, loss_grad):  # noqa: ANN001, ANN202 - a test's algorithm
        loss, g, new_buffers = loss_grad(params, buffers, x, y)
        return loss, {k: g[k] + mu * (params[k] - start.weights[k]) for k in g}, new_buffers

    return replace(algorithms.fedavg(client=client), name="fedprox", client_step=client_step(gradient, client))


def test_from_config_binds_the_factories_hyperparameters() -> None:
    cfg = config(algorithm="fedasam", rho=0.3, eta=0.1, asam_variant="davda54")
    assert algorithms.from_config(cfg).name == "fedasam"
    assert algorithms.from_config(config(algorithm="fednsam")).state_type.__name__ == "FedNSAMState"
    with pytest.raises(ValueError, match="unknown FedNSAM perturbation 'x'"):
        algorithms.fednsam(perturbation="x")
    with pytest.raises(ValueError, match="unknown ASAM variant 'y'"):
        algorithms.fedasam(variant="y")


def test_server_states_serialize_themselves() -> None:
    w = {"w": torch.ones(2, dtype=torch.float64)}
    for algo in (algorithms.fedavg(), algorithms.fedavgm(), algorithms.fednsam()):
        state = algo.init(w, ("w",))
        payload = state.to_dict()
        assert payload["type"] == algo.state_type.__name__ and payload["fields"]["param_names"] == ["w"]
        again = algo.state_type.from_dict(payload)
        assert again.param_names == ("w",) and torch.equal(again.weights["w"], w["w"])


def test_every_algorithm_name_has_a_factory_and_the_defaults_are_the_factories() -> None:
    import inspect

    from landscape.train import hyperparameters as hp

    assert tuple(algorithms.FACTORIES) == hp.ALGORITHMS == algorithms.NAMES
    for name, rho in hp.DEFAULT_RHO.items():
        assert inspect.signature(algorithms.FACTORIES[name]).parameters["rho"].default == rho
        assert TrainConfig(algorithm=name).effective_rho == rho
    assert TrainConfig(algorithm="fedavg").effective_rho == 0.0
