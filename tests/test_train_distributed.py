"""Training under torchrun: two CPU ranks (gloo on 127.0.0.1) train the one-process run; a rank that
dies stops the job with one line and leaves a run that resumes to the uninterrupted result.

Each job is ``python -m torch.distributed.run`` started by the test in its own session and killed
with it on a timeout. The command is a launcher written by the test: ``landscape`` itself, plus a
fault on one rank at one round (``LANDSCAPE_TEST_FAULT=rank:round:kill|raise|hang``) and a guard
that fails the job if a rank other than 0 writes into the run folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from landscape.cli import main
from landscape.run_folder import RunFolder
from landscape.train.config import TrainConfig
from landscape.train.distributed import block
from landscape.train.run import train

LAUNCHER = r'''
import builtins, io, os, signal, sys, time
from pathlib import Path

from landscape.cli import main
from landscape.train import distributed

rank = int(os.environ["RANK"])
out = Path(sys.argv[sys.argv.index("--out") + 1]).resolve()


def refuse(path):
    if isinstance(path, (str, bytes, os.PathLike)) and Path(os.fsdecode(path)).resolve().is_relative_to(out):
        raise AssertionError(f"rank {rank} wrote {path}")


if rank != 0:  # any write into the run folder fails the job
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded(fn, arg=0):
        def call(*args, **kwargs):
            refuse(args[arg])
            return fn(*args, **kwargs)
        return call

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    os.replace, os.rename = guarded(os.replace, 1), guarded(os.rename, 1)
    os.mkdir, os.unlink, os.remove = guarded(os.mkdir), guarded(os.unlink), guarded(os.remove)

fault = os.environ.get("LANDSCAPE_TEST_FAULT")
if fault:
    who, at, how = fault.split(":")
    real_round = distributed.DistributedEngine.run_round

    def run_round(self, algo, state, round, *args, **kwargs):
        if rank == int(who) and round + 1 == int(at):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "raise":
                raise RuntimeError("a fault injected by the test")
            if how == "hang":
                time.sleep(3600)
        return real_round(self, algo, state, round, *args, **kwargs)

    distributed.DistributedEngine.run_round = run_round
raise SystemExit(main(sys.argv[1:]))
'''

ROUNDS = 4
CONFIG = dict(dataset="digits", model="mlp", model_kwargs={"hidden": [16]}, alpha=1.0, clients_per_round=5,
              num_rounds=ROUNDS, lr=0.1, batch_size=16, local_epochs=1, dtype="float64", algorithm="fedavgm",
              eval_every=2, save_every=0)
#: The same config as flags (the engine is auto: batched, for the MLP on the CPU).
FLAGS = ["--dataset", "digits", "--model", "mlp", "--model-kwargs", '{"hidden": [16]}', "--alpha", "1.0",
         "--clients-per-round", "5", "--rounds", str(ROUNDS), "--lr", "0.1", "--batch-size", "16",
         "--local-epochs", "1", "--dtype", "float64", "--algorithm", "fedavgm", "--eval-every", "2",
         "--save-every", "0", "--device", "cpu", "--no-progress"]
#: float64 weights of two ranks vs one process: the sums differ in their order of addition only.
ATOL = 1e-13


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp: Path, nproc: int, out: Path, *flags: str, fault: str = "", timeout: float = 120
             ) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc launcher train FLAGS --out out``; the whole job is killed on a timeout."""
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), str(launcher), "train", *FLAGS, *flags, "--out", str(out)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "LANDSCAPE_TEST_FAULT": fault}
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(RunFolder(out).state_file, weights_only=True)["server"]["fields"]["weights"]


def assert_same_run(out: Path, ref: Path) -> None:
    """Same server state (within ATOL) and the same metrics as the reference run."""
    for name in ("weights", "velocity"):
        a = torch.load(RunFolder(out).state_file, weights_only=True)["server"]["fields"][name]
        b = torch.load(RunFolder(ref).state_file, weights_only=True)["server"]["fields"][name]
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=ATOL, msg=f"{name} {k}")
    got, want = RunFolder(out).metrics(), RunFolder(ref).metrics()
    assert [m["round"] for m in got] == [m["round"] for m in want] == list(range(1, ROUNDS + 1))
    for g, w in zip(got, want):
        assert g["clients"] == w["clients"]
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-12, abs=0)
        assert g.get("test_acc") == w.get("test_acc")


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]


def assert_stopped_after(out: Path, rounds: int) -> None:
    """The run folder holds exactly the completed rounds: state.pt, metrics, checkpoints, no partial writes."""
    assert torch.load(RunFolder(out).state_file, weights_only=True)["round"] == rounds
    assert [m["round"] for m in RunFolder(out).metrics()] == list(range(1, rounds + 1))
    assert RunFolder(out).global_rounds() == [0]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run in one process."""
    out = tmp_path_factory.mktemp("one") / "run"
    train(TrainConfig(**CONFIG), out, device="cpu")
    return out


def test_block_splits_the_cohort_in_order() -> None:
    cohort = [2, 3, 5, 7, 11, 13, 17]
    for size in (1, 2, 3, 8):
        blocks = [block(cohort, r, size) for r in range(size)]
        assert [k for b in blocks for k in b] == cohort
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_two_ranks_train_the_one_process_run(tmp_path: Path, reference: Path) -> None:
    """Same weights, metrics, client checkpoints and tracked curvature; rank 1 writes nothing (the
    launcher's guard) and rank 0 prints the summary once."""
    ref = tmp_path / "ref"
    extra = ["--save-clients-every", "2", "--track-every", "2", "--track-samples", "64"]
    train(TrainConfig(**CONFIG, save_clients_every=2, track_every=2, track_samples=64), ref, device="cpu")
    out = tmp_path / "two"
    proc = torchrun(tmp_path, 2, out, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"trained fedavgm for {ROUNDS} rounds") == 1
    assert_same_run(out, ref)
    for r in (2, 4):
        clients = RunFolder(ref).client_checkpoints(r)
        assert [p.name for p in RunFolder(out).client_checkpoints(r)] == [p.name for p in clients]
        for path in clients:
            a = torch.load(out / "clients" / path.name, weights_only=True)["state_dict"]
            b = torch.load(path, weights_only=True)["state_dict"]
            for k in b:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=ATOL)
    for g, w in zip(RunFolder(out).metrics(), RunFolder(ref).metrics()):
        if "curvature" in w:
            assert g["curvature"]["global_lambda_max"] == pytest.approx(w["curvature"]["global_lambda_max"], rel=1e-9)
            assert g["curvature"]["client_lambda_max"] == pytest.approx(w["curvature"]["client_lambda_max"], rel=1e-9)


def test_a_killed_rank_stops_the_job_and_the_run_resumes_in_one_process(tmp_path: Path, reference: Path) -> None:
    """Rank 1 killed in round 3: one line from rank 0 naming it, rounds 1-2 kept (state.pt saved
    by rank 0 on the way out, although --save-every 0), and --resume in one process finishes the
    uninterrupted run."""
    out = tmp_path / "run"
    proc = torchrun(tmp_path, 2, out, fault="1:3:kill")
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: rank 0 of 2: rank 1 (last at the exchange of round 2) stopped before the "
                               "exchange of round 3 without reporting an error"), lines
    assert lines[0].endswith("continue the run with the same command plus --resume")
    assert_stopped_after(out, 2)
    assert main(["train", *FLAGS, "--out", str(out), "--resume"]) == 0
    assert_same_run(out, reference)


def test_a_rank_that_raises_is_named_and_two_ranks_resume(tmp_path: Path, reference: Path) -> None:
    """Rank 1 raises in round 3: its own line, nothing half written; --resume on two ranks matches."""
    out = tmp_path / "run"
    proc = torchrun(tmp_path, 2, out, fault="1:3:raise")
    assert proc.returncode != 0
    assert error_lines(proc) == ["error: rank 1 of 2: internal error, RuntimeError: a fault injected by the test "
                                 "(landscape train): please report it with the command line; LANDSCAPE_DEBUG=1 "
                                 "shows the traceback"], proc.stderr[-3000:]
    assert_stopped_after(out, 2)
    proc = torchrun(tmp_path, 2, out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(out, reference)


@pytest.mark.slow
def test_a_killed_rank_zero_is_named_by_rank_one(tmp_path: Path, reference: Path) -> None:
    """Rank 0, the writer, killed in round 3: rank 1 names it; the folder is as the last save left it
    (state.pt of round 0, rounds 1-2 logged) and --resume repeats rounds 1-2 to the uninterrupted run."""
    out = tmp_path / "run"
    proc = torchrun(tmp_path, 2, out, fault="0:3:kill")
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(
        "error: rank 1 of 2: rank 0 (last at the exchange of round 2) stopped before the exchange of round 3"), lines
    assert torch.load(RunFolder(out).state_file, weights_only=True)["round"] == 0
    assert [m["round"] for m in RunFolder(out).metrics()] == [1, 2]
    assert main(["train", *FLAGS, "--out", str(out), "--resume"]) == 0
    assert_same_run(out, reference)


@pytest.mark.slow
def test_a_hung_rank_times_out(tmp_path: Path) -> None:
    """Rank 1 hangs in round 2: rank 0 names it after --collective-timeout and stops the job."""
    out = tmp_path / "run"
    proc = torchrun(tmp_path, 2, out, "--collective-timeout", "5", fault="1:2:hang")
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(
        "error: rank 0 of 2: rank 1 (last at the exchange of round 1) did not reach the exchange of round 2 within "
        "--collective-timeout 5 s"), proc.stderr[-3000:]
    assert_stopped_after(out, 1)


@pytest.mark.slow
def test_three_ranks_with_a_rank_without_clients(tmp_path: Path, reference: Path) -> None:
    """Five clients per round over three ranks (2, 2, 1), and over six ranks one has none: the same run."""
    for nproc in (3, 6):
        out = tmp_path / f"n{nproc}"
        proc = torchrun(tmp_path, nproc, out, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert_same_run(out, reference)


def test_rank_zero_alone_reports_what_every_rank_hits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """A bad flag or an exception no rank claimed: one line from rank 0, exit 2 and silence elsewhere;
    an exception marked by landscape.train.distributed is printed by its reporter only."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, lines in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "--rounds", "0", "--out", str(tmp_path / "run")]) == 2
        assert len(capsys.readouterr().err.splitlines()) == lines
    monkeypatch.setenv("WORLD_SIZE", "abc")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--dataset", "synthetic", "--rounds", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the environment variable WORLD_SIZE='abc' is not a number") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_one_process_joins_no_process_group(tmp_path: Path) -> None:
    import torch.distributed as dist

    cfg = TrainConfig(**{**CONFIG, "num_rounds": 1, "eval_every": 0})
    result = train(cfg, tmp_path / "run", device="cpu")
    assert result.writer and not dist.is_initialized()
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["round"] == 1
