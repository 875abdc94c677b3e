"""Seeded, deterministic DICOM data for the tests, the demo and the benchmarks.

Two sources:

* :func:`generate_dataset` / :func:`iter_dataset` synthesise small CT/MR instances
  (Explicit VR Little Endian, 16-bit pixels) for a tree of patients, studies, series and
  instances. The same arguments always give the same bytes, so a test can compare what
  a client downloaded with what was uploaded, byte for byte. ``pixel_bytes`` makes the
  instances as large as a benchmark needs; :func:`generate_large_series` yields them one
  at a time so that memory stays bounded by one instance.
* :func:`shipped_compressed_instances` re-labels pydicom's own test files in compressed
  transfer syntaxes (JPEG 2000, JPEG, JPEG-LS, RLE, deflate), the data a server may fail
  to transcode and that a client must therefore fetch "as stored".

Every value is derived from the seed and the instance's position in the tree (never from
one shared random stream), so generating fewer instances yields a prefix of the same data.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import random
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from kheops_async.errors import ConfigurationError

__all__ = [
    "SHIPPED_COMPRESSED_FILES",
    "SampleInstance",
    "generate_dataset",
    "generate_large_series",
    "index_by_series",
    "iter_dataset",
    "shipped_compressed_instances",
]

#: pydicom test files used by :func:`shipped_compressed_instances`: one per transfer syntax.
SHIPPED_COMPRESSED_FILES: tuple[str, ...] = (
    "JPEG2000.dcm",  # 1.2.840.10008.1.2.4.91 JPEG 2000
    "MR_small_jp2klossless.dcm",  # 1.2.840.10008.1.2.4.90 JPEG 2000 lossless
    "MR_small_RLE.dcm",  # 1.2.840.10008.1.2.5 RLE lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # 1.2.840.10008.1.2.4.50 JPEG baseline
    "JPGExtended.dcm",  # 1.2.840.10008.1.2.4.51 JPEG extended
    "SC_rgb_jpeg_gdcm.dcm",  # 1.2.840.10008.1.2.4.70 JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",  # 1.2.840.10008.1.2.4.80 JPEG-LS lossless
    "image_dfl.dcm",  # 1.2.840.10008.1.2.1.99 deflated explicit VR little endian
)

_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root, made deterministic by the hash
_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
_MAX_PIXEL_BYTES = 0xFFFFFFFE  # largest even length a Pixel Data element can declare
_BLOCK_BYTES = 1 << 20  # seeded random block repeated to fill large pixel data
_BASE_DATE = dt.date(2015, 1, 1)
_FAMILY_NAMES = ("Curie", "Roentgen", "Becquerel", "Hounsfield", "Lauterbur", "Mansfield")
_GIVEN_NAMES = ("Ada", "Blaise", "Claude", "Dora", "Emmy", "Felix", "Grace", "Henri")


@dataclass(frozen=True)
class SampleInstance:
    """One DICOM instance and the identifiers a test checks it by.

    ``data`` is the complete Part-10 file exactly as it is uploaded (and, with
    ``transfer-syntax=*``, exactly as a server returns it).
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    modality: str
    transfer_syntax: str
    data: bytes = field(repr=False)


def _uid(seed: int, *path: object) -> str:
    """Return a UID derived only from ``seed`` and ``path`` (stable across runs)."""
    return str(generate_uid(_UID_PREFIX, ["kheops-async", str(seed), *map(str, path)]))


def _rng(seed: int, *path: object) -> random.Random:
    """Return a random generator seeded by ``seed`` and ``path`` (string seeds are stable)."""
    return random.Random("/".join(["kheops-async", str(seed), *map(str, path)]))


def _pixel_shape(rows: int, columns: int, pixel_bytes: int | None) -> tuple[int, int]:
    """Return ``(rows, columns)``; with ``pixel_bytes`` a near-square image of that size.

    The size is exact when ``pixel_bytes / 2`` factors into a not-too-elongated image
    (e.g. 512 KB -> 512 x 512), otherwise a little smaller.
    """
    if pixel_bytes is None:
        if not (0 < rows <= 0xFFFF and 0 < columns <= 0xFFFF):
            raise ConfigurationError(
                f"rows and columns must be in 1..65535, got {rows} x {columns}"
            )
        return rows, columns
    pixels = max(1, pixel_bytes // 2)  # 16-bit samples
    side = math.isqrt(pixels)
    for columns in range(side, max(0, side // 4), -1):  # exact size, aspect ratio <= 16
        if pixels % columns == 0 and pixels // columns <= 0xFFFF:
            return pixels // columns, columns
    side = min(0xFFFF, side)
    return min(0xFFFF, pixels // side), side


def _pixel_data(seed: int, path: tuple[object, ...], length: int) -> list[bytes]:
    """Return seeded pixel bytes as chunks to join: a random block, repeated as needed.

    Returning chunks lets the caller build the Part-10 file with one allocation, even
    for hundreds of megabytes.
    """
    block = _rng(seed, "pixels", *path).randbytes(min(length, _BLOCK_BYTES))
    whole, rest = divmod(length, len(block))
    return [block] * whole + ([block[:rest]] if rest else [])


def _header_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` (which has no Pixel Data) as a Part-10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pixel_element_header(length: int) -> bytes:
    """Explicit VR little endian header of a native (OW) Pixel Data element."""
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)


def _synthetic_instance(
    *,
    seed: int,
    patient: int,
    study: int,
    series: int,
    instance: int,
    modality: str,
    rows: int,
    columns: int,
) -> SampleInstance:
    """Build one synthetic instance; every value depends only on its arguments."""
    patient_id = f"KA-{seed}-{patient:03d}"
    study_uid = _uid(seed, "study", patient, study)
    series_uid = _uid(seed, "series", patient, study, series)
    sop_uid = _uid(seed, "instance", patient, study, series, instance)
    patient_rng = _rng(seed, "patient", patient)
    study_rng = _rng(seed, "study", patient, study)
    study_date = _BASE_DATE + dt.timedelta(days=study_rng.randrange(3650))
    study_time = dt.time(
        study_rng.randrange(7, 19), study_rng.randrange(60), study_rng.randrange(60)
    )
    series_time = (
        dt.datetime.combine(study_date, study_time) + dt.timedelta(minutes=5 * series)
    ).time()
    sop_class = _SOP_CLASSES.get(modality, CTImageStorage)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "KHEOPS_ASYNC"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = study_time.strftime("%H%M%S")
    ds.SeriesTime = series_time.strftime("%H%M%S")
    ds.ContentTime = ds.SeriesTime
    ds.AccessionNumber = f"A{seed % 10000:04d}{patient:03d}{study:02d}"
    ds.Modality = modality
    ds.Manufacturer = "kheops-async"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.StudyDescription = f"Synthetic {modality} study {study + 1}"
    ds.SeriesDescription = f"{modality} series {series + 1}"
    ds.PatientName = f"{patient_rng.choice(_FAMILY_NAMES)}^{patient_rng.choice(_GIVEN_NAMES)}"
    ds.PatientID = patient_id
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=patient_rng.randrange(60 * 365))
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = patient_rng.choice(("F", "M", "O"))
    ds.SliceThickness = "1.0"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{study + 1}"
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = instance + 1
    ds.ImagePositionPatient = [0, 0, float(instance)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = _uid(seed, "frame", patient, study, series)
    ds.SliceLocation = float(instance)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1

    length = rows * columns * 2
    chunks = _pixel_data(seed, (patient, study, series, instance), length)
    data = b"".join([_header_bytes(ds), _pixel_element_header(length), *chunks])
    return SampleInstance(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        patient_id=patient_id,
        modality=modality,
        transfer_syntax=str(ExplicitVRLittleEndian),
        data=data,
    )


def iter_dataset(
    *,
    seed: int = 1234,
    patients: int = 3,
    studies_per_patient: int = 2,
    series_per_study: int = 2,
    instances_per_series: int = 3,
    rows: int = 16,
    columns: int = 16,
    modalities: Sequence[str] = ("CT", "MR"),
    pixel_bytes: int | None = None,
) -> Iterator[SampleInstance]:
    """Yield synthetic instances one at a time, patient by patient, series by series.

    Series ``k`` of a study has modality ``modalities[k % len(modalities)]``. With
    ``pixel_bytes`` the image is near-square with (about) that many bytes of 16-bit pixels
    (``rows`` and ``columns`` are then ignored). Raises
    :class:`~kheops_async.errors.ConfigurationError` on an empty tree dimension, an empty
    ``modalities`` or an image size DICOM cannot express.
    """
    counts = (patients, studies_per_patient, series_per_study, instances_per_series)
    if min(counts) < 1:
        raise ConfigurationError(
            f"patients/studies/series/instances must all be >= 1, got {counts}"
        )
    if not modalities:
        raise ConfigurationError("modalities must not be empty")
    if pixel_bytes is not None and not 2 <= pixel_bytes <= _MAX_PIXEL_BYTES:
        raise ConfigurationError(f"pixel_bytes must be in 2..{_MAX_PIXEL_BYTES}, got {pixel_bytes}")
    shape_rows, shape_columns = _pixel_shape(rows, columns, pixel_bytes)
    for patient in range(patients):
        for study in range(studies_per_patient):
            for series in range(series_per_study):
                modality = modalities[series % len(modalities)]
                for instance in range(instances_per_series):
                    yield _synthetic_instance(
                        seed=seed,
                        patient=patient,
                        study=study,
                        series=series,
                        instance=instance,
                        modality=modality,
                        rows=shape_rows,
                        columns=shape_columns,
                    )


def generate_dataset(
    *,
    seed: int = 1234,
    patients: int = 3,
    studies_per_patient: int = 2,
    series_per_study: int = 2,
    instances_per_series: int = 3,
    rows: int = 16,
    columns: int = 16,
    modalities: Sequence[str] = ("CT", "MR"),
    pixel_bytes: int | None = None,
) -> list[SampleInstance]:
    """Return the whole synthetic tree as a list; see :func:`iter_dataset`.

    The defaults give 3 patients x 2 studies x 2 series x 3 instances = 36 instances
    of 16 x 16 pixels (about 1.5 KB each).
    """
    return list(
        iter_dataset(
            seed=seed,
            patients=patients,
            studies_per_patient=studies_per_patient,
            series_per_study=series_per_study,
            instances_per_series=instances_per_series,
            rows=rows,
            columns=columns,
            modalities=modalities,
            pixel_bytes=pixel_bytes,
        )
    )


def generate_large_series(
    *, seed: int = 1234, instances: int, pixel_bytes: int, modality: str = "CT"
) -> Iterator[SampleInstance]:
    """Yield one series of ``instances`` large instances, one at a time.

    Only the instance being yielded is held in memory, so a benchmark can stream
    several 250 MB instances to a server.
    """
    return iter_dataset(
        seed=seed,
        patients=1,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=instances,
        modalities=(modality,),
        pixel_bytes=pixel_bytes,
    )


def shipped_compressed_instances(*, seed: int = 1234) -> list[SampleInstance]:
    """Return pydicom's compressed test files as one synthetic study, one series per file.

    Each file keeps its transfer syntax and its encapsulated pixel data unchanged; only
    the patient, study, series and instance identifiers are replaced (with values derived
    from ``seed``), because several shipped files share a SOPInstanceUID and a server keeps
    only the first copy. Raises :class:`~kheops_async.errors.ConfigurationError` if the
    installed pydicom lacks one of :data:`SHIPPED_COMPRESSED_FILES` (nothing is downloaded).
    """
    patient_id = f"KA-{seed}-COMPRESSED"
    study_uid = _uid(seed, "compressed-study")
    instances = []
    for number, name in enumerate(SHIPPED_COMPRESSED_FILES, start=1):
        path = pydicom.data.get_testdata_file(name, download=False)
        if not isinstance(path, str):
            raise ConfigurationError(
                f"pydicom {pydicom.__version__} does not ship the test file {name!r}; "
                "install pydicom>=3.0 from a wheel (it includes its test files)"
            )
        original = pydicom.dcmread(path)
        ds = pydicom.dcmread(path)
        series_uid = _uid(seed, "compressed-series", name)
        sop_uid = _uid(seed, "compressed-instance", name)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = patient_id
        ds.PatientName = "Compressed^Shipped"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20200202"
        ds.StudyTime = "101010"
        ds.StudyID = "C1"
        ds.AccessionNumber = f"C{seed % 10000:04d}"
        ds.StudyDescription = "pydicom compressed test files"
        ds.SeriesDescription = f"{name} {ds.file_meta.TransferSyntaxUID.keyword}"[:64]
        ds.SeriesNumber = number
        ds.InstanceNumber = 1
        modality = str(ds.get("Modality") or "OT")
        ds.Modality = modality
        data = _header_bytes(ds)
        _check_reencoded(data, name, transfer_syntax, original.PixelData)
        instances.append(
            SampleInstance(
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                patient_id=patient_id,
                modality=modality,
                transfer_syntax=transfer_syntax,
                data=data,
            )
        )
    return instances


def _check_reencoded(data: bytes, name: str, transfer_syntax: str, pixel_data: bytes) -> None:
    """Make sure re-saving kept the transfer syntax and the exact pixel data bytes."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if str(ds.file_meta.TransferSyntaxUID) != transfer_syntax:
        raise RuntimeError(f"re-saving {name} changed its transfer syntax")
    if ds.PixelData != pixel_data:
        raise RuntimeError(f"re-saving {name} changed its pixel data")


def index_by_series(
    instances: Iterable[SampleInstance],
) -> dict[tuple[str, str], list[SampleInstance]]:
    """Group instances by ``(study_uid, series_uid)``, keeping their order."""
    series: dict[tuple[str, str], list[SampleInstance]] = {}
    for instance in instances:
        series.setdefault((instance.study_uid, instance.series_uid), []).append(instance)
    return series
