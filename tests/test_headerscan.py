"""The fast header scan gives exactly what pydicom's path gives, on every file pydicom ships.

:func:`read_header_values` takes the fast path (:mod:`kheops_async.headerscan`) for bytes
and pydicom's element reader for a file on disk, so reading each file both ways and
comparing proves the fast path on pydicom's own test files: charsets (ISO 2022, UTF-8,
GB18030...), sequences before the wanted tags, compressed syntaxes, implicit VR, big
endian and deflate (which must fall back), and broken files.
"""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest

from kheops_async.demo import generate_dataset
from kheops_async.dicomfile import read_header_values
from kheops_async.errors import InvalidDicomError
from kheops_async.headerscan import scan_explicit_le

KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "PatientName",
    "Modality",
    "SeriesDate",
    "SeriesTime",
    "StudyDescription",
    "SeriesDescription",
    "InstanceNumber",
    "SeriesNumber",
    "AccessionNumber",
)
SHIPPED = sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
"""The files inside pydicom's wheel (``get_testdata_files`` would download others)."""


def both_ways(path: Path) -> tuple[object, object]:
    """(values or error type) from bytes (fast path) and from the file (pydicom)."""
    results: list[object] = []
    for source in (path.read_bytes(), path):
        try:
            results.append(read_header_values(source, KEYWORDS))
        except InvalidDicomError:
            results.append(InvalidDicomError)
    return results[0], results[1]


def test_pydicom_ships_enough_files() -> None:
    assert len(SHIPPED) > 50


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_fast_path_equals_pydicom(path: Path) -> None:
    fast, reference = both_ways(path)
    assert fast == reference


def test_the_fast_path_is_taken_for_generated_instances() -> None:
    for instance in generate_dataset(series_per_study=1, instances_per_series=2):
        raw = scan_explicit_le(instance.data, {0x00080018, 0x0020000D}, 0x0020000E)
        assert raw is not None
        padding = b"\x00" * (len(instance.sop_uid) % 2)
        assert raw[0x00080018] == ("UI", instance.sop_uid.encode() + padding)


@pytest.mark.parametrize("cut", [0, 100, 131, 132, 140, 200, 300, 400])
def test_a_cut_header_falls_back_and_never_guesses(cut: int) -> None:
    (instance,) = generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1
    )
    head = instance.data[:cut]
    assert scan_explicit_le(head, {0x00080018}, 0x0020000E) is None
    with pytest.raises(InvalidDicomError):
        read_header_values(head, KEYWORDS)
