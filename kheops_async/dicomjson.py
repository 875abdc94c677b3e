"""Typed access to DICOM JSON (PS3.18 F.2) records returned by QIDO-RS and metadata.

A QIDO answer is a list of objects keyed by 8-hex tags (``"0020000D"``) whose values
live in ``{"vr": ..., "Value": [...]}``. :class:`DicomRecord` wraps one object and
offers both a generic lookup by keyword or tag and named properties for the
attributes this tool uses (UIDs, patient, dates and times, modalities, counts).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from kheops_async.errors import ConfigurationError
from kheops_async.keywords import tag_for

__all__ = ["DicomRecord", "tag_hex"]


@lru_cache(maxsize=1024)
def tag_hex(key: str) -> str:
    """Return the 8-hex-digit tag (``"0020000D"``) for a DICOM keyword or tag string.

    Accepts a keyword (``"StudyInstanceUID"``), 8 hex digits, or ``"(0020,000D)"`` /
    ``"0020,000D"`` forms. Raises :class:`ConfigurationError` for an unknown keyword.
    """
    cleaned = key.strip().strip("()").replace(",", "").replace(" ", "")
    if len(cleaned) == 8:
        try:
            int(cleaned, 16)
        except ValueError:
            pass
        else:
            return cleaned.upper()
    tag = tag_for(key.strip())
    if tag is None:
        raise ConfigurationError(
            f"unknown DICOM attribute {key!r}: use a keyword such as 'PatientID' "
            "or an 8-hex-digit tag such as '00100020'"
        )
    return f"{tag:08X}"


def _parse_date(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _parse_time(value: str | None) -> dt.time | None:
    """Parse a DICOM TM (``HHMMSS.FFFFFF``, any precision, ``HH:MM:SS`` tolerated)."""
    if not value:
        return None
    text = value.strip().replace(":", "")
    main, _, fraction = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        return None
    hour = int(main[0:2])
    minute = int(main[2:4]) if len(main) >= 4 else 0
    second = int(main[4:6]) if len(main) >= 6 else 0
    micro = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    try:
        return dt.time(hour, minute, min(second, 59), micro)
    except ValueError:
        return None


class DicomRecord(Mapping[str, Any]):
    """One DICOM JSON object (a study, series or instance) with typed accessors.

    It is a read-only mapping over the raw JSON (tag -> element), so ``record.raw``
    can be saved as-is, and ``record.get_value("PatientID")`` reads any attribute.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw: Mapping[str, Any] = raw

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Any:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        uids = [u for u in (self.study_uid, self.series_uid, self.sop_uid) if u]
        return f"DicomRecord({'/'.join(uids) or '?'})"

    # -- generic access ------------------------------------------------------------

    def get_values(self, key: str) -> list[Any]:
        """All values of an attribute (keyword or tag); ``[]`` when absent or empty."""
        element = self.raw.get(tag_hex(key))
        if not isinstance(element, Mapping):
            return []
        values = element.get("Value")
        return list(values) if isinstance(values, list) else []

    def get_value(self, key: str, default: Any = None) -> Any:
        """The first value of an attribute, with person names as their Alphabetic form."""
        values = self.get_values(key)
        if not values:
            return default
        first = values[0]
        if isinstance(first, Mapping) and "Alphabetic" in first:
            return first["Alphabetic"]
        return first

    def get_str(self, key: str) -> str | None:
        """The first value as a string, or ``None``."""
        value = self.get_value(key)
        return None if value is None else str(value)

    def get_int(self, key: str) -> int | None:
        """The first value as an integer (IS and US values both), or ``None``."""
        value = self.get_value(key)
        if value is None:
            return None
        try:
            return int(str(value).strip())
        except ValueError:
            return None

    # -- identifiers ---------------------------------------------------------------

    @property
    def study_uid(self) -> str | None:
        """StudyInstanceUID (0020,000D)."""
        return self.get_str("0020000D")

    @property
    def series_uid(self) -> str | None:
        """SeriesInstanceUID (0020,000E)."""
        return self.get_str("0020000E")

    @property
    def sop_uid(self) -> str | None:
        """SOPInstanceUID (0008,0018)."""
        return self.get_str("00080018")

    @property
    def patient_id(self) -> str | None:
        """PatientID (0010,0020)."""
        return self.get_str("00100020")

    @property
    def patient_name(self) -> str | None:
        """PatientName (0010,0010), Alphabetic component."""
        return self.get_str("00100010")

    # -- dates and times -----------------------------------------------------------

    @property
    def study_date(self) -> dt.date | None:
        """StudyDate (0008,0020) as a date, ``None`` when absent or malformed."""
        return _parse_date(self.get_str("00080020"))

    @property
    def study_time(self) -> dt.time | None:
        """StudyTime (0008,0030) as a time."""
        return _parse_time(self.get_str("00080030"))

    @property
    def study_datetime(self) -> dt.datetime | None:
        """StudyDate and StudyTime combined (midnight when the time is missing)."""
        return _combine(self.study_date, self.study_time)

    @property
    def series_date(self) -> dt.date | None:
        """SeriesDate (0008,0021) as a date."""
        return _parse_date(self.get_str("00080021"))

    @property
    def series_time(self) -> dt.time | None:
        """SeriesTime (0008,0031) as a time."""
        return _parse_time(self.get_str("00080031"))

    @property
    def series_datetime(self) -> dt.datetime | None:
        """SeriesDate and SeriesTime combined."""
        return _combine(self.series_date, self.series_time)

    # -- modality and counts -------------------------------------------------------

    @property
    def modality(self) -> str | None:
        """Modality (0008,0060) of a series or instance."""
        return self.get_str("00080060")

    @property
    def modalities_in_study(self) -> list[str]:
        """ModalitiesInStudy (0008,0061) of a study, in the server's order."""
        return [str(v) for v in self.get_values("00080061")]

    @property
    def number_of_study_related_series(self) -> int | None:
        """NumberOfStudyRelatedSeries (0020,1206)."""
        return self.get_int("00201206")

    @property
    def number_of_study_related_instances(self) -> int | None:
        """NumberOfStudyRelatedInstances (0020,1208)."""
        return self.get_int("00201208")

    @property
    def number_of_series_related_instances(self) -> int | None:
        """NumberOfSeriesRelatedInstances (0020,1209)."""
        return self.get_int("00201209")

    @property
    def retrieve_url(self) -> str | None:
        """RetrieveURL (0008,1190). In Kheops link mode it contains the token: redact it."""
        return self.get_str("00081190")


def _combine(date: dt.date | None, time: dt.time | None) -> dt.datetime | None:
    if date is None:
        return None
    return dt.datetime.combine(date, time or dt.time())
