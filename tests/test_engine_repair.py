"""A rerun that exits 0 leaves a tree you can trust: damaged files are found and repaired.

Each case damages a downloaded tree the way disks, people and older tools do, then
reruns a plain download (no ``--force``) against the fault-injecting server and checks
that the tree is byte-identical to the archive again, and that only the damaged
instances were fetched.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakeserver import FakeArchive, FakeDicomWebServer, make_tree_archive
from treecheck import assert_tree_holds, assert_tree_is

from kheops_async import KHEOPS_CLIENT_LAYOUT, DicomWebClient, RetryPolicy, Targets, download
from kheops_async.engine import journal_path

pytestmark = pytest.mark.anyio

TOKEN = "repair-token"
FAST_RETRY = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02)
STUDIES = ["1.2.40.0.77.1", "1.2.40.0.77.2"]


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(
        STUDIES, series_per_study=2, instances_per_series=6, size=3000, size_step=250
    )


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


async def mirror(server: FakeDicomWebServer, dest: Path, **options: object):  # type: ignore[no-untyped-def]
    async with DicomWebClient(server.base_url, token=TOKEN, retry=FAST_RETRY) as client:
        return await download(client, Targets(query={}), dest, **options)


def zero_200_bytes(path: Path, archive: FakeArchive) -> None:
    path.write_bytes(b"\0" * 200)


def cut_in_half(path: Path, archive: FakeArchive) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def another_instances_bytes(path: Path, archive: FakeArchive) -> None:
    other = next(i for i in archive.all_instances() if i.sop_uid != path.stem)
    path.write_bytes(other.data)


def same_size_other_bytes(path: Path, archive: FakeArchive) -> None:
    """The nastiest: same size, different content (a disk error, a bad copy)."""
    data = bytearray(path.read_bytes())
    data[-10:] = b"X" * 10
    path.write_bytes(bytes(data))


Damage = Callable[[Path, FakeArchive], None]


@pytest.mark.parametrize(
    "damage", [zero_200_bytes, cut_in_half, another_instances_bytes, same_size_other_bytes]
)
async def test_a_plain_rerun_repairs_a_damaged_file(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path, damage: Damage
) -> None:
    # A same-size change inside the pixel data is found by the sha256 (--checksum).
    checksum = damage is same_size_other_bytes
    first = await mirror(server, tmp_path, checksum=checksum)
    assert first.ok and first.written == len(archive.all_instances())
    victim = sorted(tmp_path.rglob("*.dcm"))[3]
    time.sleep(0.05)  # damage comes later than the write: past the file system's clock tick
    damage(victim, archive)
    server.reset_stats()
    again = await mirror(server, tmp_path, checksum=checksum)
    assert again.ok, again.failures
    assert again.written == 1 and again.repaired == 1
    assert again.skipped == len(archive.all_instances()) - 1
    assert_tree_holds(tmp_path, archive.all_instances())
    retrieves = [r for r in server.requests if "/instances/" in r.path or r.path.count("/") > 6]
    assert retrieves, "the damaged instance was fetched again"


async def test_a_truncated_file_in_an_old_kheops_client_tree_is_replaced(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """A tree without a journal: each file is checked as whole DICOM of its instance."""
    old_tree = tmp_path / "old"
    done = await mirror(server, old_tree, layout=KHEOPS_CLIENT_LAYOUT)
    assert done.ok
    shutil.rmtree(old_tree / ".kheops-async")  # as kheops-client left it: no journal
    victim = sorted(old_tree.rglob("*.dcm"))[5]
    cut_in_half(victim, archive)
    again = await mirror(server, old_tree, layout=KHEOPS_CLIENT_LAYOUT)
    assert again.ok, again.failures
    assert again.written == 1 and again.repaired == 1
    assert again.skipped == len(archive.all_instances()) - 1
    assert_tree_is(
        old_tree,
        {old_tree / i.series_uid / f"{i.sop_uid}.dcm": i.data for i in archive.all_instances()},
    )
    assert journal_path(old_tree).exists()


async def test_a_deleted_file_is_fetched_alone_and_a_whole_tree_costs_no_retrieve(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    await mirror(server, tmp_path)
    server.reset_stats()
    untouched = await mirror(server, tmp_path)
    assert untouched.ok and untouched.written == 0
    assert [r.path for r in server.requests if "/instances" in r.path] == []
    assert all("/series/" not in r.path or r.path.endswith("/series") for r in server.requests)
    victim = sorted(tmp_path.rglob("*.dcm"))[0]
    victim.unlink()
    server.reset_stats()
    again = await mirror(server, tmp_path)
    assert again.ok and again.written == 1
    singles = [r.path for r in server.requests if "/instances/" in r.path]
    assert singles and all(p.endswith(victim.stem) for p in singles)
    assert_tree_holds(tmp_path, archive.all_instances())


async def test_force_ignores_the_journal(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    await mirror(server, tmp_path)
    forced = await mirror(server, tmp_path, force=True)
    assert forced.ok and forced.written == len(archive.all_instances()) and forced.skipped == 0
    assert_tree_holds(tmp_path, archive.all_instances())
