"""QIDO matching of the fake server: media ranges, wildcard matching, attribute values.

Answers which studies, series and instances match a query; the server builds the JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .archive import FakeInstance, _text


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def _media_range(text: str) -> tuple[str, dict[str, str]]:
    pieces = _split_outside_quotes(text, ";")
    params = {}
    for piece in pieces[1:]:
        key, _, value = piece.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return pieces[0].strip().lower(), params


_TAG_KEYWORDS = {
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00100020": "PatientID",
    "00100010": "PatientName",
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00080050": "AccessionNumber",
    "00080061": "ModalitiesInStudy",
    "00081030": "StudyDescription",
    "00080090": "ReferringPhysicianName",
    "00200010": "StudyID",
    "00080060": "Modality",
    "00200011": "SeriesNumber",
    "0008103E": "SeriesDescription",
    "00080021": "SeriesDate",
    "00080031": "SeriesTime",
    "00200013": "InstanceNumber",
}
_UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
_RANGE_KEYS = {"StudyDate", "StudyTime", "SeriesDate", "SeriesTime"}


def _wildcard_match(pattern: str, value: str) -> bool:
    if pattern in ("", "*"):
        return True
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, value, flags=re.IGNORECASE | re.DOTALL) is not None


def _matches(key: str, pattern: str, values: list[str], *, fuzzy: bool) -> bool:
    """Does any of ``values`` match the QIDO ``pattern`` for attribute ``key``?"""
    if pattern in ("", "*"):
        return True
    if key in _UID_KEYS:
        wanted = [uid for uid in re.split(r"[\\,]", pattern) if uid]
        return any(_wildcard_match(uid, value) for uid in wanted for value in values)
    if key in _RANGE_KEYS and "-" in pattern:
        low, _, high = pattern.partition("-")
        return any(value and (low or value) <= value <= (high or value) for value in values)
    if key == "PatientName" and fuzzy:
        needle = pattern.replace("*", "").lower()
        return any(needle in value.lower() for value in values)
    alternatives = pattern.split("\\") if key == "ModalitiesInStudy" else [pattern]
    return any(_wildcard_match(alt, value) for alt in alternatives for value in values)


@dataclass
class _StudyRow:
    uid: str
    first: FakeInstance
    series: dict[str, list[FakeInstance]]

    @property
    def modalities(self) -> list[str]:
        found = {items[0].modality for items in self.series.values() if items}
        return sorted(m for m in found if m)

    @property
    def instance_count(self) -> int:
        return sum(len(items) for items in self.series.values())

    def values(self, key: str) -> list[str] | None:
        first = self.first
        table: dict[str, list[str]] = {
            "StudyInstanceUID": [self.uid],
            "PatientID": [first.patient_id],
            "PatientName": [first.patient_name],
            "StudyDate": [first.study_date],
            "StudyTime": [first.study_time],
            "AccessionNumber": [first.accession_number],
            "StudyDescription": [first.study_description],
            "ModalitiesInStudy": self.modalities,
            "ReferringPhysicianName": [""],
            "StudyID": [""],
        }
        return table.get(key)


def _series_values(series_uid: str, first: FakeInstance, key: str) -> list[str] | None:
    table = {
        "SeriesInstanceUID": [series_uid],
        "Modality": [first.modality],
        "SeriesNumber": [_text(first.series_number)],
        "SeriesDescription": [first.series_description],
        "SeriesDate": [first.series_date],
        "SeriesTime": [first.series_time],
    }
    return table.get(key)


def _instance_values(instance: FakeInstance, key: str) -> list[str] | None:
    table = {
        "SOPInstanceUID": [instance.sop_uid],
        "SeriesInstanceUID": [instance.series_uid],
        "SOPClassUID": [instance.sop_class_uid],
        "InstanceNumber": [_text(instance.instance_number)],
    }
    return table.get(key)
