"""Our HTTP/1.1 connections (kheops_async/http11.py), against raw answers on loopback.

A thread on 127.0.0.1 reads each request's head and writes the bytes a test scripts,
so framing, keep-alive and early ends can be exactly what the test says. Requests go
through :class:`KheopsTransport` under httpx, as the client sends them, on both
event loops.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore
import httpx
import pytest

from kheops_async.http11 import Http11Connection
from kheops_async.transport import KheopsTransport

pytestmark = pytest.mark.anyio

Answer = bytes | Callable[[socket.socket, bytes], None]
"""Bytes to send for one request, or a function answering on the socket itself (given
what was already read after the request's head)."""


@dataclass
class ScriptedServer:
    """Answers the n-th request (over all connections) with ``answers[n]``."""

    answers: Sequence[Answer]
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def scripted(*answers: Answer) -> Iterator[ScriptedServer]:
    """A loopback server giving ``answers`` in order; a connection ends when one closes it."""
    server = ScriptedServer(answers)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    server.port = listener.getsockname()[1]
    opened: list[socket.socket] = []

    def serve_connection(conn: socket.socket) -> None:
        buffered = b""
        while len(server.requests) < len(answers):
            while b"\r\n\r\n" not in buffered:
                data = conn.recv(65536)
                if not data:
                    return
                buffered += data
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            server.requests.append(head)
            answer = answers[len(server.requests) - 1]
            if callable(answer):
                answer(conn, buffered)
                return
            conn.sendall(answer)

    def run() -> None:
        while len(server.requests) < len(answers):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            server.connections += 1
            opened.append(conn)
            with suppress(OSError):
                serve_connection(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        listener.close()
        for conn in opened:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        thread.join(10)


def ok(body: bytes, *headers: str, version: str = "1.1") -> bytes:
    """A 200 answer with ``Content-Length`` (unless a header sets the framing)."""
    lines = [f"HTTP/{version} 200 OK", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def closing(payload: bytes) -> Callable[[socket.socket, bytes], None]:
    """An answer that writes ``payload``, then closes the connection."""

    def answer(conn: socket.socket, _: bytes) -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.2)  # let the client read to the end before the close
        conn.close()

    return answer


@contextmanager
def client_of(
    server: ScriptedServer, timeout: httpx.Timeout | None = None
) -> Iterator[httpx.AsyncClient]:
    """An httpx client of ``server`` over :class:`KheopsTransport` (5 s timeouts)."""
    transport = KheopsTransport(trust_env=False)
    timeout = timeout or httpx.Timeout(5.0)
    yield httpx.AsyncClient(base_url=server.url, transport=transport, timeout=timeout)


async def body_of(client: httpx.AsyncClient, path: str = "/", method: str = "GET") -> bytes:
    async with client.stream(method, path) as response:
        return b"".join([chunk async for chunk in response.aiter_raw()])


async def test_a_length_framed_body_and_the_connection_kept_alive() -> None:
    bodies = [b"first" * 1000, b"x", b"third" * 300_000]
    with scripted(*(ok(body) for body in bodies)) as server, client_of(server) as client:
        async with client:
            assert [await body_of(client) for _ in bodies] == bodies
    assert server.connections == 1


async def test_bytes_beyond_the_length_are_not_given_and_the_connection_is_not_reused() -> None:
    with scripted(ok(b"12345") + b"garbage", ok(b"again")) as server, client_of(server) as client:
        async with client:
            assert await body_of(client) == b"12345"
            assert await body_of(client) == b"again"
    assert server.connections == 2


async def test_a_body_that_ends_with_the_connection() -> None:
    big = bytes(range(256)) * 20_000
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: multipart/related\r\n\r\n"
    with scripted(closing(head + big), ok(b"next")) as server, client_of(server) as client:
        async with client:
            assert await body_of(client) == big
            assert await body_of(client) == b"next"
    assert server.connections == 2


async def test_a_chunked_body_goes_through_h11_and_keeps_the_connection() -> None:
    chunked = ok(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "Transfer-Encoding: chunked")
    with scripted(chunked, ok(b"two")) as server, client_of(server) as client:
        async with client:
            assert await body_of(client) == b"hello world"
            assert await body_of(client) == b"two"
    assert server.connections == 1


@pytest.mark.parametrize(
    ("framing", "sent", "error"),
    [
        ("Content-Length: 1000", b"a" * 300, "received 300 bytes, expected 1000"),
        ("Transfer-Encoding: chunked", b"10\r\nabc", "incomplete chunked read"),
    ],
    ids=["length", "chunked"],
)
async def test_a_body_cut_short_is_an_error(framing: str, sent: bytes, error: str) -> None:
    head = f"HTTP/1.1 200 OK\r\n{framing}\r\n\r\n".encode()
    with scripted(closing(head + sent)) as server, client_of(server) as client:
        async with client:
            with pytest.raises(httpx.RemoteProtocolError, match=error):
                await body_of(client)


@pytest.mark.parametrize(
    "answer",
    [ok(b"bye", "Connection: close"), ok(b"bye", version="1.0")],
    ids=["connection-close", "http-1.0"],
)
async def test_no_reuse_when_the_server_says_so(answer: bytes) -> None:
    with scripted(answer, ok(b"next")) as server, client_of(server) as client:
        async with client:
            assert await body_of(client) == b"bye"
            assert await body_of(client) == b"next"
    assert server.connections == 2


async def test_no_reuse_when_the_request_says_so() -> None:
    with scripted(ok(b"one"), ok(b"two")) as server, client_of(server) as client:
        async with client:
            response = await client.get("/", headers={"Connection": "close"})
            assert response.content == b"one"
            assert (await client.get("/")).content == b"two"
    assert server.connections == 2
    assert b"connection: close" in server.requests[0].lower()


@pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")  # httpx's, under trio
async def test_a_body_left_unread_closes_the_connection() -> None:
    """Left early (an error in the caller): httpx's nested body iterators are left to the
    garbage collector, which trio reports; the connection itself is closed at once."""
    with scripted(ok(b"z" * 2_000_000), ok(b"next")) as server, client_of(server) as client:
        async with client:
            async with client.stream("GET", "/") as response:
                async with aclosing(response.aiter_raw()) as chunks:
                    async for _ in chunks:
                        break
            assert await body_of(client) == b"next"
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    with scripted(closing(ok(b"one")), ok(b"two")) as server, client_of(server) as client:
        async with client:
            assert await body_of(client) == b"one"
            await anyio.sleep(0.3)  # the server's close has arrived
            assert await body_of(client) == b"two"
    assert server.connections == 2


async def test_a_server_that_closes_without_answering() -> None:
    with scripted(closing(b"")) as server, client_of(server) as client:
        async with client:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.get("/")


async def test_a_malformed_status_line_is_a_protocol_error() -> None:
    with scripted(closing(b"HTTP/1.1 OK-ish\r\n\r\n")) as server, client_of(server) as client:
        async with client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")


async def test_answers_without_a_body_keep_the_connection() -> None:
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    answers = (head_answer, no_content, ok(b"last"))
    with scripted(*answers) as server, client_of(server) as client:
        async with client:
            response = await client.head("/")
            assert response.headers["content-length"] == "12345" and response.content == b""
            response = await client.get("/")
            assert response.status_code == 204 and response.content == b""
            assert (await client.get("/")).content == b"last"
    assert server.connections == 1


async def test_an_informational_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")
    with scripted(answer) as server, client_of(server) as client:
        async with client:
            response = await client.get("/")
    assert (response.status_code, response.content) == (200, b"final")
    assert response.http_version == "HTTP/1.1" and response.reason_phrase == "OK"


async def test_a_request_body_is_sent_whole() -> None:
    received: list[bytes] = []

    def read_body(conn: socket.socket, data: bytes) -> None:
        while len(data) < 3_000_000:
            data += conn.recv(1 << 20)
        received.append(data)
        conn.sendall(ok(b"thanks", "Connection: close"))

    with scripted(read_body) as server, client_of(server) as client:
        async with client:
            payload = bytes(range(256)) * 11_719  # about 3 MB
            response = await client.post("/", content=payload[:3_000_000])
    assert response.content == b"thanks"
    assert received[0] == payload[:3_000_000]
    assert b"content-length: 3000000" in server.requests[0].lower()


def stalling(payload: bytes) -> Callable[[socket.socket, bytes], None]:
    """An answer that writes ``payload``, then neither sends nor closes for 2 s."""

    def answer(conn: socket.socket, _: bytes) -> None:
        conn.sendall(payload)
        time.sleep(2)

    return answer


async def test_a_stalled_body_times_out() -> None:
    stalled = stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with (
        scripted(stalled) as server,
        client_of(server, timeout=httpx.Timeout(5.0, read=0.3)) as client,
    ):
        async with client:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await body_of(client)
            assert time.monotonic() - started < 1.5


async def test_a_cancelled_read_closes_the_connection() -> None:
    slow = stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    with scripted(slow, ok(b"after")) as server, client_of(server) as client:
        async with client:
            with anyio.move_on_after(0.3) as scope:
                await body_of(client)
            assert scope.cancelled_caught
            assert await body_of(client) == b"after"
    assert server.connections == 2


def test_a_new_connection_reports_its_state() -> None:
    origin = httpcore.URL("http://127.0.0.1:1/").origin
    connection = Http11Connection(origin, httpcore.AnyIOBackend())
    assert not connection.is_available() and not connection.is_idle()
    assert not connection.is_closed() and not connection.has_expired()
    assert connection.can_handle_request(origin)
    assert not connection.can_handle_request(httpcore.URL("http://127.0.0.1:2/").origin)
    assert repr(connection) == (
        "<Http11Connection ['http://127.0.0.1:1', HTTP/1.1, NEW, Request Count: 0]>"
    )


class WritesFail(httpcore.AsyncNetworkStream):
    """A stream whose writes fail (the server hung up its reading side) but which
    still reads out an answer the server sent early."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        answer, self._answer = self._answer, b""
        return answer

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        raise httpcore.WriteError("[Errno 32] Broken pipe")

    async def aclose(self) -> None:
        pass

    def get_extra_info(self, info: str) -> object:
        return None


class OneStream(httpcore.AsyncNetworkBackend):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def connect_tcp(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        return self._stream


async def test_an_early_answer_to_a_request_not_sent_whole_is_read_and_not_kept() -> None:
    unauthorized = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
    url = httpcore.URL("http://127.0.0.1:1/")
    connection = Http11Connection(url.origin, OneStream(WritesFail(unauthorized)))
    response = await connection.handle_async_request(
        httpcore.Request(b"POST", url, headers=[(b"Host", b"127.0.0.1")], content=b"x" * 100)
    )
    assert response.status == 401
    await response.aread()
    await response.aclose()
    assert connection.is_closed() and not connection.is_available()


async def test_an_upgrade_is_refused_clearly() -> None:
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    with scripted(closing(switching)) as server, client_of(server) as client:
        async with client:
            headers = {"Connection": "Upgrade", "Upgrade": "websocket"}
            with pytest.raises(
                httpx.RemoteProtocolError,
                match=r"upgrades \(101 Switching Protocols\) are not supported",
            ):
                await client.get("/", headers=headers)


async def test_a_streamed_request_body_is_written_as_it_comes() -> None:
    heard: list[bytes] = []
    head_arrived = threading.Event()

    def listen(conn: socket.socket, data: bytes) -> None:
        head_arrived.set()
        while not data.endswith(b"0\r\n\r\n"):  # chunked: the producer's length is unknown
            data += conn.recv(65536)
        heard.append(data)
        conn.sendall(ok(b"done", "Connection: close"))

    async def producer() -> AsyncIterator[bytes]:
        yield b"first,"
        with anyio.fail_after(5):  # the head and the first piece are out before the rest
            while not head_arrived.is_set():
                await anyio.sleep(0.01)
        yield b"last"

    with scripted(listen) as server, client_of(server) as client:
        async with client:
            response = await client.post("/", content=producer())
    assert response.content == b"done"
    assert heard == [b"6\r\nfirst,\r\n4\r\nlast\r\n0\r\n\r\n"]


async def test_the_transport_read_size_is_what_the_socket_is_asked() -> None:
    asked: list[int] = []
    with scripted(ok(b"y" * 3_000_000)) as server:
        transport = KheopsTransport(trust_env=False, read_size=256 * 1024)
        backend = transport._backend
        original = backend.connect_tcp

        async def connect_tcp(*args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
            stream = await original(*args, **kwargs)
            inner = stream._inner  # type: ignore[attr-defined]
            read = inner.read

            async def counted(max_bytes: int, timeout: float | None = None) -> bytes:
                asked.append(max_bytes)
                return await read(max_bytes, timeout)

            inner.read = counted
            return stream

        backend.connect_tcp = connect_tcp  # type: ignore[method-assign]
        async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
            assert len((await client.get("/")).content) == 3_000_000
    assert asked and set(asked) == {256 * 1024}
