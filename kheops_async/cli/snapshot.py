"""What the progress display shows, taken at one moment from the live counters.

A :class:`Snapshot` is immutable: the live view may draw it again from another
thread (a log record printed above the display) while the engine moves on. It holds
the totals, the rate over the last few seconds (:class:`RateMeter`), the byte-based
ETA (:meth:`~kheops_async.report.DownloadProgress.eta`: unknown until the bytes per
instance of the series in flight can be estimated) and the series in flight.
:func:`describe` is the plain line written when stderr is not a terminal.
"""

from __future__ import annotations

import time
from collections import deque

from kheops_async.cli.humanize import duration, megabytes, or_unknown
from kheops_async.records import Record
from kheops_async.report import DownloadProgress

__all__ = ["RATE_WINDOW_SECONDS", "RateMeter", "SeriesLine", "Snapshot", "describe"]

RATE_WINDOW_SECONDS = 3.0
ALMOST_DONE = 0.999
"""The largest fraction shown before the end (``99%``)."""


class RateMeter:
    """Bytes per second over the last :data:`RATE_WINDOW_SECONDS` (the average at first)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def rate(self, bytes_done: int, average: float) -> float:
        """The recent rate, given the byte count now and the average rate of the run."""
        now = time.monotonic()
        samples = self._samples
        samples.append((now, bytes_done))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_SECONDS:
            samples.popleft()
        first_time, first_bytes = samples[0]
        if now - first_time < 0.5:
            return average
        return (bytes_done - first_bytes) / (now - first_time)


class SeriesLine(Record):
    """One series in flight: its UID, instances done (of expected), the bytes written."""

    __slots__ = ("bytes_written", "done", "expected", "series_uid")

    def __init__(
        self,
        series_uid: str,
        done: int,
        bytes_written: int,
        expected: int | None = None,
    ) -> None:
        self.series_uid = series_uid
        self.done = done
        self.bytes_written = bytes_written
        self.expected = expected


class Snapshot(Record):
    """The display's numbers at one moment; ``None`` totals are not known yet (planning)."""

    __slots__ = (
        "bytes_done",
        "elapsed",
        "eta",
        "failures",
        "in_flight",
        "instances_done",
        "instances_expected",
        "rate",
        "series_done",
        "series_total",
    )

    def __init__(
        self,
        series_done: int,
        series_total: int | None,
        instances_done: int,
        instances_expected: int | None,
        bytes_done: int,
        rate: float,
        elapsed: float,
        eta: float | None,
        failures: int = 0,
        in_flight: tuple[SeriesLine, ...] = (),
    ) -> None:
        self.series_done = series_done
        self.series_total = series_total
        self.instances_done = instances_done
        self.instances_expected = instances_expected
        self.bytes_done = bytes_done
        self.rate = rate
        self.elapsed = elapsed
        self.eta = eta
        self.failures = failures
        self.in_flight = in_flight

    @classmethod
    def of(
        cls, progress: DownloadProgress, rate: float, concurrency: int | None = None
    ) -> Snapshot:
        """The snapshot of ``progress`` with a recent ``rate`` (bytes per second)."""
        planned = progress.planning_done
        return cls(
            series_done=progress.series_done,
            series_total=progress.series_total if planned else None,
            instances_done=progress.instances_done,
            instances_expected=progress.instances_expected
            if planned and progress.instances_expected
            else None,
            bytes_done=progress.bytes_done,
            rate=rate,
            elapsed=progress.elapsed,
            eta=progress.eta(rate, concurrency),
            failures=progress.failures,
            in_flight=tuple(
                SeriesLine(a.series_uid, a.done, a.bytes_written, a.expected)
                for a in progress.series_in_flight(concurrency)
            ),
        )

    @property
    def fraction(self) -> float | None:
        """Instances done of those expected (0 to 1, and 1 only once every series is done:
        a series without a count can bring more); ``None`` while the total is unknown."""
        if self.instances_expected is None:
            return None
        if self.series_total is not None and self.series_done >= self.series_total:
            return 1.0
        return min(ALMOST_DONE, self.instances_done / self.instances_expected)

    @property
    def percent(self) -> str:
        """``73%`` (never ``100%`` before the end), or ``--%`` while unknown."""
        fraction = self.fraction
        return "--%" if fraction is None else f"{int(fraction * 100)}%"


def describe(snapshot: Snapshot) -> str:
    """One line: ``3/12 series, 45/120 instances, 1.2 MB, 4.5 MB/s, ETA 0:12``."""
    text = (
        f"{snapshot.series_done}/{or_unknown(snapshot.series_total)} series, "
        f"{snapshot.instances_done}/{or_unknown(snapshot.instances_expected)} instances, "
        f"{megabytes(snapshot.bytes_done)}, {snapshot.rate / 1e6:.1f} MB/s, "
        f"ETA {duration(snapshot.eta)}"
    )
    if snapshot.failures:
        text += f", {snapshot.failures} failed"
    return text
