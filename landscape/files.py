"""Atomic file writing, one writer at a time, outputs checked before the work, content hashing.

Shared by checkpoints, result files and run folders: an output never overwrites an input
(:func:`check_outputs`), is written whole or not at all (:func:`atomic_write`) and by one
process at a time (:func:`exclusive`)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from landscape.errors import LandscapeError, os_error


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file so readers see either the old file or the complete new one.

    ``write`` receives a temporary path in the destination folder; the file is
    then renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(Path(tmp))
        except OSError as exc:
            if exc.filename is None:  # a failed write() names no file: name the one being written
                exc.filename = str(path)
            raise
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path``, serialized in memory first.

    torch's own file writer reports a full disk as a RuntimeError; writing the bytes from
    Python gives the OSError (ENOSPC, EDQUOT, EFBIG, ...) that the command line turns into
    one line.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (identifies a checkpoint inside result files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# One writer at a time
# ---------------------------------------------------------------------------------------------

def lock_file_of(target: str | os.PathLike, folder: bool = False) -> Path:
    """The lock guarding ``target``: ``DIR/.lock`` inside a run folder, ``.NAME.lock`` beside a file."""
    target = Path(target)
    return target / ".lock" if folder else target.parent / f".{target.name}.lock"


@contextmanager
def exclusive(target: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (a result file or a run folder) while it is written.

    An advisory ``flock`` on a lock file: the operating system releases it when the holder
    exits, also after ``kill -9``, so a crashed writer never leaves a stale lock. A second
    writer does not wait; it gets one line naming the holder's process id.

    Raises:
        LandscapeError: another process holds the lock.
    """
    lock, what = lock_file_of(target, folder), "run folder" if folder else "file"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LandscapeError(f"another landscape process (pid {holder}) is writing this {what}", where=target,
                                 fix="wait for it to finish, or write somewhere else") from None
        try:  # the file may have been removed by the previous holder between open and lock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        if not folder:  # a file's lock goes with it; a run folder keeps its own
            lock.unlink(missing_ok=True)
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Outputs checked before the work
# ---------------------------------------------------------------------------------------------

def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (as it would be opened from here, links followed) lies inside ``folder``."""
    return Path(path).expanduser().resolve().is_relative_to(Path(folder).expanduser().resolve())


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (also through symlinks, hard links and ``./``)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_outputs(outputs: Mapping[str, tuple[str | os.PathLike | None, Sequence[str]]],
                  inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse, before any work starts, outputs that would destroy an input or cannot be written.

    Args:
        outputs: ``{flag: (path or None, allowed suffixes)}``; None paths are skipped,
            an empty suffix list allows any.
        inputs: every file the command reads.

    Raises:
        LandscapeError: an output that is an input, two outputs on one file, a wrong suffix,
            a folder in the way, a parent that is a file, or a folder that cannot be written.
    """
    named = [(flag, Path(p), suffixes) for flag, (p, suffixes) in outputs.items() if p is not None]
    for i, (flag, path, suffixes) in enumerate(named):
        if suffixes and path.suffix.lower() not in suffixes:
            raise LandscapeError(f"{flag} must end in {' or '.join(suffixes)}", where=path,
                                 fix=f"name the file e.g. {path.with_suffix(suffixes[0]).name}")
        for source in inputs:
            if same_file(path, source):
                raise LandscapeError(f"{flag} would overwrite an input", where=path,
                                     fix="write the result to another file")
        for other_flag, other, _ in named[:i]:
            if same_file(path, other):
                raise LandscapeError(f"{flag} and {other_flag} name the same file", where=path,
                                     fix="give each output its own file")
        if path.is_dir():
            raise LandscapeError(f"{flag} is a folder, not a file", where=path, fix="give a file path")
        check_writable_folder(path.parent, flag)


def check_writable_folder(folder: Path, flag: str) -> None:
    """The nearest existing ancestor of ``folder`` must be a folder we can create files in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LandscapeError(f"{flag}: {existing} is a file, not a folder", where=folder,
                             fix="give a path whose parents are folders")
    try:  # a real write: os.access says yes to root even on a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".landscape-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise os_error(exc, f"{flag}: cannot write into {existing}") from None


@contextmanager
def writing(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Write a command's outputs as one: locked while written, all kept or none changed.

    Each output is locked (:func:`exclusive`). An output that exists is kept aside (a hard
    link, no copy: every writer here replaces files through :func:`atomic_write`, so the old
    inode is never written into); if the work fails or is interrupted, outputs it already
    wrote are removed and the old files put back, so a failed command never leaves a new
    result beside a stale one. On success the old files are dropped.
    """
    targets = [Path(p) for p in dict.fromkeys(paths) if p is not None]
    with ExitStack() as stack:
        for path in targets:
            stack.enter_context(exclusive(path))
        kept: dict[Path, Path] = {}
        try:
            for path in targets:
                if path.is_file():
                    aside = path.parent / f".{path.name}.old"
                    aside.unlink(missing_ok=True)
                    try:
                        os.link(path, aside)
                    except OSError:  # a file system without hard links
                        shutil.copy2(path, aside)
                    kept[path] = aside
            yield
        except BaseException:
            for path in targets:
                if path in kept:
                    os.replace(kept.pop(path), path)
                else:
                    path.unlink(missing_ok=True)
            raise
        finally:
            for aside in kept.values():
                aside.unlink(missing_ok=True)
