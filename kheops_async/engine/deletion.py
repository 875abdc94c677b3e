"""``sync --delete``: remove the local instances the server no longer lists, safely.

Candidates are gathered while the sync runs, at three levels, and kept on disk (a
private temporary SQLite database, so a large deletion costs no memory):

- **studies**: every study of the journals (of this run's shard) that the complete
  study list did not name (:meth:`DeletionPlan.add_unlisted_studies`, at the end);
- **series**: the series of a listed study that its complete series list lacks;
- **instances**: the instances of a listed series that its instance list lacks
  (looked for when the journals hold more of the series than the server counts).

Nothing is deleted unless the whole run went well: every listing complete and not
cut short, no failure at all, and at least one study listed (an empty list is far
more often a wrong URL, album or filter than an empty archive). Then each candidate
file is removed, its row dropped from the journal that records it (and the record
of a series left with no instance), and directories left empty are removed up to
``--out-dir``. With ``dry_run`` the candidates are only reported.

Rows in another journal of the destination (the unsharded one, or a shard of
another count) are dropped under that journal's lock, taken for the moment of the
change: a sibling shard of the same count never holds this shard's studies, so
concurrent shards of one job never wait for each other.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kheops_async.engine.journal import Journal, JournalEntry
from kheops_async.engine.state_dir import DestinationLock
from kheops_async.engine.uid_set import UidSet
from kheops_async.errors import ConfigurationError
from kheops_async.records import Record
from kheops_async.shards import Shard

__all__ = ["LOCK_WAIT_SECONDS", "Deleted", "DeletionPlan", "apply_deletions"]

DELETE_BATCH = 500
"""Candidates removed per journal transaction."""
LOCK_WAIT_SECONDS = 120.0
"""How long a deletion waits for another journal's lock (held by a run using it)."""


class Deleted(Record):
    """One instance removed (or, in a dry run, to be removed)."""

    __slots__ = ("path", "reason", "series_uid", "sop_uid", "study_uid")

    def __init__(
        self, path: str, sop_uid: str, study_uid: str, series_uid: str, reason: str
    ) -> None:
        self.path = path
        self.sop_uid = sop_uid
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.reason = reason


class DeletionPlan:
    """The candidates of one sync, kept in a private temporary SQLite file."""

    def __init__(self, shard: Shard | None) -> None:
        self.shard = shard
        self.listed = UidSet()
        """Studies the study list named (this run's shard only)."""
        self.server_listed = 0
        """Studies the study list named, in every shard (the guard against an empty list)."""
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.execute(
            "CREATE TABLE candidates (journal TEXT, path TEXT, sop_uid TEXT, study_uid TEXT, "
            "series_uid TEXT, reason TEXT, PRIMARY KEY (journal, path)) WITHOUT ROWID"
        )
        self.count = 0

    def close(self) -> None:
        """Drop the candidates."""
        self.listed.close()
        self._db.close()

    def add(self, journal: Journal, entries: list[JournalEntry], reason: str) -> None:
        """Plan the removal of ``entries``, recorded by ``journal``."""
        with self._db:
            cursor = self._db.executemany(
                "INSERT OR IGNORE INTO candidates VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (str(journal.path), e.path, e.sop_uid, e.study_uid, e.series_uid, reason)
                    for e in entries
                ),
            )
            self.count += max(cursor.rowcount, 0)

    def add_found(self, family: list[Journal], entries: list[JournalEntry], reason: str) -> None:
        """Plan the removal of ``entries``, from whichever journals record them."""
        for journal in family:
            mine = [e for e in entries if journal.records(e.path, e.sop_uid)]
            if mine:
                self.add(journal, mine, reason)

    def add_unlisted_studies(self, family: list[Journal]) -> None:
        """Every study of the journals (in this shard) that the study list did not name."""
        for journal in family:
            for study_uid in journal.iter_study_uids():
                if self.shard is not None and not self.shard.contains(study_uid):
                    continue
                if study_uid not in self.listed:
                    entries = list(journal.own_study_entries(study_uid).values())
                    self.add(journal, entries, "study no longer listed by the server")

    def candidates(self) -> Iterator[tuple[str, Deleted]]:
        """(journal path, candidate), journal by journal, in path order."""
        rows = self._db.execute(
            "SELECT journal, path, sop_uid, study_uid, series_uid, reason FROM candidates "
            "ORDER BY journal, path"
        )
        for row in rows:
            yield row[0], Deleted(*row[1:])


def apply_deletions(
    root: Path,
    journal: Journal,
    plan: DeletionPlan,
    *,
    dry_run: bool,
    on_deleted: Callable[[Deleted], None],
) -> int:
    """Remove every candidate (or only report them, ``dry_run``); return how many.

    ``journal`` is this run's own journal (written directly); rows in the others are
    dropped under their lock. Raises :class:`ConfigurationError` when another
    journal stays locked for :data:`LOCK_WAIT_SECONDS`.
    """
    removed = 0
    by_journal: dict[str, list[Deleted]] = {}
    for journal_path, deleted in plan.candidates():
        by_journal.setdefault(journal_path, []).append(deleted)
        if len(by_journal[journal_path]) >= DELETE_BATCH:
            batch = by_journal.pop(journal_path)
            removed += _apply(root, journal, journal_path, batch, dry_run, on_deleted)
    for journal_path, batch in by_journal.items():
        removed += _apply(root, journal, journal_path, batch, dry_run, on_deleted)
    return removed


def _apply(
    root: Path,
    own: Journal,
    journal_path: str,
    batch: list[Deleted],
    dry_run: bool,
    on_deleted: Callable[[Deleted], None],
) -> int:
    if dry_run:
        for deleted in batch:
            on_deleted(deleted)
        return len(batch)
    if journal_path == str(own.path) and not own.readonly:
        _remove_files(root, batch, on_deleted)
        own.forget([d.path for d in batch])
        return len(batch)
    with _journal_lock(Path(journal_path)):
        other = Journal.open_for_edit(Path(journal_path))
        try:  # under its lock, look again: a run may have changed a row since
            batch = [d for d in batch if other.records(d.path, d.sop_uid)]
            _remove_files(root, batch, on_deleted)
            other.forget([d.path for d in batch])
        finally:
            other.close()
    return len(batch)


@contextlib.contextmanager
def _journal_lock(path: Path) -> Iterator[None]:
    lock = DestinationLock(path.with_suffix(".lock"))
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            lock.acquire()
            break
        except ConfigurationError:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"--delete: the journal {path.name} stayed in use by another run for "
                    f"{LOCK_WAIT_SECONDS:.0f} s; its files were not deleted (run sync again)"
                ) from None
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


def _remove_files(root: Path, batch: list[Deleted], on_deleted: Callable[[Deleted], None]) -> None:
    prefix = str(root).rstrip(os.sep) + os.sep
    directories: set[str] = set()
    for deleted in batch:
        path = prefix + deleted.path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        on_deleted(deleted)
        directories.add(os.path.dirname(path))
    for directory in sorted(directories, key=len, reverse=True):
        _remove_empty_parents(directory, str(root))


def _remove_empty_parents(directory: str, root: str) -> None:
    """Remove ``directory`` and its parents while they are empty, never ``root``."""
    root = root.rstrip(os.sep)
    while directory.startswith(root + os.sep) and directory != root:
        try:
            os.rmdir(directory)
        except OSError:
            return  # not empty (or gone): stop here
        directory = os.path.dirname(directory)
