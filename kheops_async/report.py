"""What a download did: totals, the first failures, instance records and live progress.

:class:`InstanceRecord` is one row of kheops-client's ``downloaded_*_instances``
tables (streamed as instances finish); :class:`DownloadReport` the totals of a run;
:class:`DownloadProgress` the live view a command line or a service polls (or
receives through a callback).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

__all__ = [
    "MAX_KEPT_FAILURES",
    "DownloadProgress",
    "DownloadReport",
    "InstanceRecord",
    "InstanceStatus",
    "ProgressCallback",
    "SeriesFailure",
]


class InstanceStatus(str, Enum):
    """What happened to one instance."""

    WRITTEN = "written"
    SKIPPED = "skipped"
    FAILED = "failed"
    PLANNED = "planned"  # dry run: would be downloaded
    METADATA = "metadata"  # metadata-only run: its DICOM JSON was saved


@dataclass(frozen=True)
class InstanceRecord:
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


@dataclass(frozen=True)
class SeriesFailure:
    """A series that could not be completed, and why."""

    study_uid: str
    series_uid: str
    error: str
    expected: int | None = None
    received: int = 0
    missing: tuple[str, ...] = ()


MAX_KEPT_FAILURES = 200
"""Failures a report keeps in memory (series and instances alike); every failure is
counted, and every one is in the instance table and the journal."""


@dataclass
class DownloadReport:
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


@dataclass
class DownloadProgress:
    """Live counters of a run; safe to read at any time from the same event loop."""

    series_total: int = 0
    series_done: int = 0
    planning_done: bool = False
    instances_done: int = 0
    instances_expected: int = 0
    bytes_done: int = 0
    failures: int = 0
    started: float = field(default_factory=time.monotonic)
    callback: ProgressCallback | None = None

    def notify(self) -> None:
        """Tell the callback, if any, that the counters changed."""
        if self.callback is not None:
            self.callback(self)

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
        """Seconds left, from the instance rate, once planning is complete."""
        if not self.planning_done or self.instances_done == 0 or self.instances_expected == 0:
            return None
        rate = self.instances_done / max(self.elapsed, 1e-6)
        return max(0.0, (self.instances_expected - self.instances_done) / rate)
