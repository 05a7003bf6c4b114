"""The one exception type the command line turns into a one-line message, and the translations into it.

Library code raises :class:`LandscapeError` for anything a user can fix (a wrong
path, a mismatched state_dict, an invalid option); the message names the problem,
where it is, and the fix: ``<what> (<where>): <how to fix>``. The CLI prints
``error: <message>`` and exits with status 2, never a traceback. Programming errors
stay ordinary exceptions.

Two translations live here so that every caller words them alike:

- :func:`os_error`: an ``OSError`` from writing or reading a file (full disk,
  permission, a folder where a file should be) becomes one line with the fix.
- :func:`user_code`: an exception raised by code the user supplied (a model factory)
  becomes one line naming that code.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class LandscapeError(Exception):
    """A problem with the user's input, with a message that says how to fix it.

    ``LandscapeError(what, where=..., fix=...)`` words it as ``what (where): fix``.

    >>> str(LandscapeError("no space left on the device", where="out.json", fix="free space"))
    'no space left on the device (out.json): free space'
    """

    def __init__(self, message: str, *, where: object = None, fix: str | None = None) -> None:
        if where is not None:
            message = f"{message} ({where})"
        if fix is not None:
            message = f"{message}: {fix}"
        super().__init__(" ".join(message.split()))  # always one line


#: What to do about each kind of OS failure.
_OS_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free some space or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else"),
    errno.EFBIG: ("file too large for this file system or limit", "write somewhere else or raise the limit"),
    errno.EACCES: ("permission denied", "check the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check the permissions or choose another path"),
    errno.EROFS: ("read-only file system", "write somewhere else"),
    errno.EISDIR: ("is a folder, not a file", "give a file path"),
    errno.ENOTDIR: ("a file is in the way where a folder is needed", "give a path whose parents are folders"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or close other programs"),
    errno.EIO: ("input/output error", "check the disk"),
}


def os_error(exc: OSError, action: str = "cannot write") -> LandscapeError:
    """One line for an OS failure: ``<action>: <what> (<path>): <fix>``.

    >>> import errno
    >>> str(os_error(OSError(errno.ENOSPC, "No space left on device", "r.json")))
    'cannot write: no space left on the device (r.json): free some space or write somewhere else'
    """
    what, fix = _OS_FIXES.get(exc.errno, (exc.strerror or type(exc).__name__, "check the path and try again"))
    where = exc.filename if exc.filename is not None else "path unknown"
    return LandscapeError(f"{action}: {what}", where=where, fix=fix)


@contextmanager
def user_code(name: str, fix: str) -> Iterator[None]:
    """Run code the user supplied; any exception it raises becomes one :class:`LandscapeError` line."""
    try:
        yield
    except LandscapeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise LandscapeError(f"{name} raised {type(exc).__name__}{': ' + text if text else ''}", fix=fix) from None
