"""What a download did: one record per instance, failures, totals and live progress.

:class:`DownloadReport` is the data behind kheops-client's
``downloaded_*_instances`` tables; :class:`DownloadProgress` is the live view a
command line or a service polls (or receives through a callback).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
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


@dataclass
class DownloadReport:
    """Every instance and failure of a run, with totals."""

    instances: list[InstanceRecord] = field(default_factory=list)
    failures: list[SeriesFailure] = field(default_factory=list)
    series_total: int = 0
    series_completed: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    stale_partials_removed: int = 0

    def _count(self, status: InstanceStatus) -> int:
        return sum(1 for record in self.instances if record.status is status)

    @property
    def written(self) -> int:
        """Instances written by this run."""
        return self._count(InstanceStatus.WRITTEN)

    @property
    def skipped(self) -> int:
        """Instances already present and left untouched."""
        return self._count(InstanceStatus.SKIPPED)

    @property
    def failed(self) -> int:
        """Instances that failed (a part that was not DICOM, ...)."""
        return self._count(InstanceStatus.FAILED)

    @property
    def metadata_saved(self) -> int:
        """Instances whose metadata (DICOM JSON) was saved by a metadata-only run."""
        return self._count(InstanceStatus.METADATA)

    @property
    def ok(self) -> bool:
        """True when nothing failed: every series is complete."""
        return not self.failures and self.failed == 0

    @property
    def megabytes_per_second(self) -> float:
        """Bytes written per second of the run, in MB (10**6) per second."""
        return self.bytes_written / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: counts, bytes, time and rate."""
        metadata = f"{self.metadata_saved} metadata, " if self.metadata_saved else ""
        return (
            f"{self.series_completed}/{self.series_total} series, {metadata}"
            f"{self.written} written, "
            f"{self.skipped} skipped, {self.failed} failed instances, "
            f"{len(self.failures)} failed series, {self.bytes_written / 1e6:.1f} MB in "
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
