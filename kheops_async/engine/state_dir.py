"""The engine's own corner of a destination: ``<dest>/.kheops-async/``.

It holds the journal (:mod:`kheops_async.engine.journal`), the lock that keeps two
runs off one journal, and the temporary files of running downloads::

    <dest>/.kheops-async/
        journal.sqlite            what is done (SQLite, WAL)
        journal.lock              held (flock) by the run writing the journal
        tmp/<host>.<pid>.<n>/     temporary files of one running download

Each run writes its temporary files in a directory of its own (two runs in one
process too), removed when the run ends, whatever ends it. At start, a run sweeps
the directories of runs that are gone: a PID of this host that no longer runs, or a
directory of another host that has not changed for :data:`FOREIGN_TEMP_MAX_AGE`.
A live run's directory is never touched. Layout paths cannot reach this directory:
sanitised path components never start with a dot.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

from kheops_async.errors import ConfigurationError

__all__ = [
    "FOREIGN_TEMP_MAX_AGE",
    "STATE_DIR_NAME",
    "DestinationLock",
    "TempArea",
    "state_dir",
]

STATE_DIR_NAME = ".kheops-async"
FOREIGN_TEMP_MAX_AGE = 24 * 3600.0
"""Seconds after which another host's temporary directory is taken as abandoned."""

HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "localhost"
_TEMP_COUNTER = itertools.count(secrets.randbits(48))
_RUN_COUNTER = itertools.count(1)


def state_dir(root: Path) -> Path:
    """``<root>/.kheops-async``."""
    return root / STATE_DIR_NAME


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TempArea:
    """One run's temporary-file directory in one destination."""

    def __init__(self, root: Path) -> None:
        self.base = state_dir(root) / "tmp"
        self.directory = self.base / f"{HOST}.{os.getpid()}.{next(_RUN_COUNTER)}"
        self._prefix = f"{self.directory}{os.sep}"

    def prepare(self) -> int:
        """Create this process's directory; sweep those of dead runs; return files removed."""
        self.base.mkdir(parents=True, exist_ok=True)
        removed = 0
        now = time.time()
        for entry in self.base.iterdir():
            if entry == self.directory:
                continue
            host, _, rest = entry.name.partition(".")
            pid_text = rest.partition(".")[0]
            if host == HOST:
                if _pid_alive(int(pid_text) if pid_text.isdigit() else -1):
                    continue
            else:
                try:
                    if now - entry.stat().st_mtime < FOREIGN_TEMP_MAX_AGE:
                        continue
                except OSError:
                    continue
            removed += _remove_tree(entry)
        self.directory.mkdir(exist_ok=True)
        return removed

    def new_path(self) -> str:
        """A fresh temporary file name (a counter: no system randomness, no ``pathlib``)."""
        return f"{self._prefix}{next(_TEMP_COUNTER):x}.part"

    def remove(self) -> None:
        """Delete this process's directory and anything left in it (end of a run)."""
        _remove_tree(self.directory)


def _remove_tree(path: Path) -> int:
    """Remove a directory (or file) and return how many files it held."""
    try:
        count = sum(1 for _ in path.iterdir()) if path.is_dir() else 1
    except OSError:
        count = 0
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
    return count


class DestinationLock:
    """An exclusive lock on one journal: a second run on it stops at once.

    Taken with ``flock`` on ``<name>.lock`` beside the journal; released when the
    run ends or its process dies (the kernel drops the lock), so a crash never
    leaves a stale lock behind. The file holds the owner's host and PID for the
    message of the run that is refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`ConfigurationError` naming the owner."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another run"
            finally:
                os.close(fd)
            raise ConfigurationError(
                f"another kheops-async run ({owner}) is writing to {self.path.parent.parent}; "
                "wait for it to end, or use another --out-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {HOST}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
