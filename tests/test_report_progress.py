"""The live progress of a run (``report.DownloadProgress``), moved by the engine's recorder.

The series in flight and the byte-based ETA come from the instance records alone, in
constant time per record; the scenario of issue 11 (one series of large instances
left while the instance count says nearly done) is the one the ETA must not get wrong.
"""

from __future__ import annotations

import pytest

from kheops_async.engine.recorder import Recorder
from kheops_async.report import (
    MAX_TRACKED_SERIES,
    DownloadProgress,
    DownloadReport,
    InstanceRecord,
    InstanceStatus,
    SeriesFailure,
)

MB = 1_000_000


def record(
    series: str, n: int, size: int, status: InstanceStatus = InstanceStatus.WRITTEN
) -> InstanceRecord:
    return InstanceRecord("1.2.1", series, f"{series}.{n}", file_size=size, status=status)


def recorder_for(progress: DownloadProgress) -> Recorder:
    return Recorder(DownloadReport(), progress)


def test_eta_follows_the_bytes_of_the_series_in_flight() -> None:
    """18 small series done, then one of 200 instances of 1 MB: 48 done, 152 to go."""
    progress = DownloadProgress()
    recorder = recorder_for(progress)
    for s in range(18):
        recorder.series_planned(20)
        recorder.series_started("1.2.1", f"1.2.1.{s}", 20)
        for n in range(20):
            recorder.instance(record(f"1.2.1.{s}", n, 1_000))
            recorder.bytes_received(1_000)
        recorder.series_finished(f"1.2.1.{s}", complete=True)
    recorder.series_planned(200)
    recorder.planning_done()
    recorder.series_started("1.2.1", "1.2.1.big", 200)
    for n in range(48):
        recorder.instance(record("1.2.1.big", n, MB))
        recorder.bytes_received(MB)
    assert (progress.instances_done, progress.instances_expected) == (408, 560)
    assert progress.bytes_left(concurrency=8) == pytest.approx(152 * MB)
    eta = progress.eta(rate=10 * MB, concurrency=8)
    assert eta == pytest.approx(15.2)
    # What a count-based estimate says: 152 of 560 instances at the instance rate so far.
    by_count = (560 - 408) / 408 * (progress.bytes_done / (10 * MB))
    assert by_count < 2.0


def test_eta_is_unknown_until_a_series_in_flight_has_written_an_instance() -> None:
    progress = DownloadProgress()
    recorder = recorder_for(progress)
    recorder.series_planned(10)
    assert progress.eta(rate=MB) is None  # planning goes on
    recorder.planning_done()
    recorder.bytes_received(500_000)
    assert progress.eta(rate=MB) is None  # bytes arrive, but no instance size is known
    recorder.instance(record("1.2.1.1", 0, 0, InstanceStatus.SKIPPED))
    assert progress.eta(rate=MB) is None  # a skipped file says nothing of the transfer
    recorder.instance(record("1.2.1.1", 1, 400_000))
    # 8 instances left at 400 kB, less the 100 kB of a part already arriving.
    assert progress.bytes_left() == pytest.approx(8 * 400_000 - 100_000)
    assert progress.eta(rate=0.0) is None


def test_series_in_flight_are_those_started_and_not_ended() -> None:
    progress = DownloadProgress()
    recorder = recorder_for(progress)
    for _ in range(5):
        recorder.series_planned(3)
    for s in (0, 1, 2):
        recorder.series_started("1.2.1", f"1.2.1.{s}", 3)
    recorder.instance(record("1.2.1.1", 0, 10))
    recorder.instance(record("1.2.1.1", 1, 10))
    assert [a.series_uid for a in progress.series_in_flight(8)] == [
        "1.2.1.0",
        "1.2.1.1",
        "1.2.1.2",
    ]  # in the order they started, one line each even before an instance
    (busy,) = [a for a in progress.series_in_flight(8) if a.series_uid == "1.2.1.1"]
    assert (busy.done, busy.expected, busy.written, busy.bytes_written) == (2, 3, 2, 20)
    recorder.series_finished("1.2.1.0", complete=True)
    recorder.series_started("1.2.1", "1.2.1.3", 3)
    # two lines at most: the most recently active two
    assert [a.series_uid for a in progress.series_in_flight(2)] == ["1.2.1.1", "1.2.1.3"]
    recorder.failure(SeriesFailure("1.2.1", "1.2.1.3", "broken"))
    recorder.series_finished("1.2.1.3", complete=False)
    assert [a.series_uid for a in progress.series_in_flight(8)] == ["1.2.1.1", "1.2.1.2"]


def test_without_starts_the_latest_active_series_stand_in() -> None:
    """A library caller that records instances only still gets plausible lines."""
    progress = DownloadProgress(series_total=5)
    for s in (0, 1, 2, 3):
        progress.count_instance(record(f"1.2.1.{s}", 0, 10))
    progress.count_instance(record("1.2.1.1", 1, 10))
    assert [a.series_uid for a in progress.series_in_flight(3)] == [
        "1.2.1.1",
        "1.2.1.2",
        "1.2.1.3",
    ]


def test_failed_instances_are_not_activity_and_memory_is_bounded() -> None:
    progress = DownloadProgress()
    recorder = recorder_for(progress)
    recorder.instance(record("1.2.1.0", 0, 0, InstanceStatus.FAILED))
    assert not progress.recent and progress.instances_done == 0
    for s in range(MAX_TRACKED_SERIES + 50):
        recorder.instance(record(f"1.2.1.{s}", 0, 1))
    assert len(progress.recent) == MAX_TRACKED_SERIES
    assert progress.series_seen == MAX_TRACKED_SERIES + 50
    assert progress.bytes_written == MAX_TRACKED_SERIES + 50


def test_eta_seconds_keeps_its_meaning_for_library_callers() -> None:
    progress = DownloadProgress(series_total=1, planning_done=True, instances_expected=4)
    assert progress.eta_seconds is None
    progress.count_instance(record("1.2.1.1", 0, 1_000))
    progress.bytes_done = 1_000
    eta = progress.eta_seconds
    assert eta is not None and eta > 0
