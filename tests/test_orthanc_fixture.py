"""The Orthanc fixtures hold exactly the sample data, byte for byte, and clean up after."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest

from kheops_async.demo import (
    OrthancDataset,
    OrthancError,
    OrthancServer,
    generate_dataset,
    running_orthanc,
    start_orthanc,
)

STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
DICOM_JSON = {"Accept": "application/dicom+json"}


def _uids(answer: list[dict[str, dict[str, list[str]]]], tag: str) -> set[str]:
    return {item[tag]["Value"][0] for item in answer}


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sample_data_is_deterministic() -> None:
    assert generate_dataset(seed=7, patients=1) == generate_dataset(seed=7, patients=1)
    assert generate_dataset(seed=7, patients=1)[0].data != generate_dataset(seed=8)[0].data
    for instance in generate_dataset(patients=1, pixel_bytes=4096):
        ds = pydicom.dcmread(io.BytesIO(instance.data))
        assert ds.SOPInstanceUID == instance.sop_uid
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2 == 4096


def test_dicomweb_lists_exactly_the_generated_studies_and_series(
    orthanc_dataset: OrthancDataset,
) -> None:
    with httpx.Client(base_url=orthanc_dataset.server.dicomweb_url, headers=DICOM_JSON) as client:
        response = client.get("/studies")
        assert response.status_code == 200
        studies = _uids(response.json(), STUDY_INSTANCE_UID)
        assert studies == orthanc_dataset.studies()
        assert len(studies) == 3 * 2 + 1  # generated + the compressed study
        for study in studies:
            series = client.get(f"/studies/{study}/series").json()
            assert _uids(series, SERIES_INSTANCE_UID) == orthanc_dataset.series_of(study)


def test_stored_files_are_byte_identical(orthanc_dataset: OrthancDataset) -> None:
    syntaxes = {instance.transfer_syntax for instance in orthanc_dataset.instances}
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"} <= syntaxes
    with httpx.Client(base_url=orthanc_dataset.server.url) as client:
        for instance in orthanc_dataset.instances:
            [match] = client.post("/tools/lookup", content=instance.sop_uid).json()
            stored = client.get(f"/instances/{match['ID']}/file")
            assert stored.status_code == 200
            assert stored.content == instance.data, instance


def test_basic_auth_server_requires_the_password(orthanc_basic_auth: OrthancServer) -> None:
    assert orthanc_basic_auth.auth == ("alice", "s3cret")
    with httpx.Client(base_url=orthanc_basic_auth.url) as client:
        assert client.get("/system").status_code == 401
        assert client.get("/system", auth=("alice", "wrong")).status_code == 401
        assert client.get("/system", auth=orthanc_basic_auth.auth).status_code == 200
        studies = client.get("/dicom-web/studies", auth=orthanc_basic_auth.auth, headers=DICOM_JSON)
        assert studies.status_code == 200


def test_stop_ends_the_process_and_is_idempotent(
    orthanc_factory: Callable[..., OrthancServer],
) -> None:
    server = orthanc_factory()
    assert _process_exists(server.pid)
    server.stop()
    assert not _process_exists(server.pid)
    with pytest.raises(httpx.ConnectError), httpx.Client() as client:
        client.get(f"{server.url}/system")
    server.stop()  # a second stop is a no-op


def test_stop_kills_a_process_that_outlives_the_timeout(
    orthanc_factory: Callable[..., OrthancServer],
) -> None:
    server = orthanc_factory()
    server.stop(timeout=0)
    assert not _process_exists(server.pid)


def test_running_orthanc_stops_on_error(orthanc_installed: object, tmp_path: Path) -> None:
    pids: list[int] = []

    def fail_while_running() -> None:
        with running_orthanc(tmp_path) as server:
            pids.append(server.pid)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_while_running()
    assert not _process_exists(pids[0])


def test_start_reports_a_taken_port_with_the_log(orthanc_installed: object, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OrthancError, match=r"in use"):
            start_orthanc(tmp_path, port=port)
