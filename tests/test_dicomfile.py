"""Reading Part-10 bytes: header values as pydicom's dcmread gives them, completeness."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file

from kheops_async import InvalidDicomError
from kheops_async.demo import shipped_compressed_instances
from kheops_async.dicomfile import is_complete_part10, read_header_values
from kheops_async.engine.sink import REPORT_KEYWORDS

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


@pytest.mark.parametrize(
    ("name", "data"), sample_files(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_whole_files_are_complete_and_damaged_ones_are_not(
    name: str, data: bytes, tmp_path: Path
) -> None:
    sop_uid = read_header_values(data, ["SOPInstanceUID"])["SOPInstanceUID"]
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    assert is_complete_part10(path, sop_uid)
    assert not is_complete_part10(path, sop_uid + ".9")  # another instance's file
    if "dfl" in name or name == "1.2.840.10008.1.2.1.99":
        return  # deflated: one zlib stream, judged by its header only
    for damaged in (
        data[: len(data) // 2],  # cut short
        data[:-1],  # one byte missing
        data + b"\0" * 3,  # trailing bytes that are no element
        b"\0" * 200,  # zeroed
    ):
        path.write_bytes(damaged)
        assert not is_complete_part10(path, sop_uid), len(damaged)


def test_reading_never_touches_the_warning_filters() -> None:
    before = list(warnings.filters)
    for _, data in sample_files():
        read_header_values(data, KEYWORDS)
    assert warnings.filters == before
