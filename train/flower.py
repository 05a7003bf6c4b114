"""Training through Flower [B20]: a ServerApp runs the training loop, ClientApps train the clients.

The optional extra (``pip install -e '.[flower]'``) brings Flower; nothing else imports this module.
The round is the one of :mod:`landscape.train.distributed`, with Flower's messages in place of
torch.distributed's collectives:

1. the ServerApp runs :func:`landscape.train.run.train` unchanged (config, cohort sampling with
   :func:`~landscape.train.engine.sample_cohort`, learning rates and SWA, evaluation, checkpoints,
   ``metrics.jsonl``, resume); only its runner is :class:`FlowerEngine`;
2. every round the server broadcasts ``algo.broadcast(state)`` (FedNSAM's look-ahead start and the
   direction of its global momentum included) to the nodes that own the sampled clients (client k
   belongs to the node at position ``k mod N`` of the N connected nodes, sorted by id), with the
   round, the client learning rate and the config;
3. a node (:data:`client_app`) builds the run's data, model and engine from that config once
   (:func:`landscape.train.run.set_up`, the server's own set-up), trains each of its clients with
   ``engine.run_block(algo, start, round, [k], lr)`` and replies with each client's
   :class:`~landscape.train.aggregate.ClientSums` ``(n_k w_k, n_k)``;
4. the server adds the clients' sums in cohort order and applies ``algo.server_update`` to
   :func:`~landscape.train.aggregate.mean_delta` of them.

The sums are added one client at a time in cohort order, as the sequential engine adds them, so
a run through Flower with ``--engine sequential`` equals the in-process sequential run bit for bit
(any number of nodes; tested with ``torch.equal``); with the batched engine it equals the
in-process run to float rounding, as the two engines do.

Failures. A node that fails to set up or to train a client replies with an error naming the
client; one that does not reply within the timeout is named by the server. Either stops the run
with one :class:`LostClient` line after the last completed round is saved (as after Ctrl-C), so
the same command plus ``--resume`` continues exactly.

Nothing in a message is executed: a node imports a ``package.module:factory`` model only in
Flower's simulation (where the nodes are the server's own processes) or when its node config says
``trust-model-factory=true``.

[B20] Beutel et al., "Flower: A Friendly Federated Learning Framework", arXiv:2007.14390 (2020).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape.errors import LandscapeError
from landscape.operators import resolve_device
from landscape.train import algorithms
from landscape.train.aggregate import ClientSums, State, mean_delta
from landscape.train.algorithms import Algorithm, ClientStart
from landscape.train.config import TrainConfig, make_config, preset
from landscape.train.distributed import RESUME
from landscape.train.engine import BlockResult, Engine, RoundResult, train_loss
from landscape.train.run import RunResult, set_up, train

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError:
    raise LandscapeError("training through Flower needs Flower, which is not installed",
                         fix="pip install -e '.[flower]'") from None

#: The message type of a round's training task (Flower's ``train`` handler).
TRAIN = "train"
#: Flower's error code for an exception raised in a ClientApp (``flwr.common.constant.ErrorCode``).
CLIENT_APP_RAISED_EXCEPTION = 2
#: Seconds the server waits for the nodes to connect and for a round's replies (``--collective-timeout``).
DEFAULT_TIMEOUT = 1800.0


class LostClient(LandscapeError):
    """A Flower node failed to train its clients of a round, or did not reply in time."""


def _record(tensors: State) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in tensors.items()})


def _tensors(record: ArrayRecord, device: torch.device) -> State:
    return {k: v.to(device) for k, v in record.to_torch_state_dict().items()}


def _data_fingerprint(spec: dict[str, Any]) -> str:
    """The data spec as JSON, without the split file's path (the server's copy moves into the run folder;
    its SHA-256 stays in the spec)."""
    part = {k: v for k, v in (spec.get("partition") or {}).items() if k != "split_file"}
    return json.dumps({**spec, "partition": part}, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# The server side
# ---------------------------------------------------------------------------------------------

class FlowerEngine:
    """A runner whose rounds are trained by Flower nodes (see the module docstring); the same ``run_round``.

    Args:
        engine: the server's own engine (its name, parameter and buffer names; the training loop
            evaluates and averages SWA with the server's copy of the data).
        grid: Flower's grid of the run.
        cfg: the resolved config (what the nodes build their data and engine from).
        spec: the data spec of the run (the nodes check that they built the same data).
        num_nodes: the nodes to wait for before the first round.
        timeout: seconds to wait for the nodes, and for a round's replies.
        data_dir, device: the nodes' defaults (a node's own ``data-dir`` / ``device`` config wins).
        simulation: the nodes are the server's own processes (Flower's simulation).
    """

    failures = (LostClient,)

    def __init__(self, engine: Engine, grid: Grid, cfg: TrainConfig, spec: dict[str, Any], *, num_nodes: int,
                 timeout: float = DEFAULT_TIMEOUT, data_dir: str | None = None, device: str | None = None,
                 simulation: bool = False) -> None:
        self.engine, self.grid, self.num_nodes, self.timeout = engine, grid, num_nodes, timeout
        self.name, self.param_names = f"flower/{engine.name}", engine.param_names
        self.task = {"config": json.dumps(cfg.to_dict()), "data": _data_fingerprint(spec), "engine": engine.name,
                     "data-dir": data_dir or "", "device": str(device or ""), "simulation": simulation}

    def nodes(self) -> list[int]:
        """The connected nodes, sorted; waits up to the timeout for ``num_nodes`` of them.

        Raises:
            LostClient: fewer nodes connected within the timeout.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            nodes = sorted(int(n) for n in self.grid.get_node_ids())
            if len(nodes) >= self.num_nodes:
                return nodes
            if time.monotonic() > deadline:
                raise LostClient(f"{len(nodes)} of the {self.num_nodes} Flower nodes connected within "
                                 f"{self.timeout:g} s", fix="start the SuperNodes (or lower --flower-nodes), then "
                                 "continue the run with the same command plus --resume")
            time.sleep(0.2)

    def run_round(self, algo: Algorithm, state: Any, round: int, cohort: Sequence[int], lr: float,
                  keep_clients: bool = False) -> RoundResult:
        """Broadcast to the owners of the cohort, their clients' sums added in cohort order, the server update."""
        start = algo.broadcast(state)
        nodes = self.nodes()
        owned: dict[int, list[int]] = {}
        for k in cohort:
            owned.setdefault(nodes[k % len(nodes)], []).append(k)
        content = RecordDict({"start": _record(start.weights)})
        if start.direction is not None:
            content["direction"] = _record(start.direction)
        messages = []
        for node, clients in owned.items():
            task = ConfigRecord({**self.task, "round": round, "lr": float(lr), "clients": clients,
                                 "keep": keep_clients})
            messages.append(Message(RecordDict({**content, "task": task}), dst_node_id=node, message_type=TRAIN,
                                    group_id=str(round + 1)))
        replies = {int(r.metadata.src_node_id): r for r in self.grid.send_and_receive(messages, timeout=self.timeout)}
        sums: dict[int, ClientSums] = {}
        losses: dict[int, float] = {}
        sizes: dict[int, int] = {}
        models: dict[int, State] = {}
        device = next(iter(start.weights.values())).device
        for node, clients in owned.items():
            where = f"Flower node {node}, round {round + 1}"
            reply = replies.get(node)
            if reply is None:
                raise LostClient(f"no reply for client(s) {', '.join(map(str, clients))} within {self.timeout:g} s",
                                 where=where, fix=f"restart the node, then {RESUME}")
            if reply.has_error():
                raise LostClient(_reason(reply.error.reason), where=where, fix=f"fix that, then {RESUME}")
            result = reply.content["result"]
            for j, k in enumerate(result["clients"]):
                sums[k] = ClientSums(_tensors(reply.content[f"sum.{k}"], device), result["weights"][j])
                losses[k], sizes[k] = result["losses"][j], result["sizes"][j]
                if keep_clients:
                    models[k] = _tensors(reply.content[f"model.{k}"], device)
        total = sums[cohort[0]]
        for k in cohort[1:]:  # in cohort order: the sequential engine's order of addition
            total = total + sums[k]
        new_state = algo.server_update(state, mean_delta(total, start.weights))
        block = BlockResult(total, {k: losses[k] for k in cohort}, {k: sizes[k] for k in cohort},
                            {k: models[k] for k in cohort} if keep_clients else None)
        return RoundResult(new_state, train_loss(block), block.client_losses, block.client_weights)


def _reason(reason: str | None) -> str:
    """Our own reply's one line, or the last line of an error Flower wrote (often a traceback)."""
    lines = [line.strip() for line in (reason or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "the node failed without a reason"


def serve(grid: Grid, cfg: TrainConfig, out: str | Path, *, num_nodes: int, timeout: float = DEFAULT_TIMEOUT,
          data_dir: str | None = None, device: str | None = None, engine: str = "auto", resume: bool = False,
          progress: bool = False, on_round: Callable[[int, dict[str, Any]], None] | None = None,
          simulation: bool = False) -> RunResult:
    """:func:`landscape.train.run.train` with its rounds trained by the nodes of ``grid`` (the ServerApp's body).

    Args:
        grid: the run's Flower grid.
        num_nodes: the nodes to wait for before the first round.
        timeout: seconds to wait for them, and for each round's replies.
        simulation: the nodes are this process's own (Flower's simulation).
        cfg, out, data_dir, device, engine, resume, progress, on_round: as for :func:`~landscape.train.run.train`.

    Raises:
        LandscapeError: as :func:`~landscape.train.run.train`; :class:`LostClient` for a failed node.
    """
    def remote(local: Engine, resolved: TrainConfig, spec: dict[str, Any]) -> FlowerEngine:
        return FlowerEngine(local, grid, resolved, spec, num_nodes=num_nodes, timeout=timeout, data_dir=data_dir,
                            device=device, simulation=simulation)

    return train(cfg, out, data_dir=data_dir, device=device, engine=engine, resume=resume, progress=progress,
                 on_round=on_round, remote=remote)


def _run_config(context: Context) -> dict[str, Any]:
    """The ServerApp's arguments from the run config of ``flwr run`` (``[tool.flwr.app.config]``)."""
    from landscape.train.folder import stored_config

    rc = dict(context.run_config)
    if not rc.get("out"):
        raise LandscapeError("the run config names no run folder", fix="pass --run-config 'out=\"runs/NAME\"'")
    try:
        overrides = json.loads(str(rc.get("config") or "{}"))
    except ValueError:
        raise LandscapeError("the run config's 'config' is not JSON",
                             fix="give TrainConfig fields as a JSON object, e.g. config='{\"algorithm\": \"fedsam\"}'"
                             ) from None
    if not isinstance(overrides, dict):
        raise LandscapeError("the run config's 'config' is not a JSON object of TrainConfig fields")
    preset_name = str(rc.get("preset") or "") or None
    resume = bool(rc.get("resume", False))
    named = {*overrides, *(preset(preset_name) if preset_name else {})}
    saved = stored_config(rc["out"], named=named) if resume else None
    return dict(cfg=make_config(preset_name, saved, **overrides), out=rc["out"], num_nodes=int(rc.get("num-nodes", 1)),
                timeout=float(rc.get("timeout", DEFAULT_TIMEOUT)), data_dir=str(rc.get("data-dir") or "") or None,
                device=str(rc.get("device") or "") or None, engine=str(rc.get("engine", "auto")), resume=resume)


#: The ServerApp of ``flwr run`` (``serverapp = "landscape.train.flower:server_app"``).
server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    serve(grid, **_run_config(context))


# ---------------------------------------------------------------------------------------------
# The client side
# ---------------------------------------------------------------------------------------------

@dataclass
class _Node:
    """What a node built from a run's config (kept while the messages name the same run)."""

    key: str
    engine: Engine
    algo: Algorithm
    device: torch.device


_built: list[_Node] = []  # the node's one set-up (a process serves one run at a time)


def _node(task: ConfigRecord, node_config: dict[str, Any]) -> _Node:
    """The node's set-up for the run ``task`` names: built on its first message, then reused.

    Raises:
        LandscapeError: a model factory this node does not trust, data that differ from the
            server's, or whatever the set-up refuses.
    """
    data_dir = str(node_config.get("data-dir") or task["data-dir"]) or None
    device = resolve_device(str(node_config.get("device") or task["device"]) or None)
    key = json.dumps([task["config"], task["engine"], data_dir, str(device)])
    if _built and _built[0].key == key:
        return _built[0]
    cfg = TrainConfig.from_dict(json.loads(task["config"]))
    trusted = bool(task["simulation"]) or bool(node_config.get("trust-model-factory", False))
    if ":" in str(cfg.model) and not trusted:
        raise LandscapeError(f"the server asks for the model factory '{cfg.model}', code this node would import "
                             f"and run", fix="if you trust the server, start the SuperNode with --node-config "
                             "'trust-model-factory=true'")
    setup = set_up(cfg, data_dir, device, task["engine"])
    if _data_fingerprint(setup.fed.spec) != task["data"]:
        raise LandscapeError("this node's training data differ from the server's",
                             fix="give the node the server's data (its data-dir, the same split file)")
    _built[:] = [_Node(key, setup.engine, algorithms.from_config(setup.cfg), device)]
    return _built[0]


#: The ClientApp of ``flwr run`` and of the simulation (``clientapp = "landscape.train.flower:client_app"``).
client_app = ClientApp()


@client_app.train()
def _train_clients(msg: Message, context: Context) -> Message:
    """Train the clients the message names from its start; reply with each one's sums (or one error line)."""
    task = msg.content["task"]
    round, clients = int(task["round"]), [int(k) for k in task["clients"]]
    doing = "setting up"
    try:
        node = _node(task, dict(context.node_config))
        start = ClientStart(_tensors(msg.content["start"], node.device),
                            _tensors(msg.content["direction"], node.device) if "direction" in msg.content else None)
        reply = RecordDict()
        weights, losses, sizes = [], [], []
        for k in clients:
            doing = f"training client {k}"
            block = node.engine.run_block(node.algo, start, round, [k], float(task["lr"]), bool(task["keep"]))
            reply[f"sum.{k}"] = _record(block.sums.weighted_sum)
            if block.client_weights is not None:
                reply[f"model.{k}"] = _record(block.client_weights[k])
            weights.append(block.sums.total_weight)
            losses.append(block.client_losses[k])
            sizes.append(block.client_sizes[k])
        reply["result"] = ConfigRecord({"clients": clients, "weights": weights, "losses": losses, "sizes": sizes})
        return Message(reply, reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - whatever fails, the server gets one line naming the client
        text = str(exc).splitlines()[0] if str(exc) else ""
        what = text if isinstance(exc, LandscapeError) else f"{type(exc).__name__}{': ' + text if text else ''}"
        return Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{doing} failed: {what}"), reply_to=msg)


# ---------------------------------------------------------------------------------------------
# Flower's simulation
# ---------------------------------------------------------------------------------------------

def simulate(cfg: TrainConfig, out: str | Path, *, num_nodes: int, timeout: float = DEFAULT_TIMEOUT,
             data_dir: str | None = None, device: str | None = None, engine: str = "auto", resume: bool = False,
             progress: bool = False, on_round: Callable[[int, dict[str, Any]], None] | None = None) -> RunResult:
    """Train ``cfg`` into ``out`` in Flower's simulation runtime: this process runs the ServerApp
    (:func:`serve`), ``num_nodes`` virtual SuperNodes run :data:`client_app` (Ray actors, one CPU
    each; on CUDA the GPUs are shared among them).

    Raises:
        LandscapeError: as :func:`serve`.
    """
    from flwr.simulation import run_simulation

    dev = resolve_device(device)
    gpus = min(1.0, torch.cuda.device_count() / num_nodes) if dev.type == "cuda" else 0.0
    done: list[RunResult] = []
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        done.append(serve(grid, cfg, out, num_nodes=num_nodes, timeout=timeout, data_dir=data_dir, device=device,
                          engine=engine, resume=resume, progress=progress, on_round=on_round, simulation=True))

    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # Flower's INFO lines would drown the run's own output
    try:
        run_simulation(app, client_app, num_supernodes=num_nodes,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": gpus},
                                       "init_args": {"logging_level": logging.ERROR, "log_to_driver": False}})
    finally:
        flwr_log.setLevel(level)
    if not done:  # the runtime stopped without the ServerApp's error (Ray could not start, ...)
        raise LandscapeError("Flower's simulation ended before the run did", where=out,
                             fix="see Flower's log above, then continue with the same command plus --resume")
    return done[0]
