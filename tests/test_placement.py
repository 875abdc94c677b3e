"""Where batches are placed: on the event loop, in a thread for slow storage or fsync."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from kheops_async.demo import generate_dataset
from kheops_async.demo.sample_data import SampleInstance
from kheops_async.engine.journal import Journal
from kheops_async.engine.placement import (
    LOOP_BUDGET_SECONDS,
    SLOW_CALLS_FOR_THREAD,
    Placement,
)
from kheops_async.engine.receiving import SMALL_PART_BYTES, PartBody
from kheops_async.engine.sink import Outcome, PartSink, SeriesRequest
from kheops_async.engine.state_dir import TempArea
from kheops_async.layout import Layout

pytestmark = pytest.mark.anyio


class WatchedSink(PartSink):
    """A real sink that notes the thread of each call, how many overlap, and can stall."""

    def __init__(self, root: Path, journal: Journal, *, fsync: bool = False) -> None:
        super().__init__(root, Layout(), journal, fsync=fsync)
        self.threads: list[int] = []
        self.stalls: list[float] = []
        self.inside = 0
        self.most_inside = 0
        self._count = threading.Lock()

    def commit_batch(self, bodies: Sequence[PartBody], request: SeriesRequest) -> list[Outcome]:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.threads.append(threading.get_ident())
            if self.stalls:
                time.sleep(self.stalls.pop(0))  # storage that answers slowly
            return super().commit_batch(bodies, request)
        finally:
            with self._count:
                self.inside -= 1


@pytest.fixture
def instances() -> list[SampleInstance]:
    return generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=6
    )


def _bodies(temp: TempArea, instances: Sequence[SampleInstance]) -> list[PartBody]:
    return [
        PartBody(i, "application/dicom", temp.new_path(), len(x.data), [x.data], b"")
        for i, x in enumerate(instances)
    ]


def _setup(tmp_path: Path, *, fsync: bool = False) -> tuple[TempArea, Journal, WatchedSink]:
    temp = TempArea(tmp_path)
    temp.prepare()
    journal = Journal.open(tmp_path / "journal.sqlite")
    return temp, journal, WatchedSink(tmp_path, journal, fsync=fsync)


def _request(instances: Sequence[SampleInstance]) -> SeriesRequest:
    return SeriesRequest(instances[0].study_uid, instances[0].series_uid, {})


def _assert_placed(tmp_path: Path, journal: Journal, instances: Sequence[SampleInstance]) -> None:
    entries = journal.series_entries(instances[0].study_uid, instances[0].series_uid)
    assert set(entries) == {x.sop_uid for x in instances}
    for entry in entries.values():
        data = next(x.data for x in instances if x.sop_uid == entry.sop_uid)
        assert (tmp_path / entry.path).read_bytes() == data


async def test_batches_are_placed_on_the_event_loop(
    tmp_path: Path, instances: list[SampleInstance]
) -> None:
    temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink)
    request = _request(instances)
    for half in (instances[:3], instances[3:]):
        outcomes = await placement.commit(_bodies(temp, half), request)
        assert [o.status for o in outcomes] == ["written"] * 3
    assert sink.threads == [threading.get_ident()] * 2
    assert placement.on_loop
    _assert_placed(tmp_path, journal, instances)
    journal.close()


async def test_with_fsync_every_batch_is_placed_in_a_worker_thread(
    tmp_path: Path, instances: list[SampleInstance]
) -> None:
    temp, journal, sink = _setup(tmp_path, fsync=True)
    placement = Placement(sink)
    assert not placement.on_loop
    await placement.commit(_bodies(temp, instances), _request(instances))
    assert sink.threads and threading.get_ident() not in sink.threads
    _assert_placed(tmp_path, journal, instances)
    journal.close()


async def test_batches_over_the_budget_send_the_next_ones_to_a_thread(
    tmp_path: Path, instances: list[SampleInstance]
) -> None:
    """Slow storage holds the loop a few times (the calls that show it is slow), then never.

    One slow call alone (an accident) changes nothing.
    """
    temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink)
    request = _request(instances)
    slow = LOOP_BUDGET_SECONDS * 2
    sink.stalls = [0.0, slow, 0.0] + [slow] * (SLOW_CALLS_FOR_THREAD - 1)
    for instance in instances:
        await placement.commit(_bodies(temp, [instance]), request)
    loop = threading.get_ident()
    on_loop = 2 + SLOW_CALLS_FOR_THREAD
    assert sink.threads[:on_loop] == [loop] * on_loop
    assert loop not in sink.threads[on_loop:] and sink.threads[on_loop:]
    assert not placement.on_loop
    _assert_placed(tmp_path, journal, instances)
    journal.close()


@pytest.mark.parametrize("on_loop", [True, False])
async def test_one_batch_at_a_time(
    tmp_path: Path, instances: list[SampleInstance], on_loop: bool
) -> None:
    temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink, on_loop=on_loop)
    sink.stalls = [0.005] * len(instances)
    request = _request(instances)
    async with anyio.create_task_group() as group:
        for instance in instances:
            group.start_soon(placement.commit, _bodies(temp, [instance]), request)
    assert sink.most_inside == 1
    assert len(sink.threads) == len(instances)
    _assert_placed(tmp_path, journal, instances)
    journal.close()


async def test_a_batch_in_a_thread_is_placed_whole_when_the_run_is_cancelled(
    tmp_path: Path, instances: list[SampleInstance]
) -> None:
    temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink, on_loop=False)
    sink.stalls = [0.2]
    with anyio.move_on_after(0.05) as scope:
        await placement.commit(_bodies(temp, instances), _request(instances))
        await anyio.sleep(1)  # reached only if the cancellation was lost
    assert scope.cancelled_caught
    _assert_placed(tmp_path, journal, instances)
    assert list(temp.directory.iterdir()) == []
    journal.close()


async def test_quick_calls_follow_the_same_rule(tmp_path: Path) -> None:
    """A journal call runs on the loop until one is slow; then it and batches use a thread."""
    _temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink)
    threads: list[int] = []

    def record(stall: float) -> int:
        threads.append(threading.get_ident())
        time.sleep(stall)
        return len(threads)

    assert await placement.call(lambda: record(0.0)) == 1
    for number in range(2, SLOW_CALLS_FOR_THREAD + 2):
        assert await placement.call(lambda: record(LOOP_BUDGET_SECONDS * 2)) == number
    assert await placement.call(lambda: record(0.0)) == SLOW_CALLS_FOR_THREAD + 2
    loop = threading.get_ident()
    assert threads[:-1] == [loop] * (SLOW_CALLS_FOR_THREAD + 1) and threads[-1] != loop
    assert not placement.on_loop
    journal.close()


async def test_a_batch_of_big_parts_is_placed_on_the_loop_too(tmp_path: Path) -> None:
    """Parts held in memory are placed on the loop whatever their size (up to 1 MiB).

    (A worker thread for parts of 256 KB and more cost more than it gained, measured:
    see the placement module's docstring.)
    """
    small = generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=2
    )
    big = generate_dataset(
        seed=99,
        patients=1,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=2,
        pixel_bytes=SMALL_PART_BYTES - 64 * 1024,
    )
    temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink)
    await placement.commit(_bodies(temp, small), _request(small))
    await placement.commit(_bodies(temp, big), _request(big))
    loop = threading.get_ident()
    assert sink.threads == [loop, loop]
    assert placement.on_loop
    _assert_placed(tmp_path, journal, small)
    _assert_placed(tmp_path, journal, big)
    journal.close()


async def test_slow_calls_beside_a_busy_thread_are_not_slow_storage(tmp_path: Path) -> None:
    """Beside a thread working in Python, the loop waits for the GIL: that is not the disk.

    (A review measured batches of 8 small parts at 0.7 ms alone and about 250 ms beside
    a thread busy in Python: three of them sent a local-disk run to threads for good.)
    """
    _temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink)
    release = threading.Event()

    def slow() -> None:
        time.sleep(LOOP_BUDGET_SECONDS * 2)

    async with anyio.create_task_group() as group:
        group.start_soon(placement.in_thread, release.wait)
        await anyio.sleep(0.05)
        for _ in range(SLOW_CALLS_FOR_THREAD + 1):
            await placement.call(slow)
        assert placement.on_loop
        release.set()
    for _ in range(SLOW_CALLS_FOR_THREAD):
        await placement.call(slow)
    assert not placement.on_loop
    journal.close()


async def test_a_batch_in_a_thread_never_waits_behind_other_thread_work(
    tmp_path: Path, instances: list[SampleInstance]
) -> None:
    """Placement has a thread of its own: a full default thread pool does not stall it."""
    temp, journal, sink = _setup(tmp_path)
    placement = Placement(sink, on_loop=False)
    pool = anyio.to_thread.current_default_thread_limiter()
    tokens, pool.total_tokens = pool.total_tokens, 1
    release = threading.Event()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, release.wait)
            await anyio.sleep(0.05)  # the default pool's only thread is taken
            with anyio.fail_after(5):
                await placement.commit(_bodies(temp, instances), _request(instances))
            release.set()
    finally:
        release.set()
        pool.total_tokens = tokens
    _assert_placed(tmp_path, journal, instances)
    journal.close()
