"""The engine through a fault-injecting server (real HTTP): every fault ends in a complete tree."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import (
    Delay,
    FakeArchive,
    FakeDicomWebServer,
    NotDicomPart,
    OmitInstances,
    ResetAfter,
    Status,
    TruncateAfter,
    make_instance,
    make_tree_archive,
)
from treecheck import assert_no_temp_files, assert_tree_holds

from kheops_async import (
    DicomWebClient,
    DownloadReport,
    RetryPolicy,
    Targets,
    download,
)

pytestmark = pytest.mark.anyio

TOKEN = "fault-token"
FAST_RETRY = RetryPolicy(attempts=6, initial_wait=0.01, max_wait=0.05)
STUDIES = [f"1.2.40.0.{n}" for n in range(1, 5)]


def build_archive() -> FakeArchive:
    return make_tree_archive(
        STUDIES, series_per_study=3, instances_per_series=4, size=4000, size_step=100
    )


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return build_archive()


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN, framing="eof") as srv:
        yield srv


async def mirror(
    server: FakeDicomWebServer,
    dest: Path,
    *,
    concurrency: int = 3,
    targets: Targets | None = None,
    retry: RetryPolicy = FAST_RETRY,
) -> DownloadReport:
    async with DicomWebClient(
        server.base_url, token=TOKEN, concurrency=concurrency, retry=retry
    ) as client:
        return await download(client, targets or Targets(query={}), dest)


def assert_complete(dest: Path, archive: FakeArchive) -> None:
    assert_tree_holds(dest, archive.all_instances())


@pytest.mark.parametrize(
    "fault",
    [ResetAfter(3000), TruncateAfter(9000), Status(500), Status(502), Status(504), Status(408)],
    ids=["reset-mid-stream", "truncated-multipart", "500", "502", "504", "408"],
)
async def test_faults_end_in_a_complete_tree(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path, fault: object
) -> None:
    server.add_fault(f"/series/{STUDIES[1]}.2", fault, times=2)  # type: ignore[arg-type]
    server.add_fault(f"/series/{STUDIES[3]}.3", fault, times=1)  # type: ignore[arg-type]
    report = await mirror(server, tmp_path)
    assert report.ok, report.failures
    assert server.pending_faults() == []
    assert_complete(tmp_path, archive)


async def test_503_retry_after_is_honoured(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    series = f"{STUDIES[0]}.1"
    server.add_fault(f"/series/{series}", Status(503, retry_after=0.4), times=2)
    started = time.monotonic()
    report = await mirror(server, tmp_path)
    assert report.ok
    assert time.monotonic() - started >= 0.8  # two waits of Retry-After, not the 10 ms backoff
    assert (
        len([r for r in server.requests_matching(f"/series/{series}") if "instances" not in r.path])
        >= 3
    )
    assert_complete(tmp_path, archive)


async def test_burst_of_429_on_queries_and_retrieves(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    server.add_fault("/studies", Status(429, retry_after=0.01), times=5)
    report = await mirror(
        server, tmp_path, retry=RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.05)
    )
    assert report.ok
    assert sum(1 for r in server.requests if r.status == 429) == 5
    assert_complete(tmp_path, archive)


async def test_other_4xx_are_not_retried(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    bad_series = f"{STUDIES[2]}.1"
    server.add_fault(f"/series/{bad_series}", Status(403), times=10)
    report = await mirror(server, tmp_path)
    assert [f.series_uid for f in report.failures] == [bad_series]
    assert "403" in report.failures[0].error
    retrieves = [r for r in server.requests_matching(f"/series/{bad_series}") if r.fault]
    assert len(retrieves) == 1
    others = len(archive.all_instances()) - len(archive.instances(STUDIES[2], bad_series))
    assert report.written == others


async def test_a_short_series_is_completed_instance_by_instance(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """A clean answer lacking instances is not retried whole: the missing ones are asked."""
    short = f"{STUDIES[1]}.3"
    server.add_fault(f"/series/{STUDIES[0]}.2", OmitInstances(2), times=1)
    server.add_fault(f"/series/{short}", OmitInstances(1), times=1)
    report = await mirror(server, tmp_path)
    assert report.ok, report.failures
    assert_complete(tmp_path, archive)
    requests = server.requests_matching(f"/series/{short}")
    whole = [r for r in requests if r.path.endswith(f"/series/{short}")]
    single = [r for r in requests if "/instances/" in r.path]
    assert len(whole) == 1
    assert [r.path.rsplit("/", 1)[-1] for r in single] == [f"{short}.4"]


async def test_non_dicom_part_is_reported_not_saved(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    series = f"{STUDIES[2]}.2"
    # The more specific match first: a fault is taken from the first entry that matches.
    server.add_fault(f"/instances/{series}.2", NotDicomPart(index=0), times=100)
    server.add_fault(f"/series/{series}", NotDicomPart(index=1), times=100)
    report = await mirror(
        server, tmp_path, retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.01)
    )
    failed = report.failed_instances
    assert failed and all(r.series_uid == series for r in failed)
    assert "not a DICOM" in failed[0].error or "DICOM" in failed[0].error
    assert [f.series_uid for f in report.failures] == [series]
    assert f"{series}.2" in report.failures[0].error
    assert not (tmp_path / STUDIES[2] / series / f"{series}.2.dcm").exists()
    assert_no_temp_files(tmp_path)
    assert report.written == len(archive.all_instances()) - 1


async def test_hostile_uids_cannot_escape(tmp_path: Path) -> None:
    archive = FakeArchive()
    study, series = "1.2.3", "1.2.3.4"
    archive.add_part10(make_instance(study, series, "../../../escaped", seed=1))
    archive.add_part10(make_instance(study, series, "a/b", seed=2))
    archive.add_part10(make_instance(study, "../../evil-series", "1.2.3.9", seed=3))
    dest = tmp_path / "dest"
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        report = await mirror(srv, dest)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and dest not in p.parents]
    assert outside == []
    # Malformed SOPInstanceUIDs are refused (never turned into paths), as listed ones are.
    assert list(dest.rglob("*.dcm")) == []
    assert report.written == 0 and report.failed >= 2
    assert all("malformed SOPInstanceUID" in r.error for r in report.failed_instances)
    assert sorted(f.series_uid for f in report.failures) == ["../../evil-series", "1.2.3.4"]
    assert any("malformed SeriesInstanceUID" in f.error for f in report.failures)


async def test_requests_in_flight_never_exceed_concurrency(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    for study in STUDIES:
        for r in range(3):
            server.add_fault(f"/series/{study}.{r + 1}", Delay(0.05), times=1)
    report = await mirror(server, tmp_path, concurrency=3)
    assert report.ok
    assert 2 <= server.max_in_flight <= 3
    assert_complete(tmp_path, archive)


async def test_series_without_a_count_is_verified_against_its_instance_list(
    archive: FakeArchive, tmp_path: Path
) -> None:
    series = f"{STUDIES[0]}.1"
    with FakeDicomWebServer(archive, token=TOKEN, series_count_override={series: None}) as srv:  # type: ignore[dict-item]
        srv.add_fault(f"/series/{series}", OmitInstances(1), times=1)
        report = await mirror(srv, tmp_path)
        listed = srv.requests_matching(f"/series/{series}/instances")
    assert report.ok, report.failures
    assert any(r.path.endswith("/instances") for r in listed)
    assert_complete(tmp_path, archive)


async def test_a_count_the_server_cannot_meet_is_reported(
    archive: FakeArchive, tmp_path: Path
) -> None:
    series = f"{STUDIES[3]}.2"
    with FakeDicomWebServer(archive, token=TOKEN, series_count_override={series: 5}) as srv:
        report = await mirror(
            srv, tmp_path, retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.01)
        )
    (failure,) = report.failures
    assert failure.series_uid == series
    assert failure.expected == 5 and failure.received == 4
    assert "stays incomplete" in failure.error
    assert report.written == len(archive.all_instances())


async def test_a_truncated_series_list_is_a_failure(archive: FakeArchive, tmp_path: Path) -> None:
    with FakeDicomWebServer(archive, token=TOKEN, max_results=2) as srv:
        async with DicomWebClient(
            srv.base_url, token=TOKEN, page_size=None, retry=FAST_RETRY
        ) as client:
            report = await download(client, Targets(studies=[STUDIES[0]]), tmp_path)
    assert not report.ok
    assert any("series list is incomplete" in f.error for f in report.failures)
    assert report.written == 8  # the two series it did list


async def test_an_empty_leftover_file_is_fetched_again(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    await mirror(server, tmp_path)
    victim = next(iter(sorted(tmp_path.rglob("*.dcm"))))
    victim.write_bytes(b"")  # what a power loss without fsync can leave
    report = await mirror(server, tmp_path)
    assert report.ok and report.written == 1
    assert_complete(tmp_path, archive)


async def test_metadata_per_series_never_collides(
    archive: FakeArchive, server: FakeDicomWebServer, tmp_path: Path
) -> None:
    async with DicomWebClient(server.base_url, token=TOKEN, retry=FAST_RETRY) as client:
        report = await download(
            client,
            Targets(studies=[STUDIES[0]]),
            tmp_path,
            layout="{PatientID}/{SOPInstanceUID}.dcm",
            metadata_only="series",
        )
    assert report.ok
    files = sorted(p.name for p in tmp_path.rglob("*.json"))
    assert files == sorted(f"series_metadata_{STUDIES[0]}.{r}.json" for r in (1, 2, 3))
