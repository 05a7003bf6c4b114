"""Fuzzing the command line: every bad input to every command is one ``error:`` line and exit status 2.

The cases are data (``tests/fuzz_cases.py``); :func:`run_case` runs one in-process on fresh copies
of tiny fixtures and returns an :class:`Outcome` without asserting, so the same runs give the
pytest verdicts and a report::

    python -m pytest -q tests/test_fuzz.py       # one test per case (+ concurrency, malicious files)
    python -m tests.test_fuzz                    # a table of counts and every failing case with a reason

A case passes when ``main(argv)`` (``SystemExit(code)`` counts as exit status ``code``):

- returns 2, and stderr is exactly one line that starts with ``error: `` (no usage lines, no
  warnings, no traceback) and does not say ``internal error`` (the CLI's last-resort catch-all);
- lets no exception escape;
- leaves no result file behind: no output named by the case exists afterwards unless it existed
  before (then it is unchanged), and no new file appears in the case's folder;
- changes no input: every file of the case's folder has the same SHA-256 before and after;
- runs no code from a file: the marker ``{tmp}/PWNED`` never appears;
- prints none of the content of the case's ``secret`` file.

Faults: ``enospc`` / ``erofs`` use a real 64 KiB tmpfs at ``{tmp}/fault`` (filled up, or remounted
read-only) where ``mount`` works (root outside a locked-down sandbox), else monkeypatches that make
every write under it fail the same way (``LANDSCAPE_FUZZ_MOUNT=0`` forces them); ``eacces`` is
always a monkeypatch (root ignores file modes). The network is blocked during every case.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from landscape.cli import main
from tests import fuzz_cases
from tests.fuzz_cases import CASES, FAULT_DIR, MARKER, Case

#: Seconds one case may take before it counts as hung.
CASE_TIMEOUT = float(os.environ.get("LANDSCAPE_FUZZ_TIMEOUT", "10"))
REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"\{(tmp|ckpt|client0|client1|client2|surface|plane|hessian_json|dirs|eig|data|run)\}")
#: The fixture files, by placeholder (paths relative to a case's folder).
FIXTURE_FILES = {"ckpt": "global.pt", "client0": "client0.pt", "client1": "client1.pt", "client2": "client2.pt",
                 "surface": "s.npz", "plane": "p.npz", "hessian_json": "h.json", "dirs": "dirs.pt", "eig": "eig.pt",
                 "data": "d.npz", "run": "run"}
TRAIN_ARGV = list(fuzz_cases.TRAIN[1:])


# ---------------------------------------------------------------------------------------------
# Fixtures: one tiny run and the results made from it, built once
# ---------------------------------------------------------------------------------------------

def _quiet_main(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"building a fuzz fixture failed: landscape {' '.join(argv)}\n{err.getvalue()}")


def build_fixtures(folder: Path) -> Path:
    """Train the tiny run and make every fixture file of :data:`FIXTURE_FILES` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / "run"
    _quiet_main(["train", *TRAIN_ARGV, "--save-every", "1", "--save-clients-every", "2", "--out", str(run)])
    shutil.copy(run / "checkpoints" / "global_r000002.pt", folder / "global.pt")
    clients = sorted((run / "clients").glob("r000002_c*.pt"))
    for i, path in enumerate(clients[:3]):
        shutil.copy(path, folder / f"client{i}.pt")
    g, fast = str(folder / "global.pt"), ["--num-samples", "20", "--device", "cpu"]
    _quiet_main(["surface", g, "--resolution", "3", *fast, "--out", str(folder / "s.npz"),
                 "--save-directions", str(folder / "dirs.pt")])
    _quiet_main(["plane", g, str(folder / "client0.pt"), str(folder / "client1.pt"), "--resolution", "3", *fast,
                 "--out", str(folder / "p.npz")])
    _quiet_main(["hessian", g, "--top-k", "5", *fast, "--out", str(folder / "h.json"),
                 "--save-eigenvectors", str(folder / "eig.pt")])
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.standard_normal((20, 1, 4, 4)).astype(np.float32), y=np.arange(20) % 3)
    return folder


_FIXTURES: Path | None = None


def fixture_folder() -> Path:
    """The fixtures, built on first use into a temporary folder (for use outside pytest)."""
    global _FIXTURES
    if _FIXTURES is None:
        import atexit

        folder = Path(tempfile.mkdtemp(prefix="landscape-fuzz-fixtures-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _FIXTURES = build_fixtures(folder)
    return _FIXTURES


# ---------------------------------------------------------------------------------------------
# Faults: a full disk, a read-only file system, no permission
# ---------------------------------------------------------------------------------------------

_MOUNT_OK: bool | None = None


def can_mount() -> bool:
    """Whether a small tmpfs can be mounted here (root, and a sandbox that allows it)."""
    global _MOUNT_OK
    if _MOUNT_OK is None:
        _MOUNT_OK = False
        if os.environ.get("LANDSCAPE_FUZZ_MOUNT", "1") != "0" and shutil.which("mount") and hasattr(os, "geteuid") \
                and os.geteuid() == 0:
            probe = tempfile.mkdtemp(prefix="landscape-fuzz-mount-")
            try:
                ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                                    capture_output=True).returncode == 0
                if ok:
                    _MOUNT_OK = subprocess.run(["umount", probe], capture_output=True).returncode == 0
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    os.rmdir(probe)
    return _MOUNT_OK


def fault_mechanism(kind: str) -> str:
    return "tmpfs" if kind in ("enospc", "erofs") and can_mount() else "monkeypatch"


class _FullFile:
    """A file opened for writing on a full disk: it exists, but every write fails."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, *args: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(self._f, "name", None))

    writelines = write

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self) -> Any:
        return iter(self._f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class Fault:
    """Make every write under ``folder`` fail with ``kind`` (see the module docstring)."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder = kind, folder
        self.errno = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eacces": errno.EACCES}[kind]
        self.mounted = False
        self.saved: list[tuple[Any, str, Any]] = []

    # -- lifecycle: prepare (before the setup), arm / disarm (around the call), cleanup ----------
    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if fault_mechanism(self.kind) == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(self.folder)], check=True,
                           capture_output=True)
            self.mounted = True

    def arm(self) -> None:
        if self.mounted and self.kind == "enospc":
            fd = os.open(self.folder / ".filler", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for size in (65536, 4096, 512, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * size)
            finally:
                os.close(fd)
        elif self.mounted and self.kind == "erofs":
            subprocess.run(["mount", "-o", "remount,ro", str(self.folder)], check=True, capture_output=True)
        else:
            self._patch()

    def disarm(self) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()

    def cleanup(self) -> None:
        self.disarm()
        if self.mounted:
            if subprocess.run(["umount", str(self.folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)
            self.mounted = False

    # -- the monkeypatches ------------------------------------------------------------------------
    def _under(self, path: Any) -> bool:
        if isinstance(path, int):
            try:
                path = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return False
        try:
            p = os.path.realpath(os.path.abspath(os.fsdecode(path)))
        except TypeError:
            return False
        root = os.path.realpath(self.folder)
        return p == root or p.startswith(root + os.sep)

    def _error(self, path: Any) -> OSError:
        return OSError(self.errno, os.strerror(self.errno), os.fsdecode(path) if not isinstance(path, int) else None)

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _patch(self) -> None:
        fault = self
        real_open, real_os_open, real_write = builtins.open, os.open, os.write
        real_mkdir, real_replace, real_rename, real_unlink = os.mkdir, os.replace, os.rename, os.unlink
        real_save = torch.save

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if not isinstance(file, int) and any(c in mode for c in "wax+") and fault._under(file):
                if fault.kind == "enospc":
                    return _FullFile(real_open(file, mode, *args, **kwargs))
                raise fault._error(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & Fault.WRITE_FLAGS and fault.kind != "enospc" and fault._under(path):
                raise fault._error(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_write(fd: int, data: Any) -> int:
            if fault.kind == "enospc" and fd > 2 and fault._under(fd):
                raise fault._error(fd)
            return real_write(fd, data)

        def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if fault.kind != "enospc" and fault._under(path):
                if os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
                raise fault._error(path)
            return real_mkdir(path, *args, **kwargs)

        def guard2(real: Any) -> Any:
            def fake(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                if fault.kind != "enospc" and (fault._under(src) or fault._under(dst)):
                    raise fault._error(dst)
                return real(src, dst, *args, **kwargs)
            return fake

        def fake_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            if fault.kind != "enospc" and fault._under(path):
                raise fault._error(path)
            return real_unlink(path, *args, **kwargs)

        def fake_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            target = f if isinstance(f, (str, bytes, os.PathLike)) else getattr(f, "name", None)
            if isinstance(target, (str, bytes, os.PathLike)) and fault._under(target):
                if fault.kind == "enospc" and not hasattr(f, "write"):
                    real_open(f, "wb").close()  # created, then the disk is full
                raise fault._error(target)
            return real_save(obj, f, *args, **kwargs)

        self._set(builtins, "open", fake_open)
        self._set(io, "open", fake_open)
        self._set(tarfile, "bltn_open", fake_open)
        self._set(os, "open", fake_os_open)
        self._set(os, "write", fake_write)
        self._set(os, "mkdir", fake_mkdir)
        self._set(os, "replace", guard2(real_replace))
        self._set(os, "rename", guard2(real_rename))
        self._set(os, "unlink", fake_unlink)
        self._set(os, "remove", fake_unlink)
        self._set(torch, "save", fake_save)


@contextlib.contextmanager
def no_network():
    """Every connection attempt fails at once (``landscape download`` must say how to fetch by hand)."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENETUNREACH, "network disabled in the fuzz tests")

    saved = [(socket.socket, "connect", socket.socket.connect), (socket, "create_connection", socket.create_connection),
             (socket, "getaddrinfo", socket.getaddrinfo)]
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class CaseTimeout(BaseException):
    """Raised in the case by the alarm when it runs past :data:`CASE_TIMEOUT`."""


@contextlib.contextmanager
def time_limit(seconds: float):
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(*args: Any) -> None:
        raise CaseTimeout(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def cli_warnings():
    """Warnings as a user of the command sees them (Python's default filters), written to stderr."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one case did (no verdict; see :meth:`problems`)."""

    case: Case
    code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stderr_lines: list[str] = field(default_factory=list)
    traceback: str | None = None  # traceback text printed, or of the exception that escaped main
    escaped: str | None = None  # "TypeError: ..." when an exception escaped main
    timed_out: bool = False
    outputs_left: list[str] = field(default_factory=list)
    inputs_changed: list[str] = field(default_factory=list)
    marker: bool = False
    leaked: bool = False
    seconds: float = 0.0
    fault: str | None = None  # the mechanism used for the case's fault
    setup_error: str | None = None  # the case's setup failed (a bug of the case)

    @property
    def one_error_line(self) -> bool:
        return (len(self.stderr_lines) == 1 and self.stderr_lines[0].startswith("error: ")
                and len(self.stderr_lines[0]) > len("error: "))

    def problems(self) -> list[str]:
        """Every property the case violates, as short reasons (empty: the case passes)."""
        out = []
        if self.setup_error:
            return [f"setup {self.case.setup} failed: {self.setup_error}"]
        if self.marker:
            out.append(f"code from a file ran: {MARKER} created")
        if self.leaked:
            out.append(f"printed the content of {self.case.secret}")
        if self.inputs_changed:
            out.append(f"inputs changed: {', '.join(self.inputs_changed[:3])}")
        if self.timed_out:
            out.append(f"timeout after {CASE_TIMEOUT:g} s")
        if self.escaped:
            out.append(f"exception escaped main: {self.escaped}")
        elif self.traceback:
            out.append(f"traceback: {_last_line(self.traceback)}")
        if self.code is not None and self.code != 2:
            out.append(f"exit status {self.code}" + (" (bad input accepted)" if self.code == 0 else ""))
        if self.code is not None and not self.timed_out and not self.escaped:
            if not self.one_error_line:
                out.append(f"stderr is not one 'error:' line: {_lines_summary(self.stderr_lines)}")
            elif "internal error" in self.stderr:
                out.append(f"internal error: {self.stderr_lines[0][:150]}")
            elif self.case.expect and self.case.expect not in self.stderr_lines[0]:
                out.append(f"message lacks {self.case.expect!r}: {self.stderr_lines[0][:150]}")
        if self.outputs_left:
            out.append(f"result files left: {', '.join(self.outputs_left[:3])}")
        return out

    def explain(self) -> str:
        """A readable account for a failing assertion."""
        parts = [f"case {self.case.id}: landscape {' '.join(self.case.argv)}",
                 *(f"  - {p}" for p in self.problems()), f"  exit status: {self.code}",
                 "  stderr:", *(f"    {line}" for line in self.stderr.splitlines()[-25:])]
        if self.traceback and self.escaped:
            parts += ["  escaped:", *(f"    {line}" for line in self.traceback.splitlines()[-15:])]
        return "\n".join(parts)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def _lines_summary(lines: list[str]) -> str:
    """``nothing``, the one line, or how many lines and the first that is not the error line."""
    if not lines:
        return "nothing"
    if len(lines) == 1:
        return repr(lines[0][:160])
    extra = next((line for line in lines if not line.startswith("error: ")), lines[0]).strip()
    warning = re.search(r"\b\w*Warning: .*", extra)
    return f"{len(lines)} lines, e.g. {(warning.group(0) if warning else extra)[:140]!r}"


def fill(text: str, tmp: Path) -> str:
    """Replace the placeholders of a case by the paths of the case's copies."""
    def sub(m: re.Match) -> str:
        name = m.group(1)
        return str(tmp) if name == "tmp" else str(tmp / FIXTURE_FILES[name])

    return PLACEHOLDER.sub(sub, text)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: regular files by SHA-256, folders, links by target, the rest by type."""
    import hashlib

    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                out[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[path] = ("dir",)
            elif os.path.isfile(path):
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                out[path] = ("file", digest.hexdigest())
            else:
                out[path] = ("other",)
    return out


def secret_lines(path: str) -> list[str]:
    """The distinctive lines of a file that must never be printed (its content)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    pieces = set()
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 4:
            pieces.add(line)
            # the fields of CSV-like / passwd-like lines, too
            pieces.update(p for p in re.split(r"[,:]", line) if len(p) >= 10)
    return sorted(pieces)


class _Capture:
    """stdout/stderr capture: pytest's capsys when given, else a plain redirect."""

    def __init__(self, capsys: Any = None) -> None:
        self.capsys = capsys
        self.out, self.err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Capture:
        if self.capsys is not None:
            self.capsys.readouterr()
        else:
            self._stack.enter_context(contextlib.redirect_stdout(self.out))
            self._stack.enter_context(contextlib.redirect_stderr(self.err))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def read(self) -> tuple[str, str]:
        if self.capsys is not None:
            got = self.capsys.readouterr()
            return got.out, got.err
        return self.out.getvalue(), self.err.getvalue()


def run_case(case: Case, tmp_path: Path, fixtures: Path | None = None, capsys: Any = None) -> Outcome:
    """Run one case in ``tmp_path`` (fresh copies of the fixtures) and record what it did; never asserts."""
    fixtures = fixtures if fixtures is not None else fixture_folder()
    tmp = Path(tmp_path)
    tmp.mkdir(parents=True, exist_ok=True)
    for name in FIXTURE_FILES.values():
        src = fixtures / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
    outcome = Outcome(case)
    fault = Fault(case.fault, tmp / FAULT_DIR) if case.fault else None
    cwd = os.getcwd()
    try:
        if fault:
            fault.prepare()
            outcome.fault = fault_mechanism(case.fault)
        if case.setup:
            try:
                fuzz_cases.SETUPS[case.setup](tmp)
            except Exception as exc:  # a broken case, not a finding: reported as such
                outcome.setup_error = f"{type(exc).__name__}: {exc}"
                return outcome
        argv = [fill(a, tmp) for a in case.argv]
        outputs = [fill(o, tmp) for o in case.outputs]
        secrets = secret_lines(fill(case.secret, tmp)) if case.secret else []
        if fault:
            fault.arm()
        before = snapshot(tmp)
        os.chdir(tmp)
        start = time.perf_counter()
        with _Capture(capsys) as cap:
            try:
                with no_network(), cli_warnings(), time_limit(CASE_TIMEOUT):
                    try:
                        outcome.code = int(main(argv) or 0)
                    except SystemExit as exc:
                        outcome.code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                        if isinstance(exc.code, str):
                            print(exc.code, file=sys.stderr)
            except CaseTimeout:
                outcome.timed_out = True
            except BaseException as exc:  # noqa: BLE001 - recorded, never re-raised
                outcome.escaped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                outcome.traceback = traceback.format_exc()
            finally:
                if fault:
                    fault.disarm()
        outcome.seconds = time.perf_counter() - start
        outcome.stdout, outcome.stderr = cap.read()
        os.chdir(cwd)
        outcome.stderr_lines = [line for line in outcome.stderr.splitlines()]
        if outcome.traceback is None and "Traceback (most recent call last)" in outcome.stderr:
            outcome.traceback = outcome.stderr[outcome.stderr.index("Traceback (most recent call last)"):]
        after = snapshot(tmp)
        allowed = {fill(p, tmp) for p in case.may_change}
        outcome.inputs_changed = [os.path.relpath(p, tmp) for p, v in before.items()
                                  if p not in allowed and after.get(p) != v]
        left = [o for o in outputs if o not in before and os.path.lexists(o)]
        left += [p for p, v in after.items() if p not in before and v[0] != "dir" and not
                 any(p == o or p.startswith(o.rstrip("/") + "/") for o in left)]
        outcome.outputs_left = [os.path.relpath(p, tmp) for p in left]
        outcome.marker = os.path.lexists(tmp / MARKER)
        printed = outcome.stdout + outcome.stderr
        outcome.leaked = any(s in printed for s in secrets)
    finally:
        os.chdir(cwd)
        if fault:
            fault.cleanup()
    return outcome


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fuzz_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    global _FIXTURES
    _FIXTURES = build_fixtures(tmp_path_factory.mktemp("fuzz-fixtures"))
    return _FIXTURES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line(case: Case, fuzz_fixtures: Path, tmp_path: Path, capsys: Any) -> None:
    outcome = run_case(case, tmp_path / "case", fuzz_fixtures, capsys)
    assert not outcome.problems(), outcome.explain()


def test_malicious_files_never_run_code(fuzz_fixtures: Path, tmp_path: Path) -> None:
    """No pickle, model name or config in any file makes the commands run code (the marker never appears)."""
    cases = [c for c in CASES if c.setup in fuzz_cases.MALICIOUS]
    assert len(cases) >= 15
    ran = []
    for i, case in enumerate(cases):
        outcome = run_case(case, tmp_path / f"c{i}", fuzz_fixtures)
        if outcome.marker or (tmp_path / MARKER).exists() or Path(MARKER).exists():
            ran.append(case.id)
    assert not ran, f"code from a file ran in: {', '.join(ran)}"


def test_cases_are_well_formed() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for case in CASES:
        assert case.setup is None or case.setup in fuzz_cases.SETUPS, case.id
        assert case.fault in (None, *fuzz_cases.FAULTS), case.id
        for text in (*case.argv, *case.outputs):
            leftover = PLACEHOLDER.sub("", text)
            assert not re.search(r"\{[a-z_0-9]+\}", leftover), (case.id, text)


# --- two writers of one result ------------------------------------------------------------------

def _landscape(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "landscape", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _verdict(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        results.append((p.returncode, err))
    return results


def _refused(code: int, err: str, what: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"{what}: exit status {code}, stderr {err[-400:]!r}"


def _second_writer_is_refused(first: subprocess.Popen, ready: Any, others: list[list[str]], cwd: Path) -> None:
    """Once ``first`` is writing (``ready()``), every command of ``others`` must be refused; then stop ``first``.

    ``first`` must not fail meanwhile: exactly one writer proceeds.
    """
    try:
        started = time.monotonic()
        while first.poll() is None and not ready() and time.monotonic() - started < 60:
            time.sleep(0.05)
        assert first.poll() is None, f"the first writer ended ({first.returncode}) before the second could start"
        for argv in others:
            (code, err), = _verdict([_landscape(argv, cwd)], timeout=12)
            what = f"a second `landscape {argv[0]}{' --resume' if '--resume' in argv else ''}` while another " \
                   "writes the same output"
            if code == -signal.SIGKILL:
                err = f"(still writing after 12 s: it proceeded too) {err}"
            _refused(code, err, what)
        # Still writing: otherwise the second writer may simply have come after it (a test too quick to tell).
        assert first.poll() is None, f"the first writer ended ({first.returncode}) while the second was tried"
    finally:
        if first.poll() is None:
            first.terminate()
        first.communicate()


def test_two_surface_writers_of_one_result(fuzz_fixtures: Path, tmp_path: Path) -> None:
    """A second ``surface --out X`` while a first one writes X is refused with one line (a lock)."""
    ckpt = shutil.copy(fuzz_fixtures / "global.pt", tmp_path / "global.pt")
    argv = ["surface", str(ckpt), "--dim", "3", "--resolution", "81", "--points-per-batch", "1", "--num-samples", "120",
            "--device", "cpu", "--out", str(tmp_path / "shared.npz")]  # 531,441 points: minutes, it is stopped early
    first = _landscape(argv, tmp_path)
    _second_writer_is_refused(first, lambda: "cosine" in first.stdout.readline(), [argv], tmp_path)


def test_two_train_runs_into_one_folder(tmp_path: Path) -> None:
    """While ``train --out DIR`` runs, a second one into DIR is refused with one line, also with ``--resume``."""
    out = tmp_path / "shared-run"
    argv = [*fuzz_cases.TRAIN, "--rounds", "100000", "--out", str(out)]
    first = _landscape(argv, tmp_path)
    metrics = out / "metrics.jsonl"
    _second_writer_is_refused(first, lambda: metrics.exists() and metrics.stat().st_size > 0,
                              [argv, [*argv, "--resume"]], tmp_path)


# ---------------------------------------------------------------------------------------------
# Report mode: python -m tests.test_fuzz
# ---------------------------------------------------------------------------------------------

CATEGORIES = [
    ("ok", "exit 2, one 'error:' line, nothing touched"),
    ("traceback", "tracebacks / escaped exceptions"),
    ("accepted", "bad input accepted (exit 0)"),
    ("other-exit", "other exit status"),
    ("multi-line", "multi-line or non-'error:' stderr"),
    ("internal", "'internal error' messages"),
    ("expect", "message lacks the expected hint"),
    ("left", "result files left behind"),
    ("destroyed", "inputs changed / destroyed"),
    ("marker", "marker file created (code ran)"),
    ("leak", "secret file content printed"),
    ("timeout", f"timeouts (> {CASE_TIMEOUT:g} s)"),
]


def report(outcomes: list[Outcome], seconds: float) -> str:
    """The table of counts (a case may count in several rows) and the failing cases with a reason."""
    counts = {key: 0 for key, _ in CATEGORIES}
    for o in outcomes:
        problems = o.problems()
        if not problems:
            counts["ok"] += 1
            continue
        counts["traceback"] += bool(o.escaped or o.traceback)
        counts["accepted"] += o.code == 0
        counts["other-exit"] += o.code is not None and o.code not in (0, 2)
        counts["multi-line"] += o.code is not None and not o.timed_out and not o.escaped and not o.one_error_line
        counts["internal"] += "internal error" in o.stderr
        counts["expect"] += any(p.startswith("message lacks") for p in problems)
        counts["left"] += bool(o.outputs_left)
        counts["destroyed"] += bool(o.inputs_changed)
        counts["marker"] += o.marker
        counts["leak"] += o.leaked
        counts["timeout"] += o.timed_out
    lines = [f"{'cases':<48} {len(outcomes):>5}"]
    lines += [f"{label:<48} {counts[key]:>5}" for key, label in CATEGORIES]
    lines.append(f"{'failing cases':<48} {sum(1 for o in outcomes if o.problems()):>5}")
    lines.append(f"{'seconds':<48} {seconds:>5.0f}")
    lines.append("\nfailing cases (first reason):")
    for o in outcomes:
        problems = o.problems()
        if problems:
            lines.append(f"  {o.case.id:<58} {problems[0][:170]}")
    return "\n".join(lines)


def report_main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.test_fuzz", description="Run every fuzz case; print a report.")
    parser.add_argument("-k", metavar="SUBSTRING", help="only cases whose id contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each failing case's stderr too")
    args = parser.parse_args(argv)
    import landscape

    torch.set_num_threads(1)
    cases = [c for c in CASES if not args.k or args.k in c.id]
    root = Path(tempfile.mkdtemp(prefix="landscape-fuzz-"))
    start = time.perf_counter()
    try:
        fixtures = build_fixtures(root / "fixtures")
        print(f"landscape {landscape.__version__} from {landscape.__file__}")
        print(f"python {sys.version.split()[0]}, torch {torch.__version__}; faults: enospc/erofs via "
              f"{fault_mechanism('enospc')}, eacces via monkeypatch; fixtures in {time.perf_counter() - start:.1f} s\n")
        outcomes = []
        for i, case in enumerate(cases):
            outcome = run_case(case, root / f"case{i:04d}", fixtures)
            outcomes.append(outcome)
            if args.verbose and outcome.problems():
                print(outcome.explain(), "\n", flush=True)
            shutil.rmtree(root / f"case{i:04d}", ignore_errors=True)
        print(report(outcomes, time.perf_counter() - start))
        slow = sorted(outcomes, key=lambda o: -o.seconds)[:5]
        print("\nslowest: " + ", ".join(f"{o.case.id} {o.seconds:.1f} s" for o in slow))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(report_main())
