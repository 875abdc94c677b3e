"""The asyncio network stream (kheops_async/asyncio_stream.py), against real loopback sockets.

Each test serves raw bytes from a thread on 127.0.0.1 (no HTTP unless it says so) and
drives :class:`AsyncioBackend` under asyncio, the only loop it serves.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import httpcore
import httpx
import pytest
import trustme

from kheops_async import asyncio_stream
from kheops_async.asyncio_stream import (
    BUFFER_LIMIT,
    LARGE_READ_BYTES,
    AsyncioBackend,
    AsyncioStream,
)
from kheops_async.transport import KheopsTransport

pytestmark = pytest.mark.anyio

Handler = Callable[[socket.socket], None]


@pytest.fixture
def anyio_backend() -> str:
    """This stream is asyncio's: trio has httpcore's own backend."""
    return "asyncio"


@contextmanager
def serving(handler: Handler, *, accept: int = 1) -> Iterator[int]:
    """A loopback listener whose first ``accept`` connections go to ``handler``; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    connections: list[socket.socket] = []

    def run() -> None:
        for _ in range(accept):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            with suppress(OSError):
                handler(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(10)
        for conn in connections:
            conn.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def connect(port: int, timeout: float | None = 5.0) -> AsyncioStream:
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=timeout)
    assert isinstance(stream, AsyncioStream)
    return stream


async def read_all(stream: httpcore.AsyncNetworkStream, max_bytes: int = 1 << 20) -> bytes:
    pieces = []
    while chunk := await stream.read(max_bytes, timeout=5.0):
        pieces.append(chunk)
    return b"".join(pieces)


async def test_reads_what_was_sent_in_order_then_empty_at_the_end() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)

    def send(conn: socket.socket) -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)

    with serving(send) as port:
        stream = await connect(port)
        assert await read_all(stream, max_bytes=100_000) == payload
        assert await stream.read(100_000) == b""
        await stream.aclose()


async def test_a_read_is_at_most_max_bytes_and_keeps_the_rest() -> None:
    def send(conn: socket.socket) -> None:
        conn.sendall(b"abcdefghij")
        conn.shutdown(socket.SHUT_WR)

    with serving(send) as port:
        stream = await connect(port)
        await anyio.sleep(0.1)  # all ten bytes queued in one chunk
        assert await stream.read(4) == b"abcd"
        assert await read_all(stream) == b"efghij"
        await stream.aclose()


async def test_a_read_without_data_times_out() -> None:
    release = threading.Event()
    with serving(lambda conn: release.wait(5)) as port:
        stream = await connect(port)
        started = time.monotonic()
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(1024, timeout=0.2)
        assert 0.15 < time.monotonic() - started < 2
        release.set()
        await stream.aclose()


async def test_a_reset_is_a_read_error_naming_the_os_error() -> None:
    def reset(conn: socket.socket) -> None:
        conn.sendall(b"partial body")
        time.sleep(0.1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    with serving(reset) as port:
        stream = await connect(port)
        assert await stream.read(1024, timeout=5) == b"partial body"
        with pytest.raises(httpcore.ReadError) as caught:
            await stream.read(1024, timeout=5)
        assert isinstance(caught.value.__cause__, ConnectionResetError)
        assert "reset" in str(caught.value).lower()
        await stream.aclose()


async def test_a_slow_reader_holds_at_most_the_buffer_limit() -> None:
    payload = os.urandom(16 * 1024 * 1024)

    def flood(conn: socket.socket) -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)

    with serving(flood) as port:
        stream = await connect(port)
        await anyio.sleep(0.5)  # the server sends as fast as it can; nobody reads
        protocol = stream._protocol
        assert protocol.reading_paused
        assert BUFFER_LIMIT <= protocol.buffered <= BUFFER_LIMIT + LARGE_READ_BYTES
        received = await read_all(stream)
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        assert not protocol.reading_paused
        await stream.aclose()


ASYNCIO_READ_BYTES = 256 * 1024
"""What asyncio's selector transports read per call (their ``max_size``)."""


async def test_reads_grow_once_one_fills_asyncios_read_size() -> None:
    """To at most what the reader asks: a bigger chunk would be split and its rest copied."""
    with serving(lambda conn: (conn.sendall(b"x"), time.sleep(1)), accept=3) as port:
        fast, slow, narrow = [await connect(port) for _ in range(3)]
        for stream, asked in ((fast, 1 << 20), (slow, 1 << 20), (narrow, 64 * 1024)):
            assert await stream.read(asked, timeout=5) == b"x"
            assert stream._transport.max_size == ASYNCIO_READ_BYTES  # type: ignore[attr-defined]
        slow._protocol.data_received(b"s" * (ASYNCIO_READ_BYTES - 1))
        fast._protocol.data_received(b"f" * ASYNCIO_READ_BYTES)  # as a full read hands it
        narrow._protocol.data_received(b"n" * ASYNCIO_READ_BYTES)
        assert slow._transport.max_size == ASYNCIO_READ_BYTES  # type: ignore[attr-defined]
        assert fast._transport.max_size == LARGE_READ_BYTES  # type: ignore[attr-defined]
        assert narrow._transport.max_size == ASYNCIO_READ_BYTES  # type: ignore[attr-defined]
        assert await fast.read(1 << 20) == b"f" * ASYNCIO_READ_BYTES
        assert await slow.read(1 << 20) == b"s" * (ASYNCIO_READ_BYTES - 1)
        for stream in (fast, slow, narrow):
            await stream.aclose()


async def test_a_fast_answer_arrives_whole_in_large_reads() -> None:
    payload = os.urandom(12 * 1024 * 1024 + 5)

    def send(conn: socket.socket) -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)

    with serving(send) as port:
        stream = await connect(port)
        sizes = []
        pieces = []
        while chunk := await stream.read(1 << 20, timeout=5.0):
            sizes.append(len(chunk))
            pieces.append(chunk)
            await anyio.sleep(0.002)  # a busy reader: the socket fills between reads
        assert b"".join(pieces) == payload
        assert max(sizes) <= LARGE_READ_BYTES
        assert stream._transport.max_size == LARGE_READ_BYTES  # type: ignore[attr-defined]
        await stream.aclose()


async def test_writing_to_a_closed_connection_is_a_write_error() -> None:
    with serving(lambda conn: conn.close()) as port:
        stream = await connect(port)
        assert await stream.read(1024, timeout=5) == b""  # the server's end
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
        await stream.aclose()


async def test_writes_reach_the_server() -> None:
    received: list[bytes] = []
    payload = os.urandom(8 * 1024 * 1024)  # more than the socket buffers: the writer waits

    def receive(conn: socket.socket) -> None:
        time.sleep(0.2)
        while data := conn.recv(1 << 20):
            received.append(data)

    with serving(receive) as port:
        stream = await connect(port)
        await stream.write(payload, timeout=10)
        await stream.aclose()
    assert b"".join(received) == payload


async def test_an_idle_connection_the_server_closed_reads_as_readable() -> None:
    closed = threading.Event()

    def close_later(conn: socket.socket) -> None:
        time.sleep(0.2)
        conn.close()
        closed.set()

    with serving(close_later) as port:
        stream = await connect(port)
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object") is None
        with anyio.fail_after(5):
            while not stream.get_extra_info("is_readable"):
                await anyio.sleep(0.02)
        assert closed.is_set()
        await stream.aclose()


async def test_refused_and_timed_out_connections_are_httpcore_errors() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(httpcore.ConnectError, match=f"Connection refused: 127.0.0.1:{port}"):
        await connect(port)
    with serving(lambda conn: None) as port, pytest.raises(httpcore.ConnectTimeout):
        await connect(port, timeout=0)


@contextmanager
def unanswered_address() -> Iterator[tuple[str, int]]:
    """A loopback address whose SYNs go unanswered: a listener with a full accept queue."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    try:
        for _ in range(4):  # Linux queues backlog + 1; the rest wait in SYN_SENT
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        time.sleep(0.1)
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_the_next_address_is_tried_after_the_happy_eyeballs_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with unanswered_address() as silent, serving(lambda conn: conn.sendall(b"hi")) as port:

        async def addresses(host: str, port_: int) -> list[tuple[int, tuple[Any, ...]]]:
            return [(socket.AF_INET, silent), (socket.AF_INET, ("127.0.0.1", port))]

        monkeypatch.setattr(asyncio_stream, "_addresses", addresses)
        fds = open_fds()
        started = time.monotonic()
        stream = await AsyncioBackend().connect_tcp("archive.example", port, timeout=5)
        took = time.monotonic() - started
        assert asyncio_stream.HAPPY_EYEBALLS_DELAY <= took < 2
        assert await stream.read(16, timeout=5) == b"hi"
        assert open_fds() == fds + 2  # ours and the server's: the unanswered one is closed
        await stream.aclose()


async def test_a_cancelled_connection_leaves_no_socket_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with unanswered_address() as silent:

        async def addresses(host: str, port_: int) -> list[tuple[int, tuple[Any, ...]]]:
            return [(socket.AF_INET, silent), (socket.AF_INET, silent)]

        monkeypatch.setattr(asyncio_stream, "_addresses", addresses)
        fds = open_fds()
        with anyio.move_on_after(0.4):  # both attempts under way
            await AsyncioBackend().connect_tcp("archive.example", silent[1], timeout=5)
        assert open_fds() == fds
        gc.collect()  # an unclosed socket would warn here (warnings are errors)


async def test_aclose_closes_the_socket_before_it_returns() -> None:
    with serving(lambda conn: time.sleep(0.3)) as port:
        stream = await connect(port)
        sock = stream.get_extra_info("socket")
        assert sock.fileno() >= 0
        await stream.aclose()
        assert sock.fileno() == -1
        await stream.aclose()  # twice is harmless


async def test_tls_through_start_tls(authority: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)

    def serve_tls(conn: socket.socket) -> None:
        with server_context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(tls.recv(100).upper())

    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with serving(serve_tls) as port:
        stream = await connect(port)
        tls_stream = await stream.start_tls(client_context, "localhost", timeout=5)
        assert tls_stream.get_extra_info("ssl_object") is not None
        await tls_stream.write(b"hello over tls", timeout=5)
        assert await tls_stream.read(100, timeout=5) == b"HELLO OVER TLS"
        sock = tls_stream.get_extra_info("socket")
        await tls_stream.aclose()
        assert sock.fileno() == -1


async def test_a_certificate_that_does_not_verify_is_a_connect_error(
    authority: trustme.CA,
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)

    def serve_tls(conn: socket.socket) -> None:
        with server_context.wrap_socket(conn, server_side=True) as tls:  # pragma: no cover
            tls.recv(1)

    with serving(serve_tls) as port:
        stream = await connect(port)
        sock = stream.get_extra_info("socket")
        with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await stream.start_tls(ssl.create_default_context(), "localhost", timeout=5)
        await stream.aclose()
        assert sock.fileno() == -1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_transport_uses_it_under_asyncio_only(anyio_backend: str) -> None:
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    def answer(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(body)

    with serving(answer) as port:
        async with httpx.AsyncClient(transport=KheopsTransport()) as client:
            async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                assert await response.aread() == b"ok"
                stream = response.extensions["network_stream"]
                inner = stream._inner
                assert isinstance(inner, AsyncioStream) == (anyio_backend == "asyncio")


# ---------------------------------------------------------------- found by a review (ea25d23)


async def test_running_out_of_file_descriptors_is_a_connect_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_more_sockets(*args: Any) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(asyncio_stream.socket, "socket", no_more_sockets)
    with pytest.raises(httpcore.ConnectError, match=r"Too many open files: 127\.0\.0\.1:9"):
        await AsyncioBackend().connect_tcp("127.0.0.1", 9, timeout=5)


async def test_a_tls_handshake_with_no_time_left_is_a_connect_timeout() -> None:
    with serving(lambda conn: time.sleep(0.5)) as port:
        stream = await connect(port)
        sock = stream.get_extra_info("socket")
        with pytest.raises(httpcore.ConnectTimeout):
            await stream.start_tls(ssl.create_default_context(), "localhost", timeout=0)
        await stream.aclose()
        assert sock.fileno() == -1


@pytest.mark.parametrize("loop_has_read_it", [True, False])
async def test_tls_on_a_connection_the_server_closed_fails_at_once(loop_has_read_it: bool) -> None:
    with serving(lambda conn: conn.close()) as port:
        stream = await connect(port)
        await bytes_arrived(stream, loop_has_read_it)
        started = time.monotonic()
        with pytest.raises(httpcore.ConnectError, match="closed the connection before TLS"):
            await stream.start_tls(ssl.create_default_context(), "localhost", timeout=5)
        assert time.monotonic() - started < 1


@pytest.mark.parametrize("loop_has_read_it", [True, False])
async def test_plain_bytes_received_before_tls_never_come_out_of_the_tls_stream(
    loop_has_read_it: bool,
) -> None:
    with serving(
        lambda conn: (conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nforged"), time.sleep(1))
    ) as port:
        stream = await connect(port)
        await bytes_arrived(stream, loop_has_read_it)
        with pytest.raises(httpcore.ConnectError, match="data before the TLS handshake"):
            await stream.start_tls(ssl.create_default_context(), "localhost", timeout=5)


async def bytes_arrived(stream: httpcore.AsyncNetworkStream, loop_has_read_it: bool) -> None:
    """Wait until the server's bytes (or end) reached us: handed to the stream, or not yet.

    Blocking the loop keeps what arrived in the socket, the race a busy loop makes.
    """
    if loop_has_read_it:
        with anyio.fail_after(5):
            while not stream.get_extra_info("is_readable"):
                await anyio.sleep(0.02)
        await anyio.sleep(0.05)  # the loop's reader runs after the poll saw the bytes
    else:
        time.sleep(0.3)  # blocks: the point is that the loop does not run


async def test_a_pooled_connection_closed_while_the_loop_was_busy_is_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def answer_then_close(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(answer)
        time.sleep(0.1)
        conn.close()  # the server ends the idle keep-alive connection

    def just_answer(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(answer)

    handlers = iter([answer_then_close, just_answer])
    with serving(lambda conn: next(handlers)(conn), accept=2) as port:
        async with httpcore.AsyncConnectionPool(network_backend=AsyncioBackend()) as pool:
            url = f"http://127.0.0.1:{port}/"
            assert (await pool.request("GET", url)).content == b"ok"
            time.sleep(0.3)  # busy in Python: the server's end arrives, the loop does not run
            second = await pool.request("GET", url, extensions={"timeout": {"read": 5}})
            assert second.content == b"ok"


async def test_reading_or_writing_after_close_is_an_error() -> None:
    with serving(lambda conn: time.sleep(0.3)) as port:
        stream = await connect(port)
        await stream.aclose()
        with pytest.raises(httpcore.ReadError):
            await stream.read(10)
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"x")


async def test_a_close_by_another_task_during_a_read_is_a_read_error() -> None:
    """Not an end of the body the peer sent (a pool closed while a download reads)."""
    with serving(lambda conn: time.sleep(1)) as port:
        stream = await connect(port)

        async def close_soon() -> None:
            await anyio.sleep(0.1)
            await stream.aclose()

        async with anyio.create_task_group() as group:
            group.start_soon(close_soon)
            with anyio.fail_after(5), pytest.raises(httpcore.ReadError, match="while reading"):
                await stream.read(10)


async def test_a_local_address_only_tries_the_addresses_of_its_family(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serving(lambda conn: conn.sendall(b"v4")) as port:

        async def addresses(host: str, port_: int) -> list[tuple[int, tuple[Any, ...]]]:
            return [(socket.AF_INET6, ("::1", port)), (socket.AF_INET, ("127.0.0.1", port))]

        monkeypatch.setattr(asyncio_stream, "_addresses", addresses)
        started = time.monotonic()
        stream = await AsyncioBackend().connect_tcp(
            "archive.example", port, timeout=5, local_address="127.0.0.1"
        )
        assert time.monotonic() - started < asyncio_stream.HAPPY_EYEBALLS_DELAY
        assert await stream.read(16, timeout=5) == b"v4"
        await stream.aclose()
