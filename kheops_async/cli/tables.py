"""The tables the commands print and save: building, CSV and JSON, writing.

``list`` saves ``available_{studies,series,instances}_<timestamp>.csv`` and ``download``
saves ``downloaded_{study,series}_instances_<timestamp>.csv`` in the output directory,
with kheops-client's columns (plus a few). On stdout a table is drawn for reading
(``table``: :mod:`~kheops_async.cli.table_view`, with each table's ``view`` of
columns), or written as ``csv`` or ``json`` for other programs.

Listing rows are sorted so that two runs over the same data give the same file; the
download table is streamed by the engine as instances finish (see
:mod:`kheops_async.engine.recorder`), so a crash keeps every row so far. A
``RetrieveURL`` is redacted: in Kheops link mode it carries the token.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

from kheops_async.cli.selection import InstanceRow, SeriesRow
from kheops_async.csv_rows import csv_line
from kheops_async.dicomjson import DicomRecord
from kheops_async.engine.recorder import TABLE_COLUMNS, create_new_file
from kheops_async.records import Record
from kheops_async.report import InstanceRecord, InstanceStatus

__all__ = [
    "DOWNLOAD_COLUMNS",
    "INSTANCE_COLUMNS",
    "INSTANCE_VIEW",
    "PLAN_VIEW",
    "SERIES_COLUMNS",
    "SERIES_VIEW",
    "STUDY_COLUMNS",
    "STUDY_VIEW",
    "OutputFormat",
    "PlanTable",
    "Table",
    "cell_text",
    "instance_table",
    "render",
    "series_table",
    "study_table",
    "timestamp",
    "write_csv_file",
]

OutputFormat = Literal["table", "csv", "json"]
Cell = str | int | list[str] | None
Row = dict[str, Cell]

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
MULTI_VALUE_SEPARATOR = "\\"  # DICOM's own separator: "CT\MR" is also a valid filter value

STUDY_COLUMNS = (
    "StudyInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "StudyDateTime",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",
)
SERIES_COLUMNS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "SeriesDate",
    "SeriesTime",
    "SeriesDateTime",
    "Modality",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "SeriesDescription",
    "RetrieveURL",
)
INSTANCE_COLUMNS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "InstanceNumber",
    "SOPClassUID",
    "RetrieveURL",
)
DOWNLOAD_COLUMNS = TABLE_COLUMNS
"""The download table's columns (written row by row by the engine's recorder)."""
PLAN_COLUMNS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "Planned",
    "Skipped",
    "Failed",
)

# Terminal views: (column, heading); long raw columns (RetrieveURL, raw date/time) are
# left to the files.
STUDY_VIEW = (
    ("PatientID", "PatientID"),
    ("StudyDateTime", "Date"),
    ("ModalitiesInStudy", "Modalities"),
    ("NumberOfStudyRelatedSeries", "Series"),
    ("NumberOfStudyRelatedInstances", "Instances"),
    ("StudyDescription", "Description"),
    ("StudyInstanceUID", "StudyInstanceUID"),
)
SERIES_VIEW = (
    ("PatientID", "PatientID"),
    ("SeriesDateTime", "Date"),
    ("Modality", "Modality"),
    ("SeriesNumber", "No"),
    ("NumberOfSeriesRelatedInstances", "Instances"),
    ("SeriesDescription", "Description"),
    ("SeriesInstanceUID", "SeriesInstanceUID"),
    ("StudyInstanceUID", "StudyInstanceUID"),
)
INSTANCE_VIEW = (
    ("PatientID", "PatientID"),
    ("Modality", "Modality"),
    ("InstanceNumber", "No"),
    ("SOPInstanceUID", "SOPInstanceUID"),
    ("SeriesInstanceUID", "SeriesInstanceUID"),
)
PLAN_VIEW = tuple((c, c) for c in PLAN_COLUMNS)


class Table(Record):
    """Rows with named columns, the file name stem, and how to show it on a terminal."""

    __slots__ = ("columns", "name", "noun", "rows", "view")

    def __init__(
        self,
        name: str,
        noun: str,
        columns: tuple[str, ...],
        rows: list[Row],
        view: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.name = name  # file name stem, e.g. "available_studies"
        self.noun = noun  # what one row is, plural: "studies"
        self.columns = columns
        self.rows = rows
        self.view = view

    def __len__(self) -> int:
        return len(self.rows)


def timestamp(now: dt.datetime | None = None) -> str:
    """The file-name timestamp, e.g. ``20240131-142501``."""
    return (now or dt.datetime.now()).strftime(TIMESTAMP_FORMAT)


def _datetime(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(sep=" ")


def _sort_key(row: Row, columns: Sequence[str]) -> tuple[str, ...]:
    return tuple(cell_text(row.get(c)) for c in columns)


def _series_values(series: DicomRecord, study: DicomRecord) -> Row:
    return {
        "StudyInstanceUID": series.study_uid or study.study_uid,
        "SeriesInstanceUID": series.series_uid,
        "PatientID": series.patient_id or study.patient_id,
        "SeriesDate": series.get_str("SeriesDate"),
        "SeriesTime": series.get_str("SeriesTime"),
        "SeriesDateTime": _datetime(series.series_datetime),
        "Modality": series.modality,
    }


def study_table(records: Iterable[DicomRecord]) -> Table:
    """``available_studies``: one row per study, by date then UID."""
    rows: list[Row] = [
        {
            "StudyInstanceUID": r.study_uid,
            "PatientID": r.patient_id,
            "StudyDate": r.get_str("StudyDate"),
            "StudyTime": r.get_str("StudyTime"),
            "StudyDateTime": _datetime(r.study_datetime),
            "ModalitiesInStudy": r.modalities_in_study,
            "NumberOfStudyRelatedSeries": r.number_of_study_related_series,
            "NumberOfStudyRelatedInstances": r.number_of_study_related_instances,
            "StudyDescription": r.get_str("StudyDescription"),
        }
        for r in records
    ]
    rows.sort(key=lambda row: _sort_key(row, ("StudyDateTime", "StudyInstanceUID")))
    return Table("available_studies", "studies", STUDY_COLUMNS, rows, STUDY_VIEW)


def series_table(items: Iterable[SeriesRow], *, safe: Callable[[str], str]) -> Table:
    """``available_series``: one row per series, by date, study, number and UID."""
    rows: list[Row] = []
    for item in items:
        series = item.series
        url = series.retrieve_url
        rows.append(
            {
                **_series_values(series, item.study),
                "SeriesNumber": series.get_int("SeriesNumber"),
                "NumberOfSeriesRelatedInstances": series.number_of_series_related_instances,
                "SeriesDescription": series.get_str("SeriesDescription"),
                "RetrieveURL": safe(url) if url else None,
            }
        )
    rows.sort(
        key=lambda row: (
            _sort_key(row, ("SeriesDateTime", "StudyInstanceUID")),
            _number(row.get("SeriesNumber")),
            cell_text(row.get("SeriesInstanceUID")),
        )
    )
    return Table("available_series", "series", SERIES_COLUMNS, rows, SERIES_VIEW)


def instance_table(items: Iterable[InstanceRow], *, safe: Callable[[str], str]) -> Table:
    """``available_instances``: one row per instance, by series (as series) then number."""
    rows: list[Row] = []
    for item in items:
        instance = item.instance
        url = instance.retrieve_url
        rows.append(
            {
                **_series_values(item.series, item.study),
                "StudyInstanceUID": instance.study_uid or item.study.study_uid,
                "SeriesInstanceUID": instance.series_uid or item.series.series_uid,
                "SOPInstanceUID": instance.sop_uid,
                "InstanceNumber": instance.get_int("InstanceNumber"),
                "SOPClassUID": instance.get_str("SOPClassUID"),
                "RetrieveURL": safe(url) if url else None,
            }
        )
    rows.sort(
        key=lambda row: (
            _sort_key(row, ("SeriesDateTime", "StudyInstanceUID", "SeriesInstanceUID")),
            _number(row.get("InstanceNumber")),
            cell_text(row.get("SOPInstanceUID")),
        )
    )
    return Table("available_instances", "instances", INSTANCE_COLUMNS, rows, INSTANCE_VIEW)


class PlanTable:
    """A dry run's plan, built as instance records arrive: per series, the instances it
    would download, skip, or that failed (one row per series, not per instance)."""

    _COUNTS: ClassVar[dict[InstanceStatus, str]] = {
        InstanceStatus.PLANNED: "Planned",
        InstanceStatus.SKIPPED: "Skipped",
        InstanceStatus.FAILED: "Failed",
    }

    def __init__(self) -> None:
        self.per_series: dict[tuple[str, str], Row] = {}

    def add(self, record: InstanceRecord) -> None:
        """Count one instance record."""
        row = self.per_series.setdefault(
            (record.study_uid, record.series_uid),
            {
                "StudyInstanceUID": record.study_uid,
                "SeriesInstanceUID": record.series_uid,
                "PatientID": record.patient_id,
                "Modality": record.modality,
                "Planned": 0,
                "Skipped": 0,
                "Failed": 0,
            },
        )
        column = self._COUNTS.get(record.status)
        if column is not None:
            row[column] = _number(row[column]) + 1

    def table(self) -> Table:
        """The plan, sorted by study and series."""
        rows = sorted(
            self.per_series.values(),
            key=lambda row: _sort_key(row, ("StudyInstanceUID", "SeriesInstanceUID")),
        )
        return Table("download_plan", "series", PLAN_COLUMNS, rows, PLAN_VIEW)


# -- rendering -----------------------------------------------------------------------


def _number(value: Cell) -> int:
    return value if isinstance(value, int) else 0


def cell_text(value: Cell) -> str:
    """A cell as text: absent is empty, multi-values are joined with ``\\``."""
    if value is None:
        return ""
    if isinstance(value, list):
        return MULTI_VALUE_SEPARATOR.join(value)
    return str(value)


def render_csv(table: Table) -> str:
    """The table as CSV text (header line first; multi-values joined with ``\\``)."""
    lines = [csv_line(table.columns)]
    for row in table.rows:
        lines.append(csv_line([cell_text(row.get(column)) for column in table.columns]))
    return "".join(lines)


def render_json(table: Table) -> str:
    """The table as a JSON array of objects (multi-values as arrays, absent as null)."""
    rows = [{column: row.get(column) for column in table.columns} for row in table.rows]
    return json.dumps(rows, indent=2) + "\n"


def render(table: Table, output_format: Literal["csv", "json"]) -> str:
    """The table as CSV or JSON text (for stdout)."""
    return render_csv(table) if output_format == "csv" else render_json(table)


def write_csv_file(table: Table, directory: Path, stamp: str) -> Path:
    """Write ``<name>_<stamp>.csv`` into ``directory`` (created if needed); return its path.

    Never overwrites: a second table in the same second gets ``-2``, ``-3``... Raises
    :class:`OSError` when the directory or the file cannot be written.
    """
    path, handle = create_new_file(directory / f"{table.name}_{stamp}.csv")
    with handle:
        handle.write(render_csv(table))
    return path
