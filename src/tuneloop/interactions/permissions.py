"""Owner-only files for what the gateway stores: 0600 files (request logs, SQLite databases) in 0700 folders.

Prompts, answers, feedback and key hashes are private to the account that runs the server. Files
are created with these modes (never through the umask, which is usually 022), and files or
folders found readable by others at start are tightened, with a warning that names them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("tuneloop.serve")

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path, ours: bool = True) -> None:
    """`path` and its missing parents created, `path` itself owner-only.

    An existing folder is tightened when it is `ours` (TUNELOOP_HOME/serve); a folder the operator
    chose (a log path in /var/log/...) may be shared with a log shipper on purpose and is left as it
    is: the files in it are owner-only either way.
    """
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode goes through the umask; chmod does not
    elif ours:  # no warning: paths.serve_dir() makes it through the umask a moment before
        _tighten(path, DIR_MODE, warn=False)


def private_file(path: Path) -> None:
    """`path` exists and is owner-only: created empty with mode 0600, or tightened if it was looser."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        os.chmod(path, FILE_MODE)  # O_CREAT's mode goes through the umask too (it only removes bits)
    except FileExistsError:
        tighten(path)


def tighten(path: Path) -> None:
    """An existing file readable or writable by others made owner-only (a warning says so)."""
    if path.is_file():
        _tighten(path, FILE_MODE)


def open_private(path: Path, mode: str = "a", encoding: str = "utf-8"):
    """`open(path, mode)`, but a file it creates gets mode 0600 from the start (no window at 0644)."""
    flags = {"a": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "w": os.O_WRONLY | os.O_TRUNC | os.O_CREAT}[mode]
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & FILE_MODE)
    return os.fdopen(fd, mode, encoding=encoding)


def _tighten(path: Path, mode: int, warn: bool = True) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if not current & 0o077:
        return
    try:
        os.chmod(path, mode)
    except OSError as e:  # not ours (a shared volume): say so, do not stop the server
        log.warning(
            "%s is readable by other users (mode %o) and could not be tightened: %s", path, current, e
        )
        return
    if warn:
        log.warning("%s was readable by other users (mode %o); now %o", path, current, mode)
