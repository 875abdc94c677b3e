"""Receiving parts and placing them: bytes as received, the checks of the rule, cleanup."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import anyio
import pytest
from pydicom import dcmread

from kheops_async.demo import generate_dataset
from kheops_async.engine import receiving
from kheops_async.engine.journal import Journal
from kheops_async.engine.receiving import (
    LARGE_WRITE_BYTES,
    SMALL_PART_BYTES,
    PartBody,
    receive_body,
)
from kheops_async.engine.sink import PartSink, SeriesRequest
from kheops_async.engine.state_dir import TempArea
from kheops_async.layout import Layout
from kheops_async.streaming import MultipartReader

OTHER_STUDY = "1.2.826.0.1.3680043.10.7"


def _multipart(*datas: bytes) -> bytes:
    return (
        b"".join(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + d + b"\r\n" for d in datas)
        + b"--B--\r\n"
    )


async def _received(
    tmp_path: Path, pieces: list[bytes], *, checksum: bool = False
) -> tuple[TempArea, list[PartBody]]:
    """The parts of a multipart body (boundary ``B``) received from ``pieces``, in order."""

    async def receive() -> bytes:
        return pieces.pop(0) if pieces else b""

    temp = TempArea(tmp_path)
    temp.prepare()
    bodies: list[PartBody] = []
    async for part in MultipartReader(receive, "B"):
        bodies.append(await receive_body(part, temp.new_path(), checksum=checksum))
    return temp, bodies


@pytest.mark.anyio
@pytest.mark.parametrize("first_chunk", [1, 7, 65536])
async def test_large_and_small_parts_are_placed_byte_for_byte(
    tmp_path: Path, first_chunk: int
) -> None:
    """Parts below and above SMALL_PART_BYTES, whatever the first chunk's size."""
    small, large = generate_dataset(
        patients=1,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=2,
        pixel_bytes=SMALL_PART_BYTES + 300_000,
    )
    small_data = small.data[: SMALL_PART_BYTES // 2]  # a valid header, truncated pixels
    body = _multipart(small_data, large.data)
    pieces = [body[:first_chunk]] + [
        body[i : i + 65536] for i in range(first_chunk, len(body), 65536)
    ]

    temp, bodies = await _received(tmp_path, pieces, checksum=True)
    assert [b.in_memory for b in bodies] == [True, False]
    journal = Journal.open(tmp_path / "journal.sqlite")
    sink = PartSink(tmp_path, Layout(), journal, checksum=True)
    request = SeriesRequest(small.study_uid, small.series_uid, {})
    outcomes = sink.commit_batch(bodies, request)
    assert [o.status for o in outcomes] == ["written", "written"]
    assert [Path(o.path).read_bytes() for o in outcomes if o.path] == [small_data, large.data]
    assert request.done == {small.sop_uid, large.sop_uid}
    entries = journal.series_entries(small.study_uid, small.series_uid)
    assert {e.size for e in entries.values()} == {len(small_data), len(large.data)}
    assert all(e.sha256 and len(e.sha256) == 64 for e in entries.values())
    assert list(temp.directory.iterdir()) == []
    journal.close()


@pytest.mark.anyio
async def test_a_large_part_is_written_from_threads_in_large_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No disk write on the event loop; each write at least LARGE_WRITE_BYTES but the last."""
    data = bytes(range(256)) * (5 * LARGE_WRITE_BYTES // 256 + 77)
    body = _multipart(data)
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    writes: list[tuple[str, int]] = []
    real_write_all = receiving.write_all

    def recording(fd: int, chunks: list[bytes]) -> None:
        writes.append((threading.current_thread().name, sum(len(c) for c in chunks)))
        real_write_all(fd, chunks)

    monkeypatch.setattr(receiving, "write_all", recording)

    async def receive() -> bytes:
        return pieces.pop(0) if pieces else b""

    temp = TempArea(tmp_path)
    temp.prepare()
    async for part in MultipartReader(receive, "B"):
        received = await receive_body(part, temp.new_path())
    assert not received.in_memory
    assert Path(received.temp_path).read_bytes() == data
    assert sum(size for _, size in writes) == len(data)
    assert all(size >= LARGE_WRITE_BYTES for _, size in writes[:-1])
    assert len(writes) <= len(data) // LARGE_WRITE_BYTES + 1
    assert threading.main_thread().name not in {name for name, _ in writes}
    received.discard()


def _body(temp: TempArea, data: bytes, index: int = 0) -> PartBody:
    return PartBody(index, "application/dicom", temp.new_path(), len(data), [data], b"")


def test_a_part_naming_another_series_is_never_written(tmp_path: Path) -> None:
    one, other = generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=2, instances_per_series=1
    )
    temp = TempArea(tmp_path)
    temp.prepare()
    sink = PartSink(tmp_path, Layout(), None)
    request = SeriesRequest(one.study_uid, one.series_uid, {})
    (outcome,) = sink.commit_batch([_body(temp, other.data)], request)
    assert outcome.status == "failed"
    assert other.series_uid in outcome.error and one.series_uid in outcome.error
    assert list(tmp_path.rglob("*.dcm")) == []
    assert list(temp.directory.iterdir()) == []


def test_a_collision_names_both_instances_and_overwrites_nothing(tmp_path: Path) -> None:
    """Two studies with the same series and SOP UIDs under a layout without the study."""
    (first,) = generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1
    )
    temp = TempArea(tmp_path)
    temp.prepare()
    journal = Journal.open(tmp_path / "journal.sqlite")
    layout = Layout("{SeriesInstanceUID}/{SOPInstanceUID}.dcm")
    sink = PartSink(tmp_path, layout, journal)
    (written,) = sink.commit_batch(
        [_body(temp, first.data)], SeriesRequest(first.study_uid, first.series_uid, {})
    )
    assert written.status == "written"

    dataset = dcmread(io.BytesIO(first.data))
    dataset.StudyInstanceUID = OTHER_STUDY
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    (clash,) = sink.commit_batch(
        [_body(temp, buffer.getvalue())],
        SeriesRequest(OTHER_STUDY, first.series_uid, {}),
    )
    assert clash.status == "failed"
    assert "collision" in clash.error and first.study_uid in clash.error
    assert written.path is not None and Path(written.path).read_bytes() == first.data
    assert list(temp.directory.iterdir()) == []
    journal.close()


def test_any_error_removes_the_temporary_files(tmp_path: Path) -> None:
    (instance,) = generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1
    )
    temp = TempArea(tmp_path)
    temp.prepare()
    blocker = tmp_path / instance.study_uid
    blocker.write_text("a file where a directory must go")
    sink = PartSink(tmp_path, Layout(), None)
    bodies = [_body(temp, instance.data, 0), _body(temp, instance.data, 1)]
    with pytest.raises(NotADirectoryError):
        sink.commit_batch(bodies, SeriesRequest(instance.study_uid, instance.series_uid, {}))
    assert list(temp.directory.iterdir()) == []


def _with_long_header(data: bytes, comment_bytes: int) -> bytes:
    """``data`` with a TextValue (UT) of ``comment_bytes`` before its pixel data."""
    dataset = dcmread(io.BytesIO(data))
    dataset.add_new(0x0040A160, "UT", "x" * comment_bytes)
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


@pytest.mark.anyio
@pytest.mark.parametrize("comment_bytes", [0, 20_000, 100_000])
async def test_small_parts_sharing_a_network_chunk_keep_their_bytes_and_header(
    tmp_path: Path, comment_bytes: int
) -> None:
    """Parts received as slices of one chunk: headers beyond the first probe are read too.

    The parser hands out memoryviews of the chunk (not copies); the sink reads the
    header from a copy of the first 8 KiB, then of 64 KiB, then of the whole part.
    """
    instances = generate_dataset(
        patients=1,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=3,
        pixel_bytes=30_000,
    )
    datas = [_with_long_header(i.data, comment_bytes) for i in instances]
    pieces = [_multipart(*datas)]  # one chunk: every part is a slice of it

    _, bodies = await _received(tmp_path, pieces)
    assert all(b.chunks and isinstance(b.chunks[0], memoryview) for b in bodies)
    sink = PartSink(tmp_path, Layout(), None)
    first = instances[0]
    outcomes = sink.commit_batch(bodies, SeriesRequest(first.study_uid, first.series_uid, {}))
    assert [o.status for o in outcomes] == ["written"] * 3
    assert [o.values["SOPInstanceUID"] for o in outcomes] == [i.sop_uid for i in instances]
    assert [Path(o.path).read_bytes() for o in outcomes if o.path] == datas


def test_a_header_longer_than_the_probe_is_never_read_from_a_cut_copy(tmp_path: Path) -> None:
    """The pixel data tag's bytes inside an earlier value, and a header past 8 KiB.

    Found by a review: the probe was read whenever it held those four bytes, and
    pydicom reads a cut-off header without an error, returning empty UIDs (the part
    failed its check, or a layout field came out empty). Only the fast scan, which
    gives up on a cut header, reads a probe now.
    """
    (instance,) = generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1
    )
    dataset = dcmread(io.BytesIO(instance.data))
    dataset.add_new(0x00090010, "LO", "ACME")
    dataset.add_new(0x00091001, "OB", b"\x00" * 100 + b"\xe0\x7f\x10\x00" + b"\x01" * 20_000)
    out = io.BytesIO()
    dataset.save_as(out)
    data = out.getvalue()
    _, bodies = anyio.run(_received, tmp_path, [_multipart(data)])
    assert isinstance(bodies[0].chunks and bodies[0].chunks[0], memoryview)
    sink = PartSink(tmp_path, Layout("{PatientID}/{SeriesInstanceUID}/{SOPInstanceUID}"), None)
    request = SeriesRequest(instance.study_uid, instance.series_uid, {})
    (outcome,) = sink.commit_batch(bodies, request)
    assert outcome.status == "written", outcome.error
    assert outcome.values["SeriesInstanceUID"] == instance.series_uid
    assert outcome.values["PatientID"] == dataset.PatientID
    assert outcome.path and Path(outcome.path).read_bytes() == data
