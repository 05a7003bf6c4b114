"""Training never runs code a file names, never loses a run, never gets stuck, and fails in one line.

The run folder is input as much as output: its config.json and state.pt may be damaged, hand
edited or written by someone else, and two commands may point at it at once. Real processes
are started (and ended) by the tests where the property is about processes: the lock, kill -9.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import landscape.train.folder as folder_module
import landscape.train.run as run_module
from landscape import checkpoint, files
from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.train.config import RANGES, TrainConfig, flag
from landscape.run_folder import RunFolder
from landscape.train.run import train

ROOT = Path(__file__).resolve().parents[1]


def digits_config(**kw: object) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", model_kwargs={"hidden": [16]}, alpha=1.0, clients_per_round=3,
                num_rounds=4, lr=0.1, batch_size=16, local_epochs=1, eval_every=0, save_every=1)
    return TrainConfig(**{**base, **kw})


def small_mlp(in_features: int = 64, num_classes: int = 10) -> torch.nn.Module:
    """A model factory outside the registry (``tests.test_train_safety:small_mlp``)."""
    return torch.nn.Sequential(torch.nn.Linear(in_features, 8), torch.nn.ReLU(), torch.nn.Linear(8, num_classes))


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["train", *argv, "--no-progress"])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str) -> str:
    """The error line, after checking it is exactly one user-facing line and exit status 2."""
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "round_time")} for r in records]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path, round: int) -> None:
    """Final global checkpoints equal bit for bit, metrics equal but for the times."""
    ca, cb = (torch.load(RunFolder(Path(o)).global_checkpoint(round), weights_only=True)["state_dict"] for o in (a, b))
    assert ca.keys() == cb.keys() and ca
    for k in ca:
        assert torch.equal(ca[k], cb[k]), k
    assert strip_time(metrics(a)) == strip_time(metrics(b))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete 4-round run (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(digits_config(), out)
    return out


# --- 1. a file's word runs no code and reads no path ---------------------------------------------

EVIL_MODULE = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\ndef make(**kw):\n    raise SystemExit\n"


@pytest.mark.parametrize("model, kwargs", [
    ("os:system", {"command": "touch {marker}"}),
    ("subprocess:run", {"args": ["touch", "{marker}"]}),
    ("builtins:exec", {"source": "open({marker!r}, 'w')"}),
    ("evil_factory_module:make", {}),  # importing it alone would write the marker
])
def test_stored_factory_is_never_imported(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch, model: str, kwargs: dict) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "evil_factory_module.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    train(digits_config(num_rounds=2), out)
    stored = json.loads((out / "config.json").read_text())
    text = json.dumps(kwargs).replace("{marker}", str(marker)).replace("{marker!r}", repr(str(marker)))
    stored["config"].update(model=model, model_kwargs=json.loads(text))
    (out / "config.json").write_text(json.dumps(stored))
    before = snapshot(out)

    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    assert f"names the model factory '{model}'" in err and "--trust-stored-factory" in err
    assert f"--model {model}" in err
    assert not marker.exists() and "evil_factory_module" not in sys.modules
    assert snapshot(out) == before


def test_stored_factory_runs_when_the_user_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = digits_config(model="tests.test_train_safety:small_mlp", model_kwargs={}, num_rounds=3)
    train(cfg, tmp_path / "full")

    def stop(r: int, record: dict) -> None:
        if r == 1:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, on_round=stop)  # Python is the user's say-so: the factory runs
    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    assert "names the model factory 'tests.test_train_safety:small_mlp'" in err
    code, err = cli(["--out", str(out), "--resume", "--trust-stored-factory"], capsys)
    assert code == 0, err
    assert_same_run(out, tmp_path / "full", 3)
    code, err = cli(["--out", str(out), "--resume", "--model", "tests.test_train_safety:small_mlp"], capsys)
    assert code == 0, err  # naming it again is the same say-so (the run is complete: nothing to do)
    err = one_line_error(*cli(["--out", str(tmp_path / "new"), "--trust-stored-factory"], capsys))
    assert "--trust-stored-factory only applies with --resume" in err


def write_digits_npz(path: Path) -> None:
    import numpy as np

    from landscape import data

    ds = data.load("digits")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=ds.x.numpy(), y=ds.y.numpy())


def write_split(path: Path) -> None:
    from landscape import data

    y = data.load("digits").y.tolist()
    rows = [f"{i % 10},{i},{c}" for i, c in enumerate(y[:300])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("user_id,image_id,class\n" + "\n".join(rows) + "\n")


def never_started(out: Path, cfg: TrainConfig) -> None:
    """A folder where set-up was cut short after config.json (what a kill or a full disk leaves)."""
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))


@pytest.mark.parametrize("where", ["outside", "inside"])
@pytest.mark.parametrize("kind", ["dataset", "split_file"])
def test_stored_paths_are_read_only_inside_the_run_or_when_named(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 kind: str, where: str) -> None:
    out = tmp_path / "run"
    base = (out / "mine") if where == "inside" else (tmp_path / "elsewhere")
    if kind == "dataset":
        path = base / "digits.npz"
        write_digits_npz(path)
        cfg = digits_config(dataset=str(path), num_clients=10, samples_per_client=20)
    else:
        path = base / "split.csv"
        write_split(path)
        cfg = digits_config(split_file=str(path))
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    if where == "outside":
        assert f"names the {'data' if kind == 'dataset' else 'split file'} {path}, outside the run folder" in err
        assert f"pass {flag(kind)} {path}" in err
        err = one_line_error(*cli(["--out", str(out), "--resume", flag(kind), str(path)], capsys))
    # Read (inside the folder, or named again): the resume gets as far as the folder's own state.
    assert "first round of the run" in err and "never completed" in err


def test_a_link_out_of_the_run_folder_is_outside(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    write_split(tmp_path / "split.csv")
    out.mkdir()
    (out / "split.csv").symlink_to(tmp_path / "split.csv")
    (out / "config.json").write_text(json.dumps({"config": digits_config(split_file=str(out / "split.csv")).to_dict()}))
    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    assert "outside the run folder" in err


@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe garbage", b"not json {", b"[]", b'{"run": {}}', b'{"config": [1, 2]}',
    b'{"config": {"lr": "fast"}}', b'{"config": {"bogus_option": 1}}', b'{"config": {"num_rounds": 1.5}}',
    b'{"config": {"alpha": NaN}}', b'{"config": {"model": 5}}', b'{"config": {"dataset": null}}',
    b'{"config": {"swa": "yes"}}', b'{"config": {"model_kwargs": [1]}}', b'{"config": {"gamma": Infinity}}',
    b'{"config": {"seed": 1e400}}', b"",
])
def test_damaged_config_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, finished_run: Path,
                                         content: bytes) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "config.json").write_bytes(content)
    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    assert "config.json" in err


class Reduce:
    """Pickles as a call to os.system (what a weights_only load must refuse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def damaged_states(marker: Path) -> dict[str, object]:
    def edit(**changes: object):
        def apply(p: dict) -> dict:
            for key, value in changes.items():
                target = p
                *parents, last = key.split(".")
                for part in parents:
                    target = target[part]
                if value is KeyError:
                    del target[last]
                else:
                    target[last] = value
            return p
        return apply
    return {
        "garbage": b"\x00garbage\xff" * 10,
        "empty": b"",
        "a list": [1, 2, 3],
        "code": {"format": "landscape-train-state", "payload": Reduce(marker)},
        "no format": edit(format=KeyError),
        "no round": edit(round=KeyError),
        "round as text": edit(round="4"),
        "round past the end": edit(round=99),
        "no server": edit(server=KeyError),
        "unknown server type": edit(**{"server.type": "EvilState"}),
        "missing field": edit(**{"server.fields.weights": KeyError}),
        "extra field": edit(**{"server.fields.extra": 1}),
        "weights of another shape": edit(**{"server.fields.weights": {"net.0.weight": torch.zeros(2)}}),
        "weights not tensors": edit(**{"server.fields.weights": [1, 2]}),
        "param names": edit(**{"server.fields.param_names": ["x"]}),
        "swa count": edit(**{"swa.num_models": 3}),
        "swa type": edit(swa=[1]),
        "elapsed nan": edit(elapsed=float("nan")),
        "other config": edit(**{"config.lr": 0.5}),
    }


@pytest.mark.parametrize("case", list(damaged_states(Path("unused"))))
def test_damaged_state_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, finished_run: Path,
                                   case: str) -> None:
    import io

    marker = tmp_path / "marker"
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage = damaged_states(marker)[case]
    if callable(damage):
        damage = damage(torch.load(out / "state.pt", weights_only=True))
    if isinstance(damage, bytes):
        (out / "state.pt").write_bytes(damage)
    else:
        buffer = io.BytesIO()
        torch.save(damage, buffer)
        (out / "state.pt").write_bytes(buffer.getvalue())
    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    assert "state.pt" in err and "cannot be resumed" in err
    assert not marker.exists()


# --- 2. one writer at a time -------------------------------------------------------------------------

def landscape(argv: list[str], **kw: object) -> subprocess.Popen:
    """``landscape train ARGV`` in a new process (one thread, as the in-process runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LANDSCAPE_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "landscape", "train", *argv, "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


DEMO = ["--preset", "digits-demo", "--save-every", "1", "--eval-every", "5"]


def wait_for_round(out: Path, proc: subprocess.Popen, round: int, timeout: float = 120) -> int:
    """Poll metrics.jsonl until it logs ``round``; returns the last logged round."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            lines = []
        done = [json.loads(line)["round"] for line in lines[:-1]]  # the last line may be half written
        if done and done[-1] >= round:
            return done[-1]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before round {round}: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError(f"no round {round} within {timeout} s")


def end(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def test_two_writers_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = landscape([*DEMO, "--rounds", "12", "--out", str(out)])
    others: list[subprocess.Popen] = []
    try:
        wait_for_round(out, first, 2)
        first.send_signal(signal.SIGSTOP)  # mid-run, holding the lock; its files stay still
        before = snapshot(out)
        others = [landscape([*argv, "--out", str(out)]) for argv in ([*DEMO, "--rounds", "12", "--lr", "0.5"],
                                                                     ["--resume"])]
        for second in others:
            _, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert err.count("\n") == 1 and err.startswith("error: another landscape process"), err
            assert f"(pid {first.pid})" in err and str(out) in err
        assert snapshot(out) == before  # the others touched nothing
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
        end(first, *others)
    assert [m["round"] for m in metrics(out)] == list(range(1, 13))
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == 0.1  # not the second's 0.5


def test_two_writers_started_together(tmp_path: Path) -> None:
    out = tmp_path / "run"
    procs = [landscape([*DEMO, "--rounds", "8", "--out", str(out), "--seed", str(s)]) for s in (1, 2)]
    try:
        results = [(p.communicate(timeout=120)[1], p.returncode)[::-1] for p in procs]
    finally:
        end(*procs)
    assert sorted(code for code, _ in results) == [0, 2], results
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][1]
    assert loser_err.count("\n") == 1 and loser_err.startswith("error: ")
    assert "another landscape process" in loser_err or "already holds a run" in loser_err
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == winner + 1
    assert [m["round"] for m in metrics(out)] == list(range(1, 9))


# --- 3. no stuck folders; a config that does not fit writes nothing --------------------------------

def test_setup_cut_short_starts_again(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    cfg = digits_config()
    never_started(out, cfg)
    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    assert "never completed" in err and "start it again without --resume" in err
    train(cfg.replace(lr=0.2), out)  # no --resume, another config: the cut set-up is replaced
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == 0.2
    assert [m["round"] for m in metrics(out)] == [1, 2, 3, 4]


class Stop(Exception):
    pass


def test_first_round_cut_short_starts_again(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = digits_config(save_every=0, save_clients_every=1)

    def crash(r: int, record: dict) -> None:
        raise Stop

    out = tmp_path / "run"
    with pytest.raises(Stop):  # round 1 ran, but state.pt is still the round-0 one
        train(cfg, out, on_round=crash)
    assert torch.load(out / "state.pt", weights_only=True)["round"] == 0
    (out / "metrics.jsonl").write_text('{"round": 1, "train_lo')  # cut before round 1 was logged
    stale = sorted((out / "clients").iterdir())
    assert stale
    (out / ".state.pt.abc123.tmp").write_bytes(b"half")  # a write a kill cut short
    err = one_line_error(*cli(["--out", str(out), "--resume"], capsys))
    assert "never completed" in err

    train(cfg.replace(seed=5), out)
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 5
    assert [m["round"] for m in metrics(out)] == [1, 2, 3, 4]
    cohorts = {c for m in metrics(out) for c in m["clients"]}
    assert {p.name for p in (out / "clients").iterdir()} == {
        f"r{m['round']:06d}_c{c:04d}.pt" for m in metrics(out) for c in m["clients"]}
    assert cohorts and not (out / ".state.pt.abc123.tmp").exists()


def test_unsaved_rounds_are_resumed_not_overwritten(tmp_path: Path) -> None:
    """Rounds logged after the round-0 state: not a cut set-up, so no silent restart; resume works."""
    cfg = digits_config(save_every=0)
    train(cfg, tmp_path / "full")

    def crash(r: int, record: dict) -> None:
        if r == 2:
            raise Stop

    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(cfg, out, on_round=crash)
    with pytest.raises(LandscapeError, match="already holds a run; pass --resume"):
        train(cfg.replace(lr=0.3), out)
    train(cfg, out, resume=True)
    assert_same_run(out, tmp_path / "full", 4)


@pytest.mark.parametrize("argv, match", [
    (["--num-clients", "30"], "exceeds the 1437 training samples"),
    (["--clients-per-round", "21"], "--clients-per-round 21 is more than the 20 clients"),
    (["--model-kwargs", '{"hidden": [-4]}'], "model 'mlp' with kwargs .* raised RuntimeError"),
    (["--model-kwargs", '{"bogus": 1}'], "model 'mlp' with kwargs .*bogus.* raised TypeError"),
    (["--model-kwargs", '{"in_features": 10}'],
     "model 'mlp' on one input of shape 64 from the data set digits raised RuntimeError"),
    (["--model-kwargs", '{"num_classes": 3}'], r"maps one input of shape 64 to \(1, 3\), not to \(1, 10\)"),
    (["--model", "cnn", "--model-kwargs", "{}"], "model 'cnn' on one input of shape 64 from the data set digits raised"),
    (["--model", "tests.test_train_safety:small_mlp", "--model-kwargs", '{"in_features": 5}'],
     "model 'tests.test_train_safety:small_mlp' on one input of shape 64"),
    (["--model", "tests.test_train_safety:nothing_here"], "has no callable 'nothing_here'"),
])
@pytest.mark.parametrize("folder", ["new", "existing run"])
def test_config_that_does_not_fit_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 finished_run: Path, argv: list[str], match: str, folder: str) -> None:
    import re

    out = tmp_path / "run"
    if folder == "existing run":  # refused for the config, before the folder is even looked at
        shutil.copytree(finished_run, out)
    before = snapshot(out) if out.exists() else None
    err = one_line_error(*cli(["--preset", "digits-demo", "--rounds", "3", *argv, "--out", str(out)], capsys))
    assert re.search(match, err), err
    if before is None:
        assert not out.exists()
    else:
        assert snapshot(out) == before


# --- 4. every failure is one line -------------------------------------------------------------------

def test_cut_metrics_line_on_resume(tmp_path: Path) -> None:
    cfg = digits_config(num_rounds=6, save_every=2, eval_every=3)
    train(cfg, tmp_path / "full")

    def stop(r: int, record: dict) -> None:
        if r == 4:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, on_round=stop)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # a hand edit in the middle, a round past the state, and a write cut by a kill
    damaged = [lines[0], "# my note", lines[1], "[1, 2]", lines[2], lines[3],
               json.dumps({"round": 5, "train_loss": 1.0}), '{"round": 6, "train_l']
    (out / "metrics.jsonl").write_text("\n".join(damaged))
    train(cfg, out, resume=True)
    assert_same_run(out, tmp_path / "full", 6)


@pytest.mark.parametrize("numeric", sorted(RANGES))
def test_every_numeric_option_is_checked_where_typed_and_in_files(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  numeric: str) -> None:
    rng = RANGES[numeric]
    bad = ["nan", "inf", "-inf", str(rng.low - 1)] + ([str(rng.high)] if rng.high_open else [])
    bad += [str(rng.high + 1)] if rng.high is not None and not rng.high_open else []
    bad += ["1.5"] if rng.integer else []
    for text in bad:
        err = one_line_error(*cli(["--dataset", "digits", flag(numeric), text, "--out", str(tmp_path / "r")], capsys))
        assert f"argument {flag(numeric)}:" in err, (text, err)
        value = float(text)
        with pytest.raises(LandscapeError, match=f"^{flag(numeric)} must be "):
            TrainConfig(**{numeric: value})
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, match", [
    (["--alpha", "nan"], "argument --alpha: must be a finite number >= 0, got nan"),
    (["--swa-start", "nan"], "argument --swa-start: must be a finite number >= 0 and <= 1, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number >= 0, got inf"),
    (["--rho", "inf"], "argument --rho: must be a finite number >= 0, got inf"),
    (["--gamma", "1"], "argument --gamma: must be a finite number >= 0 and < 1, got 1"),
    (["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
])
def test_named_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], match: str) -> None:
    err = one_line_error(*cli(["--dataset", "digits", *argv, "--out", str(tmp_path / "r")], capsys))
    assert match in err


def test_messages_name_real_flags() -> None:
    with pytest.raises(LandscapeError, match="^--rounds must be an integer >= 1, got 0"):
        TrainConfig(num_rounds=0)
    from landscape.cli import build_parser

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "train" in a.choices)
    flags = {s for a in sub.choices["train"]._actions for s in a.option_strings}
    for name in TrainConfig.__dataclass_fields__:
        assert flag(name) in flags, name


def patch_torch_writes(monkeypatch: pytest.MonkeyPatch, fake: object) -> None:
    """Route every torch file a run writes (checkpoints, state.pt) through ``fake``."""
    monkeypatch.setattr(checkpoint, "save_torch", fake)
    monkeypatch.setattr(folder_module, "save_torch", fake)


def test_write_failure_is_one_line_and_resumable(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--preset", "digits-demo", "--rounds", "6", "--save-every", "2", "--eval-every", "3"]
    assert cli([*argv, "--out", str(tmp_path / "full")], capsys)[0] == 0
    out = tmp_path / "run"
    real, calls = files.save_torch, []

    def full_disk(path: Path, payload: object) -> Path:
        calls.append(path)
        if len(calls) == 4:  # after set-up (global r0, state) and round 2 (global r2), state.pt of round 2
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, payload)

    patch_torch_writes(monkeypatch, full_disk)
    err = one_line_error(*cli([*argv, "--out", str(out)], capsys))
    assert "no space left on the device" in err and "state.pt" in err
    patch_torch_writes(monkeypatch, real)
    assert torch.load(out / "state.pt", weights_only=True)["round"] == 0
    assert cli(["--out", str(out), "--resume"], capsys)[0] == 0
    assert_same_run(out, tmp_path / "full", 6)


def test_failed_setup_removes_the_folder_it_created(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(path: Path, payload: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    patch_torch_writes(monkeypatch, full_disk)
    out = tmp_path / "new" / "run"
    err = one_line_error(*cli(["--preset", "digits-demo", "--rounds", "2", "--out", str(out)], capsys))
    assert "no space left on the device" in err and "global_r000000.pt" in err
    assert list(tmp_path.iterdir()) == []  # the run folder and the parent made for it are gone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    err = one_line_error(*cli(["--preset", "digits-demo", "--rounds", "2", "--out", str(tmp_path / "mine")], capsys))
    assert "no space left on the device" in err
    kept = snapshot(tmp_path / "mine")
    assert kept.pop(".lock") and kept == {"notes.txt": b"keep"}  # a folder that was there keeps what it had


def test_metrics_write_failure_is_one_line_and_resumable(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--preset", "digits-demo", "--rounds", "6", "--save-every", "2", "--eval-every", "3"]
    assert cli([*argv, "--out", str(tmp_path / "full")], capsys)[0] == 0
    out = tmp_path / "run"

    class FullDisk:
        """A log whose fourth line is cut in the middle by a full disk."""

        def __init__(self, f) -> None:  # noqa: ANN001
            self.f, self.lines = f, 0

        def write(self, text: str) -> int:
            self.lines += 1
            if self.lines == 4:
                self.f.write(text[: len(text) // 2])
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device", str(out / "metrics.jsonl"))
            return self.f.write(text)

        def __getattr__(self, name: str) -> object:
            return getattr(self.f, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    monkeypatch.setattr(run_module, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    err = one_line_error(*cli([*argv, "--out", str(out)], capsys))
    assert "no space left on the device" in err and "metrics.jsonl" in err
    monkeypatch.undo()
    assert cli(["--out", str(out), "--resume"], capsys)[0] == 0
    assert_same_run(out, tmp_path / "full", 6)


def test_file_size_limit_mid_run_is_one_line_and_resumable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A real failing write (RLIMIT_FSIZE): state.pt doubles once SWA holds a model, past the limit."""
    out = tmp_path / "run"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

    limited = landscape([*DEMO, "--rounds", "6", "--swa", "--swa-start", "0.5", "--swa-cycle", "1", "--out", str(out)],
                        preexec_fn=limit)
    try:
        _, err = limited.communicate(timeout=120)
    finally:
        end(limited)
    assert limited.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("error: cannot") and "internal error" not in err, err
    assert "state.pt" in err
    assert 0 < torch.load(out / "state.pt", weights_only=True)["round"] < 6
    code, err = cli(["--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert [m["round"] for m in metrics(out)] == [1, 2, 3, 4, 5, 6]


# --- 5. kill -9 and resume: bit for bit -------------------------------------------------------------

def kill_at(out: Path, argv: list[str], round: int) -> int:
    """Start ``landscape train ARGV``, SIGKILL it once it logged ``round``; the last logged round."""
    proc = landscape(argv)
    try:
        seen = wait_for_round(out, proc, round)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        end(proc)
    assert proc.returncode == -signal.SIGKILL
    return seen


def resume_to_the_end(out: Path) -> None:
    proc = landscape(["--out", str(out), "--resume"])
    try:
        assert proc.wait(timeout=120) == 0, proc.communicate()
    finally:
        end(proc)


def test_kill_9_and_resume_is_bit_identical(tmp_path: Path) -> None:
    argv = [*DEMO, "--rounds", "30"]
    reference = landscape([*argv, "--out", str(tmp_path / "full")])
    try:
        kill_at(tmp_path / "run", [*argv, "--out", str(tmp_path / "run")], 10)
        assert reference.wait(timeout=120) == 0
    finally:
        end(reference)
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["round"] < 30
    resume_to_the_end(tmp_path / "run")
    assert_same_run(tmp_path / "run", tmp_path / "full", 30)
    assert not [p for p in (tmp_path / "run").rglob(".*.tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_random_rounds(tmp_path: Path, seed: int) -> None:
    rounds, rng = 40, random.Random(seed)
    argv = [*DEMO, "--rounds", str(rounds), "--save-clients-every", "3"]
    reference = landscape([*argv, "--out", str(tmp_path / "full")])
    out = tmp_path / "run"
    try:
        done = 0
        for i in range(3):  # a resumed run may be killed before it has even truncated the log
            target = rng.randint(done + 1, done + 9)
            done = kill_at(out, [*argv, "--out", str(out)] if i == 0 else ["--out", str(out), "--resume"], target)
        assert reference.wait(timeout=300) == 0
    finally:
        end(reference)
    resume_to_the_end(out)
    assert_same_run(out, tmp_path / "full", rounds)
    full_clients = snapshot(tmp_path / "full" / "clients")
    assert sorted(snapshot(out / "clients")) == sorted(full_clients)
