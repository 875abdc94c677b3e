"""DICOM keywords to tags: the common ones from a table here, any other from pydicom.

Why a table: pydicom's dictionary is only reachable by importing pydicom, which costs
about 26 MB of resident memory and 110-150 ms here (plus numpy and Pillow when they are
installed, which pydicom imports at start-up). The keywords a listing, a download's
checks, its table and the usual layouts need are below, so a download of ordinary data
never imports pydicom at all. ``tests/test_keywords.py`` checks every entry against
pydicom's dictionary.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["COMMON_TAGS", "tag_for"]

COMMON_TAGS: dict[str, int] = {
    "SpecificCharacterSet": 0x00080005,
    "ImageType": 0x00080008,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyDate": 0x00080020,
    "SeriesDate": 0x00080021,
    "AcquisitionDate": 0x00080022,
    "ContentDate": 0x00080023,
    "StudyTime": 0x00080030,
    "SeriesTime": 0x00080031,
    "AcquisitionTime": 0x00080032,
    "ContentTime": 0x00080033,
    "AccessionNumber": 0x00080050,
    "QueryRetrieveLevel": 0x00080052,
    "RetrieveAETitle": 0x00080054,
    "InstanceAvailability": 0x00080056,
    "Modality": 0x00080060,
    "ModalitiesInStudy": 0x00080061,
    "Manufacturer": 0x00080070,
    "InstitutionName": 0x00080080,
    "ReferringPhysicianName": 0x00080090,
    "TimezoneOffsetFromUTC": 0x00080201,
    "StationName": 0x00081010,
    "StudyDescription": 0x00081030,
    "SeriesDescription": 0x0008103E,
    "RetrieveURL": 0x00081190,
    "PatientName": 0x00100010,
    "PatientID": 0x00100020,
    "PatientBirthDate": 0x00100030,
    "PatientSex": 0x00100040,
    "BodyPartExamined": 0x00180015,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "StudyID": 0x00200010,
    "SeriesNumber": 0x00200011,
    "AcquisitionNumber": 0x00200012,
    "InstanceNumber": 0x00200013,
    "NumberOfStudyRelatedSeries": 0x00201206,
    "NumberOfStudyRelatedInstances": 0x00201208,
    "NumberOfSeriesRelatedInstances": 0x00201209,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelData": 0x7FE00010,
}
"""The keywords kheops-async itself uses, and those usual in layouts and filters."""


@lru_cache(maxsize=1024)
def tag_for(keyword: str) -> int | None:
    """The tag of a DICOM keyword (``0x0020000D`` for StudyInstanceUID), ``None`` if unknown."""
    tag = COMMON_TAGS.get(keyword)
    if tag is not None:
        return tag
    from pydicom.datadict import tag_for_keyword  # the full dictionary, only when needed

    return tag_for_keyword(keyword)
