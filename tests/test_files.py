"""Files: one writer at a time, outputs checked before the work, written as one; the CLI's one-line funnel."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from landscape import files
from landscape.cli import main
from landscape.errors import LandscapeError, os_error

HOLD = """
import sys, time
from landscape.files import exclusive
with exclusive(sys.argv[1], folder=sys.argv[2] == "1"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(target: Path, folder: bool) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), "1" if folder else "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("folder", [False, True])
def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path, folder):
    target = tmp_path / ("run" if folder else "result.json")
    proc = _holder(target, folder)
    try:
        with pytest.raises(LandscapeError, match=rf"another landscape process \(pid {proc.pid}\) is writing this "
                           f"{'run folder' if folder else 'file'}"):
            with files.exclusive(target, folder=folder):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with files.exclusive(target, folder=folder):  # the OS released the lock of the killed process
        pass
    assert (target / ".lock").exists() == folder  # a file's lock goes with it


def test_writing_keeps_all_or_nothing(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.png"
    old.write_text("the previous result")
    with pytest.raises(RuntimeError):
        with files.writing(old, new, None):
            files.write_json(old, {"half": "of a new result"})
            new.write_bytes(b"new picture")
            raise RuntimeError("the second output failed")
    assert old.read_text() == "the previous result" and not new.exists()
    with files.writing(old, new):
        files.write_json(old, {"new": 1})
        new.write_bytes(b"png")
    assert old.read_text().startswith("{") and new.read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.png", "old.json"]  # no aside or lock left


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_an_output_that_is_an_input_is_refused(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "a.json"
    source.write_text("{}")
    out = {"same": str(source), "dot": "./a.json", "symlink": "link.json", "hardlink": "hard.json"}[spelling]
    if spelling == "symlink":
        os.symlink(source, out)
    if spelling == "hardlink":
        os.link(source, out)
    with pytest.raises(LandscapeError, match=r"--out would overwrite an input \(.*\): write the result to another"):
        files.check_outputs({"--out": (out, [".json"])}, [str(source)])


@pytest.mark.parametrize("outputs, match", [
    ({"--out": ("r.npz", [".npz"]), "--html": ("r.npz", [])}, "--html and --out name the same file"),
    ({"--plot": ("d.xyz", [".png", ".pdf"])}, r"--plot must end in .png or .pdf \(d.xyz\): name the file e.g. d.png"),
    ({"--out": ("folder", [])}, r"--out is a folder, not a file"),
    ({"--out": ("plain/r.json", [".json"])}, r"--out: .*plain is a file, not a folder"),
])
def test_bad_outputs_are_refused_before_the_work(tmp_path, monkeypatch, outputs, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(LandscapeError, match=match):
        files.check_outputs(outputs, [])


def test_an_unwritable_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(LandscapeError, match=r"--out: cannot write into .*: read-only file system .*write somewhere"):
        files.check_outputs({"--out": (tmp_path / "r.json", [".json"])}, [])


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "no space left on the device (r.json): free some space"),
    (errno.EACCES, "permission denied (r.json): check the permissions"),
    (errno.EISDIR, "is a folder, not a file (r.json): give a file path"),
    (errno.ENOTDIR, "a file is in the way where a folder is needed (r.json)"),
    (errno.EXDEV, "Invalid cross-device link (r.json): check the path"),
])
def test_os_errors_read_as_one_line_with_the_fix(code, words):
    assert str(os_error(OSError(code, os.strerror(code), "r.json"))).startswith(f"cannot write: {words}")


@pytest.mark.parametrize("exc, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/h.json"),
     "error: cannot read or write a file: no space left on the device (/x/h.json): free some space"),
    (MemoryError(), "error: out of memory (landscape models): lower --batch-size"),
    (ZeroDivisionError("a bug\nof ours"), "error: internal error, ZeroDivisionError: a bug (landscape models): "
     "please report it"),
])
def test_every_failure_of_a_command_is_one_line(monkeypatch, capsys, exc, words):
    from landscape.cli import models as command

    def fail(args):
        raise exc

    monkeypatch.setattr(command, "run", fail)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(words) and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [
    (["train", "--num-rounds", "5"], "unrecognized arguments: --num-rounds 5 (did you mean --rounds?) "
     "(landscape train): see `landscape train --help`"),
    (["hessian", "x.pt", "--tol", "nan"], "argument --tol: must be a finite number > 0 and < 1, got nan"),
    (["surface", "x.pt", "--resolution", "1000000000000"], "argument --resolution: must be in [2, 10,000]"),
    (["surface", "x.pt", "--range", "1e308"], "argument --range: must be a finite number > 0 and <= 10000"),
    (["flatness", "x.pt", "--clients", "c.pt", "--rho", "inf"], "argument --rho: must be a finite number > 0"),
    (["hessian", "x.pt", "--max-iter", "0"], "argument --max-iter: must be at least 1, got 0"),
    (["hessian", "x.pt", "--device", "meta"], "device 'meta' cannot run an analysis"),
])
def test_bad_flags_are_one_line_before_anything_runs(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
