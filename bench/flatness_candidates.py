"""Evidence for the default flatness distance: which candidate tells FedAvg, FedSAM, FedASAM and FedNSAM apart.

For every setting (digits federation of the ``digits-demo`` preset with Dirichlet alpha 0, i.e. one
class per client; the preset's alpha 1; alpha 1000, i.e. iid), every algorithm and every seed, this
trains a run into the cache folder (``landscape train --preset digits-demo --algorithm A --alpha X
--seed S --rounds R --save-clients-every R``; a run already there is reused), computes every metric
with ``landscape flatness GLOBAL --clients CLIENT...`` on the last round's global model and its
sampled clients' trained models (cached as ``flatness.json`` in the run folder), and prints, per
setting, mean ± std over seeds of every candidate per algorithm as Markdown. ``sep.`` counts the
algorithm pairs (of 6) whose means differ by more than the sum of their standard deviations: a
candidate that separates algorithms beyond the seed spread scores high there.

Run: ``python bench/flatness_candidates.py`` (36 runs of ~20-40 s each on a CPU, then ~3 s of metrics
each); ``--quick`` trains 50 rounds instead of 200. The table in docs/flatness.md was made with
``python bench/flatness_candidates.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from landscape.cli import main
from landscape.run_folder import RunFolder

ALGORITHMS = ("fedavg", "fedsam", "fedasam", "fednsam")
SETTINGS = {"alpha 0 (one class per client)": 0.0, "alpha 1 (the preset)": 1.0, "alpha 1000 (iid)": 1000.0}
Metrics = dict[str, Any]


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


#: (label, getter on the ``metrics`` of a flatness result); the first block are the candidates.
CANDIDATES: list[tuple[str, Callable[[Metrics], float]]] = [
    ("D = mean ||eps_i(x) - eps(x)|| (at x; old default)", lambda m: m["perturbation_distance"]["distance"]),
    ("mean_i S_fi(x) - S_f(x), ascent (at x)", lambda m: m["sharpness_gap"]["gap_ascent"]),
    ("D_loc = mean ||eps_i(x_i) - eps(x)||", lambda m: m["local_perturbation_distance"]["distance"]),
    ("mean cos(grad f_i(x_i), grad f(x))", lambda m: m["local_perturbation_distance"]["mean_cosine"]),
    ("S_f(x) - mean S_fi(x_i), first-order", lambda m: m["sharpness_local_global"]["difference_first_order"]),
    ("S_f(x) - mean S_fi(x_i), ascent", lambda m: m["sharpness_local_global"]["difference_ascent"]),
    ("S_f(x) / mean S_fi(x_i), ascent", lambda m: m["sharpness_local_global"]["ratio_ascent"]),
    ("lmax f(x) - mean lmax f_i(x_i)", lambda m: m["lambda_max"]["global_minus_local"]),
    ("lmax f(x) / mean lmax f_i(x_i)", lambda m: m["lambda_max"]["global_over_local"]),
]
#: Context rows: what the candidates are made of.
CONTEXT: list[tuple[str, Callable[[Metrics], float]]] = [
    ("(context) S_f(x), ascent", lambda m: m["sharpness_local_global"]["global_ascent"]),
    ("(context) mean S_fi(x_i), ascent", lambda m: _mean(m["sharpness_local_global"]["client_ascent"])),
    ("(context) lmax f(x)", lambda m: m["lambda_max"]["global_at_global"]),
    ("(context) mean lmax f_i(x_i)", lambda m: _mean(m["lambda_max"]["local_at_client"])),
    ("(context) mean ||x_i - x||", lambda m: _mean(m["parameter_distances"]["distances"])),
]


def train(folder: Path, algorithm: str, alpha: float, seed: int, rounds: int, device: str) -> RunFolder:
    """The run in ``folder``: reused when its last round's global and client checkpoints are there."""
    run = RunFolder(folder)
    if run.global_checkpoint(rounds).exists() and run.client_checkpoints(rounds):
        return run
    argv = [sys.executable, "-m", "landscape", "train", "--preset", "digits-demo", "--algorithm", algorithm,
            "--alpha", f"{alpha:g}", "--seed", str(seed), "--rounds", str(rounds), "--save-clients-every",
            str(rounds), "--out", str(folder), "--no-progress", "--device", device]
    if run.is_run():
        argv.append("--resume")
    print("$", " ".join(argv[1:]), file=sys.stderr, flush=True)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return run


def flatness(run: RunFolder, rounds: int, device: str, recompute: bool) -> Metrics:
    """The ``metrics`` of ``landscape flatness`` on the run's last global model and its clients."""
    out = run.path / "flatness.json"
    if out.exists() and not recompute:
        metrics = json.loads(out.read_text())["metrics"]
        try:
            for _, get in CANDIDATES + CONTEXT:
                get(metrics)
            return metrics
        except KeyError:  # written by an older version: compute again
            pass
    argv = ["flatness", str(run.global_checkpoint(rounds)), "--clients", *map(str, run.client_checkpoints(rounds)),
            "--device", device, "--out", str(out)]
    print("$ landscape", " ".join(argv), file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        if main(argv) != 0:
            raise SystemExit(f"landscape {' '.join(argv)} failed")
    return json.loads(out.read_text())["metrics"]


def test_accuracy(run: RunFolder) -> float:
    return next(m["test_acc"] for m in reversed(run.metrics()) if "test_acc" in m)


def separated_pairs(values: dict[str, list[float]]) -> int:
    """Algorithm pairs whose means differ by more than the sum of their standard deviations."""
    stats = {a: (np.mean(v), np.std(v, ddof=1)) for a, v in values.items()}
    return sum(abs(stats[a][0] - stats[b][0]) > stats[a][1] + stats[b][1]
               for a, b in itertools.combinations(stats, 2))


def table(rows: list[tuple[str, dict[str, list[float]]]]) -> list[str]:
    lines = ["| metric | " + " | ".join(ALGORITHMS) + " | sep. |", "|---" * (len(ALGORITHMS) + 2) + "|"]
    for label, values in rows:
        cells = [f"{np.mean(values[a]):.4g} ± {np.std(values[a], ddof=1):.2g}" for a in ALGORITHMS]
        name = label.replace("|", "\\|")  # a norm's bars would end the Markdown cell
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {separated_pairs(values)}/6 |")
    return lines


def main_(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path("runs/flatness_candidates"),
                   help="folder of the runs (reused when there; default: runs/flatness_candidates)")
    p.add_argument("--quick", action="store_true", help="50 rounds instead of 200")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--recompute", action="store_true", help="compute the metrics again even when cached")
    args = p.parse_args(argv)
    if len(set(args.seeds)) < 2:
        p.error("give at least two different seeds: the table reports the spread over seeds")
    rounds = 50 if args.quick else 200
    print(f"Flatness-distance candidates on the digits-demo federation, {rounds} rounds, seeds "
          f"{' '.join(map(str, args.seeds))}: mean ± std over seeds (sample std, ddof 1); sep. = algorithm pairs "
          "whose means differ by more than the sum of their stds.\n")
    for setting, alpha in SETTINGS.items():
        metrics: dict[str, list[Metrics]] = {a: [] for a in ALGORITHMS}
        accuracy: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
        for algorithm, seed in itertools.product(ALGORITHMS, args.seeds):
            folder = args.cache / f"alpha{alpha:g}" / f"r{rounds}" / f"{algorithm}_s{seed}"
            run = train(folder, algorithm, alpha, seed, rounds, args.device)
            metrics[algorithm].append(flatness(run, rounds, args.device, args.recompute))
            accuracy[algorithm].append(test_accuracy(run))
        rows = [(label, {a: [get(m) for m in metrics[a]] for a in ALGORITHMS}) for label, get in CANDIDATES + CONTEXT]
        print(f"### {setting}\n")
        print("\n".join(table(rows + [("(context) test accuracy", accuracy)])))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
