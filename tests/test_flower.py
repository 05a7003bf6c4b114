"""Training through Flower equals the in-process engine bit for bit; a failed client stops the run with
one line, after the last completed round is saved, and the run resumes to the uninterrupted result.

The fast tests run Flower's messages and the real :data:`~landscape.train.flower.client_app` of every
node in this process, behind :class:`LoopbackGrid` (Flower's Grid without a runtime). The slow ones run
Flower's simulation runtime (Ray actors), the command line included; run them with

    python -m pytest -q -m slow tests/test_flower.py
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from landscape.cli import main  # noqa: E402
from landscape.run_folder import RunFolder  # noqa: E402
from landscape.train import flower  # noqa: E402
from landscape.train.config import TrainConfig  # noqa: E402
from landscape.train.engine import SequentialEngine  # noqa: E402
from landscape.train.run import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(dataset="digits", model="mlp", model_kwargs={"hidden": [16]}, num_clients=6, samples_per_client=40,
              alpha=1.0, clients_per_round=3, num_rounds=2, lr=0.1, batch_size=16, local_epochs=1, dtype="float64",
              eval_every=1, save_every=1)
#: FedNSAM's momentum travels with the broadcast; the last setting adds SWA (its client lr at
#: round 2 and the averaged model) and saves every client model.
SETTINGS = {"fedavg": {"algorithm": "fedavg"}, "fedsam": {"algorithm": "fedsam"}, "fednsam": {"algorithm": "fednsam"},
            "fedavgm-swa": {"algorithm": "fedavgm", "swa": True, "swa_start": 0.5, "swa_cycle": 1,
                            "save_clients_every": 1}}
#: The metrics that do not depend on the wall clock.
SAME = ("round", "clients", "lr", "train_loss", "test_loss", "test_acc", "swa_test_loss", "swa_test_acc")


class LoopbackGrid:
    """Flower's Grid in this process: each message goes to the ClientApp of its node, its reply comes back.

    Args:
        num_nodes: the connected nodes.
        lost: nodes that never reply.
    """

    def __init__(self, num_nodes: int, lost: Iterable[int] = ()) -> None:
        self.nodes = [1000 + 7 * i for i in range(num_nodes)]
        self.lost = set(lost)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterator[Message]:
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.lost:
                continue
            context = Context(run_id=1, node_id=node, node_config={"partition-id": self.nodes.index(node),
                                                                   "num-partitions": len(self.nodes)},
                              state=RecordDict(), run_config={})
            yield flower.client_app(msg, context)


@pytest.fixture(autouse=True)
def loopback_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run and node a message is created in, which Flower's runtime sets (none runs here)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def server_fields(out: Path) -> dict:
    return torch.load(RunFolder(out).state_file, weights_only=True)


def assert_same_run(out: Path, ref: Path) -> None:
    """The same state.pt (server state, SWA), metrics and checkpoints, tensor for tensor (torch.equal)."""
    got, want = server_fields(out), server_fields(ref)
    assert got["round"] == want["round"]
    for name, tensors in want["server"]["fields"].items():
        if isinstance(tensors, dict):
            assert all(torch.equal(got["server"]["fields"][name][k], v) for k, v in tensors.items()), name
    assert got["swa"]["num_models"] == want["swa"]["num_models"]
    if want["swa"]["weights"] is not None:
        assert all(torch.equal(got["swa"]["weights"][k], v) for k, v in want["swa"]["weights"].items())
    assert [{k: m.get(k) for k in SAME} for m in RunFolder(out).metrics()] == \
        [{k: m.get(k) for k in SAME} for m in RunFolder(ref).metrics()]
    files = sorted(p.relative_to(ref) for p in ref.rglob("*.pt") if p.name != "state.pt")
    assert sorted(p.relative_to(out) for p in out.rglob("*.pt") if p.name != "state.pt") == files
    for path in files:
        a, b = (torch.load(d / path, weights_only=True) for d in (out, ref))
        assert (a["round"], a["role"], a["client_id"], a["config"]) == (b["round"], b["role"], b["client_id"],
                                                                       b["config"])
        assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items()), path


def assert_stopped_after(out: Path, rounds: int) -> None:
    """Exactly the completed rounds: state.pt, metrics and checkpoints; no partial writes."""
    assert server_fields(out)["round"] == rounds
    assert [m["round"] for m in RunFolder(out).metrics()] == list(range(1, rounds + 1))
    assert RunFolder(out).global_rounds() == list(range(rounds + 1))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("setting", SETTINGS)
def test_two_rounds_through_flower_equal_the_engine(tmp_path: Path, setting: str) -> None:
    cfg = TrainConfig(**CONFIG, **SETTINGS[setting])
    train(cfg, tmp_path / "ref", device="cpu", engine="sequential")
    result = flower.serve(LoopbackGrid(2), cfg, tmp_path / "flower", num_nodes=2, device="cpu", engine="sequential")
    assert result.round == 2
    assert_same_run(tmp_path / "flower", tmp_path / "ref")


def test_a_failed_client_stops_the_run_with_one_line_and_it_resumes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Client k fails in round 2 on its node: one line names it, its node and the round; round 1 stays
    saved; the same call with resume=True finishes the uninterrupted run."""
    cfg = TrainConfig(**CONFIG, algorithm="fednsam")
    ref, out = tmp_path / "ref", tmp_path / "flower"
    train(cfg, ref, device="cpu", engine="sequential")
    failing = RunFolder(ref).metrics()[1]["clients"][1]
    real = SequentialEngine.run_block

    def run_block(self, algo, start, round, clients, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if round == 1 and failing in clients:
            raise RuntimeError("a fault injected by the test")
        return real(self, algo, start, round, clients, *args, **kwargs)

    monkeypatch.setattr(SequentialEngine, "run_block", run_block)
    grid = LoopbackGrid(2)
    node = grid.nodes[failing % 2]
    with pytest.raises(flower.LostClient) as info:
        flower.serve(grid, cfg, out, num_nodes=2, device="cpu", engine="sequential")
    assert str(info.value) == (f"training client {failing} failed: RuntimeError: a fault injected by the test "
                               f"(Flower node {node}, round 2): fix that, then continue the run with the same "
                               f"command plus --resume")
    assert_stopped_after(out, 1)
    monkeypatch.setattr(SequentialEngine, "run_block", real)
    flower.serve(grid, cfg, out, num_nodes=2, device="cpu", engine="sequential", resume=True)
    assert_same_run(out, ref)


def test_a_node_that_does_not_reply_or_connect_is_named(tmp_path: Path) -> None:
    cfg = TrainConfig(**CONFIG, algorithm="fedavg")
    grid = LoopbackGrid(3, lost=[1007])
    with pytest.raises(flower.LostClient, match=r"^no reply for client\(s\) .* within 5 s \(Flower node 1007, "
                                                r"round \d\): restart the node"):
        flower.serve(grid, cfg, tmp_path / "a", num_nodes=3, timeout=5, device="cpu")
    with pytest.raises(flower.LostClient, match="^3 of the 4 Flower nodes connected within 0.5 s"):
        flower.serve(LoopbackGrid(3), cfg, tmp_path / "b", num_nodes=4, timeout=0.5, device="cpu")


def test_a_node_runs_no_model_factory_it_was_sent(tmp_path: Path) -> None:
    """Outside the simulation a node imports a package.module:factory model only if its own config says so."""
    cfg = TrainConfig(**{**CONFIG, "model": "tests.flower_faults:mlp",
                         "model_kwargs": {"hidden": [16], "marker": str(tmp_path / "absent")}})
    with pytest.raises(flower.LostClient, match="asks for the model factory 'tests.flower_faults:mlp'.*"
                                                "trust-model-factory=true"):
        flower.serve(LoopbackGrid(2), cfg, tmp_path / "run", num_nodes=2, device="cpu")


# ---------------------------------------------------------------------------------------------
# Flower's simulation runtime (Ray): slow
# ---------------------------------------------------------------------------------------------

FLAGS = ["--dataset", "digits", "--model-kwargs", '{"hidden": [16]}', "--num-clients", "6",
         "--samples-per-client", "40", "--alpha", "1.0", "--clients-per-round", "3", "--rounds", "2", "--lr", "0.1",
         "--batch-size", "16", "--local-epochs", "1", "--dtype", "float64", "--eval-every", "1", "--save-every", "1",
         "--device", "cpu", "--engine", "sequential", "--no-progress"]


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray actors import tests.flower_faults (they inherit the environment) and use one thread each."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_simulation_equals_the_engine(tmp_path: Path, ray_env: None, capsys: pytest.CaptureFixture) -> None:
    """``landscape train --flower-nodes 2`` with FedNSAM writes the in-process run folder."""
    assert main(["train", *FLAGS, "--model", "mlp", "--algorithm", "fednsam", "--flower-nodes", "2",
                 "--out", str(tmp_path / "flower")]) == 0
    assert "trained fednsam for 2 rounds" in capsys.readouterr().out
    train(TrainConfig(**CONFIG, algorithm="fednsam"), tmp_path / "ref", device="cpu", engine="sequential")
    assert_same_run(tmp_path / "flower", tmp_path / "ref")


@pytest.mark.slow
def test_simulation_failure_is_one_line_and_the_run_resumes(tmp_path: Path, ray_env: None,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A client that raises on its node in round 1: exit status 2 and one ``error:`` line naming it;
    without the fault the same command starts the run again (its first round never completed) and
    writes the uninterrupted run (a resume after a completed round: the fast test above)."""
    marker, out, ref = tmp_path / "fault", tmp_path / "flower", tmp_path / "ref"
    kwargs = f'{{"hidden": [16], "marker": "{marker}"}}'
    flags = [*FLAGS, "--model", "tests.flower_faults:mlp", "--model-kwargs", kwargs, "--algorithm", "fedsam"]
    cfg = TrainConfig(**{**CONFIG, "model": "tests.flower_faults:mlp", "algorithm": "fedsam",
                         "model_kwargs": {"hidden": [16], "marker": str(marker)}})
    train(cfg, ref, device="cpu", engine="sequential")
    marker.touch()
    assert main(["train", *flags, "--flower-nodes", "2", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "RuntimeError: a fault injected by the test (Flower node" in errors[0], errors
    assert "round 1): fix that, then continue the run" in errors[0] and errors[0].startswith("error: training client")
    marker.unlink()  # a first round that never completed starts again without --resume
    assert main(["train", *flags, "--flower-nodes", "2", "--out", str(out)]) == 0
    assert_same_run(out, ref)
