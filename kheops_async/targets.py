"""What to download, and its expansion into series with expected instance counts.

Targets are study UIDs, (study, series) pairs, a QIDO query, or a CSV table of
UIDs (kheops-client's ``--in-file``). Studies expand into their series through a
QIDO query per study (Kheops has no root ``/series``); each series carries the
server's ``NumberOfSeriesRelatedInstances`` so the download can be verified.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kheops_async.dicomjson import DicomRecord
from kheops_async.errors import ConfigurationError
from kheops_async.records import FrozenPublicRecord, PublicRecord
from kheops_async.uids import validate_uid

__all__ = ["SeriesPlan", "Targets", "read_uid_table"]

SERIES_INCLUDEFIELDS = (
    "PatientID",
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "NumberOfSeriesRelatedInstances",
)


@dataclass(frozen=True, init=False, repr=False, eq=False)
class SeriesPlan(FrozenPublicRecord):
    """One series to download, with what QIDO said about it."""

    study_uid: str
    series_uid: str
    expected_instances: int | None = None
    patient_id: str = ""
    modality: str = ""
    series_date: str = ""
    series_time: str = ""

    def __init__(
        self,
        study_uid: str,
        series_uid: str,
        expected_instances: int | None = None,
        patient_id: str = "",
        modality: str = "",
        series_date: str = "",
        series_time: str = "",
    ) -> None:
        object.__setattr__(self, "study_uid", study_uid)
        object.__setattr__(self, "series_uid", series_uid)
        object.__setattr__(self, "expected_instances", expected_instances)
        object.__setattr__(self, "patient_id", patient_id)
        object.__setattr__(self, "modality", modality)
        object.__setattr__(self, "series_date", series_date)
        object.__setattr__(self, "series_time", series_time)

    @classmethod
    def from_record(cls, study_uid: str, record: DicomRecord) -> SeriesPlan:
        """Build from a series-level QIDO record of ``study_uid``."""
        return cls(
            study_uid=study_uid,
            series_uid=record.series_uid or "",
            expected_instances=record.number_of_series_related_instances,
            patient_id=record.patient_id or "",
            modality=record.modality or "",
            series_date=record.get_str("SeriesDate") or "",
            series_time=record.get_str("SeriesTime") or "",
        )

    @property
    def known_values(self) -> dict[str, str]:
        """Header values known before retrieval, by keyword (for layouts and reports)."""
        values = {
            "StudyInstanceUID": self.study_uid,
            "SeriesInstanceUID": self.series_uid,
            "PatientID": self.patient_id,
            "Modality": self.modality,
            "SeriesDate": self.series_date,
            "SeriesTime": self.series_time,
        }
        return {k: v for k, v in values.items() if v}


@dataclass(init=False, repr=False, eq=False)
class Targets(PublicRecord):
    """The things to download. Several kinds may be combined; duplicates collapse.

    ``query`` is a mapping of study-level QIDO filters; ``series_filters`` apply to
    each study's series query (for example ``{"Modality": "CT"}``). ``limit`` and
    ``offset`` page the study query; ``fuzzy`` asks it (and the ``study_filters``
    check) for fuzzy matching of names. ``study_filters`` keep, among the explicit
    studies (and those of the pairs), only those that match them: each is checked
    with a study query before its series are listed.
    ``only_series`` keeps, among the series of the
    studies and the query, just those UIDs (when the study of each is not known).
    """

    studies: list[str] = field(default_factory=list)
    series: list[tuple[str, str]] = field(default_factory=list)
    query: Mapping[str, str] | None = None
    series_filters: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None
    offset: int = 0
    only_series: frozenset[str] = frozenset()
    fuzzy: bool = False
    study_filters: Mapping[str, str] = field(default_factory=dict)

    def __init__(
        self,
        studies: list[str] | None = None,
        series: list[tuple[str, str]] | None = None,
        query: Mapping[str, str] | None = None,
        series_filters: Mapping[str, str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        only_series: frozenset[str] = frozenset(),
        fuzzy: bool = False,
        study_filters: Mapping[str, str] | None = None,
    ) -> None:
        self.studies = [] if studies is None else studies
        self.series = [] if series is None else series
        self.query = query
        self.series_filters = {} if series_filters is None else series_filters
        self.limit = limit
        self.offset = offset
        self.only_series = only_series
        self.fuzzy = fuzzy
        self.study_filters = {} if study_filters is None else study_filters
        self.__post_init__()

    def __post_init__(self) -> None:
        self.only_series = frozenset(validate_uid(s, "SeriesInstanceUID") for s in self.only_series)
        self.studies = [validate_uid(s, "StudyInstanceUID") for s in self.studies]
        self.series = [
            (validate_uid(s, "StudyInstanceUID"), validate_uid(r, "SeriesInstanceUID"))
            for s, r in self.series
        ]

    @property
    def is_empty(self) -> bool:
        """Nothing at all was asked for."""
        return not self.studies and not self.series and self.query is None

    @classmethod
    def from_table(cls, path: Path) -> Targets:
        """Targets from a CSV with a StudyInstanceUID column (and optionally SeriesInstanceUID)."""
        studies: list[str] = []
        series: list[tuple[str, str]] = []
        for study_uid, series_uid in read_uid_table(path):
            if series_uid:
                series.append((study_uid, series_uid))
            else:
                studies.append(study_uid)
        return cls(studies=studies, series=series)


def read_uid_table(path: Path) -> Iterable[tuple[str, str | None]]:
    """Rows of (StudyInstanceUID, SeriesInstanceUID or None) from a CSV or TSV file.

    Raises :class:`ConfigurationError` for a missing file, a missing column or a
    malformed UID (naming the row).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigurationError(f"cannot read UID table {path}: {exc.strerror}") from None
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            text[:4096], delimiters=",;\t"
        )
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    study_col = columns.get("studyinstanceuid")
    series_col = columns.get("seriesinstanceuid")
    if study_col is None:
        raise ConfigurationError(f"{path}: no StudyInstanceUID column (found {reader.fieldnames})")
    rows: list[tuple[str, str | None]] = []
    for line_number, row in enumerate(reader, start=2):
        study = (row.get(study_col) or "").strip()
        if not study:
            continue
        series_value = (row.get(series_col) or "").strip() if series_col else ""
        try:
            rows.append(
                (
                    validate_uid(study, "StudyInstanceUID"),
                    validate_uid(series_value, "SeriesInstanceUID") if series_value else None,
                )
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path} line {line_number}: {exc}") from None
    return rows
