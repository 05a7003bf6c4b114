"""The run folder layout, read through one object."""

from __future__ import annotations

from pathlib import Path

from landscape.run_folder import RunFolder


def test_rounds_clients_and_metrics_of_a_folder(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    for r in (0, 50, 100):
        run.global_checkpoint(r).parent.mkdir(parents=True, exist_ok=True)
        run.global_checkpoint(r).write_bytes(b"")
    (run.path / "checkpoints" / "global_r12.pt").write_bytes(b"")  # not a name the run writes
    for k in (7, 3):
        run.client_checkpoint(100, k).parent.mkdir(parents=True, exist_ok=True)
        run.client_checkpoint(100, k).write_bytes(b"")
    run.metrics_file.write_text('{"round": 1, "train_loss": 2.0}\n{"round": "x"}\nnot json\n{"round": 2, "train_lo')
    run.config_file.write_text("{}")
    assert run.global_rounds() == [0, 50, 100]
    assert [p.name for p in run.client_checkpoints(100)] == ["r000100_c0003.pt", "r000100_c0007.pt"]
    assert run.client_checkpoints(50) == []
    assert run.metrics() == [{"round": 1, "train_loss": 2.0}]  # cut and foreign lines are left out
    assert run.is_run() and not RunFolder(tmp_path).is_run()
    assert RunFolder.of(run.global_checkpoint(50)) == run  # checkpoints/ and clients/ sit one level down
    assert RunFolder.of(run.client_checkpoint(100, 3)) == run
    assert RunFolder.of(tmp_path / "loose.pt") == RunFolder(tmp_path)
