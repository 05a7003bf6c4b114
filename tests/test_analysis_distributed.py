"""Analyses under torchrun (two CPU processes, gloo on 127.0.0.1) against the single-process answer.

- the library under a process group: the objective's count, loss, metrics and gradient,
  every curvature product, Lanczos eigenvalues, trace, density and the flatness metrics on
  two ranks equal one process's (float64, 1e-10 relative), with uneven shards, a batch of
  one sample and batches that cannot be split (dealt out whole);
- ``torchrun -m landscape hessian`` / ``surface`` on two ranks give one process's eigenvalues
  and surface values;
- a rank killed (or failing) mid-run: non-zero exit, one ``error:`` line naming the rank,
  no result file (a surface keeps exactly the points gathered before, resumable);
- a surface interrupted with one process and continued with two, or killed with two and
  continued with one, equals the uninterrupted single-process surface.

Every process is started and ended here (timeouts; the workers are killed if torchrun hangs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from landscape import checkpoint, distributed, flatness, hessian, models, surface
from landscape.cli import main
from landscape.objective import Objective
from landscape.operators import CURVATURES, make_operator
from tests import faulty_loss
from tests.conftest import tiny_cnn

REPO = Path(__file__).resolve().parent.parent
DT = torch.float64
RTOL = 1e-10
#: Seconds a two-process run may take before it counts as hung (a loaded 2-core machine).
TIMEOUT = 150
FAULTY = "tests.faulty_loss:cross_entropy"


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def torchrun(args: list[object], cwd: Path, fault: str | None = None, nproc: int = 2) -> tuple[int, str, str]:
    """``torchrun --nproc-per-node 2 -m landscape ARGS`` on 127.0.0.1: (exit status, stdout, stderr)."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("LANDSCAPE_FAULT", None)
    if fault:
        env["LANDSCAPE_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), "-m", "landscape", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(_descendants(proc.pid) + [proc.pid])
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT} s: {' '.join(cmd)}\n{err[-3000:]}")
    finally:
        _kill(_descendants(proc.pid))  # nothing may outlive the test
    return proc.returncode, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def cli(args: list[object], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """One process, in this one."""
    faulty_loss.reset()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = models.build("mlp", hidden=[6])
    c = checkpoint.from_model(model, "mlp", {"hidden": [6]}, role="global", round=5,
                              data={"dataset": "digits", "split": "train"})
    return checkpoint.save(c, tmp_path / "global.pt")


# ---------------------------------------------------------------------------------------------
# the library under a process group (torch.multiprocessing, two ranks)
# ---------------------------------------------------------------------------------------------
def _regression() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(31, 3, generator=g, dtype=DT), torch.randn(31, 2, generator=g, dtype=DT)
    return model, [(x[:11], y[:11]), (x[11:30], y[11:30]), (x[30:], y[30:])]  # 11, 19 and 1 sample


def _images(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    y[::5] = -100  # ignored labels: the count is of the targets that count
    return [(x[i:i + 7], y[i:i + 7]) for i in range(0, n, 7)]


def library_results() -> dict[str, object]:
    """Everything the library computes that must not depend on the number of ranks."""
    out: dict[str, object] = {}
    model, batches = _regression()
    obj = Objective(model, batches, DT, loss="mse")
    v = torch.randn(obj.num_params, generator=torch.Generator().manual_seed(2), dtype=DT)
    out.update(num_samples=obj.num_samples, local_samples=obj.local_samples, loss=obj.loss(), gradient=obj.gradient())
    out.update({c: make_operator(obj, c) @ v for c in CURVATURES})
    out["hessian-forward"] = make_operator(obj, "hessian", mode="forward") @ v
    cnn, images = tiny_cnn(), _images(40, 3)
    out["metrics"] = Objective(cnn, images, DT).metrics()
    report = hessian.analyze(cnn, images, top_k=3, tol=1e-10, trace=True, trace_budget=12, density=True,
                             density_steps=8, dtype=DT)
    out.update(eigenvalues=report.eigen.eigenvalues, trace=report.trace.trace, nodes=report.density.nodes,
               num_matvecs=report.num_matvecs)
    # batches that cannot be split into rows (a string among the tensors): dealt out whole
    opaque = [{"x": x, "y": y, "tag": str(i)} for i, (x, y) in enumerate(images)]
    odd = Objective(cnn, opaque, DT, forward=lambda m, b: (m(b["x"]), b["y"]))
    out.update(opaque_loss=odd.loss(), opaque_product=make_operator(odd) @ torch.ones(odd.num_params, dtype=DT))
    clients = [tiny_cnn(), tiny_cnn()]
    with torch.no_grad():
        for k, c in enumerate(clients):
            for p in c.parameters():
                p.add_(0.05 * (k + 1))
    out["flatness"] = flatness.flatness_metrics(cnn, clients, [_images(16, 4), _images(23, 5)], num_ascent_steps=2,
                                                tol=1e-10, dtype=DT).to_dict()
    return out


def _library_worker(rank: int, port: int, folder: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=TIMEOUT))
    try:
        assert distributed.current() is not None and distributed.is_main() == (rank == 0)
        torch.save(library_results(), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _numbers(value: object, key: str = "") -> dict[str, torch.Tensor]:
    """Every number in a (nested) result, keyed by its path, as float64 tensors."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _numbers(item, f"{key}.{name}").items()}
    if isinstance(value, (list, tuple)) and not all(isinstance(i, (int, float, bool)) for i in value):
        return {k: v for i, item in enumerate(value) for k, v in _numbers(item, f"{key}[{i}]").items()}
    if isinstance(value, str):  # names (e.g. the flatness distance's metric), not numbers
        return {}
    return {key: torch.as_tensor(value, dtype=DT)}


def test_the_library_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    expected = library_results()
    context = torch.multiprocessing.start_processes(_library_worker, args=(_free_port(), str(tmp_path)), nprocs=2,
                                                    join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "the two ranks hung"
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # each rank held a part of the data (the batch of one sample went to rank 1), together all of it
    assert [r["local_samples"] for r in ranks] == [28, 34] and expected["local_samples"] == 62  # mse: 2 targets a sample
    want = _numbers({k: v for k, v in expected.items() if k != "local_samples"})
    for got in ranks:
        have = _numbers({k: v for k, v in got.items() if k != "local_samples"})
        assert have.keys() == want.keys()
        for key, value in want.items():
            torch.testing.assert_close(have[key], value, rtol=RTOL, atol=1e-14, msg=key)


def test_a_shard_splits_rows_contiguously_and_deals_whole_batches_out() -> None:
    x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    batches = [(x, y), (x[:1], y[:1]), {"x": x[:3], "y": y[:3], "tag": "whole"}, {"x": x[:2], "y": y[:2], "tag": "w"}]
    shards = [distributed.World(r, 2, torch.device("cpu")).shard(batches) for r in range(2)]
    rows = [torch.cat([b[1] for b in s if isinstance(b, tuple)]) for s in shards]
    assert rows[0].tolist() == [0, 1] and rows[1].tolist() == [2, 3, 4, 0]  # 5 rows -> 2 + 3, 1 row -> 0 + 1
    assert [b["tag"] for s in shards for b in s if isinstance(b, dict)] == ["whole", "w"]  # batch 2 -> rank 0, 3 -> 1
    assert [len(s) for s in shards] == [2, 3]


def test_a_world_size_without_torchrun_is_one_line(ckpt: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = cli(["hessian", ckpt, "--num-samples", 50], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: cannot join the torchrun process group")
    assert "MASTER_ADDR" in err and not dist.is_initialized()


# ---------------------------------------------------------------------------------------------
# the command line under torchrun
# ---------------------------------------------------------------------------------------------
def test_hessian_on_two_ranks_equals_one_process(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["hessian", ckpt, "--top-k", 4, "--tol", 1e-8, "--dtype", "float64", "--num-samples", 301,
            "--batch-size", 64, "--trace", "--trace-samples", 20]
    code, _, _ = cli([*args, "--out", tmp_path / "one.json"], capsys)
    assert code == 0
    code, out, err = torchrun([*args, "--out", tmp_path / "two.json"], tmp_path)
    assert code == 0, err[-3000:]
    assert out.count("lambda_max =") == 1 and out.count("wrote") == 1  # rank 0 alone prints
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    np.testing.assert_allclose(two["eigenvalues"], one["eigenvalues"], rtol=RTOL)
    np.testing.assert_allclose([two["trace"], two["loss"]], [one["trace"], one["loss"]], rtol=RTOL)
    assert two["num_matvecs"] == one["num_matvecs"] and two["metadata"]["objective"]["num_samples"] == 301
    assert (one["metadata"]["settings"]["num_processes"], two["metadata"]["settings"]["num_processes"]) == (1, 2)


def test_surface_on_two_ranks_equals_one_process(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # 25 points in chunks of 3: 9 chunks, so the last round has one chunk for two ranks
    args = ["surface", ckpt, "--resolution", 5, "--points-per-batch", 3, "--dtype", "float64", "--num-samples", 200]
    code, _, _ = cli([*args, "--out", tmp_path / "one.npz"], capsys)
    assert code == 0
    code, out, err = torchrun([*args, "--out", tmp_path / "two.npz"], tmp_path)
    assert code == 0, err[-3000:]
    assert out.count("loss at 0") == 1
    one, two = surface.load_result(tmp_path / "one.npz"), surface.load_result(tmp_path / "two.npz")
    assert two["metadata"]["complete"] and sorted(two["values"]) == ["test/accuracy", "test/loss", "train/accuracy",
                                                                        "train/loss"]
    for key, value in one["values"].items():
        np.testing.assert_allclose(two["values"][key], value, rtol=RTOL, err_msg=key)


# ---------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how, said", [("kill", "rank 1 of 2 (pid"), ("raise", "rank 1 of 2 failed: the loss")])
def test_a_rank_that_fails_mid_hessian_is_one_line_and_leaves_no_result(ckpt: Path, tmp_path: Path, how: str,
                                                                       said: str) -> None:
    # the loss's second call on rank 1 is while the operator builds its gradient graph: after the
    # process group and the first all-reduces (the sample count, the loss), before the first product
    code, out, err = torchrun(["hessian", ckpt, "--dtype", "float64", "--num-samples", 120, "--loss", FAULTY,
                               "--out", tmp_path / "h.json", "--save-eigenvectors", tmp_path / "v.pt"], tmp_path,
                              fault=f"1:2:{how}")
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {said}"), err[-3000:]
    assert ("died without a message" in lines[0]) == (how == "kill")
    assert "injected failure at call 2" in lines[0] or how == "kill"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global.pt"]  # no result, no temporary, no lock
    assert "lambda_max" not in out


def test_a_surface_killed_on_two_ranks_continues_on_one(ckpt: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    args = ["surface", ckpt, "--resolution", 4, "--sources", "train", "--dtype", "float64", "--num-samples", 100,
            "--loss", FAULTY]
    code, _, _ = cli([*args, "--out", tmp_path / "ref.npz"], capsys)
    assert code == 0
    # one point per chunk; rank 1 dies on its third point: rounds 1 and 2 (points 0-3) were gathered
    code, _, err = torchrun([*args, "--out", tmp_path / "s.npz"], tmp_path, fault="1:3:kill")
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 of 2 (pid"), err[-3000:]
    kept = surface.load_result(tmp_path / "s.npz")
    assert not kept["metadata"]["complete"] and kept["done"].reshape(-1).tolist() == [True] * 4 + [False] * 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global.pt", "ref.npz", "s.npz"]
    code, out, _ = cli([*args, "--out", tmp_path / "s.npz"], capsys)
    assert code == 0 and "16 of 16 points" in out
    ref, done = surface.load_result(tmp_path / "ref.npz"), surface.load_result(tmp_path / "s.npz")
    assert done["metadata"]["complete"] and done["metadata"]["num_processes"] == 1
    np.testing.assert_allclose(done["values"]["train/loss"], ref["values"]["train/loss"], rtol=RTOL)
    np.testing.assert_allclose(kept["values"]["train/loss"].reshape(-1)[:4], ref["values"]["train/loss"].reshape(-1)[:4],
                               rtol=RTOL)


def test_a_surface_interrupted_on_one_process_continues_on_two(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["surface", ckpt, "--resolution", 4, "--sources", "train", "--dtype", "float64", "--num-samples", 100,
            "--loss", FAULTY]
    code, _, _ = cli([*args, "--out", tmp_path / "ref.npz"], capsys)
    assert code == 0
    monkeypatch.setenv("LANDSCAPE_FAULT", "0:6:interrupt")  # Ctrl-C on the sixth point
    code, _, err = cli([*args, "--out", tmp_path / "s.npz"], capsys)
    assert code == 130 and "interrupted" in err
    monkeypatch.delenv("LANDSCAPE_FAULT")
    assert surface.load_result(tmp_path / "s.npz")["metadata"]["num_done"] == 5
    code, out, err = torchrun([*args, "--out", tmp_path / "s.npz"], tmp_path)
    assert code == 0, err[-3000:]
    assert "16 of 16 points" in out
    ref, done = surface.load_result(tmp_path / "ref.npz"), surface.load_result(tmp_path / "s.npz")
    assert done["metadata"]["complete"] and done["metadata"]["num_processes"] == 2
    np.testing.assert_allclose(done["values"]["train/loss"], ref["values"]["train/loss"], rtol=RTOL)
