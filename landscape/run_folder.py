"""The layout of a run folder of ``landscape train``, in one place for everything that reads or writes it.

::

    OUT/config.json                      the resolved training config, the data spec, run options
    OUT/metrics.jsonl                    one JSON line per round
    OUT/checkpoints/global_r000000.pt    global model (role "global") at round 0, every
                                         save_every rounds and at the end
    OUT/checkpoints/swa.pt               the SWA model (role "swa"), once one model is collected
    OUT/clients/r000100_c0042.pt         local model of client 42 after round 100 (role "client")
    OUT/state.pt                         everything --resume needs (server state, SWA mean, round)
    OUT/split.csv                        a copy of --split-file, which the checkpoints point at
    OUT/.lock                            held by the one process writing the folder

Training (:mod:`landscape.train.folder`) writes it; the demo, the figure scripts and the
analysis (:mod:`landscape.recorded`: a checkpoint's run folder) read it through
:class:`RunFolder`, never through typed-out file names. ``round`` counts completed
aggregations (0: the initial model); a client checkpoint of round R holds the local model
trained from the global model of round R-1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.errors import os_error

_GLOBAL = re.compile(r"global_r(\d{6})\.pt")
_CLIENT = re.compile(r"r(\d{6})_c(\d{4})\.pt")


@dataclass(frozen=True)
class RunFolder:
    """A run folder and the paths of what it holds.

    >>> run = RunFolder(Path("runs/fedsam"))
    >>> str(run.global_checkpoint(200)), str(run.client_checkpoint(200, 42))
    ('runs/fedsam/checkpoints/global_r000200.pt', 'runs/fedsam/clients/r000200_c0042.pt')
    """

    path: Path

    @classmethod
    def of(cls, checkpoint: Path) -> RunFolder:
        """The run folder of a checkpoint file: the folder holding ``config.json`` above it, else its own."""
        for folder in (checkpoint.parent, checkpoint.parent.parent):
            if (folder / "config.json").is_file():
                return cls(folder)
        return cls(checkpoint.parent)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def state_file(self) -> Path:
        return self.path / "state.pt"

    @property
    def swa_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "swa.pt"

    def split_copy(self, suffix: str) -> Path:
        """Where the run keeps its copy of the split file (``split.csv``, ...)."""
        return self.path / f"split{suffix}"

    def global_checkpoint(self, round: int) -> Path:
        return self.path / "checkpoints" / f"global_r{round:06d}.pt"

    def client_checkpoint(self, round: int, client_id: int) -> Path:
        return self.path / "clients" / f"r{round:06d}_c{client_id:04d}.pt"

    def global_rounds(self) -> list[int]:
        """The rounds that have a global checkpoint, ascending."""
        found = (_GLOBAL.fullmatch(p.name) for p in (self.path / "checkpoints").glob("global_r*.pt"))
        return sorted(int(m.group(1)) for m in found if m)

    def client_checkpoints(self, round: int) -> list[Path]:
        """The client checkpoints of ``round``, by client id."""
        found = [(p, _CLIENT.fullmatch(p.name)) for p in (self.path / "clients").glob(f"r{round:06d}_c*.pt")]
        return [p for p, m in sorted(found, key=lambda pm: pm[0].name) if m]

    def is_run(self) -> bool:
        """Whether the folder holds a run (its ``config.json``)."""
        return self.config_file.is_file()

    def metric_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """``(line, record)`` of every line of ``metrics.jsonl`` that parses and names its round; a line
        cut by a kill or a full disk, or edited by hand, is left out."""
        if not self.metrics_file.exists():
            return []
        try:
            text = self.metrics_file.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise os_error(exc, "cannot read the metrics log") from None
        out = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            r = record.get("round") if isinstance(record, dict) else None
            if isinstance(r, int) and not isinstance(r, bool):
                out.append((line, record))
        return out

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``, one per logged round (see :meth:`metric_lines`)."""
        return [record for _, record in self.metric_lines()]
