"""Hessian, GGN and empirical Fisher operators against dense float64 references.

The references never go through :class:`~landscape.objective.Objective`: each case writes
its own forward and loss, the whole data set is one batch, and the matrices come from
``torch.func.hessian`` (Hessian), ``torch.func.jacrev`` and the loss Hessian w.r.t. the
outputs (GGN, J^T H_o J), and per-sample gradients of one-sample batches (Fisher,
sum_i (c_i/N) g_i g_i^T). The objectives split the data into unequal batches.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev

from landscape.errors import LandscapeError
from landscape.objective import Objective
from landscape.operators import CURVATURES, FisherOperator, GGNOperator, HessianOperator, make_operator
from tests.conftest import Noisy, assert_one_line

# torch.func.hessian of the references goes through a deprecated torch.jit.script inside torch
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

IGNORE = 255
#: Every curvature in every mode it has.
MODES = [("hessian", "cached"), ("hessian", "forward"), ("ggn", "forward"), ("fisher", "cached"),
         ("fisher", "forward")]
ATOL, RTOL = 1e-10, 1e-8


# ----------------------------------------------------------------------------------------------
# the cases: a model, its data as the objective sees it, and an independent forward and loss
# ----------------------------------------------------------------------------------------------
class SegNet(nn.Module):
    """Per-pixel class scores (N, 3, 4, 4) of 1x4x4 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.conv1(x)))


class Bag(nn.Module):
    """Embedding, masked mean over the tokens, linear: a text classifier taking keyword inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.emb(input_ids) * attention_mask[..., None]
        return self.fc(torch.tanh(e.sum(1) / attention_mask.sum(1, keepdim=True)))


def log_cosh(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A user loss (convex, not quadratic): mean log cosh of the residuals."""
    return torch.log(torch.cosh(outputs - targets)).mean()


def features_forward(model: Callable[..., Any], batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A user forward for dict batches without 'labels'."""
    return model(batch["features"]), batch["target"]


@dataclass
class Case:
    model: nn.Module
    batches: list  # as the objective gets them (two unequal batches)
    full: Any  # all the data in one batch
    loss: Any  # the objective's loss argument
    ref_forward: Callable[[Callable[..., Any], Any], tuple[torch.Tensor, torch.Tensor]]
    ref_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean over the counted targets
    ref_count: Callable[[torch.Tensor], int]  # the targets that mean counts
    kwargs: dict = field(default_factory=dict)


def pair_forward(model, batch):
    return model(batch[0]), batch[1]


def split(full: Any, at: int) -> list:
    if isinstance(full, dict):
        return [{k: v[:at] for k, v in full.items()}, {k: v[at:] for k, v in full.items()}]
    return [(full[0][:at], full[1][:at]), (full[0][at:], full[1][at:])]


def make_case(name: str) -> Case:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "mse":
        full = (torch.randn(9, 3, generator=g), torch.randn(9, 2, generator=g))
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        return Case(model, split(full, 6), full, "mse", pair_forward, nn.functional.mse_loss, lambda t: t.numel())
    if name == "bce":
        full = (torch.randn(9, 3, generator=g), torch.randint(0, 2, (9,), generator=g).double())
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        return Case(model, split(full, 4), full, "bce-with-logits", pair_forward,
                    lambda o, t: nn.functional.binary_cross_entropy_with_logits(o, t.reshape(o.shape).to(o.dtype)),
                    lambda t: t.numel())
    if name == "segmentation":
        x, y = torch.randn(5, 1, 4, 4, generator=g), torch.randint(0, 3, (5, 4, 4), generator=g)
        y[0, 0, :3] = IGNORE  # batch 1: 3 ignored pixels
        y[3] = IGNORE  # batch 2: one sample wholly ignored (it adds nothing to the Fisher) ...
        y[4, :2] = IGNORE  # ... and 8 ignored pixels of another
        full = (x, y)
        return Case(SegNet(), split(full, 3), full, "cross-entropy", pair_forward,
                    lambda o, t: nn.functional.cross_entropy(o, t, ignore_index=IGNORE),
                    lambda t: int((t != IGNORE).sum()), {"ignore_index": IGNORE})
    if name == "dict":
        ids = torch.randint(0, 7, (6, 5), generator=g)
        mask = torch.ones(6, 5)
        for i, length in enumerate([5, 2, 3, 5, 1, 4]):
            mask[i, length:] = 0
        full = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (6,), generator=g)}

        def forward(model, batch):
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"]
        return Case(Bag(), split(full, 4), full, "cross-entropy", forward, nn.functional.cross_entropy,
                    lambda t: t.numel())
    if name == "user":
        full = {"features": torch.randn(7, 3, generator=g), "target": torch.randn(7, 2, generator=g)}
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        # a user loss is counted by batch size: one per sample
        return Case(model, split(full, 5), full, log_cosh, features_forward, log_cosh, lambda t: t.shape[0],
                    {"forward": features_forward})
    raise AssertionError(name)


CASES = ["mse", "bce", "segmentation", "dict", "user"]


# ----------------------------------------------------------------------------------------------
# independent dense references (float64, the whole data in one batch)
# ----------------------------------------------------------------------------------------------
def to64(batch: Any) -> Any:
    if isinstance(batch, dict):
        return {k: to64(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to64(v) for v in batch)
    return batch.double() if batch.is_floating_point() else batch


class Reference:
    """The case's loss as a function of a flat vector of the chosen parameters."""

    def __init__(self, case: Case, params: str | list[str] | None = None) -> None:
        self.case, self.model = case, copy.deepcopy(case.model).double().eval()
        named = dict(self.model.named_parameters())
        if params is None:
            self.names = list(named)
        elif isinstance(params, str):
            self.names = [n for n in named if re.search(params, n)]
        else:
            self.names = [n for n in named if n in params]
        self.state = {n: p.detach() for n, p in named.items()}
        self.shapes = {n: named[n].shape for n in self.names}
        self.w0 = torch.cat([named[n].detach().reshape(-1) for n in self.names])
        self.full = to64(case.full)

    def net(self, flat: torch.Tensor) -> Callable[..., Any]:
        state, i = dict(self.state), 0
        for n, shape in self.shapes.items():
            k = int(np.prod(shape))
            state[n] = flat[i:i + k].reshape(shape)
            i += k
        return lambda *a, **k: functional_call(self.model, state, a, k)

    def loss(self, flat: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.case.ref_loss(*self.case.ref_forward(self.net(flat), batch))

    def hessian(self) -> torch.Tensor:
        return hessian(lambda w: self.loss(w, self.full))(self.w0)

    def ggn(self) -> torch.Tensor:
        outputs, targets = self.case.ref_forward(self.net(self.w0), self.full)
        m = outputs.numel()
        J = jacrev(lambda w: self.case.ref_forward(self.net(w), self.full)[0])(self.w0).reshape(m, -1)
        H_o = hessian(lambda o: self.case.ref_loss(o, targets))(outputs.detach()).reshape(m, m)
        return J.T @ H_o @ J

    def samples(self) -> list:
        full = self.full
        if isinstance(full, dict):
            n = next(iter(full.values())).shape[0]
            return [{k: v[i:i + 1] for k, v in full.items()} for i in range(n)]
        return [(full[0][i:i + 1], full[1][i:i + 1]) for i in range(full[0].shape[0])]

    def fisher(self) -> torch.Tensor:
        rows, counts = [], []
        for s in self.samples():
            c = self.case.ref_count(self.case.ref_forward(self.net(self.w0), s)[1])
            counts.append(c)
            if c:
                rows.append(c ** 0.5 * grad(lambda w, s=s: self.loss(w, s))(self.w0))
        R = torch.stack(rows)
        return R.T @ R / sum(counts)

    def dense(self, curvature: str) -> torch.Tensor:
        return {"hessian": self.hessian, "ggn": self.ggn, "fisher": self.fisher}[curvature]()


def objective(case: Case, data: Any = None, **kwargs: Any) -> Objective:
    return Objective(case.model, case.batches if data is None else data, dtype=torch.float64, loss=case.loss,
                     **case.kwargs, **kwargs)


@pytest.fixture(scope="module")
def references() -> dict:
    return {name: {c: Reference(make_case(name)).dense(c) for c in CURVATURES} for name in CASES}


# ----------------------------------------------------------------------------------------------
# every curvature, every mode, every case
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("curvature,mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_operator_matches_the_dense_reference(name, curvature, mode, references):
    case = make_case(name)
    expected = references[name][curvature]
    assert expected.abs().max() > 1e-3
    op = make_operator(objective(case), curvature, mode=mode)
    assert op.mode == mode and op.shape == expected.shape and op.dtype == torch.float64
    torch.testing.assert_close(op.dense(), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("curvature,mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_a_block_product_equals_its_single_products(name, curvature, mode, references):
    # 5 rows in blocks of 3 (one graph each: 3 rows, then 2) over 2 batches: k = 1, k > the batches, a rest
    case = make_case(name)
    expected = references[name][curvature]
    V = torch.randn(5, expected.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    single = make_operator(objective(case), curvature, mode=mode, block_size=1)
    block = make_operator(objective(case), curvature, mode=mode, block_size=3)
    rows = torch.stack([single.matvec(v) for v in V])
    out = block.matmat(V)
    assert block._vmap_blocks is True and out.shape == V.shape
    torch.testing.assert_close(out, rows, atol=1e-13, rtol=1e-11)
    torch.testing.assert_close(out, V @ expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(block.matmat(V[:1]), rows[:1], atol=1e-13, rtol=1e-11)
    assert single.num_matvecs == 6 and block.num_matvecs == 7  # per vector, the determinism check included


def test_segmentation_counts_non_ignored_pixels(references):
    # The two batches hold 3*16-3 and 2*16-16-8 counted pixels: weighting them by batch size
    # (3 and 2 samples) or by pixel count including ignored ones gives another matrix.
    case = make_case("segmentation")
    obj = objective(case)
    assert obj.num_samples == 5 * 16 - 3 - 16 - 8
    fisher = FisherOperator(obj)
    assert fisher.num_rows == 4  # the wholly ignored sample is left out
    for curvature in CURVATURES:
        by_batch = sum(len(b[1]) / 5 * make_operator(objective(case, [b]), curvature).dense() for b in case.batches)
        assert (by_batch - references["segmentation"][curvature]).abs().max() > 1e-4, curvature


@pytest.mark.parametrize("params", ["bias$", ["conv2.weight", "conv1.bias"]])
@pytest.mark.parametrize("curvature", CURVATURES)
def test_params_selection_is_the_sub_block(curvature, params, references):
    case = make_case("segmentation")
    full = Reference(case)
    index = torch.cat([torch.arange(int(np.prod(s))) + sum(int(np.prod(t)) for t in list(full.shapes.values())[:i])
                       for i, (n, s) in enumerate(full.shapes.items()) if n in Reference(case, params).names])
    expected = references["segmentation"][curvature][index][:, index]
    op = make_operator(objective(case, params=params), curvature)
    assert op.shape == (index.numel(), index.numel()) < full.hessian().shape
    torch.testing.assert_close(op.dense(), expected, atol=ATOL, rtol=RTOL)
    # and the reference restricted to those parameters agrees
    torch.testing.assert_close(Reference(case, params).dense(curvature), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("curvature", CURVATURES)
def test_a_dataloader_without_shuffling_is_the_list_of_its_batches(curvature):
    case = make_case("mse")
    x, y = case.full
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)
    streamed = objective(case, loader)
    assert not streamed.resident
    listed = objective(case, [(x[i:i + 4], y[i:i + 4]) for i in range(0, len(x), 4)])
    torch.testing.assert_close(make_operator(streamed, curvature).dense(), make_operator(listed, curvature).dense(),
                               atol=1e-12, rtol=1e-12)


def test_a_shuffling_dataloader_is_refused_in_one_line():
    case = make_case("mse")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*case.full), batch_size=4, shuffle=True)
    with pytest.raises(LandscapeError, match="shuffle=False") as exc:
        objective(case, loader)
    assert_one_line(exc, "RandomSampler")


# ----------------------------------------------------------------------------------------------
# what theory says
# ----------------------------------------------------------------------------------------------
def test_ggn_equals_the_hessian_of_a_linear_model_with_mse():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 3, generator=g).double(), torch.randn(8, 2, generator=g).double()
    model = nn.Linear(3, 2)
    # f = 1/(2N) sum_i ||W x_i + b - y_i||^2, parameters (W row-major, b): H = (1/N) sum_i I_2 (x) [x_i; 1][x_i; 1]^T
    # in the order W[0,:], W[1,:], b[0], b[1]
    xt = torch.cat([x, torch.ones(8, 1, dtype=x.dtype)], 1)
    A = xt.T @ xt / 8  # the (x, 1) moment matrix
    H = torch.zeros(8, 8, dtype=x.dtype)
    for k in range(2):
        rows = [3 * k, 3 * k + 1, 3 * k + 2, 6 + k]
        H[np.ix_(rows, rows)] = A
    obj = Objective(model, [(x[:5], y[:5]), (x[5:], y[5:])], torch.float64, loss="mse")
    for curvature in ("hessian", "ggn"):
        torch.testing.assert_close(make_operator(obj, curvature).dense(), H, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_ggn_and_fisher_are_psd_for_convex_losses_where_the_hessian_need_not_be(name):
    obj = objective(make_case(name))
    for curvature in ("ggn", "fisher"):
        eig = torch.linalg.eigvalsh(make_operator(obj, curvature).dense())
        assert eig.min() > -1e-10 * eig.max(), (curvature, eig.min())
    if name == "mse":  # a nonlinear network: its Hessian has negative curvature here
        assert torch.linalg.eigvalsh(HessianOperator(obj).dense()).min() < -1e-6


def test_fisher_is_the_sum_of_weighted_outer_products():
    # Directly: F v = sum_i (c_i/N) g_i (g_i . v) with g_i from autograd on one sample at a time.
    case = make_case("segmentation")
    ref = Reference(case)
    v = torch.randn(ref.w0.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected, total = torch.zeros_like(v), 0
    for s in ref.samples():
        w = ref.w0.clone().requires_grad_(True)
        c = int((s[1] != IGNORE).sum())
        total += c
        if c:
            (g,) = torch.autograd.grad(ref.loss(w, s), w)
            expected += c * g * (g @ v)
    torch.testing.assert_close(FisherOperator(objective(case), mode="forward") @ v, expected / total)


@pytest.mark.parametrize("curvature", CURVATURES)
def test_to_scipy_eigsh_gives_the_top_eigenvalues(curvature, references):
    expected = torch.linalg.eigvalsh(references["dict"][curvature]).flip(0)[:3].numpy()
    lin = make_operator(objective(make_case("dict")), curvature).to_scipy()
    assert lin.shape == tuple(references["dict"][curvature].shape) and lin.dtype == np.float64
    values = np.sort(eigsh(lin, k=3, which="LA", tol=1e-12)[0])[::-1]
    np.testing.assert_allclose(values, expected, rtol=1e-8)


# ----------------------------------------------------------------------------------------------
# the interface and its errors
# ----------------------------------------------------------------------------------------------
def test_unknown_curvature_and_modes_are_one_line():
    obj = objective(make_case("mse"))
    with pytest.raises(LandscapeError, match="unknown curvature 'kfac'") as exc:
        make_operator(obj, "kfac")
    assert_one_line(exc, "hessian, ggn, fisher")
    with pytest.raises(LandscapeError, match="GGN has modes auto, forward") as exc:
        make_operator(obj, "ggn", mode="cached")
    assert_one_line(exc)


@pytest.mark.parametrize("batch", [torch.randn(4, 3), (torch.randn(4, 3), torch.randn(3, 2)),
                                   {"features": torch.randn(4, 3), "target": 1.0}])
def test_fisher_refuses_batches_without_samples_on_dim0(batch):
    def forward(model, b):
        x = b if isinstance(b, torch.Tensor) else b[0] if isinstance(b, tuple) else b["features"]
        return model(x), torch.zeros(x.shape[0], 2)

    obj = Objective(nn.Linear(3, 2), [batch], loss="mse", forward=forward)
    with pytest.raises(LandscapeError, match="the Fisher needs batches whose tensors hold the samples on dim 0") as exc:
        FisherOperator(obj)
    assert_one_line(exc)


class ItemBranch(nn.Module):
    """A forward vmap cannot batch (``.item()``): the Fisher loops over the samples instead."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) if x.sum().item() > -1e9 else -self.net(x)


@pytest.mark.parametrize("mode", ["cached", "forward"])
def test_fisher_loops_where_vmap_cannot(mode, references):
    case = make_case("mse")
    model = ItemBranch()
    model.net.load_state_dict(case.model.state_dict())
    op = FisherOperator(Objective(model, case.batches, torch.float64, loss="mse"), mode=mode)
    dense = op.dense()
    assert op._vectorized is False
    expected = references["mse"]["fisher"]
    torch.testing.assert_close(dense, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("curvature", CURVATURES)
def test_non_deterministic_products_are_detected(curvature):
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    op = make_operator(Objective(Noisy(), [(x, y)]), curvature)
    with pytest.raises(LandscapeError, match="not deterministic"):
        op @ torch.randn(op.shape[0])


@pytest.mark.parametrize("curvature", CURVATURES)
def test_products_are_counted_and_the_callers_model_is_untouched(curvature):
    case = make_case("segmentation")
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    op = make_operator(Objective(case.model, case.batches, loss="cross-entropy", ignore_index=IGNORE), curvature)
    for _ in range(3):
        out = op @ torch.randn(op.shape[0], dtype=torch.float64)  # cast to the operator's dtype
    assert op.num_matvecs == 4 and out.dtype == torch.float32 and out.shape == (op.shape[0],)
    assert all(p.grad is None for p in case.model.parameters())
    for k, v in case.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_auto_modes():
    obj = objective(make_case("mse"))
    assert (HessianOperator(obj).mode, GGNOperator(obj).mode, FisherOperator(obj).mode) == \
        ("cached", "forward", "cached")
