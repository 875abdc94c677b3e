"""A TCP proxy that adds a fixed one-way delay in each direction (netem without the kernel).

Usage: python benchmarks/latency_proxy.py --target 127.0.0.1:8042 [--listen-port 0]
       [--delay-ms 20] [--no-handshake]

Each chunk read from one side is stamped with the time it arrived and written to the other
side ``delay`` seconds later. Reading and writing are separate tasks joined by a queue, so
chunks in flight overlap: the delay is paid once per direction, not once per chunk, and
bytes otherwise move at full speed (the queue holds at most :data:`MAX_IN_FLIGHT_BYTES`
per direction, more than the bandwidth-delay product of loopback at 20 ms).

A new connection also pays the TCP handshake it would pay on a real link: the client's
first bytes reach the server no earlier than one round trip after the connection was
accepted, plus the one-way delay (``--no-handshake`` turns that off). With 20 ms each
way, a request on a fresh connection therefore waits 60 ms before the server sees it, and
one on a kept-alive connection 20 ms, as on a 40 ms round-trip network.

The listening port is printed on stdout (``PORT <n>``) once the proxy accepts connections,
so a parent process started with ``--listen-port 0`` can read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys

__all__ = ["DelayingProxy", "main"]

READ_BYTES = 256 * 1024
"""Largest chunk read from a socket at once."""

MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
"""Bytes one direction may hold before it stops reading (TCP flow control then applies)."""


class _Pipe:
    """One direction of one connection: read, stamp, wait for the release time, write."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay: float,
        not_before: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.not_before = not_before  # earliest arrival time honoured (handshake)
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()

    async def read_side(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(READ_BYTES)
                arrived = max(loop.time(), self.not_before)
                self.queue.put_nowait((arrived + self.delay, data))
                if not data:
                    return
                self.in_flight += len(data)
                if self.in_flight >= MAX_IN_FLIGHT_BYTES:
                    self.room.clear()
        except (ConnectionError, OSError):
            self.queue.put_nowait((loop.time(), b""))

    async def write_side(self) -> None:
        """Write each chunk at its release time; a write failure ends the connection."""
        loop = asyncio.get_running_loop()
        while True:
            release, data = await self.queue.get()
            wait = release - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(data)
            await self.writer.drain()
            self.in_flight -= len(data)
            if self.in_flight < MAX_IN_FLIGHT_BYTES:
                self.room.set()


class DelayingProxy:
    """Forward connections on ``listen_port`` to ``target``, delaying each direction."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float,
        handshake: bool = True,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.handshake = handshake
        self.listen = (listen_host, listen_port)
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        sock: socket.socket = self.server.sockets[0]
        port: int = sock.getsockname()[1]
        return port

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, *self.listen, limit=READ_BYTES, backlog=512
        )

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        _no_delay(client_writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                *self.target, limit=READ_BYTES
            )
        except OSError:
            client_writer.close()
            return
        _no_delay(upstream_writer)
        # A fresh connection costs one round trip (SYN, SYN-ACK) before data can leave.
        handshake_done = accepted + 2 * self.delay if self.handshake else accepted
        upstream = _Pipe(client_reader, upstream_writer, self.delay, handshake_done)
        downstream = _Pipe(upstream_reader, client_writer, self.delay, accepted)
        tasks = [
            asyncio.ensure_future(coroutine)
            for coroutine in (
                upstream.read_side(),
                upstream.write_side(),
                downstream.read_side(),
                downstream.write_side(),
            )
        ]
        try:
            await asyncio.gather(*tasks)
        except (ConnectionError, OSError):
            pass  # one side went away: drop the connection
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    proxy = DelayingProxy(
        host or "127.0.0.1",
        int(port),
        delay=args.delay_ms / 1000.0,
        handshake=not args.no_handshake,
        listen_port=args.listen_port,
    )
    await proxy.start()
    print(f"PORT {proxy.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    assert proxy.server is not None
    proxy.server.close()
    print(f"connections {proxy.connections}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay (20)")
    parser.add_argument("--no-handshake", action="store_true", help="no connect round trip")
    args = parser.parse_args()
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
