"""Small parts reach the sink in batches, not one sink call per part (real HTTP)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from fakeserver import FakeArchive, FakeDicomWebServer, StallAfter, make_tree_archive
from treecheck import assert_no_temp_files, assert_tree_holds

from kheops_async import DicomWebClient, Targets, download
from kheops_async.engine.context import RunContext
from kheops_async.engine.receiving import PartBody
from kheops_async.engine.series import IDLE_BATCH_MIN_PARTS
from kheops_async.engine.sink import Outcome, PartSink, SeriesRequest

pytestmark = pytest.mark.anyio

T = TypeVar("T")

TOKEN = "batching-token"
STUDY = "1.2.40.0.77"
INSTANCES = 41  # five full batches of 8 and one of 1: the last batch may be short


@pytest.fixture
def archive() -> FakeArchive:
    return make_tree_archive([STUDY], series_per_study=2, instances_per_series=INSTANCES, size=2000)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN, framing="eof") as srv:
        yield srv


@pytest.mark.parametrize("in_thread", [False, True])
async def test_an_idle_sink_gets_batches_of_small_parts(
    server: FakeDicomWebServer,
    archive: FakeArchive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_thread: bool,
) -> None:
    """Every batch of an answer but its last holds at least IDLE_BATCH_MIN_PARTS parts.

    The sink is idle when an answer starts, so handing parts over "as soon as the sink
    is idle" sent the first part alone, and every part alone when they trickle in (as
    they do from Orthanc). Here series 1's answer stops for a moment after its first
    part; series 2's comes at once. The same holds with the sink on the event loop and
    in a worker thread (``sink_in_thread``).
    """
    threads: set[int] = set()
    stalled = f"{STUDY}.1"
    server.add_fault(f"series/{stalled}", StallAfter(nbytes=2600, seconds=0.3))
    batches: dict[str, list[int]] = defaultdict(list)
    commit = PartSink.commit_batch

    def counting(
        self: PartSink, bodies: Sequence[PartBody], request: SeriesRequest
    ) -> list[Outcome]:
        batches[request.series_uid].append(len(bodies))
        threads.add(threading.get_ident())
        return commit(self, bodies, request)

    monkeypatch.setattr(PartSink, "commit_batch", counting)
    async with DicomWebClient(server.base_url, token=TOKEN, concurrency=2) as client:
        report = await download(client, Targets(query={}), tmp_path, sink_in_thread=in_thread)
    assert report.ok and report.written == 2 * INSTANCES
    assert_tree_holds(tmp_path, archive.all_instances())
    assert_no_temp_files(tmp_path)
    assert server.pending_faults() == []
    assert not server.requests_matching(f"series/{stalled}/instances")  # the stall hit WADO
    assert len(batches) == 2
    loop = threading.get_ident()
    assert (loop not in threads) if in_thread else (threads == {loop}), threads
    for sizes in batches.values():
        assert sum(sizes) == INSTANCES
        assert all(size >= IDLE_BATCH_MIN_PARTS for size in sizes[:-1]), sizes


async def test_the_request_slot_is_free_while_the_last_batch_is_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrieve holds its request slot while its answer arrives, not while it is placed.

    The answer's three small parts make one batch, handed over at the end of the
    answer; placing it takes 0.3 s here. The slot (``RunContext.limited``) must be free
    before that batch is placed: holding it meant that, through 40 ms of round trip,
    every retrieve kept its slot a mean 10 ms after its last byte (8 % of the slot
    time). The parts are still placed, and the series is complete.
    """
    archive = make_tree_archive([STUDY], series_per_study=1, instances_per_series=3, size=2000)
    slots: list[tuple[float, float]] = []
    commits: list[tuple[float, float]] = []
    limited = RunContext.limited
    commit = PartSink.commit_batch

    async def recording_slot(self: RunContext, operation: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        try:
            return await limited(self, operation)
        finally:
            slots.append((started, time.monotonic()))

    def slow_commit(
        self: PartSink, bodies: Sequence[PartBody], request: SeriesRequest
    ) -> list[Outcome]:
        started = time.monotonic()
        time.sleep(0.3)
        try:
            return commit(self, bodies, request)
        finally:
            commits.append((started, time.monotonic()))

    monkeypatch.setattr(RunContext, "limited", recording_slot)
    monkeypatch.setattr(PartSink, "commit_batch", slow_commit)
    with FakeDicomWebServer(archive, token=TOKEN, framing="eof") as server:
        async with DicomWebClient(server.base_url, token=TOKEN, concurrency=1) as client:
            report = await download(client, Targets(studies=[STUDY]), tmp_path, sink_in_thread=True)
    assert report.ok and report.written == 3
    assert_tree_holds(tmp_path, archive.all_instances())
    assert_no_temp_files(tmp_path)
    assert len(commits) == 1, commits
    retrieve_slot = slots[-1]  # the series query, then the retrieve
    assert retrieve_slot[1] <= commits[0][1] - 0.2, (retrieve_slot, commits)
