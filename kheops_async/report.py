"""What a download did: totals, the first failures, instance records and live progress.

:class:`InstanceRecord` is one row of kheops-client's ``downloaded_*_instances``
tables (streamed as instances finish); :class:`DownloadReport` the totals of a run;
:class:`DownloadProgress` the live view a command line or a service polls (or
receives through a callback): totals, the series in flight and a byte-based ETA.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from kheops_async.records import FrozenPublicRecord, PublicRecord

__all__ = [
    "MAX_KEPT_FAILURES",
    "MAX_TRACKED_SERIES",
    "DownloadProgress",
    "DownloadReport",
    "InstanceRecord",
    "InstanceStatus",
    "ProgressCallback",
    "SeriesActivity",
    "SeriesFailure",
    "SyncTotals",
]


class InstanceStatus(str, Enum):
    """What happened to one instance."""

    WRITTEN = "written"
    SKIPPED = "skipped"
    FAILED = "failed"
    PLANNED = "planned"  # dry run: would be downloaded
    METADATA = "metadata"  # metadata-only run: its DICOM JSON was saved
    DELETED = "deleted"  # sync --delete: the server no longer lists it; its file was removed


@dataclass(frozen=True, init=False, repr=False, eq=False)
class InstanceRecord(FrozenPublicRecord):
    """One instance of the report (a row of the downloaded-instances table)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str = ""
    modality: str = ""
    series_date: str = ""
    series_time: str = ""
    file_size: int | None = None
    path: str = ""
    status: InstanceStatus = InstanceStatus.WRITTEN
    error: str = ""

    def __init__(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        patient_id: str = "",
        modality: str = "",
        series_date: str = "",
        series_time: str = "",
        file_size: int | None = None,
        path: str = "",
        status: InstanceStatus = InstanceStatus.WRITTEN,
        error: str = "",
    ) -> None:
        object.__setattr__(self, "study_uid", study_uid)
        object.__setattr__(self, "series_uid", series_uid)
        object.__setattr__(self, "sop_uid", sop_uid)
        object.__setattr__(self, "patient_id", patient_id)
        object.__setattr__(self, "modality", modality)
        object.__setattr__(self, "series_date", series_date)
        object.__setattr__(self, "series_time", series_time)
        object.__setattr__(self, "file_size", file_size)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "error", error)


@dataclass(frozen=True, init=False, repr=False, eq=False)
class SeriesFailure(FrozenPublicRecord):
    """A series that could not be completed, and why."""

    study_uid: str
    series_uid: str
    error: str
    expected: int | None = None
    received: int = 0
    missing: tuple[str, ...] = ()

    def __init__(
        self,
        study_uid: str,
        series_uid: str,
        error: str,
        expected: int | None = None,
        received: int = 0,
        missing: tuple[str, ...] = (),
    ) -> None:
        object.__setattr__(self, "study_uid", study_uid)
        object.__setattr__(self, "series_uid", series_uid)
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "expected", expected)
        object.__setattr__(self, "received", received)
        object.__setattr__(self, "missing", missing)


MAX_KEPT_FAILURES = 200
"""Failures a report keeps in memory (series and instances alike); every failure is
counted, and every one is in the instance table and the journal."""


@dataclass(init=False, repr=False, eq=False)
class SyncTotals(PublicRecord):
    """What a sync found, study by study and series by series (counters only).

    A study is *unchanged* when the server's instance count and every file of it
    match the journals (no request beyond the study list), *new* when the journals
    know none of its instances, *changed* otherwise (it grew, shrank, or a file of it
    was damaged or deleted on disk). Series are counted among the studies looked into:
    *new* (nothing of it was in the tree), *updated* (instances were added or
    repaired), *unchanged* (already whole).
    """

    studies_listed: int = 0
    studies_unchanged: int = 0
    studies_new: int = 0
    studies_changed: int = 0
    series_new: int = 0
    series_updated: int = 0
    series_unchanged: int = 0
    instances_in_unchanged_studies: int = 0
    deleted: int = 0
    """Instances removed by ``delete`` (or, in a dry run, that would be)."""
    delete_skipped: str = ""
    """Why ``delete`` removed nothing, when it was asked and did not run."""

    def __init__(
        self,
        studies_listed: int = 0,
        studies_unchanged: int = 0,
        studies_new: int = 0,
        studies_changed: int = 0,
        series_new: int = 0,
        series_updated: int = 0,
        series_unchanged: int = 0,
        instances_in_unchanged_studies: int = 0,
        deleted: int = 0,
        delete_skipped: str = "",
    ) -> None:
        self.studies_listed = studies_listed
        self.studies_unchanged = studies_unchanged
        self.studies_new = studies_new
        self.studies_changed = studies_changed
        self.series_new = series_new
        self.series_updated = series_updated
        self.series_unchanged = series_unchanged
        self.instances_in_unchanged_studies = instances_in_unchanged_studies
        self.deleted = deleted
        self.delete_skipped = delete_skipped

    def summary(self, report: DownloadReport) -> str:
        """One line: studies, series and instances new, repaired or updated, unchanged."""
        new_instances = report.written - report.repaired
        return (
            f"studies: {self.studies_new} new, {self.studies_changed} changed, "
            f"{self.studies_unchanged} unchanged; series: {self.series_new} new, "
            f"{self.series_updated} updated, {self.series_unchanged} unchanged; "
            f"instances: {new_instances} new, {report.repaired} repaired, "
            f"{report.skipped} unchanged"
            + (
                f", {self.deleted} {'to delete' if report.dry_run else 'deleted'}"
                if self.deleted
                else ""
            )
        )


@dataclass(init=False, repr=False, eq=False)
class DownloadReport(PublicRecord):
    """The totals of a run and its first failures: its size does not grow with the archive.

    Each instance's record goes, as it is done, to the instance table (``table``) and
    to the ``on_instance`` callback of the settings, never into this object.
    """

    failures: list[SeriesFailure] = field(default_factory=list)
    failed_instances: list[InstanceRecord] = field(default_factory=list)
    series_total: int = 0
    series_completed: int = 0
    written: int = 0
    """Instances written by this run."""
    skipped: int = 0
    """Instances already present (and trusted) and left untouched."""
    failed: int = 0
    """Instances that failed (a part that was not DICOM, a UID check, ...)."""
    planned: int = 0
    """Dry run: instances that would be downloaded."""
    metadata_saved: int = 0
    """Instances whose metadata (DICOM JSON) was saved by a metadata-only run."""
    repaired: int = 0
    """Written instances that replaced a damaged or unverifiable file."""
    series_failed: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    stale_partials_removed: int = 0
    table_path: Path | None = None
    journal_path: Path | None = None
    sync: SyncTotals | None = None
    """Set by a sync (``incremental``): what it found new, changed and unchanged."""

    def __init__(
        self,
        failures: list[SeriesFailure] | None = None,
        failed_instances: list[InstanceRecord] | None = None,
        series_total: int = 0,
        series_completed: int = 0,
        written: int = 0,
        skipped: int = 0,
        failed: int = 0,
        planned: int = 0,
        metadata_saved: int = 0,
        repaired: int = 0,
        series_failed: int = 0,
        bytes_written: int = 0,
        seconds: float = 0.0,
        dry_run: bool = False,
        stale_partials_removed: int = 0,
        table_path: Path | None = None,
        journal_path: Path | None = None,
        sync: SyncTotals | None = None,
    ) -> None:
        self.failures = [] if failures is None else failures
        self.failed_instances = [] if failed_instances is None else failed_instances
        self.series_total = series_total
        self.series_completed = series_completed
        self.written = written
        self.skipped = skipped
        self.failed = failed
        self.planned = planned
        self.metadata_saved = metadata_saved
        self.repaired = repaired
        self.series_failed = series_failed
        self.bytes_written = bytes_written
        self.seconds = seconds
        self.dry_run = dry_run
        self.stale_partials_removed = stale_partials_removed
        self.table_path = table_path
        self.journal_path = journal_path
        self.sync = sync

    def add_failure(self, failure: SeriesFailure) -> None:
        """Count a failed series (or listing); keep it if the list is not full."""
        self.series_failed += 1
        if len(self.failures) < MAX_KEPT_FAILURES:
            self.failures.append(failure)

    def add_failed_instance(self, record: InstanceRecord) -> None:
        """Count a failed instance; keep it if the list is not full."""
        self.failed += 1
        if len(self.failed_instances) < MAX_KEPT_FAILURES:
            self.failed_instances.append(record)

    @property
    def failures_not_kept(self) -> int:
        """Failures counted but not kept in memory (see the table for them)."""
        return self.series_failed - len(self.failures) + self.failed - len(self.failed_instances)

    @property
    def ok(self) -> bool:
        """True when nothing failed: every series is complete."""
        return not self.series_failed and self.failed == 0

    @property
    def megabytes_per_second(self) -> float:
        """Bytes written per second of the run, in MB (10**6) per second."""
        return self.bytes_written / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: counts, bytes, time and rate."""
        metadata = f"{self.metadata_saved} metadata, " if self.metadata_saved else ""
        repaired = f" ({self.repaired} repaired)" if self.repaired else ""
        return (
            f"{self.series_completed}/{self.series_total} series, {metadata}"
            f"{self.written} written{repaired}, "
            f"{self.skipped} skipped, {self.failed} failed instances, "
            f"{self.series_failed} failed series, {self.bytes_written / 1e6:.1f} MB in "
            f"{self.seconds:.1f}s ({self.megabytes_per_second:.1f} MB/s)"
        )


ProgressCallback = Callable[["DownloadProgress"], None]

MAX_TRACKED_SERIES = 256
"""Series whose activity a :class:`DownloadProgress` keeps, the most recently active:
more than any concurrency a display shows, and a constant memory whatever the archive."""


@dataclass(init=False, repr=False, eq=False)
class SeriesActivity(PublicRecord):
    """What one series has done so far in this run, as its instances are recorded
    (returned by :meth:`DownloadProgress.series_in_flight`)."""

    study_uid: str
    series_uid: str
    order: int
    """When the series was first seen (0, 1, 2, ...): keeps displayed lines in place."""
    done: int = 0
    """Instances done (written, skipped, planned, metadata saved)."""
    expected: int | None = None
    """Instances the listing announced for the series, when it did."""
    written: int = 0
    bytes_written: int = 0
    """Bytes of the instances written (their file sizes)."""

    def __init__(
        self,
        study_uid: str,
        series_uid: str,
        order: int,
        done: int = 0,
        expected: int | None = None,
        written: int = 0,
        bytes_written: int = 0,
    ) -> None:
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.order = order
        self.done = done
        self.expected = expected
        self.written = written
        self.bytes_written = bytes_written


@dataclass(init=False, repr=False, eq=False)
class DownloadProgress(PublicRecord):
    """Live counters of a run; safe to read at any time from the same event loop.

    Besides the totals it keeps the activity of the series in flight (from
    :meth:`series_started` to :meth:`series_ended`, which the engine calls; bounded by
    :data:`MAX_TRACKED_SERIES`, updated in constant time per instance), from which
    :meth:`series_in_flight` and the byte-based :meth:`eta` are computed.
    """

    series_total: int = 0
    series_done: int = 0
    planning_done: bool = False
    instances_done: int = 0
    instances_expected: int = 0
    bytes_done: int = 0
    """Body bytes received from the network."""
    failures: int = 0
    started: float = field(default_factory=time.monotonic)
    callback: ProgressCallback | None = None
    bytes_written: int = 0
    """Bytes of the instances written (their file sizes)."""
    recent: OrderedDict[str, SeriesActivity] = field(default_factory=OrderedDict, repr=False)
    """The series in flight by SeriesInstanceUID, the most recently active last."""
    series_seen: int = 0
    """Series that have had an instance done so far."""

    def __init__(
        self,
        series_total: int = 0,
        series_done: int = 0,
        planning_done: bool = False,
        instances_done: int = 0,
        instances_expected: int = 0,
        bytes_done: int = 0,
        failures: int = 0,
        started: float | None = None,
        callback: ProgressCallback | None = None,
        bytes_written: int = 0,
        recent: OrderedDict[str, SeriesActivity] | None = None,
        series_seen: int = 0,
    ) -> None:
        self.series_total = series_total
        self.series_done = series_done
        self.planning_done = planning_done
        self.instances_done = instances_done
        self.instances_expected = instances_expected
        self.bytes_done = bytes_done
        self.failures = failures
        self.started = time.monotonic() if started is None else started
        self.callback = callback
        self.bytes_written = bytes_written
        self.recent = OrderedDict() if recent is None else recent
        self.series_seen = series_seen

    def notify(self) -> None:
        """Tell the callback, if any, that the counters changed."""
        if self.callback is not None:
            self.callback(self)

    def series_started(self, study_uid: str, series_uid: str, expected: int | None) -> None:
        """A series is being worked on: it is in flight until :meth:`series_ended`."""
        activity = SeriesActivity(study_uid, series_uid, self.series_seen, expected=expected)
        self.series_seen += 1
        self.recent[series_uid] = activity
        if len(self.recent) > MAX_TRACKED_SERIES:
            self.recent.popitem(last=False)

    def count_instance(self, record: InstanceRecord) -> None:
        """Count one instance done (any status but failed), in O(1): totals and its series."""
        self.instances_done += 1
        recent = self.recent
        activity = recent.get(record.series_uid)
        if activity is None:
            activity = SeriesActivity(record.study_uid, record.series_uid, self.series_seen)
            self.series_seen += 1
            recent[record.series_uid] = activity
            if len(recent) > MAX_TRACKED_SERIES:
                recent.popitem(last=False)
        else:
            recent.move_to_end(record.series_uid)
        activity.done += 1
        if record.status is InstanceStatus.WRITTEN:
            size = record.file_size or 0
            activity.written += 1
            activity.bytes_written += size
            self.bytes_written += size

    def series_ended(self, series_uid: str) -> None:
        """A series is over (done or failed): it is no longer in flight."""
        self.recent.pop(series_uid, None)

    def series_in_flight(self, concurrency: int | None = None) -> list[SeriesActivity]:
        """The series being worked on, in the order they started (at most ``concurrency``).

        Exact when the engine reports starts and ends; a caller that only records
        instances sees the most recently active series, as many as are not done.
        """
        count = min(len(self.recent), self.series_total - self.series_done)
        if concurrency is not None:
            count = min(count, concurrency)
        if count <= 0:
            return []
        latest = itertools.islice(reversed(self.recent.values()), count)
        return sorted(latest, key=lambda activity: activity.order)

    def bytes_left(self, concurrency: int | None = None) -> float | None:
        """The bytes still to come, estimated; ``None`` while they cannot be.

        The instances still expected, at the mean size of the instances written by the
        series in flight, less what has already arrived of the parts in flight. Unknown
        until planning is complete and a series in flight has written an instance: a
        count of instances says nothing of their size.
        """
        if not self.planning_done or not self.instances_expected:
            return None
        flying = [a for a in self.series_in_flight(concurrency) if a.written]
        if not flying:
            return None
        per_instance = sum(a.bytes_written for a in flying) / sum(a.written for a in flying)
        instances_left = max(0, self.instances_expected - self.instances_done)
        arrived = min(max(0, self.bytes_done - self.bytes_written), len(flying) * per_instance)
        return max(0.0, instances_left * per_instance - arrived)

    def eta(self, rate: float | None = None, concurrency: int | None = None) -> float | None:
        """Seconds left: :meth:`bytes_left` at ``rate`` bytes/s (default: the average so far).

        ``None`` when the bytes left are unknown or nothing is arriving.
        """
        left = self.bytes_left(concurrency)
        speed = self.bytes_per_second if rate is None else rate
        if left is None or speed <= 0:
            return None
        return left / speed

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    @property
    def bytes_per_second(self) -> float:
        """Average rate so far."""
        elapsed = self.elapsed
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average rate so far (see :meth:`eta`); ``None`` if unknown."""
        return self.eta()
