"""A set of UIDs kept on disk, so that remembering every listed study costs no memory.

Verify (``--url``) and sync (``--delete``) must know, at the end of a listing,
which studies the server listed: for a million studies a Python set would hold
about 100 MB. :class:`UidSet` is a private temporary SQLite database (the empty file
name: SQLite creates it on disk, keeps a small page cache in memory and deletes the
file when the connection closes). Not thread-safe: one thread at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

__all__ = ["UidSet"]


class UidSet:
    """UIDs added in batches, then asked about one by one."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.execute("CREATE TABLE uids (uid TEXT PRIMARY KEY) WITHOUT ROWID")
        self.count = 0

    def add(self, uids: Iterable[str]) -> None:
        """Add UIDs (duplicates are ignored)."""
        with self._db:
            cursor = self._db.executemany(
                "INSERT OR IGNORE INTO uids (uid) VALUES (?)", ((uid,) for uid in uids)
            )
            self.count += max(cursor.rowcount, 0)

    def __contains__(self, uid: object) -> bool:
        row = self._db.execute("SELECT 1 FROM uids WHERE uid = ?", (uid,)).fetchone()
        return row is not None

    def close(self) -> None:
        """Drop the set (its file is deleted)."""
        self._db.close()
