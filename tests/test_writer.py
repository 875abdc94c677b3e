"""Header reading and temporary files: same values as pydicom's dcmread, faster."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file

from kheops_async import InvalidDicomError
from kheops_async.demo import shipped_compressed_instances
from kheops_async.writer import REPORT_KEYWORDS, PartialFiles, read_header_values

KEYWORDS = [*REPORT_KEYWORDS, "PatientName", "StudyDate"]


def reference(data: bytes) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = dcmread(io.BytesIO(data), stop_before_pixels=True)
    values = {}
    for keyword in dict.fromkeys([*KEYWORDS, "SOPInstanceUID"]):
        value = dataset.get(keyword)
        if value is None:
            values[keyword] = ""
        elif type(value).__name__ == "MultiValue":
            values[keyword] = "\\".join(str(v) for v in value)
        else:
            values[keyword] = str(value)
    return values


def sample_files() -> list[tuple[str, bytes]]:
    files = [(i.transfer_syntax, i.data) for i in shipped_compressed_instances()]
    for name in (
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "image_dfl.dcm",
    ):
        path = get_testdata_file(name, download=False)
        if path is not None:
            files.append((name, Path(str(path)).read_bytes()))
    for name in ("chrFren.dcm", "chrH31.dcm", "chrX1.dcm"):
        files += [(name, Path(p).read_bytes()) for p in get_charset_files(name)]
    return files


@pytest.mark.parametrize(
    ("name", "data"), sample_files(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_values_equal_dcmread(name: str, data: bytes, tmp_path: Path) -> None:
    expected = reference(data)
    assert read_header_values(data, KEYWORDS) == expected
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    assert read_header_values(path, KEYWORDS) == expected


@pytest.mark.parametrize(
    "garbage", [b"<html>oops</html>", b"\0" * 128 + b"DICM" + b"\xff" * 40, b""]
)
def test_not_dicom_raises(garbage: bytes) -> None:
    with pytest.raises(InvalidDicomError):
        read_header_values(garbage, KEYWORDS)


def test_stale_partials_of_dead_processes_are_removed(tmp_path: Path) -> None:
    partial = PartialFiles(tmp_path)
    partial.prepare()
    mine = partial.new_path()
    mine.write_bytes(b"x")
    dead = partial.directory / mine.name.replace(f"{os.getpid()}.", "999999999.", 1)
    dead.write_bytes(b"x")
    foreign = partial.directory / "1.abcd.other-host.part"
    foreign.write_bytes(b"x")
    assert partial.prepare() == 1
    assert mine.exists() and foreign.exists() and not dead.exists()


@pytest.mark.anyio
@pytest.mark.parametrize("first_chunk", [1, 7, 65536])
async def test_large_and_small_parts_are_written_byte_for_byte(
    tmp_path: Path, first_chunk: int
) -> None:
    """Parts below and above SMALL_PART_BYTES, whatever the first chunk's size."""
    from kheops_async.demo import generate_dataset
    from kheops_async.streaming import MultipartReader
    from kheops_async.writer import SMALL_PART_BYTES, receive_part

    small, large = generate_dataset(
        patients=1,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=2,
        pixel_bytes=SMALL_PART_BYTES + 300_000,
    )
    small_data = small.data[: SMALL_PART_BYTES // 2]  # a valid header, truncated pixels
    body = (
        b"".join(
            b"--B\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
            for data in (small_data, large.data)
        )
        + b"--B--\r\n"
    )
    pieces = [body[:first_chunk]] + [
        body[i : i + 65536] for i in range(first_chunk, len(body), 65536)
    ]

    async def receive() -> bytes:
        return pieces.pop(0) if pieces else b""

    partial = PartialFiles(tmp_path)
    partial.prepare()
    results = []
    async for part in MultipartReader(receive, "B"):
        received = await receive_part(part, partial, REPORT_KEYWORDS)
        results.append(
            (received.values["SOPInstanceUID"], received.temp_path.read_bytes(), received.size)
        )
    assert results == [
        (small.sop_uid, small_data, len(small_data)),
        (large.sop_uid, large.data, len(large.data)),
    ]
