"""``landscape demo``: the whole toolkit on the offline digits data, on a CPU, in about two minutes.

The demo is a scripted tour of the other commands: it prints each ``landscape ...`` command
line before running it in this process, so what it does can be repeated (and changed) by hand.
It trains FedAvg, FedSAM, FedASAM, FedNSAM and FedASAM + SWA on a 20-client digits federation
(preset ``digits-demo``) in two settings, heterogeneous (alpha = 0: one class per client) and
homogeneous (alpha = 1000), tracking the curvature every 10 rounds (``--track-every``). For each
final global model it computes the top Hessian eigenvalues and the trace ([C22] Table 1) and the
flatness distance between the global model and its clients ([L26], reconstructed); in the
heterogeneous setting also a 2D loss surface per algorithm ([C22] Fig. 1) and, in each setting,
the plane through FedAvg's global model and two clients with the other clients projected
([C22] Fig. 2). The figure scripts then draw the surfaces side by side, Table 1 and the
curvature over rounds ([L26], from the tracked metrics).

Everything lands in ``--out``: ``index.html`` (one page, readable offline, that shows the
summary table, the interactive viewers and every figure with the command that made it),
``summary.md``, ``summary.json`` and the results themselves. A second run reuses what exists.
"""

from __future__ import annotations

import argparse
import html
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.cli.common import integer
from landscape.files import atomic_write, write_json
from landscape.run_folder import RunFolder
from landscape.cli import SUMMARIES

#: name -> the training flags that make it (beside the preset's).
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "fedavg": ("--algorithm", "fedavg"),
    "fedsam": ("--algorithm", "fedsam"),
    "fedasam": ("--algorithm", "fedasam"),
    "fednsam": ("--algorithm", "fednsam"),
    # SWA's cycle runs from the preset's client lr down to a hundredth of it, as in [C22] (gamma1 = lr);
    # its length (--swa-cycle) is set per run: 5 cycles in the last quarter of the rounds
    "fedasam+swa": ("--algorithm", "fedasam", "--swa", "--swa-gamma1", "0.1", "--swa-gamma2", "0.001"),
}
#: setting -> its Dirichlet concentration: one class per client, and iid in all but name.
SETTINGS = {"heterogeneous": "0", "homogeneous": "1000"}
TRACK_EVERY = 10
COLUMNS = (("test_accuracy", "test acc", ".3f"), ("lambda_max", "lambda_max", ".4g"),
           ("lambda_max/lambda_5", "l_max/l_5", ".3g"), ("trace", "trace", ".4g"),
           ("flatness_distance", "flat. dist", ".3g"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=SUMMARIES["demo"],
                       description="Run the whole toolkit on the bundled digits data (CPU, about two minutes): "
                       "training with curvature tracking, Hessian spectra, loss surfaces, planes and flatness, in a "
                       "heterogeneous and a homogeneous federation; writes DIR/index.html.")
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    p.add_argument("--rounds", type=integer(1), default=100, help="federated rounds per algorithm (default: 100)")
    p.add_argument("--resolution", type=integer(2, 1001), default=21,
                   help="surface grid points per axis (default: 21)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(run=run)


@dataclass
class Tour:
    """The demo's steps: each command with the files it made (the page lists them)."""

    out: Path
    total: int
    steps: list[dict[str, Any]] = field(default_factory=list)

    def run(self, argv: list[str], outputs: tuple[Path, ...] = (), title: str = "") -> None:
        """Print and run one landscape command; stop the demo if it fails."""
        from landscape.cli import main
        from landscape.errors import LandscapeError

        line = f"landscape {shlex.join(argv)}"
        print(f"\n[{len(self.steps) + 1}/{self.total}] $ {line}", flush=True)
        if main(argv) != 0:
            raise LandscapeError(f"the demo step `{line}` failed (see above)")
        self.steps.append({"title": title, "command": line,
                           "outputs": [str(p.relative_to(self.out)) for p in outputs if p.exists()]})


def _last(metrics: list[dict[str, Any]], key: str) -> Any:
    return next((m[key] for m in reversed(metrics) if key in m), None)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = ["--device", args.device] if args.device else []
    R, res = str(args.rounds), str(args.resolution)
    n_runs = len(SETTINGS) * len(ALGORITHMS)
    tour = Tour(out, total=n_runs * 3 + len(ALGORITHMS) + 3 * len(SETTINGS) + 1)
    t0 = time.perf_counter()
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for setting, alpha in SETTINGS.items():
        summary[setting] = {}
        for name, flags in ALGORITHMS.items():
            tag = f"{setting}_{name.replace('+', '_')}"
            run_dir = out / "runs" / setting / name.replace("+", "_")
            folder = RunFolder(run_dir)
            resume = ["--resume"] if folder.is_run() else []  # a rerun continues, not repeats
            if "--swa" in flags:
                flags = (*flags, "--swa-cycle", str(max(1, args.rounds // 20)))
            tour.run(["train", "--preset", "digits-demo", *flags, "--alpha", alpha, "--rounds", R,
                      "--save-clients-every", R, "--track-every", str(TRACK_EVERY), "--out", str(run_dir),
                      "--no-progress", *resume, *device], title=f"train {name}, {setting}")
            # SWA's point is its averaged model: analyse that one
            final = folder.swa_checkpoint if "swa" in name else folder.global_checkpoint(args.rounds)
            clients = [str(p) for p in folder.client_checkpoints(args.rounds)]
            hessian, density = out / f"hessian_{tag}.json", out / f"density_{tag}.png"
            tour.run(["hessian", str(final), "--top-k", "5", "--trace", "--trace-samples", "100",
                      "--out", str(hessian), "--plot", str(density), *device], (hessian, density),
                     f"Hessian top-5 and trace, {name}, {setting}")
            flat, flat_png = out / f"flatness_{tag}.json", out / f"flatness_{tag}.png"
            tour.run(["flatness", str(final), "--clients", *clients, "--out", str(flat), "--png", str(flat_png),
                      *device], (flat, flat_png), f"flatness distance, {name}, {setting}")
            if setting == "heterogeneous":
                surface, png = out / f"surface_{tag}.npz", out / f"surface_{tag}.png"
                tour.run(["surface", str(final), "--dim", "2", "--resolution", res, "--range", "1",
                          "--out", str(surface), "--png", str(png), "--overwrite", *device], (surface, png),
                         f"2D loss surface, {name}")
            if name == "fedavg":
                plane = {s: out / f"plane_{setting}.{s}" for s in ("npz", "html", "png")}
                tour.run(["plane", str(final), clients[0], clients[1], "--project", *clients[2:],
                          "--resolution", res, "--out", str(plane["npz"]), "--html", str(plane["html"]),
                          "--png", str(plane["png"]), "--overwrite", *device], tuple(plane.values()),
                         f"plane through FedAvg's global model and two clients, {setting}")
            hess = json.loads(hessian.read_text())
            metrics = folder.metrics()
            summary[setting][name] = {
                "test_accuracy": _last(metrics, "swa_test_acc" if "swa" in name else "test_acc"),
                "lambda_max": hess["lambda_max"], "lambda_max/lambda_5": hess["lambda_max_over_lambda_5"],
                "trace": hess["trace"], "flatness_distance": flatness_distance(json.loads(flat.read_text())),
                "run": str(run_dir.relative_to(out)),
            }
    het = {name: out / f"surface_heterogeneous_{name.replace('+', '_')}.npz" for name in ALGORITHMS}
    fig01, surfaces = out / "fig01_surfaces.png", out / "surfaces.html"
    tour.run(["figures", "fig01", *[f"{a}={p}" for a, p in het.items()], "--out", str(fig01), "--html",
              str(surfaces)], (fig01, surfaces), "[C22] Fig. 1: the surfaces side by side (heterogeneous)")
    for setting in SETTINGS:
        table = out / f"table1_{setting}.md"
        tour.run(["figures", "table1", *[f"{a}={out / f'hessian_{setting}_{a.replace(chr(43), chr(95))}.json'}"
                                         for a in ALGORITHMS], "--out", str(table)], (table,),
                 f"[C22] Table 1 in miniature, {setting}")
    for setting, rows in summary.items():
        curves = out / f"curvature_{setting}.png"
        tour.run(["figures", "l26", *[f"{name}={out / row['run']}" for name, row in rows.items()],
                  "--out", str(curves)], (curves,), f"[L26] curvature over rounds (tracked in training), {setting}")
    seconds = time.perf_counter() - t0
    write_json(out / "summary.json", {"rounds": args.rounds, "seconds": round(seconds, 1), "settings": summary,
                                      "steps": tour.steps})
    markdown = summary_markdown(summary, args.rounds)
    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(markdown))
    page = index_html(summary, tour.steps, args.rounds, seconds)
    atomic_write(out / "index.html", lambda tmp: tmp.write_text(page))
    print("\n" + markdown)
    print(f"open {out / 'index.html'} in a browser (it works offline); all results are in {out}/ "
          f"({seconds:.0f} s)")
    return 0


def flatness_distance(result: dict[str, Any]) -> float:
    """The headline flatness distance of a ``landscape flatness`` result (:data:`landscape.flatness.DEFAULT_METRIC`)."""
    return result["metrics"]["flatness_distance"]["value"]


def summary_markdown(summary: dict[str, dict[str, dict[str, Any]]], rounds: int) -> str:
    """The summary table per setting, as Markdown."""
    lines = [f"Digits federation, global models after {rounds} rounds ([C22] Table 1 in miniature):", ""]
    for setting, rows in summary.items():
        lines += [f"**{setting}**", "", "| algorithm | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 1) + "|"]
        for name, row in rows.items():
            cells = ["-" if row[key] is None else format(row[key], fmt) for key, _, fmt in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def index_html(summary: dict[str, dict[str, dict[str, Any]]], steps: list[dict[str, Any]], rounds: int,
               seconds: float) -> str:
    """One offline page: the summary tables, the interactive viewers and every figure with its command."""
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>landscape demo</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child"
             "{text-align:left}pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}img{max-width:100%}"
             "iframe{width:100%;height:620px;border:1px solid #ccc}",
             "</style></head><body>", "<h1>landscape demo</h1>",
             f"<p>FedAvg, FedSAM, FedASAM, FedNSAM and FedASAM + SWA on the digits federation, {rounds} rounds, "
             f"two settings; made in {seconds:.0f} s. Every number below links to the command that made it.</p>"]
    for setting, rows in summary.items():
        parts.append(f"<h2>{esc(setting)}</h2><table><tr><th>algorithm</th>"
                     + "".join(f"<th>{esc(c[1])}</th>" for c in COLUMNS) + "</tr>")
        for name, row in rows.items():
            cells = "".join(f"<td>{'-' if row[k] is None else format(row[k], f)}</td>" for k, _, f in COLUMNS)
            parts.append(f"<tr><td>{esc(name)}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("<h2>Interactive viewers</h2>")
    for step in steps:
        for o in step["outputs"]:
            if o.endswith(".html"):
                parts.append(f"<h3>{esc(step['title'])}</h3><pre>{esc(step['command'])}</pre>"
                             f"<p><a href='{esc(o)}'>{esc(o)}</a></p><iframe src='{esc(o)}'></iframe>")
    parts.append("<h2>Every step</h2>")
    for step in steps:
        parts.append(f"<h3>{esc(step['title'])}</h3><pre>{esc(step['command'])}</pre><ul>")
        for o in step["outputs"]:
            parts.append(f"<li><a href='{esc(o)}'>{esc(o)}</a></li>")
        parts.append("</ul>")
        parts += [f"<img src='{esc(o)}' alt='{esc(o)}'>" for o in step["outputs"] if o.endswith(".png")]
    parts.append("</body></html>")
    return "\n".join(parts)
