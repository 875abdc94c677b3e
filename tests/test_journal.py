"""The journal as it is used: a real SQLite file, filled by a real download, on a full disk.

Several processes (the lock) and kills (tests/test_kill_and_resume.py) are tested
elsewhere; here: what a run records, and what a disk that fills up mid-run does.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import FakeArchive, FakeDicomWebServer, make_tree_archive
from treecheck import assert_tree_holds, tree_files

from kheops_async.engine import journal_path

TOKEN = "journal-token"
STUDIES = [f"1.2.40.0.44.{n}" for n in range(1, 11)]

DOWNLOAD = textwrap.dedent(
    """
    import os, resource, signal, sys, anyio
    from kheops_async import DicomWebClient, KheopsAsyncError, Targets, download

    limit = int(os.environ.get("FILE_SIZE_LIMIT", "0"))
    if limit:  # every file of this process stops growing at `limit` bytes: a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    async def main():
        async with DicomWebClient(sys.argv[1], token=os.environ["TOKEN"], concurrency=2) as c:
            try:
                report = await download(c, Targets(query={}), sys.argv[2])
            except KheopsAsyncError as exc:
                print(type(exc).__name__, exc)
                sys.exit(2)
        print("done" if report.ok else "incomplete")

    anyio.run(main)
    """
)


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=4, instances_per_series=3, size=1500)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


def run(server: FakeDicomWebServer, dest: Path, limit: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DOWNLOAD, server.base_url, str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TOKEN": TOKEN, "FILE_SIZE_LIMIT": str(limit)},
        check=False,
    )


def test_the_journal_records_every_file_and_series(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    done = run(server, tmp_path)
    assert done.stdout.strip() == "done", done.stderr
    assert not journal_path(tmp_path).with_name("journal.sqlite-wal").exists()
    db = sqlite3.connect(journal_path(tmp_path))
    try:  # WAL while a run writes it; one plain file once closed (readable over NFS)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        rows = db.execute("SELECT path, sop_uid, size, mtime_ns FROM instances").fetchall()
        series = db.execute("SELECT expected, received, complete FROM series").fetchall()
    finally:
        db.close()
    on_disk = {p.relative_to(tmp_path).as_posix(): p for p in tree_files(tmp_path)}
    assert {r[0] for r in rows} == set(on_disk)
    for path, sop_uid, size, mtime_ns in rows:
        stat = on_disk[path].stat()
        assert (stat.st_size, stat.st_mtime_ns) == (size, mtime_ns)
        assert on_disk[path].stem == sop_uid
    assert series == [(3, 3, 1)] * len(STUDIES) * 4


def test_a_disk_that_fills_up_stops_the_run_and_a_rerun_completes(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """The journal's WAL file reaches the limit first (instance files stay small)."""
    full = run(server, tmp_path, limit=96 * 1024)
    assert full.returncode == 2, (full.stdout, full.stderr)
    assert full.stdout.startswith("StorageError"), full.stdout
    assert "Traceback" not in full.stderr
    by_name = {f"{i.sop_uid}.dcm": i.data for i in archive.all_instances()}
    for path, data in tree_files(tmp_path).items():
        assert data == by_name[path.name]  # nothing partial under a final name
    again = run(server, tmp_path)
    assert again.stdout.strip() == "done", again.stderr
    assert_tree_holds(tmp_path, archive.all_instances())


def test_the_journal_is_in_wal_mode_while_a_run_writes_it(tmp_path: Path) -> None:
    from kheops_async.engine.journal import Journal

    journal = Journal.open(tmp_path / "journal.sqlite")
    try:
        reader = sqlite3.connect(tmp_path / "journal.sqlite")
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        reader.close()
    finally:
        journal.close()


def test_a_walk_of_a_closed_journal_does_not_keep_its_owner_out(tmp_path: Path) -> None:
    """verify reads a journal page by page: a run can start on it meanwhile."""
    import time

    from kheops_async.engine.journal import PAGE_ROWS, Journal, JournalEntry

    path = tmp_path / "journal.sqlite"
    writer = Journal.open(path)
    for n in range(PAGE_ROWS * 2 + 5):
        writer.add_instance(JournalEntry(f"a/{n}.dcm", f"1.2.{n}", "1.2", "1.2.1", 10, 1))
    writer.close()
    reader = Journal.open_readonly(path)
    assert reader is not None
    walk = reader.iter_entries()
    next(walk)  # the walk is under way
    started = time.monotonic()
    owner = Journal.open(path)  # switches the file back to WAL mode: needs it alone
    owner.close()
    assert time.monotonic() - started < 2.0
    assert sum(1 for _ in walk) == PAGE_ROWS * 2 + 4
    reader.close()
