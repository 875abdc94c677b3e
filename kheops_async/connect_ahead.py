"""TCP connections opened ahead of need, for servers that close each connection.

Why: Orthanc ends every multipart WADO-RS answer by closing its connection (the body has
neither a length nor chunks, so its end is the close). Each retrieve then opens a new
connection and pays the TCP handshake, one round trip, before its request can leave: at
40 ms of round trip that is 40 of the 110 ms a series of S3 holds its request slot
(``benchmarks/RESULTS.md``). A connection opened while the previous answer is still
arriving is ready when the next retrieve starts.

How: :class:`~kheops_async.transport.LargeReadBackend` asks :meth:`ConnectionsAhead.take`
for a ready connection before it connects, and after every connection it makes or takes
it calls :meth:`ConnectionsAhead.replace`, which opens one more in the background. At most
``count`` wait per origin. One that waits longer than :data:`MAX_IDLE` seconds, or that
the server has closed (it reads as readable), is closed and not replaced: a server that
keeps its connections alive never takes them, so it sees at most ``count`` unused
connections per burst of new ones. Only TLS is left to the connection's first request:
the spare is plain TCP, so the SSL context and the server name stay httpcore's business.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import httpcore
from anyio.abc import TaskGroup

__all__ = ["MAX_IDLE", "MOST_BY_DEFAULT", "ConnectionsAhead", "default_count"]

log = logging.getLogger(__name__)

MAX_IDLE = 0.5
"""Seconds a connection opened ahead may wait unused (Orthanc drops idle ones after ~1 s)."""

MOST_BY_DEFAULT = 8
"""The most connections opened ahead unless asked for more: each holds a server thread
(Orthanc serves 50 connections at once by default) while it waits."""

Origin = tuple[str, int]
"""Host and port, as httpcore asks the network backend to connect to them."""

Connect = Callable[[str, int, float | None], Awaitable[httpcore.AsyncNetworkStream]]
"""Opens a TCP connection: host, port, connect timeout."""


def default_count(concurrency: int) -> int:
    """Connections to open ahead for ``concurrency`` requests in flight: half, at most 8.

    At 40 ms of round trip a retrieve of S3 holds its slot about 90 ms, so a slot needs a
    new connection about every 2 round trips: half the slots' worth of connections
    opened ahead kept S3 as fast as as many as the slots (``benchmarks/RESULTS.md``).
    """
    return min(MOST_BY_DEFAULT, (concurrency + 1) // 2)


class ConnectionsAhead:
    """Keeps up to ``count`` connections per origin opened ahead of the next request.

    :meth:`start` it in a task group, cancel the group when connections should no longer
    be opened ahead, then :meth:`aclose` the ones still waiting. ``connect`` opens one
    connection.
    """

    def __init__(self, connect: Connect, count: int) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self._connect = connect
        self._count = count
        self._ready: dict[Origin, deque[tuple[float, httpcore.AsyncNetworkStream]]] = {}
        self._opening: dict[Origin, int] = {}
        self._group: TaskGroup | None = None
        self.opened = 0
        """Connections opened ahead so far (taken, closed unused or waiting)."""

    @property
    def waiting(self) -> int:
        """Connections opened ahead and not yet taken or closed."""
        return sum(len(ready) for ready in self._ready.values())

    async def take(self, host: str, port: int) -> httpcore.AsyncNetworkStream | None:
        """A connection to ``host:port`` opened ahead and still open, or ``None``."""
        ready = self._ready.get((host, port))
        now = time.monotonic()
        while ready:
            opened_at, stream = ready.popleft()
            if now - opened_at <= MAX_IDLE and not stream.get_extra_info("is_readable"):
                return stream
            await _close_quietly(stream)  # too old, or closed by the server
        return None

    def replace(self, host: str, port: int, timeout: float | None) -> None:
        """Open one more connection to ``host:port`` ahead, unless ``count`` are on their way.

        Before :meth:`start`, or once its group is cancelled (a request that began before
        the end), nothing happens.
        """
        origin = (host, port)
        waiting = len(self._ready.get(origin, ())) + self._opening.get(origin, 0)
        if self._group is None or waiting >= self._count:
            return
        self._opening[origin] = self._opening.get(origin, 0) + 1
        self._group.start_soon(self._open, origin, timeout)

    def start(self, group: TaskGroup) -> None:
        """From now on, open connections in ``group`` and close the stale ones.

        Until ``group`` is cancelled. Connecting errors are left for the request that
        would have used the connection to meet (it connects itself): nothing started
        here raises.
        """
        self._group = group
        group.start_soon(self._close_stale_ones)

    async def _close_stale_ones(self) -> None:
        try:
            while True:
                await anyio.sleep(MAX_IDLE / 2)
                await self._close_stale()
        finally:
            self._group = None  # cancelled: the group is ending

    async def _open(self, origin: Origin, timeout: float | None) -> None:
        try:
            stream = await self._connect(origin[0], origin[1], timeout)
        except Exception as exc:  # the next request connects itself and reports it
            log.debug("opening a connection ahead to %s:%s failed: %s", *origin, exc)
            return
        finally:
            self._opening[origin] -= 1
        self.opened += 1
        self._ready.setdefault(origin, deque()).append((time.monotonic(), stream))

    async def _close_stale(self) -> None:
        now = time.monotonic()
        for ready in list(self._ready.values()):  # closing awaits: origins may be added
            while ready and now - ready[0][0] > MAX_IDLE:
                await _close_quietly(ready.popleft()[1])

    async def aclose(self) -> None:
        """Close every connection still waiting."""
        for ready in list(self._ready.values()):
            while ready:
                await _close_quietly(ready.popleft()[1])


async def _close_quietly(stream: httpcore.AsyncNetworkStream) -> None:
    """Close a connection nobody used; a failure to close it has no one to tell."""
    try:
        await stream.aclose()
    except Exception as exc:  # pragma: no cover - closing a socket rarely fails
        log.debug("closing an unused connection failed: %s", exc)
