"""Failures handled as a careful operator would, through the fault-injecting server.

Each test is one defect of the first engine, reproduced on real HTTP: it failed before
the engine v2 and passes since.
"""

from __future__ import annotations

import csv
import gc
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fakeserver import (
    FakeArchive,
    FakeDicomWebServer,
    ResetAfter,
    StallAfter,
    Status,
    make_instance,
    make_tree_archive,
)
from treecheck import assert_no_temp_files, assert_tree_holds, temp_files

from kheops_async import (
    AuthenticationError,
    ConfigurationError,
    DicomWebClient,
    DownloadReport,
    InstanceRecord,
    RetryPolicy,
    ServerUnavailableError,
    Targets,
    download,
)

pytestmark = pytest.mark.anyio

TOKEN = "failure-token"
FAST_RETRY = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.02)
STUDIES = [f"1.2.40.0.88.{n}" for n in range(1, 4)]


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(
        STUDIES, series_per_study=3, instances_per_series=8, size=2500, size_step=120
    )


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


async def mirror(
    server: FakeDicomWebServer,
    dest: Path,
    *,
    retry: RetryPolicy = FAST_RETRY,
    concurrency: int = 3,
    **options: object,
) -> DownloadReport:
    async with DicomWebClient(
        server.base_url, token=TOKEN, retry=retry, concurrency=concurrency
    ) as client:
        return await download(client, Targets(query={}), dest, **options)


def retrieves(server: FakeDicomWebServer, series_uid: str) -> tuple[list[str], list[str]]:
    """(whole-series retrieves, single-instance retrieves) of one series."""
    paths = [r.path for r in server.requests if f"/series/{series_uid}" in r.path]
    whole = [p for p in paths if p.endswith(f"/series/{series_uid}")]
    single = [p for p in paths if "/instances/" in p]
    return whole, single


# -- what the server sends -------------------------------------------------------------


async def test_a_part_naming_another_series_is_refused_and_the_series_fails(
    tmp_path: Path,
) -> None:
    study, asked, other = "1.2.40.0.9", "1.2.40.0.9.1", "1.2.40.0.9.2"
    archive = FakeArchive()
    archive.add_part10(make_instance(study, asked, f"{asked}.1", seed=1))
    archive.add_part10(make_instance(study, other, f"{other}.1", seed=2))
    # The server files this part under `asked`, but its header says `other`.
    archive.add_part10(make_instance(study, other, f"{other}.9", seed=3), series_uid=asked)
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        report = await mirror(srv, tmp_path)
    assert not report.ok
    assert [f.series_uid for f in report.failures] == [asked]
    assert any(other in r.error and asked in r.error for r in report.failed_instances)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm"))
    assert files == [f"{study}/{asked}/{asked}.1.dcm", f"{study}/{other}/{other}.1.dcm"]
    assert report.written == 2


async def test_uids_that_would_collapse_into_one_path_are_refused(tmp_path: Path) -> None:
    study, series = "1.2.40.0.10", "1.2.40.0.10.1"
    archive = FakeArchive()
    archive.add_part10(make_instance(study, series, "9/9", seed=1))
    archive.add_part10(make_instance(study, series, "9_9", seed=2))
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        report = await mirror(srv, tmp_path)
    assert report.written == 0 and not report.ok
    assert list(tmp_path.rglob("*.dcm")) == []
    errors = " ".join(r.error for r in report.failed_instances)
    assert "'9/9'" in errors and "'9_9'" in errors


@pytest.mark.parametrize("times", [2, 100])
async def test_a_maintenance_page_is_retried_then_named(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path, times: int
) -> None:
    series = f"{STUDIES[0]}.2"
    page = Status(200, body=b"<html>Down for maintenance</html>", content_type="text/html")
    server.add_fault(f"/series/{series}", page, times=times)
    report = await mirror(server, tmp_path)
    if times == 2:
        assert report.ok, report.failures
        assert_tree_holds(tmp_path, archive.all_instances())
        return
    assert [f.series_uid for f in report.failures] == [series]
    assert "text/html" in report.failures[0].error


async def test_a_series_breaking_mid_stream_keeps_its_finished_parts(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """It breaks twice at the same place: retried whole once, then only what is missing."""
    series = f"{STUDIES[1]}.1"
    # The first two requests of the series are its whole retrieves; the listing and the
    # single-instance retrieves that follow also contain the series' path.
    server.add_fault(f"/series/{series}", ResetAfter(9000), times=2)
    report = await mirror(server, tmp_path)
    assert report.ok, report.failures
    assert_tree_holds(tmp_path, archive.all_instances())
    whole, single = retrieves(server, series)
    assert len(whole) == 2  # the first break made progress, the second did not
    assert 1 <= len(single) <= 6  # only what the breaks left missing; the rest was kept
    assert report.written == len(archive.all_instances())  # no instance written twice


# -- the run as a whole ----------------------------------------------------------------


async def test_an_outage_stops_the_run_quickly_with_what_was_done(tmp_path: Path) -> None:
    """Every answer breaks off after 1.5 KB: the breaker ends the run, not every retry."""
    studies = [f"1.2.40.0.89.{n}" for n in range(1, 11)]
    archive = make_tree_archive(studies, series_per_study=4, instances_per_series=3, size=3000)
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        srv.add_fault("/series/", ResetAfter(1500), times=100_000)
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="attempts in a row failed") as caught:
            await mirror(srv, tmp_path, retry=RetryPolicy(attempts=5, initial_wait=0.05))
        elapsed = time.monotonic() - started
        requests = len(srv.requests)
    assert elapsed < 30
    assert requests < 150  # 40 series x (1 + 3 x 5) attempts without the breaker
    assert isinstance(caught.value.partial_report, DownloadReport)
    assert_no_temp_files(tmp_path)


async def test_a_token_revoked_mid_run_keeps_the_table_and_journal(
    server: FakeDicomWebServer, tmp_path: Path
) -> None:
    table = tmp_path / "table.csv"
    seen: list[InstanceRecord] = []

    def revoke_after_ten(record: InstanceRecord) -> None:
        seen.append(record)
        if len(seen) == 10:
            server.token = "revoked"

    with pytest.raises(AuthenticationError) as caught:
        await mirror(server, tmp_path, table=table, on_instance=revoke_after_ten, concurrency=1)
    partial = caught.value.partial_report
    assert isinstance(partial, DownloadReport) and partial.written >= 10
    with table.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["Status"] == "written"]
    assert len(rows) == partial.written
    assert all((tmp_path / r["Path"]).stat().st_size == int(r["FileSize"]) for r in rows)
    server.token = TOKEN
    again = await mirror(server, tmp_path)
    assert again.ok and again.skipped == partial.written


async def test_a_second_run_into_the_same_destination_stops_at_once(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    server.add_fault("/series/", StallAfter(4000, 0.5), times=3)
    outcome: list[DownloadReport] = []

    async def first() -> None:
        outcome.append(await mirror(server, tmp_path))

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.sleep(0.3)
        assert temp_files(tmp_path) or (tmp_path / ".kheops-async").exists()
        with pytest.raises(ConfigurationError, match="another kheops-async run"):
            await mirror(server, tmp_path)
    (report,) = outcome
    assert report.ok, report.failures
    assert_tree_holds(tmp_path, archive.all_instances())


@pytest.mark.parametrize("fsync", [True, False])
async def test_cancelling_at_any_moment_leaves_no_temporary_file(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path, fsync: bool
) -> None:
    by_name = {f"{i.sop_uid}.dcm": i.data for i in archive.all_instances()}
    for attempt in range(12):
        dest = tmp_path / str(attempt)
        with anyio.move_on_after(0.01 + attempt * 0.012):
            await mirror(server, dest, fsync=fsync)
        assert_no_temp_files(dest)
        for path in dest.rglob("*.dcm"):
            assert path.read_bytes() == by_name[path.name]
        for path in dest.rglob("*.json"):
            pytest.fail(f"stray metadata {path}")


async def test_cancelling_metadata_writes_leaves_no_temporary_file(
    server: FakeDicomWebServer, tmp_path: Path
) -> None:
    for attempt in range(8):
        dest = tmp_path / str(attempt)
        with anyio.move_on_after(0.005 + attempt * 0.01):
            await mirror(server, dest, metadata_only="instance", fsync=True)
        assert_no_temp_files(dest)


async def test_a_cancelled_retrieve_leaves_no_open_stream(
    server: FakeDicomWebServer, tmp_path: Path
) -> None:
    """Under trio an unclosed body iterator warns (ResourceWarning) when collected."""
    server.add_fault("/series/", StallAfter(5000, 2.0), times=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with anyio.move_on_after(0.3):
            await mirror(server, tmp_path)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert_no_temp_files(tmp_path)


async def test_the_process_warning_filters_are_left_alone(
    server: FakeDicomWebServer, tmp_path: Path
) -> None:
    before = list(warnings.filters)
    report = await mirror(server, tmp_path, concurrency=4)
    assert report.ok
    assert warnings.filters == before


async def test_nothing_the_engine_runs_changes_the_warning_filters(
    server: FakeDicomWebServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``warnings.catch_warnings`` is not thread-safe: no download code may touch the filters."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the warning filters were changed during a download")

    for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
        monkeypatch.setattr(warnings, name, refuse)
    report = await mirror(server, tmp_path, concurrency=4)
    assert report.ok, report.failed_instances
