"""Metadata-only runs: a series' WADO-RS metadata saved as DICOM JSON.

One ``series_metadata.json`` per series (``metadata_only="series"``), or one
``.json`` per instance at the layout's path (``"instance"``). Files are written
like instances: a temporary file in the run's own directory, renamed into place,
in a worker thread; an existing file is kept unless ``force``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import anyio

from kheops_async.dicomjson import DicomRecord
from kheops_async.engine.context import RunContext
from kheops_async.engine.sink import REPORT_KEYWORDS
from kheops_async.errors import IncompleteSeriesError, StorageError
from kheops_async.layout import sanitize_component
from kheops_async.report import InstanceRecord, InstanceStatus
from kheops_async.targets import SeriesPlan

__all__ = ["save_series_metadata"]


async def save_series_metadata(run: RunContext, plan: SeriesPlan) -> int:
    """Save one series' metadata; return the instances it describes."""
    items = await run.limited(lambda: run.client.retrieve_metadata(plan.study_uid, plan.series_uid))
    json_layout = run.layout.with_suffix(".json")
    per_instance = run.settings.metadata_only == "instance"
    records: list[tuple[InstanceRecord, Path, Any]] = []
    for item in items:
        dataset = DicomRecord(item)
        values = {**plan.known_values, **_values(dataset)}
        sop_uid = values.get("SOPInstanceUID")
        if not sop_uid:
            continue
        final = run.root / json_layout.render(values)
        if not per_instance:
            final = final.parent / _series_file_name(run, plan)
        record = InstanceRecord(
            study_uid=values.get("StudyInstanceUID", plan.study_uid),
            series_uid=values.get("SeriesInstanceUID", plan.series_uid),
            sop_uid=sop_uid,
            patient_id=values.get("PatientID", ""),
            modality=values.get("Modality", ""),
            series_date=values.get("SeriesDate", ""),
            series_time=values.get("SeriesTime", ""),
            path=str(final),
            status=InstanceStatus.METADATA,
        )
        records.append((record, final, item))
    try:
        if per_instance:
            for record, final, item in records:
                size = await anyio.to_thread.run_sync(_write_json, run, final, item)
                run.recorder.instance(_with_size(record, size))
        elif records:
            size = await anyio.to_thread.run_sync(_write_json, run, records[0][1], items)
            for index, (record, _, _) in enumerate(records):
                run.recorder.instance(_with_size(record, size if index == 0 else None))
    except OSError as exc:
        raise StorageError(f"writing to {run.root} failed: {exc.strerror or exc}") from exc
    expected = plan.expected_instances
    if expected is not None and len(records) < expected:
        raise IncompleteSeriesError(
            f"series {plan.series_uid}: metadata for {len(records)} of {expected} instances"
        )
    return len(records)


def _with_size(record: InstanceRecord, size: int | None) -> InstanceRecord:
    return dataclasses.replace(record, file_size=size)


def _values(record: DicomRecord) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword in REPORT_KEYWORDS:
        value = record.get_value(keyword)
        if value is not None:
            values[keyword] = str(value)
    return values


def _series_file_name(run: RunContext, plan: SeriesPlan) -> str:
    """``series_metadata.json`` when the layout gives each series its own directory."""
    directory = run.layout.template.rpartition("/")[0]
    if "{SeriesInstanceUID}" in directory:
        return "series_metadata.json"
    return f"series_metadata_{sanitize_component(plan.series_uid)}.json"


def _write_json(run: RunContext, final: Path, payload: object) -> int:
    """Write JSON atomically (temporary file, then rename); keep an existing file."""
    if final.exists() and not run.settings.force:
        return final.stat().st_size
    data = json.dumps(payload, indent=1).encode()
    temp = run.temp.new_path()
    try:
        with open(temp, "xb") as out:
            out.write(data)
            if run.settings.fsync:
                os.fsync(out.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return len(data)
