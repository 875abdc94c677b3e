"""The journal: a SQLite record of what a destination holds, written as the run goes.

``<dest>/.kheops-async/journal.sqlite`` (the standard library's ``sqlite3``, WAL mode)
holds every instance committed to the tree (its relative path, SOP/series/study UIDs,
size, modification time, a sha256 when ``checksum`` is on, when it was written) and
every series' state (instances expected and received, complete or not). It is what
a rerun trusts: a file is skipped only when the journal knows it with the same size
and modification time (see :mod:`kheops_async.engine.series`).

Writes are batched: rows go into an open transaction, committed every
:data:`COMMIT_ROWS` rows and at the end of each series, never one transaction per
instance. Every method is synchronous and thread-safe (one connection behind a
lock): the engine calls the quick ones where it places parts (on the event loop while
that stays quick, see :mod:`~kheops_async.engine.placement`) and the long ones from
worker threads; no method ever waits for the event loop. A crash
loses at most the uncommitted rows; their files are then untracked, and a rerun
checks them as DICOM before trusting them. SQLite errors (a full disk) become
:class:`~kheops_async.errors.StorageError`.

SQLite's locking is not safe on network file systems; the run holds an exclusive
``flock`` beside the journal (:class:`~kheops_async.engine.state_dir.DestinationLock`).
That is also why a shard (``--shard I/N``) writes a journal of its own,
``journal.shard-I-of-N.sqlite``: no SQLite file is ever written by two processes.
A run reads the other journals of its destination too (read-only, see
:meth:`Journal.consult`): a file another shard, or an unsharded run, recorded is
trusted as if this journal held it. Lookups ask this run's own journal first, and the
others only for what it lacks.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kheops_async.errors import StorageError
from kheops_async.records import Record

__all__ = [
    "COMMIT_ROWS",
    "JOURNAL_NAME",
    "Journal",
    "JournalEntry",
    "SeriesRecord",
    "journal_name",
    "journal_paths",
]

JOURNAL_NAME = "journal.sqlite"
"""The journal of unsharded runs; a shard's is ``journal.shard-I-of-N.sqlite``."""
COMMIT_ROWS = 500
"""Instance rows per transaction at most (also committed at the end of each series)."""
PAGE_ROWS = 1000
"""Rows read per query when a whole journal is walked (verify, --delete)."""
SCHEMA_VERSION = 1

T = TypeVar("T")
log = logging.getLogger("kheops_async")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    path TEXT PRIMARY KEY,
    sop_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    written_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (study_uid, series_uid);
CREATE TABLE IF NOT EXISTS series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    expected INTEGER,
    received INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER,
    updated_at REAL NOT NULL,
    PRIMARY KEY (study_uid, series_uid)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT
);
"""


def journal_name(shard: str | None) -> str:
    """The journal's file name for a shard's name (``shard-0-of-3``), or unsharded."""
    return JOURNAL_NAME if shard is None else f"journal.{shard}.sqlite"


_SHARD_JOURNAL = re.compile(r"^journal\.shard-(\d+)-of-(\d+)\.sqlite$")


def journal_paths(state: Path, *, sibling_of: str | None = None) -> list[Path]:
    """Every journal in a state directory: the unsharded one first, then by name.

    ``sibling_of`` (a shard's name, ``shard-2-of-8``) leaves out the journals of the
    other shards of the same count: they never hold this shard's studies, and a shard
    that kept them open would keep their WAL files from being folded in.
    """
    try:
        found = [p for p in state.glob("journal*.sqlite") if p.is_file()]
    except OSError:
        return []
    own = _SHARD_JOURNAL.match(journal_name(sibling_of)) if sibling_of else None
    if own is not None:
        found = [
            p
            for p in found
            if p.name == journal_name(sibling_of)
            or (match := _SHARD_JOURNAL.match(p.name)) is None
            or match.group(2) != own.group(2)
        ]
    return sorted(found, key=lambda p: (p.name != JOURNAL_NAME, p.name))


_ENTRY_COLUMNS = (
    "SELECT path, sop_uid, study_uid, series_uid, size, mtime_ns, sha256 FROM instances"
)
_SERIES_ENTRIES = f"{_ENTRY_COLUMNS} WHERE study_uid = ? AND series_uid = ?"
_DATED_ENTRY_COLUMNS = (
    "SELECT path, sop_uid, study_uid, series_uid, size, mtime_ns, sha256, written_at FROM instances"
)
_SERIES_COLUMNS = (
    "SELECT study_uid, series_uid, expected, received, complete, updated_at FROM series"
)
_STUDY_ENTRIES = f"{_ENTRY_COLUMNS} WHERE study_uid = ?"


class JournalEntry(Record):
    """One committed instance, as the journal knows it."""

    __slots__ = ("mtime_ns", "path", "series_uid", "sha256", "size", "sop_uid", "study_uid")

    def __init__(
        self,
        path: str,
        sop_uid: str,
        study_uid: str,
        series_uid: str,
        size: int,
        mtime_ns: int,
        sha256: str | None = None,
    ) -> None:
        self.path = path
        self.sop_uid = sop_uid
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.size = size
        self.mtime_ns = mtime_ns
        self.sha256 = sha256


class SeriesRecord(Record):
    """One series as a journal records it (see :meth:`Journal.finish_series`)."""

    __slots__ = ("complete", "expected", "received", "series_uid", "study_uid", "updated_at")

    def __init__(
        self,
        study_uid: str,
        series_uid: str,
        expected: int | None,
        received: int,
        complete: bool,
        updated_at: float,
    ) -> None:
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.expected = expected
        self.received = received
        self.complete = complete
        self.updated_at = updated_at

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> SeriesRecord:
        """From a row of ``_SERIES_COLUMNS``."""
        return cls(row[0], row[1], row[2], row[3], bool(row[4]), float(row[5]))


class Journal:
    """One destination's journal (see the module docstring)."""

    def __init__(self, connection: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self._db = connection
        self.path = path
        self.readonly = readonly
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self.run_id = 0
        self.others: list[Journal] = []
        """The destination's other journals, read-only (see :meth:`consult`)."""

    # -- opening and closing -------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (or create) the journal for writing; raises StorageError."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=10000")  # first: WAL needs a moment alone
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            cursor = db.execute("INSERT INTO runs (started_at) VALUES (?)", (time.time(),))
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the journal {path}: {exc}") from None
        journal = cls(db, path, readonly=False)
        journal.run_id = int(cursor.lastrowid or 0)
        return journal

    @classmethod
    def open_for_edit(cls, path: Path) -> Journal:
        """Open another run's journal to drop rows (``sync --delete``), under its lock.

        No run is recorded in it: this process only removes what it deleted.
        """
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("SELECT 1 FROM instances LIMIT 1")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the journal {path}: {exc}") from None
        return cls(db, path, readonly=False)

    @classmethod
    def open_readonly(cls, path: Path) -> Journal | None:
        """Open an existing journal read-only (dry runs); ``None`` when there is none."""
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(
                f"{path.absolute().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute("SELECT 1 FROM instances LIMIT 1")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the journal {path}: {exc}") from None
        return cls(db, path, readonly=True)

    @classmethod
    def open_destination(cls, state: Path) -> Journal | None:
        """Every journal of a state directory, read-only: the first, consulting the others.

        ``None`` when there is no journal at all.
        """
        paths = journal_paths(state)
        if not paths:
            return None
        first = cls.open_readonly(paths[0])
        if first is not None:
            first.consult(paths[1:])
        return first

    @property
    def family(self) -> list[Journal]:
        """This journal, then the others it consults."""
        return [self, *self.others]

    def consult(self, paths: list[Path]) -> None:
        """Open the destination's other journals read-only, for lookups this one lacks.

        One that cannot be read (damaged, from a newer version) is left out with a
        warning: its files are then untracked, and checked as DICOM before they are
        trusted, so the run is slower but still right.
        """
        for path in paths:
            if path == self.path:
                continue
            try:
                other = Journal.open_readonly(path)
            except StorageError as exc:
                log.warning("%s; its files are checked as untracked files", exc)
                continue
            if other is not None:
                self.others.append(other)

    def close(self, outcome: str = "done") -> None:
        """Commit what is pending, note the run's end, close (idempotent)."""
        for other in self.others:
            other.close()
        with self._lock:
            if self._closed:
                return
            try:
                if not self.readonly:
                    self._begin()
                    self._db.execute(
                        "UPDATE runs SET finished_at = ?, outcome = ? WHERE run_id = ?",
                        (time.time(), outcome, self.run_id),
                    )
                    self._commit()
                    self._leave_wal()
            except sqlite3.Error as exc:
                raise StorageError(f"writing the journal {self.path} failed: {exc}") from None
            finally:
                self._db.close()
                self._closed = True

    def _leave_wal(self) -> None:
        """Fold the WAL back into the file, so that a closed journal is one plain file.

        Other shards, maybe on other hosts of a shared file system where WAL's shared
        memory does not work, then read a self-contained database. Best effort: while
        another process has the journal open, SQLite keeps WAL mode (the next run
        sets it again anyway).
        """
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA journal_mode=DELETE")

    # -- transactions --------------------------------------------------------------

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")

    def _commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._pending = 0

    def _locked(self, operation: Callable[[], T]) -> T:
        with self._lock:
            try:
                return operation()
            except sqlite3.Error as exc:
                raise StorageError(f"the journal {self.path}: {exc}") from None

    # -- instances -----------------------------------------------------------------

    def series_entries(self, study_uid: str, series_uid: str) -> dict[str, JournalEntry]:
        """The committed instances of one series, by SOPInstanceUID, in every journal.

        An instance this journal knows is taken from here; the others add what it lacks.
        """
        return self._merged(_SERIES_ENTRIES, (study_uid, series_uid))

    def study_entries(self, study_uid: str) -> dict[str, JournalEntry]:
        """The committed instances of one study, as :meth:`series_entries`."""
        return self._merged(_STUDY_ENTRIES, (study_uid,))

    def own_study_entries(self, study_uid: str) -> dict[str, JournalEntry]:
        """The instances of one study that this journal (only) records."""
        return self._entries(_STUDY_ENTRIES, (study_uid,))

    def forget(self, paths: list[str]) -> None:
        """Drop the rows of deleted files, and the records of series left with none."""

        def forget() -> None:
            self._begin()
            series: set[tuple[str, str]] = set()
            for path in paths:
                row = self._db.execute(
                    "SELECT study_uid, series_uid FROM instances WHERE path = ?", (path,)
                ).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM instances WHERE path = ?", (path,))
                    series.add((row[0], row[1]))
            for study_uid, series_uid in series:
                self._db.execute(
                    "DELETE FROM series WHERE study_uid = ? AND series_uid = ? AND NOT EXISTS "
                    "(SELECT 1 FROM instances WHERE study_uid = ? AND series_uid = ?)",
                    (study_uid, series_uid, study_uid, series_uid),
                )
            self._commit()

        self._locked(forget)

    def _merged(self, sql: str, arguments: tuple[str, ...]) -> dict[str, JournalEntry]:
        """Every journal asked, always: a count must see an instance any of them holds."""
        entries = self._entries(sql, arguments)
        for other in self.others:
            for sop_uid, entry in other._entries(sql, arguments).items():
                entries.setdefault(sop_uid, entry)
        return entries

    def _entries(self, sql: str, arguments: tuple[str, ...]) -> dict[str, JournalEntry]:
        def query() -> dict[str, JournalEntry]:
            return {row[1]: JournalEntry(*row) for row in self._db.execute(sql, arguments)}

        return self._locked(query)

    def _pages(
        self, sql: str, start: tuple[Any, ...], key_columns: int
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql`` (``... > (?, ...) ORDER BY ... LIMIT ?``), :data:`PAGE_ROWS`
        per query, each page starting after the last row's first ``key_columns`` values.

        Memory does not grow with the journal, and no read stays open long enough to
        keep its owner waiting (a run that starts must switch the file to WAL mode,
        which needs it alone a moment).
        """
        last = start
        while True:
            rows = self._db.execute(sql, (*last, PAGE_ROWS)).fetchall()
            yield from rows
            if len(rows) < PAGE_ROWS:
                return
            last = tuple(rows[-1][:key_columns])

    def iter_entries(self) -> Iterator[tuple[JournalEntry, float]]:
        """Every instance of this journal (not the others), with when it was written,
        in path order (see :meth:`_pages`)."""
        sql = f"{_DATED_ENTRY_COLUMNS} WHERE path > ? ORDER BY path LIMIT ?"
        for row in self._pages(sql, ("",), 1):
            yield JournalEntry(*row[:7]), float(row[7])

    def entry_at(self, path: str) -> tuple[JournalEntry, float] | None:
        """The instance this journal (only) records at ``path``, with when it was written."""
        row = self._db.execute(f"{_DATED_ENTRY_COLUMNS} WHERE path = ?", (path,)).fetchone()
        return (JournalEntry(*row[:7]), float(row[7])) if row else None

    def iter_series(self) -> Iterator[SeriesRecord]:
        """Every series this journal (only) records, in pages (see :meth:`_pages`)."""
        sql = (
            f"{_SERIES_COLUMNS} WHERE (study_uid, series_uid) > (?, ?) "
            "ORDER BY study_uid, series_uid LIMIT ?"
        )
        for row in self._pages(sql, ("", ""), 2):
            yield SeriesRecord.from_row(row)

    def series_record(self, study_uid: str, series_uid: str) -> SeriesRecord | None:
        """This journal's (only) record of one series."""
        row = self._db.execute(
            f"{_SERIES_COLUMNS} WHERE study_uid = ? AND series_uid = ?", (study_uid, series_uid)
        ).fetchone()
        return SeriesRecord.from_row(row) if row else None

    def iter_study_uids(self) -> Iterator[str]:
        """The studies this journal (only) holds instances of, in pages."""
        sql = (
            "SELECT DISTINCT study_uid FROM instances WHERE study_uid > ? "
            "ORDER BY study_uid LIMIT ?"
        )
        for row in self._pages(sql, ("",), 1):
            yield str(row[0])

    def records(self, path: str, sop_uid: str) -> bool:
        """Whether this journal (only) records instance ``sop_uid`` at ``path``."""
        found = self.entry_at(path)
        return found is not None and found[0].sop_uid == sop_uid

    def _insert_instance(self, entry: JournalEntry) -> None:
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO instances "
            "(path, sop_uid, study_uid, series_uid, size, mtime_ns, sha256, written_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.path,
                entry.sop_uid,
                entry.study_uid,
                entry.series_uid,
                entry.size,
                entry.mtime_ns,
                entry.sha256,
                time.time(),
            ),
        )
        self._pending += 1
        if self._pending >= COMMIT_ROWS:
            self._commit()

    def owner(self, path: str) -> tuple[str, str, str] | None:
        """(SOP, series, study) UIDs recorded at a relative path, if any."""

        def query() -> tuple[str, str, str] | None:
            row = self._db.execute(
                "SELECT sop_uid, series_uid, study_uid FROM instances WHERE path = ?", (path,)
            ).fetchone()
            return (row[0], row[1], row[2]) if row else None

        return self._locked(query)

    def add_instance(self, entry: JournalEntry) -> None:
        """Record one committed instance (thread-safe)."""
        self._locked(lambda: self._insert_instance(entry))

    # -- series --------------------------------------------------------------------

    def claim_series(self, study_uid: str, series_uid: str) -> bool:
        """Mark a series as taken by this run; ``False`` if this run already took it."""

        def claim() -> bool:
            self._begin()
            self._db.execute(
                "INSERT OR IGNORE INTO series (study_uid, series_uid, updated_at) VALUES (?, ?, ?)",
                (study_uid, series_uid, time.time()),
            )
            cursor = self._db.execute(
                "UPDATE series SET run_id = ? WHERE study_uid = ? AND series_uid = ? "
                "AND run_id IS NOT ?",
                (self.run_id, study_uid, series_uid, self.run_id),
            )
            return cursor.rowcount > 0

        return self._locked(claim)

    def finish_series(
        self, study_uid: str, series_uid: str, *, expected: int | None, received: int
    ) -> None:
        """Record a series' outcome and commit everything pending."""

        def finish() -> None:
            self._begin()
            self._db.execute(
                "INSERT INTO series (study_uid, series_uid, expected, received, complete, "
                "run_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (study_uid, series_uid) DO UPDATE SET expected = excluded.expected, "
                "received = excluded.received, complete = excluded.complete, "
                "updated_at = excluded.updated_at",
                (
                    study_uid,
                    series_uid,
                    expected,
                    received,
                    int(expected is not None and received >= expected),
                    self.run_id,
                    time.time(),
                ),
            )
            self._commit()

        self._locked(finish)
