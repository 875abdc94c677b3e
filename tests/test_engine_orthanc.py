"""The download engine against a real Orthanc: complete, byte-identical, resumable trees."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from treecheck import assert_no_temp_files, assert_tree_holds, tree_files

from kheops_async import (
    KHEOPS_CLIENT_LAYOUT,
    DicomWebClient,
    DownloadProgress,
    DownloadReport,
    InstanceRecord,
    InstanceStatus,
    Targets,
    download,
)
from kheops_async.demo import OrthancDataset, OrthancServer, generate_dataset, load_dataset

pytestmark = pytest.mark.anyio


def dicom_files(root: Path) -> dict[Path, bytes]:
    return tree_files(root)


def assert_tree_matches(root: Path, dataset: OrthancDataset, sops: set[str] | None = None) -> None:
    """Every expected instance exactly once at its default path, nothing else."""
    assert_tree_holds(root, [i for i in dataset.instances if sops is None or i.sop_uid in sops])


async def run(
    dataset: OrthancDataset,
    targets: Targets,
    dest: Path,
    rows: list[InstanceRecord] | None = None,
    **kwargs: object,
) -> DownloadReport:
    """Download with the test server; the instance records go to ``rows`` if given."""
    async with DicomWebClient(dataset.server.dicomweb_url, concurrency=3) as client:
        return await download(
            client, targets, dest, on_instance=None if rows is None else rows.append, **kwargs
        )


async def test_whole_archive_then_resume_then_force(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    dest = tmp_path / "mirror"
    report = await run(orthanc_dataset, Targets(query={}), dest)
    assert report.ok, report.failures
    assert report.written == len(orthanc_dataset.instances)
    assert (
        report.series_total
        == report.series_completed
        == len({(i.study_uid, i.series_uid) for i in orthanc_dataset.instances})
    )
    assert report.bytes_written == sum(len(i.data) for i in orthanc_dataset.instances)
    assert_tree_matches(dest, orthanc_dataset)
    assert_no_temp_files(dest)
    inodes = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dicom_files(dest)}

    again = await run(orthanc_dataset, Targets(query={}), dest)
    assert again.ok and again.written == 0
    assert again.skipped == len(orthanc_dataset.instances)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dicom_files(dest)} == inodes

    forced = await run(orthanc_dataset, Targets(query={}), dest, force=True)
    assert forced.ok and forced.written == len(orthanc_dataset.instances)
    assert all(p.stat().st_ino != inodes[p][0] for p in inodes)
    assert_tree_matches(dest, orthanc_dataset)


async def test_report_rows_describe_each_instance(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    first = orthanc_dataset.instances[0]
    records: list[InstanceRecord] = []
    report = await run(orthanc_dataset, Targets(studies=[first.study_uid]), tmp_path, records)
    rows = {r.sop_uid: r for r in records}
    assert set(rows) == {i.sop_uid for i in orthanc_dataset.instances_of(first.study_uid)}
    for instance in orthanc_dataset.instances_of(first.study_uid):
        row = rows[instance.sop_uid]
        assert row.status is InstanceStatus.WRITTEN
        assert row.patient_id == instance.patient_id
        assert row.modality == instance.modality
        assert row.file_size == len(instance.data) == Path(row.path).stat().st_size
        assert row.series_date and row.series_time
    assert report.megabytes_per_second > 0 and report.seconds > 0


async def test_targets_pairs_table_query_and_only_series(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    first, last = orthanc_dataset.instances[0], orthanc_dataset.instances[-1]
    pair = await run(
        orthanc_dataset, Targets(series=[(first.study_uid, first.series_uid)]), tmp_path / "a"
    )
    assert pair.ok
    assert_tree_matches(
        tmp_path / "a",
        orthanc_dataset,
        {i.sop_uid for i in orthanc_dataset.instances_of(first.study_uid, first.series_uid)},
    )

    table = tmp_path / "uids.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", "SeriesInstanceUID"])
        writer.writerow([first.study_uid, first.series_uid])
        writer.writerow([last.study_uid, ""])
    from_table = await run(orthanc_dataset, Targets.from_table(table), tmp_path / "b")
    assert from_table.ok
    wanted = {i.sop_uid for i in orthanc_dataset.instances_of(first.study_uid, first.series_uid)}
    wanted |= {i.sop_uid for i in orthanc_dataset.instances_of(last.study_uid)}
    assert_tree_matches(tmp_path / "b", orthanc_dataset, wanted)

    query = Targets(query={"PatientID": first.patient_id}, series_filters={"Modality": "MR"})
    by_query_rows: list[InstanceRecord] = []
    by_query = await run(orthanc_dataset, query, tmp_path / "c", by_query_rows)
    assert by_query.ok
    expected = {
        i.sop_uid
        for i in orthanc_dataset.instances
        if i.patient_id == first.patient_id and i.modality == "MR"
    }
    assert expected and {r.sop_uid for r in by_query_rows} == expected

    only = Targets(studies=[first.study_uid], only_series=frozenset({first.series_uid}))
    only_rows: list[InstanceRecord] = []
    await run(orthanc_dataset, only, tmp_path / "d", only_rows)
    assert {r.series_uid for r in only_rows} == {first.series_uid}


async def test_unknown_series_is_a_reported_failure(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    first = orthanc_dataset.instances[0]
    targets = Targets(series=[(first.study_uid, "1.2.3.4.5"), (first.study_uid, first.series_uid)])
    report = await run(orthanc_dataset, targets, tmp_path)
    assert not report.ok
    assert [f.series_uid for f in report.failures] == ["1.2.3.4.5"]
    assert report.written == len(orthanc_dataset.instances_of(first.study_uid, first.series_uid))


async def test_layouts_use_header_values(orthanc_dataset: OrthancDataset, tmp_path: Path) -> None:
    first = orthanc_dataset.instances[0]
    targets = Targets(studies=[first.study_uid])
    flat = await run(orthanc_dataset, targets, tmp_path / "flat", layout=KHEOPS_CLIENT_LAYOUT)
    assert flat.ok
    for instance in orthanc_dataset.instances_of(first.study_uid):
        path = tmp_path / "flat" / instance.series_uid / f"{instance.sop_uid}.dcm"
        assert path.read_bytes() == instance.data
    custom = await run(
        orthanc_dataset,
        targets,
        tmp_path / "custom",
        layout="{PatientID}/{Modality}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
    )
    assert custom.ok
    for instance in orthanc_dataset.instances_of(first.study_uid):
        path = tmp_path / "custom" / instance.patient_id / instance.modality
        assert (
            path / instance.series_uid / f"{instance.sop_uid}.dcm"
        ).read_bytes() == instance.data
    resumed = await run(
        orthanc_dataset,
        targets,
        tmp_path / "custom",
        layout="{PatientID}/{Modality}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
    )
    assert resumed.written == 0 and resumed.skipped == custom.written


async def test_dry_run_writes_nothing(orthanc_dataset: OrthancDataset, tmp_path: Path) -> None:
    dest = tmp_path / "never"
    rows: list[InstanceRecord] = []
    report = await run(orthanc_dataset, Targets(query={}), dest, rows, dry_run=True)
    assert not dest.exists()
    assert report.dry_run and report.bytes_written == 0
    assert {r.sop_uid for r in rows} == set(orthanc_dataset.by_sop)
    assert {r.status for r in rows} == {InstanceStatus.PLANNED}


async def test_metadata_only_per_series_and_per_instance(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    first = orthanc_dataset.instances[0]
    targets = Targets(series=[(first.study_uid, first.series_uid)])
    members = orthanc_dataset.instances_of(first.study_uid, first.series_uid)
    series_report = await run(orthanc_dataset, targets, tmp_path / "s", metadata_only="series")
    assert series_report.ok
    (meta,) = (tmp_path / "s").rglob("series_metadata.json")
    items = json.loads(meta.read_text())
    assert {item["00080018"]["Value"][0] for item in items} == {i.sop_uid for i in members}
    assert not list((tmp_path / "s").rglob("*.dcm"))

    instance_report = await run(orthanc_dataset, targets, tmp_path / "i", metadata_only="instance")
    assert instance_report.ok
    files = sorted((tmp_path / "i").rglob("*.json"))
    assert {f.stem for f in files} == {i.sop_uid for i in members}


async def test_progress_callback_sees_every_instance(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    snapshots: list[tuple[int, int, int]] = []

    def on_progress(progress: DownloadProgress) -> None:
        snapshots.append((progress.series_done, progress.instances_done, progress.bytes_done))

    report = await run(orthanc_dataset, Targets(query={}), tmp_path, progress=on_progress)
    assert report.ok
    assert snapshots[-1][1] == len(orthanc_dataset.instances)
    assert snapshots[-1][2] == report.bytes_written
    assert [s[1] for s in snapshots] == sorted(s[1] for s in snapshots)


async def test_cancellation_leaves_only_complete_files(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    dest = tmp_path / "cancelled"
    with anyio.move_on_after(0.05):
        await run(orthanc_dataset, Targets(query={}), dest)
    assert_no_temp_files(dest)
    by_path = {
        dest / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm": i.data
        for i in orthanc_dataset.instances
    }
    for path, data in dicom_files(dest).items():
        assert by_path[path] == data
    report = await run(orthanc_dataset, Targets(query={}), dest)
    assert report.ok
    assert_tree_matches(dest, orthanc_dataset)


# -- crash safety: SIGKILL a real download subprocess, then rerun ----------------------

KILLABLE_DOWNLOAD = textwrap.dedent(
    """
    import sys, anyio
    from kheops_async import DicomWebClient, Targets, download

    def show(progress):
        print(progress.instances_done, flush=True)

    async def main():
        async with DicomWebClient(sys.argv[1], concurrency=2) as client:
            await download(client, Targets(query={}), sys.argv[2], progress=show)
        print("done", flush=True)

    anyio.run(main)
    """
)


@pytest.fixture(scope="module")
def bulky_orthanc(
    orthanc_installed: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[OrthancServer, OrthancDataset]:
    """An Orthanc with 6 series x 8 instances of 256 KB: slow enough to kill mid-way."""
    from kheops_async.demo import start_orthanc

    server = start_orthanc(tmp_path_factory.mktemp("bulky"))
    instances = generate_dataset(
        seed=99,
        patients=1,
        studies_per_patient=3,
        series_per_study=2,
        instances_per_series=8,
        pixel_bytes=256 * 1024,
    )
    yield server, load_dataset(server, instances)  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize("kill_after", [0, 3, 17, 40])
def test_sigkill_then_rerun_completes_the_tree(
    bulky_orthanc: tuple[OrthancServer, OrthancDataset], tmp_path: Path, kill_after: int
) -> None:
    server, dataset = bulky_orthanc
    dest = tmp_path / "tree"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_DOWNLOAD, server.dicomweb_url, str(dest)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    killed = False
    for line in process.stdout:
        if line.strip().isdigit() and int(line) >= kill_after:
            os.kill(process.pid, signal.SIGKILL)
            killed = True
            break
        assert time.monotonic() < deadline
    process.wait(timeout=30)
    process.stdout.close()
    assert killed, "the download finished before it could be killed"
    finish = _run_to_completion(server, dest)
    assert finish() == 0
    assert_tree_matches(dest, dataset)
    assert_no_temp_files(dest)


def _run_to_completion(server: OrthancServer, dest: Path) -> Callable[[], int]:
    def finish() -> int:
        done = subprocess.run(
            [sys.executable, "-c", KILLABLE_DOWNLOAD, server.dicomweb_url, str(dest)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "done" in done.stdout, done.stderr
        return done.returncode

    return finish


async def test_one_missing_file_is_fetched_alone(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    first = orthanc_dataset.instances[0]
    targets = Targets(series=[(first.study_uid, first.series_uid)])
    await run(orthanc_dataset, targets, tmp_path)
    lost = tmp_path / first.study_uid / first.series_uid / f"{first.sop_uid}.dcm"
    lost.unlink()
    rows: list[InstanceRecord] = []
    report = await run(orthanc_dataset, targets, tmp_path, rows)
    assert report.ok
    assert [r.sop_uid for r in rows if r.status is InstanceStatus.WRITTEN] == [first.sop_uid]
    assert lost.read_bytes() == first.data


async def test_bad_credentials_stop_the_run_with_the_error_itself(
    orthanc_basic_auth: OrthancServer, tmp_path: Path
) -> None:
    from kheops_async import AuthenticationError

    async with DicomWebClient(
        orthanc_basic_auth.dicomweb_url, username="alice", password="nope"
    ) as client:
        with pytest.raises(AuthenticationError):
            await download(client, Targets(query={}), tmp_path / "x")


async def test_unwritable_destination_is_a_clear_error(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    from kheops_async import ConfigurationError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="cannot write to the output directory"):
        await run(orthanc_dataset, Targets(query={}), blocker / "sub")
