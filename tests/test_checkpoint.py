import errno
import os
from pathlib import Path

import pytest
import torch

from landscape import checkpoint, models
from landscape.errors import LandscapeError


def _ckpt(**fields):
    torch.manual_seed(0)
    model = models.build("mlp", hidden=[4])
    return model, checkpoint.from_model(model, "mlp", {"hidden": [4]}, **fields)


def test_round_trip_keeps_weights_and_description(tmp_path):
    model, ckpt = _ckpt(round=7, role="client", client_id=3, config={"lr": 0.01},
                        data={"dataset": "digits", "split": "train"}, metadata={"note": "x"})
    path = checkpoint.save(ckpt, tmp_path / "c.pt")
    back = checkpoint.load(path)
    assert (back.round, back.role, back.client_id) == (7, "client", 3)
    assert back.config == {"lr": 0.01} and back.data["dataset"] == "digits" and back.metadata == {"note": "x"}
    rebuilt = back.build_model()
    for (k, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), k
    assert len(back.sha256) == 64


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    _, ckpt = _ckpt(round=1)
    path = checkpoint.save(ckpt, tmp_path / "c.pt")
    before = path.read_bytes()

    def broken(self, data):
        open(self, "wb").write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")  # a failed write() names no file

    monkeypatch.setattr(Path, "write_bytes", broken)
    with pytest.raises(OSError) as info:
        checkpoint.save(ckpt, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_plain_state_dict_needs_and_accepts_a_model_name(tmp_path):
    model, _ = _ckpt()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(LandscapeError, match="plain state_dict.*--model"):
        checkpoint.load(tmp_path / "sd.pt")
    back = checkpoint.load(tmp_path / "sd.pt", model="mlp", model_kwargs={"hidden": [4]})
    assert back.model_name == "mlp" and back.role is None


def test_wrapped_state_dict_is_found(tmp_path):
    model, _ = _ckpt()
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "w.pt")
    assert checkpoint.load(tmp_path / "w.pt", model="mlp", model_kwargs={"hidden": [4]}).model_name == "mlp"


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, path)
    with pytest.raises(LandscapeError, match="refused to load"):
        checkpoint.load(path)
    assert not (tmp_path / "PWNED_MARKER").exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"hello, I am a text file\n", "not a PyTorch checkpoint"),
        (None, "truncated or corrupt"),
    ],
)
def test_unreadable_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        _, ckpt = _ckpt()
        checkpoint.save(ckpt, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(LandscapeError, match=match):
        checkpoint.load(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(LandscapeError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(LandscapeError, match="is a folder"):
        checkpoint.load(tmp_path)


def test_state_dict_that_does_not_fit_the_model_names_the_mismatch(tmp_path):
    model, _ = _ckpt()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(LandscapeError, match=r"do not match model 'mlp'.*shape mismatch.*num_classes"):
        checkpoint.load(tmp_path / "sd.pt", model="mlp", model_kwargs={"hidden": [5]})
    with pytest.raises(LandscapeError, match="missing"):
        checkpoint.load(tmp_path / "sd.pt", model="cnn")


def test_non_state_dict_objects_are_rejected(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(LandscapeError, match="neither a landscape checkpoint nor a state_dict"):
        checkpoint.load(tmp_path / "list.pt", model="mlp")


def test_invalid_role_is_rejected():
    with pytest.raises(LandscapeError, match="role must be one of"):
        _ckpt(role="server")


def test_saved_files_get_the_usual_permissions(tmp_path):
    _, ckpt = _ckpt()
    umask = os.umask(0o022)
    try:
        path = checkpoint.save(ckpt, tmp_path / "c.pt")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def _payload(tmp_path, **changes):
    """A valid checkpoint dict with some entries changed (None deletes the entry)."""
    _, ckpt = _ckpt(round=1, role="global")
    payload = ckpt.to_dict()
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    path = tmp_path / "c.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("factory, kwargs", [
    ("subprocess:run", {"args": "touch PWNED_MARKER", "shell": True}),
    ("os:system", {"command": "touch PWNED_MARKER"}),
    ("builtins:exec", {"source": "open('PWNED_MARKER', 'w')"}),
])
def test_a_factory_stored_in_a_checkpoint_never_runs(tmp_path, monkeypatch, factory, kwargs):
    monkeypatch.chdir(tmp_path)
    _, ckpt = _ckpt()
    payload = {**ckpt.to_dict(), "model": {"name": factory, "kwargs": kwargs}}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(LandscapeError, match=f"refused to import model '{factory}' named by a file"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_a_stored_factory_runs_when_the_user_trusts_the_file_or_names_it(tmp_path):
    from tests.conftest import tiny_cnn

    ckpt = checkpoint.from_model(tiny_cnn(), "tests.conftest:tiny_cnn")
    path = checkpoint.save(ckpt, tmp_path / "user.pt")
    with pytest.raises(LandscapeError, match="--trust-stored-factory"):
        checkpoint.load(path)
    assert type(checkpoint.load(path, trust_factory=True).build_model()).__name__ == "TinyCNN"
    assert type(checkpoint.load(path, model="tests.conftest:tiny_cnn").build_model()).__name__ == "TinyCNN"


@pytest.mark.parametrize("changes, match", [
    ({"state_dict": None}, "malformed checkpoint: no 'state_dict' entry"),
    ({"model": None}, "malformed checkpoint: no 'model' entry"),
    ({"model": "mlp"}, "'model' is str, expected dict"),
    ({"model": {"kwargs": {}}}, "the model has no name"),
    ({"model": {"name": "mlp", "kwargs": [1, 2]}}, "the model kwargs are list"),
    ({"state_dict": {"w": 3}}, "'state_dict' is not a mapping of parameter names to tensors"),
    ({"round": "7"}, "'round' is str, expected int"),
    ({"round": True}, "'round' is bool"),
    ({"client_id": 1.5}, "'client_id' is float"),
    ({"data": [1]}, "'data' is list"),
    ({"role": "server"}, "role 'server' is not one of"),
    ({"format_version": "1"}, "'format_version' is str"),
    ({"model": {"name": "mlp", "kwargs": {"hidden": "abc"}}}, "model 'mlp' .*raised TypeError"),
    ({"model": {"name": "mlp", "kwargs": {"hidden": [4], "colour": 1}}}, "unexpected keyword argument 'colour'"),
])
def test_malformed_checkpoints_are_one_line(tmp_path, changes, match):
    path = _payload(tmp_path, **changes)
    with pytest.raises(LandscapeError, match=match) as info:
        checkpoint.load(path).build_model()
    assert "\n" not in str(info.value)


def test_kwargs_from_a_file_cannot_allocate_more_than_the_file_holds(tmp_path, monkeypatch):
    # 10^6 x 64 floats (256 MB) would be allocated by a real build; the meta build refuses first.
    path = _payload(tmp_path, model={"name": "mlp", "kwargs": {"hidden": [10**6]}})
    built = []
    real = models.call_factory
    monkeypatch.setattr(models, "call_factory", lambda f, n, k, device=None: built.append(device) or real(f, n, k, device))
    with pytest.raises(LandscapeError, match="shape mismatch"):
        checkpoint.load(path)
    assert built == ["meta"]


def test_non_finite_weights_are_one_clear_error(tmp_path):
    model, ckpt = _ckpt()
    ckpt.state_dict["net.0.weight"][0, 0] = float("nan")
    back = checkpoint.load(checkpoint.save(ckpt, tmp_path / "nan.pt"))
    with pytest.raises(LandscapeError, match=r"NaN or inf values in 1 tensor\(s\), e.g. net.0.weight .*nan.pt"):
        back.check_finite()
    _, good = _ckpt()
    good.check_finite()


def _safetensors(tmp_path, state, name="w.safetensors", metadata=None):
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=metadata)
    return path


@pytest.mark.parametrize("metadata", [None, {"format": "pt", "model": "os:system", "kwargs": '{"hidden": [9]}'}],
                         ids=["plain", "header-naming-code"])
def test_safetensors_weights_load_like_a_state_dict_when_the_model_is_named(tmp_path, monkeypatch, metadata):
    monkeypatch.chdir(tmp_path)
    model, _ = _ckpt()
    path = _safetensors(tmp_path, model.state_dict(), "W.SafeTensors", metadata)
    back = checkpoint.load(path, model="mlp", model_kwargs={"hidden": [4]})
    assert (back.model_name, back.model_kwargs, back.role, back.metadata) == ("mlp", {"hidden": [4]}, None, {})
    assert back.path == path and len(back.sha256) == 64
    rebuilt = back.build_model()
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    path.write_bytes(b"")  # the weights were copied out of the file's memory map
    assert torch.equal(back.state_dict["net.0.weight"], model.state_dict()["net.0.weight"])


def _safetensors_header(header, body=b""):
    import json

    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def _truncated(tmp_path):
    model, _ = _ckpt()
    good = _safetensors(tmp_path, model.state_dict(), "good.safetensors").read_bytes()
    return good[: len(good) - 7]


BAD_SAFETENSORS = [
    # id, content (a callable of tmp_path; None: valid weights of mlp hidden=[4]), model (and hidden) named, match
    ("truncated", _truncated, "mlp", r"not a valid safetensors file, or truncated \(incomplete metadata"),
    ("garbage", lambda tmp: os.urandom(200), "mlp", "not a valid safetensors file, or truncated"),
    ("empty", lambda tmp: b"", "mlp", r"not a valid safetensors file, or truncated \(header too small\)"),
    ("torch-save", lambda tmp: (torch.save({"w": torch.zeros(2)}, tmp / "t.pt"), (tmp / "t.pt").read_bytes())[1], "mlp",
     "not a valid safetensors file.*written by torch.save must end in .pt"),
    ("bad-dtype", lambda tmp: _safetensors_header({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
     "mlp", "not a valid safetensors file"),
    ("bad-offsets", lambda tmp: _safetensors_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
                                                   bytes(8)), "mlp", "invalid shape, data type, or offset"),
    ("long-quote", lambda tmp: _safetensors_header({"w": {"dtype": "Q" * 500, "shape": [1], "data_offsets": [0, 1]}},
                                                  bytes(1)), "mlp", r"not a valid safetensors file, or truncated \(.{70,80}\.\.\.\)"),
    ("no-tensors", lambda tmp: _safetensors_header({"__metadata__": {"a": "b"}}), "mlp", "holds no tensors"),
    ("without-model", lambda tmp: None, None,
     "is a safetensors file of weights with no model description; name its architecture with --model NAME"),
    ("wrong-kwargs", lambda tmp: None, ("mlp", [5]), r"the weights do not match model 'mlp' \(shape mismatch"),
]


@pytest.mark.parametrize("name, content, model, match", BAD_SAFETENSORS, ids=[c[0] for c in BAD_SAFETENSORS])
def test_bad_safetensors_files_are_one_line(tmp_path, name, content, model, match):
    from tests.conftest import assert_one_line

    body = content(tmp_path)
    path = tmp_path / "bad.safetensors"
    if body is None:
        _safetensors(tmp_path, _ckpt()[0].state_dict(), path.name)
    else:
        path.write_bytes(body)
    model, hidden = model if isinstance(model, tuple) else (model, [4])
    with pytest.raises(LandscapeError, match=match) as exc:
        checkpoint.load(path, model=model, model_kwargs={"hidden": hidden})
    text = assert_one_line(exc, *([] if name == "wrong-kwargs" else [path]))  # a mismatch names the model instead
    assert len(text) < 300


def test_a_folder_named_safetensors_is_one_line(tmp_path):
    (tmp_path / "w.safetensors").mkdir()
    with pytest.raises(LandscapeError, match="is a folder, not a checkpoint file"):
        checkpoint.load(tmp_path / "w.safetensors", model="mlp")
