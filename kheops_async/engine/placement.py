"""Where a batch of received parts is placed: on the event loop, or in a worker thread.

:class:`~kheops_async.engine.sink.PartSink` does blocking work (header checks, file
creation, rename, a journal row per part). Handing it to a worker thread lets the
event loop receive meanwhile, but in CPython both threads then take turns at the GIL
at every system call either of them makes. Measured on the 4,000 instances of 76 KB
from Orthanc (benchmark case S2, the command, 2 cores): with every batch in a thread,
``strace -c`` counted 96,000 futex calls (24 per part) and ``perf`` put over 10 % of
the process's CPU in the scheduler; the download took a median 3.37 s (3.2 s of CPU,
6 interleaved pairs) against 2.80 s (2.65 s of CPU) with the batches on the loop.

So a batch is placed on the event loop, blocking it for its length (as the engine
gathers them, 8 parts or 512 KB when the sink is idle, up to 64 parts or 2 MiB and the
part that crossed that while it is busy: about a millisecond on a local disk, a few for
the largest), which storage can make long: once :data:`SLOW_CALLS_FOR_THREAD` calls
have taken more than :data:`LOOP_BUDGET_SECONDS` (a network file system, a disk that
throttles writes), placement moves to the worker thread for the rest of the run. With
``fsync`` it is always in the thread (each flush waits for the disk), and so it is with
the setting ``sink_in_thread`` (for a service whose loop must never wait for the disk).
Parts over 1 MiB were already streamed to their temporary files from worker threads
(:mod:`~kheops_async.engine.receiving`); only their rename and record happen here.

Batches of big parts (averaging 256 KB or more) used to go to the worker thread, where
one long ``writev`` let the loop receive meanwhile: measured then (1a33b35, on an AMD
EPYC, with httpcore's own connections) S1's library took 0.25 s that way and 0.276 s on
the loop. With this engine's receive path (:mod:`~kheops_async.http11`,
:mod:`~kheops_async.asyncio_stream`) the thread costs more than it gains, the GIL
changing hands at each of its system calls while the loop is busy: on an Intel Xeon,
the library in one process, interleaved pairs, S1 (200 parts of 525 KB) 0.234 s in the
thread against 0.197 s on the loop (16 pairs, CPU 0.205 -> 0.181 s), the 560-instance
archive 0.430 -> 0.399 s (12 pairs).

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

__all__ = ["LOOP_BUDGET_SECONDS", "SLOW_CALLS_FOR_THREAD", "Placement"]

log = logging.getLogger("kheops_async")

T = TypeVar("T")

LOOP_BUDGET_SECONDS = 0.02
"""The longest a call should hold the event loop (see :data:`SLOW_CALLS_FOR_THREAD`)."""
SLOW_CALLS_FOR_THREAD = 3
"""Calls over the budget that send the rest of the run to a thread.

One slow call can be an accident (a checkpoint of the journal, a stall while the kernel
writes dirty pages back); three in one run say that the storage is slow."""


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
        with anyio.CancelScope(shield=True):
            async with self._slot:
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
