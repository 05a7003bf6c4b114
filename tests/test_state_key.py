"""Checkpoints of other code: which state dict is used (``state_key`` / ``--state-key``).

The files are written here in the layouts of their codes: fedsam's server ``save_model``
(github:debcaldarola/fedsam, ``models/servers/fedavg_server.py``) writes
``{"model_state_dict": global, "round": r, "swa_model": swa, "swa_n": n}``, FedOpt servers
add ``"opt_state_dict"``; DataParallel prefixes every name with ``module.``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscape import checkpoint, models
from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.surface import load_result

KWARGS = {"in_features": 16, "hidden": [4], "num_classes": 3}
MLP = ["--model", "mlp", "--model-kwargs", json.dumps(KWARGS)]


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in models.build("mlp", **KWARGS).state_dict().items()}


def _optimizer_state(state: dict[str, torch.Tensor]) -> dict:
    """A real SGD-with-momentum state dict after one step (its per-parameter state has integer keys)."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


@pytest.fixture
def fedsam_file(tmp_path):
    """A FedOpt-server checkpoint of fedsam after SWA started: global and SWA model differ."""
    glob, swa = _state(0), _state(1)
    path = tmp_path / "fedsam.ckpt"
    torch.save({"model_state_dict": glob, "opt_state_dict": _optimizer_state(glob), "round": 40,
                "swa_model": swa, "swa_n": 3}, path)
    return path, glob, swa


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- Python API --------------------------------------------------------------------------------

@pytest.mark.parametrize("key, which", [("swa_model", "swa"), ("model_state_dict", "global")])
def test_state_key_picks_the_global_or_the_swa_model_of_a_fedsam_checkpoint(fedsam_file, key, which):
    path, glob, swa = fedsam_file
    ckpt = checkpoint.load(path, model="mlp", model_kwargs=KWARGS, state_key=key)
    expected = swa if which == "swa" else glob
    assert _equal(ckpt.state_dict, expected)
    assert _equal(ckpt.build_model().state_dict(), expected)
    assert ckpt.state_key == key and ckpt.describe()["state_key"] == key


def test_several_state_dicts_without_a_key_are_refused_with_their_names(fedsam_file):
    with pytest.raises(LandscapeError) as info:
        checkpoint.load(fedsam_file[0], model="mlp", model_kwargs=KWARGS)
    text = str(info.value)
    assert "2 state dicts: 'model_state_dict', 'swa_model'" in text and "--state-key" in text and "\n" not in text


def test_the_only_state_dict_is_used_and_optimizer_state_is_not_one(tmp_path):
    # fedsam before SWA starts: the global model and the server optimizer's state.
    glob = _state(0)
    path = tmp_path / "early.ckpt"
    torch.save({"model_state_dict": glob, "opt_state_dict": _optimizer_state(glob), "round": 3}, path)
    ckpt = checkpoint.load(path, model="mlp", model_kwargs=KWARGS)
    assert _equal(ckpt.state_dict, glob) and ckpt.state_key == "model_state_dict"


@pytest.mark.parametrize("key, match", [
    ("swa", r"--state-key 'swa': no such entry .*pass one of 'model_state_dict', 'swa_model'"),
    ("round", "--state-key 'round' holds int, not a dict of tensors"),
    ("round.x", "'round' is int"),
    ("opt_state_dict", "'opt_state_dict' holds no state dict"),
    ("swa_model.fc", "no such entry"),
    ("", "the state key must be a key of the saved dict"),
    ("swa_model.", "the state key must be a key of the saved dict"),
])
def test_a_wrong_state_key_is_one_line_naming_the_candidates(fedsam_file, key, match):
    with pytest.raises(LandscapeError, match=match) as info:
        checkpoint.load(fedsam_file[0], model="mlp", model_kwargs=KWARGS, state_key=key)
    assert "\n" not in str(info.value)


def test_dotted_keys_reach_nested_state_dicts_and_name_prefixes(tmp_path):
    a, b = _state(0), _state(1)
    nested = tmp_path / "nested.pt"
    torch.save({"ckpt": {"model": a, "ema": b}, "epoch": 9}, nested)
    assert _equal(checkpoint.load(nested, model="mlp", model_kwargs=KWARGS, state_key="ckpt.ema").state_dict, b)
    with pytest.raises(LandscapeError, match="2 state dicts: 'ckpt.model', 'ckpt.ema'"):
        checkpoint.load(nested, model="mlp", model_kwargs=KWARGS, state_key="ckpt")
    dotted = tmp_path / "dotted.pt"  # a key holding a dot is matched whole
    torch.save({"ema.v2": a, "ema": {"v2": b, "v3": b}}, dotted)
    assert _equal(checkpoint.load(dotted, model="mlp", model_kwargs=KWARGS, state_key="ema.v2").state_dict, a)
    lightning = tmp_path / "lightning.ckpt"  # one state dict, parameters named model.* beside a loss's buffer
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in a.items()}, "loss.weight": torch.ones(3)},
                "epoch": 2}, lightning)
    with pytest.raises(LandscapeError, match="do not match model 'mlp'.*unexpected"):
        checkpoint.load(lightning, model="mlp", model_kwargs=KWARGS)
    ckpt = checkpoint.load(lightning, model="mlp", model_kwargs=KWARGS, state_key="state_dict.model")
    assert _equal(ckpt.state_dict, a) and ckpt.state_key == "state_dict.model"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_dropped(tmp_path, prefix):
    a = _state(0)
    path = tmp_path / "dp.pt"
    torch.save({"epoch": 1, "net": {prefix + k: v for k, v in a.items()}}, path)
    ckpt = checkpoint.load(path, model="mlp", model_kwargs=KWARGS)
    assert _equal(ckpt.state_dict, a) and ckpt.state_key == "net"


def test_a_landscape_checkpoint_takes_no_other_state_key(tmp_path):
    model = models.build("mlp", **KWARGS)
    path = checkpoint.save(checkpoint.from_model(model, "mlp", KWARGS, role="swa"), tmp_path / "c.pt")
    assert checkpoint.load(path, state_key="state_dict").state_key is None
    with pytest.raises(LandscapeError, match="a landscape checkpoint holds one model.*drop --state-key"):
        checkpoint.load(path, state_key="swa_model")


def test_state_dicts_deeper_than_the_search_are_not_looked_for(tmp_path):
    path = tmp_path / "deep.pt"
    obj: object = _state(0)
    for _ in range(checkpoint.SEARCH_DEPTH + 1):
        obj = {"a": obj}
    torch.save(obj, path)
    with pytest.raises(LandscapeError, match="neither a landscape checkpoint nor a state_dict"):
        checkpoint.load(path, model="mlp", model_kwargs=KWARGS)
    key = ".".join(["a"] * (checkpoint.SEARCH_DEPTH + 1))
    assert _equal(checkpoint.load(path, model="mlp", model_kwargs=KWARGS, state_key=key).state_dict, _state(0))


# --- command line ------------------------------------------------------------------------------

@pytest.fixture
def data_file(tmp_path):
    g = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=g.normal(size=(24, 1, 4, 4)).astype(np.float32), y=np.arange(24) % 3)
    return path


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_hessian_of_the_swa_model_is_the_hessian_of_its_weights(fedsam_file, data_file, tmp_path, capsys):
    path, glob, swa = fedsam_file
    common = [*MLP, "--data", data_file, "--top-k", "2", "--device", "cpu", "--dtype", "float64"]
    results = {}
    for name, state in (("global", glob), ("swa", swa)):
        torch.save(state, tmp_path / f"{name}.pt")  # ground truth: the same weights as a bare state dict
        assert _cli(["hessian", tmp_path / f"{name}.pt", *common, "--out", tmp_path / f"{name}.json"], capsys)[0] == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for name, key in (("global", "model_state_dict"), ("swa", "swa_model")):
        out = tmp_path / f"picked_{name}.json"
        assert _cli(["hessian", path, *common, "--state-key", key, "--out", out], capsys)[0] == 0
        picked = json.loads(out.read_text())
        assert picked["eigenvalues"] == results[name]["eigenvalues"] and picked["loss"] == results[name]["loss"]
        assert picked["metadata"]["checkpoint"]["state_key"] == key
    assert results["global"]["loss"] != results["swa"]["loss"]  # the two models are told apart
    code, err = _cli(["hessian", path, *common, "--out", tmp_path / "none.json"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: the file holds 2 state dicts: "
                                                                 "'model_state_dict', 'swa_model'")
    assert not (tmp_path / "none.json").exists()


def test_surface_takes_the_state_key_too(fedsam_file, data_file, tmp_path, capsys):
    path, _, swa = fedsam_file
    torch.save(swa, tmp_path / "swa.pt")
    common = [*MLP, "--data", data_file, "--sources", "train", "--resolution", "3", "--device", "cpu"]
    assert _cli(["surface", tmp_path / "swa.pt", *common, "--out", tmp_path / "a.npz"], capsys)[0] == 0
    assert _cli(["surface", path, *common, "--state-key", "swa_model", "--out", tmp_path / "b.npz"], capsys)[0] == 0
    a, b = load_result(tmp_path / "a.npz"), load_result(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["values"]["train/loss"], b["values"]["train/loss"])
    assert b["metadata"]["checkpoints"][0]["state_key"] == "swa_model"
