"""What a checkpoint may point at: only files in its run folder, or files the user passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import checkpoint, cifar, data, models
from landscape.cli import main
from landscape.files import sha256

SECRET = "root:x:0:0:the first line of a private file"


def _save(path, data_spec, **fields):
    torch.manual_seed(0)
    model = models.build("mlp", in_features=4, hidden=[3], num_classes=2)
    ckpt = checkpoint.from_model(model, "mlp", {"in_features": 4, "hidden": [3], "num_classes": 2},
                                 data=data_spec, **fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    return checkpoint.save(ckpt, path)


def _data_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    np.savez(path, x=g.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 2)
    return path


def _hessian(args, capsys):
    code = main(["hessian", *map(str, args), "--top-k", "1", "--device", "cpu"])
    return code, capsys.readouterr().err


def test_a_data_file_outside_the_run_folder_is_refused_unless_passed(tmp_path, capsys):
    elsewhere = _data_file(tmp_path / "elsewhere" / "d.npz")
    secret = tmp_path / "elsewhere" / "secret.npz"
    secret.write_text(SECRET)
    for target in (elsewhere, secret):
        ckpt = _save(tmp_path / "run" / "checkpoints" / "g.pt", {"dataset": "file", "path": str(target)})
        code, err = _hessian([ckpt], capsys)
        assert code == 2 and "outside its run folder" in err and "pass the data yourself with --data" in err
        assert SECRET not in err and err.count("\n") == 1
    code, err = _hessian([ckpt, "--data", elsewhere], capsys)  # the user's say-so
    assert code == 0, err


def test_a_data_file_inside_the_run_folder_is_used(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    inside = _data_file(run / "d.npz")
    ckpt = _save(run / "checkpoints" / "g.pt", {"dataset": "file", "path": str(inside)})
    code, err = _hessian([ckpt], capsys)
    assert code == 0, err


def test_a_split_file_outside_the_run_folder_needs_split_file(tmp_path, capsys):
    labels = data.load("digits").y.numpy()
    split = tmp_path / "published" / "split.csv"
    split.parent.mkdir()
    rows = [f"{user},{i},{labels[i]}" for user in range(2) for i in range(user * 30, user * 30 + 30)]
    split.write_text("\n".join(rows) + "\n")
    partition = {"num_clients": 2, "split_file": str(split), "split_sha256": sha256(split), "seed": 0}
    torch.manual_seed(0)
    model = models.build("mlp", hidden=[3])
    ckpt = checkpoint.save(checkpoint.from_model(model, "mlp", {"hidden": [3]}, role="client", client_id=1, data={
        "dataset": "digits", "split": "train", "partition": partition}), tmp_path / "run" / "c.pt")
    code, err = _hessian([ckpt], capsys)  # the whole training set: the split file is not needed
    assert code == 0, err
    code, err = _hessian([ckpt, "--data", "client"], capsys)
    assert code == 2 and "names the split file" in err and "--split-file" in err
    code, err = _hessian([ckpt, "--data", "client", "--split-file", split], capsys)
    assert code == 0, err


def test_the_users_data_dir_wins_over_the_one_a_checkpoint_names(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LANDSCAPE_DATA", raising=False)
    stranger = tmp_path / "stranger"
    ckpt = _save(tmp_path / "run" / "g.pt", {"dataset": "cifar10", "split": "train", "dir": str(stranger)})
    seen = []
    monkeypatch.setattr(cifar, "load_cifar", lambda name, root=None, split="train": seen.append(root) or
                        pytest.fail("stop here"))
    with pytest.raises(BaseException):
        main(["hessian", str(ckpt), "--data-dir", str(tmp_path / "mine")])
    assert seen == [str(tmp_path / "mine")]


def test_a_run_keeps_its_split_file_so_client_data_needs_no_flag(tmp_path, capsys):
    labels = data.load("digits").y.numpy()
    split = tmp_path / "published" / "split.csv"
    split.parent.mkdir()
    split.write_text("".join(f"{u},{i},{labels[i]}\n" for u in range(4) for i in range(u * 25, u * 25 + 25)))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--model-kwargs", '{"hidden": [4]}',
                 "--split-file", str(split), "--clients-per-round", "2", "--rounds", "1", "--batch-size", "25",
                 "--save-clients-every", "1", "--eval-every", "0", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "split.csv").read_bytes() == split.read_bytes()
    client = next((out / "clients").glob("*.pt"))
    assert checkpoint.load(client).data["partition"]["split_file"] == str((out / "split.csv").resolve())
    split.unlink()  # the published file may move; the run's copy is what its checkpoints use
    capsys.readouterr()
    code, err = _hessian([client, "--data", "client"], capsys)
    assert code == 0, err


def test_the_top_level_help_imports_no_command_module_nor_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom landscape.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('landscape.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False []", out
    assert "hessian" in out and "flatness distance" in out  # every command is listed with its summary
