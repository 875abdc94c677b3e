"""The fake server's test archive: :class:`FakeInstance`, :class:`FakeArchive` and builders.

:func:`make_instance` writes small deterministic Part-10 files; :func:`parse_part10` reads
one back into a :class:`FakeInstance`; :func:`make_tree_archive` builds a regular archive.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

#: Binary elements larger than this are given as ``BulkDataURI`` in metadata answers.
BULK_DATA_THRESHOLD = 1024


_SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"


class InstanceLike(Protocol):
    """What :class:`FakeArchive` accepts besides :class:`FakeInstance` (e.g. a test fixture)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    modality: str
    data: bytes


@dataclass(frozen=True, eq=False)
class FakeInstance:
    """One stored instance: its UIDs, its Part-10 bytes, and the attributes QIDO reports.

    Nothing is validated: UIDs may be any string and ``data`` need not be DICOM.
    ``metadata`` is the instance's DICOM JSON (``None`` when ``data`` could not be parsed;
    the server then answers with the UIDs only). Study attributes of a study come from its
    first instance, series attributes from the series' first instance.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    modality: str = ""
    series_date: str = ""
    series_time: str = ""
    series_number: int | None = None
    series_description: str = ""
    sop_class_uid: str = ""
    instance_number: int | None = None
    metadata: Mapping[str, Any] | None = field(default=None, repr=False)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _integer(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _relative_bulk_uri(element: DataElement) -> str:
    return f"bulkdata/{element.tag:08X}"


def parse_part10(data: bytes, **overrides: Any) -> FakeInstance:
    """Build a :class:`FakeInstance` from Part-10 bytes, reading its attributes with pydicom.

    ``overrides`` (any :class:`FakeInstance` field) win over what the file says. Invalid
    values do not warn (warnings are silenced here, in the calling thread). If ``data`` is
    not DICOM, ``study_uid``, ``series_uid`` and ``sop_uid`` must be given as overrides.

    Raises:
        ValueError: ``data`` is not DICOM and a UID override is missing.
    """
    attrs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(io.BytesIO(data))
        except Exception:  # not DICOM at all: only the overrides describe it
            ds = None
        if ds is not None:
            attrs = {
                "study_uid": _text(ds.get("StudyInstanceUID")),
                "series_uid": _text(ds.get("SeriesInstanceUID")),
                "sop_uid": _text(ds.get("SOPInstanceUID")),
                "patient_id": _text(ds.get("PatientID")),
                "patient_name": _text(ds.get("PatientName")),
                "study_date": _text(ds.get("StudyDate")),
                "study_time": _text(ds.get("StudyTime")),
                "study_description": _text(ds.get("StudyDescription")),
                "accession_number": _text(ds.get("AccessionNumber")),
                "modality": _text(ds.get("Modality")),
                "series_date": _text(ds.get("SeriesDate")),
                "series_time": _text(ds.get("SeriesTime")),
                "series_number": _integer(ds.get("SeriesNumber")),
                "series_description": _text(ds.get("SeriesDescription")),
                "sop_class_uid": _text(ds.get("SOPClassUID")),
                "instance_number": _integer(ds.get("InstanceNumber")),
            }
            try:
                attrs["metadata"] = ds.to_json_dict(
                    bulk_data_threshold=BULK_DATA_THRESHOLD,
                    bulk_data_element_handler=_relative_bulk_uri,
                    suppress_invalid_tags=True,
                )
            except Exception:  # metadata of a hostile file: fall back to UIDs only
                attrs["metadata"] = None
    attrs.update(overrides)
    missing = [key for key in ("study_uid", "series_uid", "sop_uid") if key not in attrs]
    if missing:
        raise ValueError(f"data is not DICOM: give {', '.join(missing)} explicitly")
    return FakeInstance(data=data, **attrs)


class FakeArchive:
    """Studies -> series -> instances, in insertion order, safe to mutate while served.

    Build it from :class:`FakeInstance` objects or from any objects with ``study_uid``,
    ``series_uid``, ``sop_uid``, ``patient_id``, ``modality`` and ``data`` attributes (the
    other QIDO attributes are read from ``data`` with pydicom). :meth:`add_raw` inserts
    hostile entries verbatim. A series may hold the same SOP Instance UID twice; WADO of a
    single instance then returns the first.
    """

    def __init__(self, items: Iterable[InstanceLike | FakeInstance] = ()) -> None:
        self._lock = threading.RLock()
        self._studies: dict[str, dict[str, list[FakeInstance]]] = {}
        for item in items:
            self.add(item)

    @classmethod
    def from_objects(cls, items: Iterable[InstanceLike | FakeInstance]) -> FakeArchive:
        """Same as ``FakeArchive(items)``."""
        return cls(items)

    def add(self, item: InstanceLike | FakeInstance) -> FakeInstance:
        """Store ``item``; an :class:`InstanceLike` is parsed (its own attributes win)."""
        if isinstance(item, FakeInstance):
            return self.add_instance(item)
        return self.add_part10(
            item.data,
            study_uid=item.study_uid,
            series_uid=item.series_uid,
            sop_uid=item.sop_uid,
            patient_id=item.patient_id,
            modality=item.modality,
        )

    def add_part10(self, data: bytes, **overrides: Any) -> FakeInstance:
        """Parse ``data`` (see :func:`parse_part10`) and store the result."""
        return self.add_instance(parse_part10(data, **overrides))

    def add_raw(
        self, study_uid: str, series_uid: str, sop_uid: str, data: bytes, **attrs: Any
    ) -> FakeInstance:
        """Store an entry verbatim: no parsing, no validation (hostile UIDs, non-DICOM data)."""
        return self.add_instance(
            FakeInstance(
                study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, data=data, **attrs
            )
        )

    def add_instance(self, instance: FakeInstance) -> FakeInstance:
        """Store a ready-made :class:`FakeInstance`."""
        with self._lock:
            series = self._studies.setdefault(instance.study_uid, {})
            series.setdefault(instance.series_uid, []).append(instance)
        return instance

    def remove(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> int:
        """Delete a study, a series or one instance (as an archive's user does); the count."""
        with self._lock:
            by_series = self._studies.get(study_uid, {})
            if series_uid is None:
                removed = sum(len(items) for items in by_series.values())
                self._studies.pop(study_uid, None)
                return removed
            items = by_series.get(series_uid, [])
            kept = [i for i in items if sop_uid is not None and i.sop_uid != sop_uid]
            removed = len(items) - len(kept)
            if kept:
                by_series[series_uid] = kept
            else:
                by_series.pop(series_uid, None)
            if not by_series:
                self._studies.pop(study_uid, None)
            return removed

    def tree(self) -> dict[str, dict[str, list[FakeInstance]]]:
        """A consistent copy of the whole hierarchy."""
        with self._lock:
            return {
                study: {series: list(items) for series, items in by_series.items()}
                for study, by_series in self._studies.items()
            }

    def study_uids(self) -> list[str]:
        """The study UIDs, in insertion order."""
        with self._lock:
            return list(self._studies)

    def series_uids(self, study_uid: str) -> list[str]:
        """The series UIDs of one study (empty if unknown)."""
        with self._lock:
            return list(self._studies.get(study_uid, {}))

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[FakeInstance]:
        """The instances of a series, or of a whole study when ``series_uid`` is ``None``."""
        with self._lock:
            by_series = self._studies.get(study_uid, {})
            if series_uid is not None:
                return list(by_series.get(series_uid, []))
            return [item for items in by_series.values() for item in items]

    def all_instances(self) -> list[FakeInstance]:
        """Every instance, study by study, series by series."""
        with self._lock:
            return [
                item
                for by_series in self._studies.values()
                for items in by_series.values()
                for item in items
            ]

    def __len__(self) -> int:
        return len(self.all_instances())


def make_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    patient_id: str = "P1",
    modality: str = "CT",
    seed: int = 0,
    size: int = 1024,
    patient_name: str | None = None,
    study_date: str = "20240102",
    study_time: str = "101500",
    series_number: int = 1,
    series_description: str = "",
    instance_number: int = 1,
) -> bytes:
    """Return a small, valid, deterministic DICOM Part-10 file (Explicit VR Little Endian).

    The same arguments always give the same bytes. ``size`` is the approximate number of
    pixel bytes (8-bit monochrome, rounded up to whole rows of at most 1024 columns); the
    pixel values are pseudo-random from ``seed`` and the UIDs. Hostile UID strings
    (``../../evil``, over-long values) are written as given: pydicom's validation warnings
    are silenced in the calling thread.
    """
    columns = max(2, min(1024, size + size % 2))
    rows = max(1, -(-size // columns))
    digest = hashlib.sha256(f"{seed}|{study_uid}|{series_uid}|{sop_uid}".encode()).digest()
    pixels = random.Random(int.from_bytes(digest[:8], "big")).randbytes(rows * columns)
    sop_class = _SOP_CLASS_BY_MODALITY.get(modality.upper(), _SECONDARY_CAPTURE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(_IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = "FAKESERVER_1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = study_date
        ds.SeriesDate = study_date
        ds.StudyTime = study_time
        ds.SeriesTime = study_time
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.StudyDescription = "Fake study"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name if patient_name is not None else f"Patient^{patient_id}"
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_number
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.add(DataElement(0x7FE00010, "OB", pixels))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_tree_archive(
    study_uids: Sequence[str],
    *,
    series_per_study: int,
    instances_per_series: int,
    size: int = 1024,
    size_step: int = 0,
    patients: int | None = None,
) -> FakeArchive:
    """A regular archive: series ``<study>.<r>`` and instances ``<series>.<i>`` (1-based).

    Patient ``P<k>`` owns study ``k`` (modulo ``patients`` when given); instance ``i``
    has ``size + i * size_step`` pixel bytes. Deterministic.
    """
    archive = FakeArchive()
    for s, study in enumerate(study_uids):
        for r in range(series_per_study):
            series = f"{study}.{r + 1}"
            for i in range(instances_per_series):
                archive.add_part10(
                    make_instance(
                        study,
                        series,
                        f"{series}.{i + 1}",
                        patient_id=f"P{s % patients if patients else s}",
                        seed=s * 100 + r * 10 + i,
                        size=size + size_step * i,
                    )
                )
    return archive
