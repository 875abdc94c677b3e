"""The recorder: the one place that updates a run's counters, progress and instance table.

Every instance done (written, skipped, failed, planned, metadata) and every failed
series goes through :class:`Recorder`, which counts it in the
:class:`~kheops_async.report.DownloadReport`, moves the live
:class:`~kheops_async.report.DownloadProgress`, streams its row to the instance table
(kheops-client's ``downloaded_*_instances`` columns, plus Path, Status and Error)
and hands it to the caller's ``on_instance`` callback. Nothing per instance is kept:
memory does not grow with the archive. The journal is written by the sink, in the
same worker-thread call that renames a file into place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import IO

from kheops_async.csv_rows import csv_line
from kheops_async.engine.deletion import Deleted
from kheops_async.engine.settings import InstanceCallback
from kheops_async.engine.study_check import StudyState
from kheops_async.report import (
    DownloadProgress,
    DownloadReport,
    InstanceRecord,
    InstanceStatus,
    SeriesFailure,
    SyncTotals,
)

__all__ = ["TABLE_COLUMNS", "InstanceTable", "Recorder", "create_new_file"]

log = logging.getLogger("kheops_async")

TABLE_COLUMNS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "FileSize",
    "Path",
    "Status",
    "Error",
)
"""The instance table's columns: kheops-client's, then Path (relative), Status, Error."""

FLUSH_SECONDS = 1.0
"""The table is flushed at least this often (and at the end of each series)."""


def create_new_file(path: Path) -> tuple[Path, IO[str]]:
    """Create a text file that did not exist, and open it; never overwrite one.

    A name already taken gets ``-2``, ``-3``... before its suffix (two tables in the
    same second). Raises :class:`OSError` when no file can be created there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        candidate = path if attempt == 1 else path.with_name(f"{path.stem}-{attempt}{path.suffix}")
        try:
            return candidate, candidate.open("x", encoding="utf-8", newline="")
        except FileExistsError:
            continue
    raise FileExistsError(f"too many files named {path.stem}*{path.suffix} in {path.parent}")


class InstanceTable:
    """A CSV file the instance rows are streamed to, as they come (see
    :mod:`~kheops_async.csv_rows` for how each row is written)."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self._root = str(root).rstrip("/") + "/"
        self._handle: IO[str] | None = None
        self._flushed = time.monotonic()

    def open(self) -> None:
        """Create the file with its header line (see :func:`create_new_file`)."""
        self._open()

    def _open(self) -> IO[str]:
        if self._handle is not None:
            return self._handle
        self.path, handle = create_new_file(self.path)
        handle.write(csv_line(TABLE_COLUMNS))
        self._handle = handle
        return handle

    def write(self, record: InstanceRecord) -> None:
        """Append one instance's row."""
        handle = self._handle or self._open()
        path = record.path
        handle.write(
            csv_line(
                (
                    record.study_uid,
                    record.series_uid,
                    record.sop_uid,
                    record.patient_id,
                    record.series_date,
                    record.series_time,
                    record.modality,
                    "" if record.file_size is None else str(record.file_size),
                    path[len(self._root) :] if path.startswith(self._root) else path,
                    record.status.value,
                    record.error,
                )
            )
        )
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Push the rows written so far to the file."""
        if self._handle is not None:
            self._handle.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Flush and close (creating the file, header only, if nothing was written)."""
        if self._handle is None:
            self._open()
        assert self._handle is not None
        self._handle.close()


class Recorder:
    """Counts, shows and records everything a run does (see the module docstring)."""

    def __init__(
        self,
        report: DownloadReport,
        progress: DownloadProgress,
        *,
        table: InstanceTable | None = None,
        on_instance: InstanceCallback | None = None,
    ) -> None:
        self.report = report
        self.progress = progress
        self.table = table
        self.on_instance = on_instance

    def instance(self, record: InstanceRecord, *, repaired: bool = False) -> None:
        """One instance is done (any status)."""
        report, status = self.report, record.status
        if status is InstanceStatus.WRITTEN:
            report.written += 1
            report.bytes_written += record.file_size or 0
            report.repaired += repaired
        elif status is InstanceStatus.SKIPPED:
            report.skipped += 1
        elif status is InstanceStatus.FAILED:
            report.add_failed_instance(record)
            self.progress.failures += 1
            log.warning("series %s: %s (not saved)", record.series_uid, record.error)
        elif status is InstanceStatus.PLANNED:
            report.planned += 1
        elif status is InstanceStatus.METADATA:
            report.metadata_saved += 1
            report.bytes_written += record.file_size or 0
        if status is not InstanceStatus.FAILED:
            self.progress.count_instance(record)
        if self.table is not None:
            self.table.write(record)
        if self.on_instance is not None:
            self.on_instance(record)
        self.progress.notify()

    def bytes_received(self, count: int) -> None:
        """Body bytes arrived from the network."""
        self.progress.bytes_done += count

    def series_planned(self, expected_instances: int | None) -> None:
        """A series joins the run."""
        self.report.series_total += 1
        self.progress.series_total += 1
        self.progress.instances_expected += expected_instances or 0

    def series_started(self, study_uid: str, series_uid: str, expected: int | None) -> None:
        """A worker took a series up: it is in flight until :meth:`series_finished`."""
        self.progress.series_started(study_uid, series_uid, expected)

    def series_finished(self, series_uid: str, *, complete: bool) -> None:
        """A series is over (complete, or failed and already reported)."""
        if complete:
            self.report.series_completed += 1
        self.progress.series_done += 1
        self.progress.series_ended(series_uid)
        if self.table is not None:
            self.table.flush()
        self.progress.notify()

    def study_checked(self, state: StudyState) -> None:
        """Sync looked at a listed study (see :mod:`~kheops_async.engine.study_check`)."""
        totals = self.report.sync
        if totals is None:
            totals = self.report.sync = SyncTotals()
        totals.studies_listed += 1
        if state.status == "unchanged":
            totals.studies_unchanged += 1
            totals.instances_in_unchanged_studies += state.instances
            self.report.skipped += state.instances
            self.progress.instances_expected += state.instances
            self.progress.instances_done += state.instances
            self.progress.notify()
        elif state.status == "new":
            totals.studies_new += 1
        else:
            totals.studies_changed += 1

    def series_synced(self, *, resumed: int, written: int) -> None:
        """Sync brought a series up to date: it had ``resumed`` instances, gained ``written``."""
        totals = self.report.sync
        if totals is None:
            return
        if written == 0:
            totals.series_unchanged += 1
        elif resumed:
            totals.series_updated += 1
        else:
            totals.series_new += 1

    def deleted(self, deleted: Deleted, *, dry_run: bool) -> None:
        """``sync --delete`` removed an instance (or, in a dry run, would)."""
        totals = self.report.sync
        if totals is not None:
            totals.deleted += 1
        log.info(
            "%s %s: %s", "would delete" if dry_run else "deleted", deleted.path, deleted.reason
        )
        if self.table is not None and not dry_run:
            self.table.write(
                InstanceRecord(
                    deleted.study_uid,
                    deleted.series_uid,
                    deleted.sop_uid,
                    path=deleted.path,
                    status=InstanceStatus.DELETED,
                    error=deleted.reason,
                )
            )

    def planning_done(self) -> None:
        """Every series is known."""
        self.progress.planning_done = True
        self.progress.notify()

    def failure(self, failure: SeriesFailure) -> None:
        """A series (or a listing) failed."""
        log.error("%s %s: %s", failure.study_uid, failure.series_uid, failure.error)
        self.report.add_failure(failure)
        self.progress.failures += 1
        if failure.series_uid:
            self.progress.series_ended(failure.series_uid)
        if self.table is not None:
            self.table.write(
                InstanceRecord(
                    failure.study_uid,
                    failure.series_uid,
                    "",
                    status=InstanceStatus.FAILED,
                    error=failure.error,
                )
            )
        self.progress.notify()

    def close(self) -> None:
        """Flush and close the table."""
        if self.table is not None:
            self.table.close()
            self.report.table_path = self.table.path
