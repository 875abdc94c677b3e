"""Sync, verify and shards against a real Orthanc (with its DICOMweb plugin).

A private Orthanc for this module (the archive grows here, so not the session's).
Every request the library makes is recorded by an httpx event hook on the client it
is lent, so the tests can say which WADO-RS and QIDO-RS requests each step made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner
from treecheck import assert_no_temp_files, assert_tree_holds

from kheops_async import DicomWebClient, Shard, Targets, download, sync
from kheops_async.cli import ExitCode, main
from kheops_async.demo import (
    OrthancDataset,
    OrthancServer,
    SampleInstance,
    generate_dataset,
    load_dataset,
)
from kheops_async.demo.orthanc import start_orthanc, upload_instances
from kheops_async.engine.verify import verify

pytestmark = [pytest.mark.anyio, pytest.mark.orthanc]

UPLOADED: list[SampleInstance] = []
"""Instances the tests added to the module's Orthanc (the archive grows across tests)."""


@pytest.fixture(scope="module")
def private_orthanc(
    orthanc_installed: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancServer]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-sync"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dataset(private_orthanc: OrthancServer) -> OrthancDataset:
    return load_dataset(private_orthanc, generate_dataset(seed=77, patients=2))


class Recorded:
    """The requests a client made: (method, path, Accept)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []

    async def hook(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.path, request.headers.get("accept", "")))

    def wado(self) -> list[str]:
        return [p for _, p, accept in self.requests if accept.startswith("multipart/related")]

    def qido(self, level: str) -> list[str]:
        return [p for _, p, accept in self.requests if p.endswith(f"/{level}")]

    def clear(self) -> None:
        self.requests.clear()


@asynccontextmanager
async def recording_client(dataset: OrthancDataset, log: Recorded) -> AsyncIterator[DicomWebClient]:
    async with (
        httpx.AsyncClient(event_hooks={"request": [log.hook]}, timeout=60) as http,
        DicomWebClient(dataset.server.dicomweb_url, http_client=http, page_size=3) as client,
    ):
        yield client


async def test_partial_tree_grows_then_nothing_new_then_damage_then_a_new_study(
    dataset: OrthancDataset, tmp_path: Path
) -> None:
    archive = [*dataset.instances, *UPLOADED]
    studies = sorted({i.study_uid for i in archive})
    log = Recorded()
    async with recording_client(dataset, log) as client:
        # grows: a tree of two studies, synced against the whole archive
        first = await download(client, Targets(studies=studies[:2]), tmp_path)
        assert first.ok
        log.clear()
        grown = await sync(client, Targets(query={}), tmp_path)
        assert grown.ok and grown.sync is not None
        fetched = {path.split("/studies/")[1].split("/")[0] for path in log.wado()}
        assert fetched == set(studies[2:])
        assert (grown.sync.studies_new, grown.sync.studies_unchanged) == (len(studies) - 2, 2)
        assert_tree_holds(tmp_path, archive)

        # nothing new: no WADO request, one study query per page of 3
        log.clear()
        calm = await sync(client, Targets(query={}), tmp_path)
        assert calm.ok and log.wado() == [] and log.qido("series") == []
        assert len(log.qido("studies")) == len(studies) // 3 + 1
        assert len(log.requests) == len(log.qido("studies"))

        # damaged: verify names the deleted file, sync fetches it alone
        victim = archive[4]
        path = tmp_path / victim.study_uid / victim.series_uid / f"{victim.sop_uid}.dcm"
        path.unlink()
        found = await verify(tmp_path)
        assert [(p.kind, p.sop_uid) for p in found.problems] == [("missing", victim.sop_uid)]
        command = await anyio.to_thread.run_sync(  # the command runs its own event loop
            lambda: CliRunner().invoke(main, ["verify", "--out-dir", str(tmp_path)])
        )
        assert command.exit_code == ExitCode.INCOMPLETE
        relative = path.relative_to(tmp_path).as_posix()
        assert (
            command.stdout
            == f"missing: {relative} (SOPInstanceUID {victim.sop_uid}): not on disk\n"
        )
        log.clear()
        repaired = await sync(client, Targets(query={}), tmp_path)
        assert repaired.ok and repaired.repaired == 1
        assert [p.rsplit("/", 1)[1] for p in log.wado()] == [victim.sop_uid]
        assert (await verify(tmp_path, client=client)).ok

        # archive grows: a new study on the server is the only thing fetched
        extra = generate_dataset(seed=991 + len(UPLOADED), patients=1, studies_per_patient=1)
        upload_instances(dataset.server, (i.data for i in extra))
        UPLOADED.extend(extra)
        log.clear()
        later = await sync(client, Targets(query={}), tmp_path)
        assert later.ok
        assert {p.split("/studies/")[1].split("/")[0] for p in log.wado()} == {extra[0].study_uid}
        assert later.written == len(extra)
    assert_tree_holds(tmp_path, [*archive, *extra])
    assert_no_temp_files(tmp_path)


async def test_three_shards_give_the_archive_with_every_series_fetched_once(
    dataset: OrthancDataset, tmp_path: Path
) -> None:
    log = Recorded()
    async with recording_client(dataset, log) as client:
        before = {i.series_uid for i in [*dataset.instances, *UPLOADED]}
        everything = await client.search_studies({})
        for index in range(3):
            report = await sync(client, Targets(query={}), tmp_path, shard=Shard(index, 3))
            assert report.ok
        retrieved = [p.rsplit("/series/", 1)[1] for p in log.wado()]
        assert sorted(retrieved) == sorted(set(retrieved))  # no series twice
        assert before <= set(retrieved)
        log.clear()
        whole = await sync(client, Targets(query={}), tmp_path)
        assert whole.ok and log.wado() == []
        assert whole.sync is not None
        assert whole.sync.studies_unchanged == len(everything.records)


async def test_delete_removes_a_study_deleted_on_the_server_and_nothing_else(
    dataset: OrthancDataset, tmp_path: Path, anyio_backend: str
) -> None:
    doomed = generate_dataset(seed=5000 + len(anyio_backend), patients=1, studies_per_patient=1)
    upload_instances(dataset.server, (i.data for i in doomed))
    log = Recorded()
    async with recording_client(dataset, log) as client:
        assert (await sync(client, Targets(query={}), tmp_path)).ok
        assert (tmp_path / doomed[0].study_uid).is_dir()
        async with httpx.AsyncClient(base_url=dataset.server.url, auth=dataset.server.auth) as rest:
            (found,) = (await rest.post("/tools/lookup", content=doomed[0].study_uid)).json()
            (await rest.delete(f"/studies/{found['ID']}")).raise_for_status()
        log.clear()
        nothing = await sync(client, Targets(query={"PatientID": "nobody"}), tmp_path, delete=True)
        assert nothing.sync is not None and nothing.sync.deleted == 0  # an empty list
        assert "listed no study" in nothing.sync.delete_skipped
        assert (tmp_path / doomed[0].study_uid).is_dir()
        report = await sync(client, Targets(query={}), tmp_path, delete=True)
    assert report.ok and report.sync is not None
    assert report.sync.deleted == len(doomed)
    assert log.wado() == []
    assert not (tmp_path / doomed[0].study_uid).exists()
    assert_tree_holds(tmp_path, [*dataset.instances, *UPLOADED])
