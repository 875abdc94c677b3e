"""Where a batch of received parts is placed: on the event loop, or in a worker thread.

:class:`~kheops_async.engine.sink.PartSink` does blocking work (header checks, file
creation, rename, a journal row per part). Handing it to a worker thread lets the
event loop receive meanwhile, but in CPython both threads then take turns at the GIL
at every system call either of them makes. Measured on the 4,000 instances of 76 KB
from Orthanc (benchmark case S2, the command, 2 cores): with every batch in a thread,
``strace -c`` counted 96,000 futex calls (24 per part) and ``perf`` put over 10 % of
the process's CPU in the scheduler; the download took a median 3.37 s (3.2 s of CPU,
6 interleaved pairs) against 2.80 s (2.65 s of CPU) with the batches on the loop.

So a batch of small parts is placed on the event loop, and a batch of big ones
(:data:`THREAD_PART_BYTES`) in a worker thread, where one long ``writev`` per part lets
the loop go on receiving. A batch on the loop blocks it for its length (8 parts or
512 KB as the engine gathers them: about a millisecond on a local disk), which storage
can make long: once :data:`SLOW_CALLS_FOR_THREAD` calls have taken more than
:data:`LOOP_BUDGET_SECONDS` (a network file system, a disk that throttles writes),
placement moves to the worker thread for the rest of the run. With ``fsync`` it is
always in the thread (each flush waits for the disk), and so it is with the setting
``sink_in_thread`` (for a service whose loop must never wait for the disk). Large
parts were already streamed to their temporary files from worker threads
(:mod:`~kheops_async.engine.receiving`); only their rename and record happen here.

Either way one batch is placed at a time for the whole run, so the collision check and
the journal row of a path never interleave with another batch's; and a batch once
handed over is placed whole, even when the run is being cancelled. (A
``KeyboardInterrupt`` raised in the middle of a batch on the loop, as trio and a second
Ctrl-C under asyncio do, can stop it between two parts: every file is renamed whole or
not at all, and one renamed before its journal row is checked as DICOM by the next run,
as after a crash.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from kheops_async.engine.receiving import PartBody
from kheops_async.engine.sink import Outcome, PartSink, SeriesRequest

__all__ = ["LOOP_BUDGET_SECONDS", "SLOW_CALLS_FOR_THREAD", "THREAD_PART_BYTES", "Placement"]

log = logging.getLogger("kheops_async")

T = TypeVar("T")

LOOP_BUDGET_SECONDS = 0.02
"""The longest a call should hold the event loop (see :data:`SLOW_CALLS_FOR_THREAD`)."""
SLOW_CALLS_FOR_THREAD = 3
"""Calls over the budget that send the rest of the run to a thread.

One slow call can be an accident (a checkpoint of the journal, a stall while the kernel
writes dirty pages back); three in one run say that the storage is slow."""
THREAD_PART_BYTES = 256 * 1024
"""Batches whose parts average this many bytes still to write are written in a thread.

A big ``writev`` holds the GIL released long enough for the loop to receive meanwhile,
so the thread pays for its handoffs: on the 200 parts of 525 KB (S1, the library, 8
interleaved pairs) the engine took a median 0.276 s with every batch on the loop, 0.25 s
with each in a thread; on the 560-instance archive (360 parts of 50-100 KB and 200 of
525 KB, the command, 6 runs each) 0.78 s on the loop, 0.71 s all in threads, 0.68 s
with this threshold (64 KB: 0.69 s, but S2's parts of 50-100 KB then go to threads).
"""


class Placement:
    """Places batches through ``sink``, one at a time, on the loop or in a thread.

    :meth:`call` runs the run's other quick blocking work (the journal's record of a
    series) by the same rule, so the loop and a thread do not take turns at the GIL.
    """

    def __init__(self, sink: PartSink, *, on_loop: bool | None = None) -> None:
        self.sink = sink
        self.on_loop = not sink.fsync if on_loop is None else on_loop
        """Whether the next call runs on the event loop (else in a worker thread)."""
        self._slot = anyio.Lock()
        self._thread = anyio.CapacityLimiter(1)  # its own thread: never queued behind others
        self._slow_calls = 0
        self._busy_threads = 0

    async def commit(self, batch: Sequence[PartBody], request: SeriesRequest) -> list[Outcome]:
        """Check and place ``batch`` (see :meth:`PartSink.commit_batch`). Raises OSError."""
        to_write = sum(body.size for body in batch if body.in_memory)
        in_thread = to_write >= THREAD_PART_BYTES * len(batch)
        with anyio.CancelScope(shield=True):
            async with self._slot:
                if in_thread:
                    outcomes = await anyio.to_thread.run_sync(
                        self.sink.commit_batch, batch, request, limiter=self._thread
                    )
                else:
                    outcomes = await self.call(lambda: self.sink.commit_batch(batch, request))
        return outcomes

    async def call(self, function: Callable[[], T]) -> T:
        """``function()``, on the loop while calls stay within the budget, else in a thread."""
        if not self.on_loop:
            return await anyio.to_thread.run_sync(function, limiter=self._thread)
        started = time.perf_counter()
        try:
            result = function()
        finally:
            self._timed(time.perf_counter() - started)
        await anyio.lowlevel.checkpoint()  # a loop of quick calls still lets others run
        return result

    async def in_thread(self, function: Callable[[], T]) -> T:
        """``function()`` in a worker thread: long work in Python (checking files on resume).

        While it runs, the loop's calls wait for the GIL at each system call (up to the
        interpreter's switch interval, 5 ms, each time): they are not counted as slow
        storage then. Measured by a review: batches of 8 small parts took 0.7 ms alone,
        about 250 ms beside a thread busy in Python.
        """
        self._busy_threads += 1
        try:
            return await anyio.to_thread.run_sync(function)
        finally:
            self._busy_threads -= 1

    def _timed(self, seconds: float) -> None:
        """Count a call over the budget; enough of them send the rest to a thread."""
        if seconds <= LOOP_BUDGET_SECONDS or self._busy_threads:
            return
        self._slow_calls += 1
        if self._slow_calls >= SLOW_CALLS_FOR_THREAD:
            self.on_loop = False
            log.debug(
                "%d blocking calls took more than %.3f s (the last %.3f s): "
                "later ones run in a worker thread",
                self._slow_calls,
                LOOP_BUDGET_SECONDS,
                seconds,
            )
