"""Typed accessors over DICOM JSON records."""

from __future__ import annotations

import datetime as dt

import pytest

from kheops_async import ConfigurationError, DicomRecord
from kheops_async.dicomjson import tag_hex

RECORD = DicomRecord(
    {
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00100020": {"vr": "LO", "Value": ["PID-1"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080020": {"vr": "DA", "Value": ["20240131"]},
        "00080030": {"vr": "TM", "Value": ["101502.123"]},
        "00080021": {"vr": "DA", "Value": ["not-a-date"]},
        "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
        "00201208": {"vr": "IS", "Value": ["42"]},
        "00201209": {"vr": "IS", "Value": [7]},
        "00081190": {"vr": "UR", "Value": ["https://h/api/studies/1.2.3"]},
        "00080060": {"vr": "CS"},
    }
)


def test_identifiers_and_names() -> None:
    assert RECORD.study_uid == "1.2.3"
    assert RECORD.series_uid == "1.2.3.4"
    assert RECORD.sop_uid is None
    assert RECORD.patient_id == "PID-1"
    assert RECORD.patient_name == "Doe^Jane"
    assert RECORD.retrieve_url == "https://h/api/studies/1.2.3"
    assert RECORD.modality is None  # present without a Value


def test_dates_times_and_counts() -> None:
    assert RECORD.study_date == dt.date(2024, 1, 31)
    assert RECORD.study_time == dt.time(10, 15, 2, 123000)
    assert RECORD.study_datetime == dt.datetime(2024, 1, 31, 10, 15, 2, 123000)
    assert RECORD.series_date is None
    assert RECORD.series_datetime is None
    assert RECORD.modalities_in_study == ["CT", "SR"]
    assert RECORD.number_of_study_related_instances == 42
    assert RECORD.number_of_series_related_instances == 7


def test_tag_lookup_forms() -> None:
    assert tag_hex("StudyInstanceUID") == "0020000D"
    assert tag_hex("0020000d") == "0020000D"
    assert tag_hex("(0010,0020)") == "00100020"
    with pytest.raises(ConfigurationError, match="unknown DICOM attribute"):
        tag_hex("NoSuchKeyword")
    assert RECORD.get_value("(0010,0020)") == "PID-1"
    assert RECORD.get_values("ModalitiesInStudy") == ["CT", "SR"]
