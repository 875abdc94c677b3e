"""An httpcore network stream on asyncio's own transport and protocol, for the asyncio loop.

Why it exists: under asyncio, httpcore's only backend goes through anyio's socket
stream, and every read pays for it: a cancel scope for the timeout, a checkpoint, an
``epoll_ctl`` to resume reading before the wait and another to pause after it, then
httpcore's exception mapping. A download makes thousands of reads and hundreds of
connections, so that is CPU the engine does not have. Measured on the 4,000 instances
of 76 KB from Orthanc (S2, the library in one process, 9 interleaved rounds): a median
3.33 s with anyio's stream, 2.88 s with this one; CPU 3.10 -> 2.75 s.

What it does instead:

- the connection is opened as anyio opens it (the host's addresses tried in turn, the
  next one started after :data:`HAPPY_EYEBALLS_DELAY` or at the previous one's failure,
  RFC 8305), with no resolver thread for a numeric address, then given to
  ``loop.create_connection``. (asyncio's own ``happy_eyeballs_delay`` is not used: in
  Python 3.11 a cancelled attempt can leave its socket to the garbage collector);
- its protocol keeps what the loop receives in a queue, up to :data:`BUFFER_LIMIT`
  bytes, then pauses reading until the reader catches up, so a connection holds at most
  that much (plus the read that crossed it) whatever the server sends;
- the loop reads the socket 256 KiB at a time (asyncio's selector transports), and up to
  :data:`LARGE_READ_BYTES` (no more than the reader asks per read) once a read has
  filled that: a fast answer then takes a quarter of the reads (S1's 105 MB: 405 reads,
  111 with this), each of which costs the loop an iteration, a callback and a wakeup;
- :meth:`AsyncioStream.read` hands out the queued chunks as they came (no copy), or
  waits for one; a timeout is a timer on that wait, not a cancel scope;
- errors become httpcore's (``ConnectError``, ``ReadError``, ``WriteTimeout``...), with
  the operating system's error as their cause, as httpcore's own backends raise them.

Nothing global is changed: :class:`AsyncioBackend` is given to the pools of
:class:`~kheops_async.transport.KheopsTransport` only. Under trio, httpcore's trio
backend (which reads the socket directly) is used instead.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import select
import socket
import ssl
import weakref
from asyncio import sslproto
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore

__all__ = [
    "BUFFER_LIMIT",
    "HAPPY_EYEBALLS_DELAY",
    "LARGE_READ_BYTES",
    "AsyncioBackend",
    "AsyncioStream",
]

BUFFER_LIMIT = 1024 * 1024
"""Bytes received and not yet read past which a connection stops reading the socket."""
LARGE_READ_BYTES = 1024 * 1024
"""What the loop asks the socket for per read once a read has filled asyncio's own size.

Measured on S1 (200 parts of 525 KB, the library in one process, 14 interleaved pairs):
a median 0.207 s with asyncio's 256 KiB reads, 0.199 s with this; on the 560-instance
archive 0.357 -> 0.351 s. A connection whose reads never fill 256 KiB (a slow link, small
answers) keeps asyncio's size, and the allocations that go with it. The size is the
``max_size`` attribute that CPython's selector transports read at each ``recv``; a loop
whose transports have none (uvloop) keeps its own, and TLS transports are left alone."""
HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next address of a host is tried in parallel (anyio's value, RFC 8305)."""

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)
"""One ``setsockopt`` call's arguments, as httpcore passes them."""


_TRANSPORT_INFO = {
    "ssl_object": "ssl_object",
    "socket": "socket",
    "client_addr": "sockname",
    "server_addr": "peername",
}
"""httpcore's names for a connection's details, and asyncio's."""


class _ReceivingProtocol(asyncio.Protocol):
    """Queues what the loop receives and wakes the one reader waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.reading_paused = False
        self.eof = False
        self.lost = False
        """Whether the transport has reported its end (its socket is then closed)."""
        self.error: BaseException | None = None
        self.readable = _Wakeup()
        """Wakes the reader waiting for data or the end."""
        self._read_size: int | None = None
        """The loop's read size (asyncio's selector transports: ``max_size``) while it may
        still grow to :data:`LARGE_READ_BYTES`; ``None`` once grown, or with none to grow."""
        self.largest_read = 0
        """The most the reader has asked for in one read: the loop's reads grow no larger
        (a chunk bigger than the reader takes would be split, and its rest copied)."""
        self.writing_paused = False
        self.writable = _Wakeup()
        """Wakes the writer waiting for room in the send buffer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._read_size = getattr(transport, "max_size", None)

    def data_received(self, data: bytes) -> None:
        if self._read_size is not None and len(data) >= self._read_size and self.largest_read:
            self._read_size = None  # a fast answer: read it in larger pieces from now on
            larger = min(LARGE_READ_BYTES, self.largest_read)
            if larger > len(data) and isinstance(getattr(self.transport, "max_size", None), int):
                self.transport.max_size = larger  # type: ignore[union-attr]  # (not under TLS)
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= BUFFER_LIMIT and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self.readable.wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.readable.wake()
        return False  # close the transport: HTTP/1.1 has no use for a half-open one

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        if exc is not None:
            self.error = exc
        self.readable.wake()
        self.writable.wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.writable.wake()

    def take(self, max_bytes: int) -> bytes:
        """The oldest queued chunk (at most ``max_bytes`` of it); resumes reading if due."""
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered < BUFFER_LIMIT and not self.eof:
            self.reading_paused = False  # (after the end there is nothing left to read:
            if self.transport:  # Python 3.10's TLS transport fails if asked to resume)
                self.transport.resume_reading()
        return chunk


class _Wakeup:
    """Where one task waits for news from the protocol (a timer, not a cancel scope)."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Wake the waiting task, if any."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until :meth:`wake`; ``TimeoutError`` after ``timeout`` seconds (``None``: never)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection: reads hand out what the protocol queued (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, protocol: _ReceivingProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """The next bytes received (at most ``max_bytes``), ``b""`` once the peer closed.

        Raises ``httpcore.ReadTimeout`` after ``timeout`` seconds without data and
        ``httpcore.ReadError`` when the connection broke (the OS error is the cause) or
        was closed on this side, before or during the read.
        """
        protocol = self._protocol
        if max_bytes > protocol.largest_read:
            protocol.largest_read = max_bytes
        if self._closed:
            raise httpcore.ReadError("the connection is closed")
        if not protocol.chunks and not protocol.eof:
            try:
                await protocol.readable.wait(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no data received in {timeout} s") from None
            if self._closed:  # by another task meanwhile: not the peer's end
                raise httpcore.ReadError("the connection was closed while reading")
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore.ReadError(str(protocol.error)) from protocol.error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send ``buffer``; waits while the socket's send buffer is full.

        Raises ``httpcore.WriteError`` on a closed connection and
        ``httpcore.WriteTimeout`` when the buffer stays full for ``timeout`` seconds.
        """
        if not buffer:
            return
        protocol = self._protocol
        if self._closed or protocol.lost or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed") from protocol.error
        self._transport.write(buffer)
        while protocol.writing_paused and not protocol.lost and not self._transport.is_closing():
            try:
                await protocol.writable.wait(timeout)
            except TimeoutError:
                raise httpcore.WriteTimeout(f"could not send for {timeout} s") from None
        if protocol.error is not None:
            raise httpcore.WriteError(str(protocol.error)) from protocol.error

    async def aclose(self) -> None:
        """Close the connection, its socket included, before returning.

        asyncio closes a transport's socket in a callback of the next loop iteration,
        and a loop that ends first (``asyncio.run`` returning) never runs it: the
        socket would then be left to the garbage collector. So one iteration is let
        run, then the transport is aborted (as anyio's stream does), and under TLS, whose
        layer closes the socket one iteration later still, one more.
        """
        self._closed = True
        transport = self._transport
        transport.close()
        if self._protocol.lost:
            return
        try:
            await asyncio.sleep(0)
        finally:
            transport.abort()
        if not self._protocol.lost:
            await asyncio.sleep(0)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """This connection wrapped in TLS; raises ``httpcore.ConnectError`` / ``ConnectTimeout``."""
        protocol = self._protocol
        pending = _peek_socket(self._transport)  # what the loop may not have read yet
        if protocol.eof or self._transport.is_closing() or pending == b"":
            self._transport.abort()
            raise httpcore.ConnectError("the server closed the connection before TLS")
        if protocol.chunks or pending:  # plain bytes must never come out of the TLS stream
            self._transport.abort()
            raise httpcore.ConnectError("the server sent data before the TLS handshake")
        loop = asyncio.get_running_loop()
        _pass_inner_tls_errors_on(self._transport)
        try:
            with anyio.fail_after(timeout):  # (asyncio's own handshake timeout refuses 0)
                transport = await loop.start_tls(
                    self._transport, protocol, ssl_context, server_hostname=server_hostname
                )
        except BaseException as exc:  # cancelled too: no half-made TLS connection is left
            self._transport.abort()
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout(f"TLS handshake not done in {timeout} s") from None
            if isinstance(exc, OSError):  # ssl.SSLError is one
                raise httpcore.ConnectError(str(exc)) from exc
            if isinstance(exc, TypeError):  # a transport asyncio cannot wrap in TLS
                raise httpcore.ConnectError(
                    "this event loop cannot start TLS on this connection (TLS inside TLS, "
                    "for an https:// server through an https:// proxy, needs Python 3.11 "
                    "or later under asyncio)"
                ) from exc
            raise
        assert isinstance(transport, asyncio.Transport)
        self._protocol.transport = transport  # flow control now goes through the TLS layer
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        """``ssl_object``, ``client_addr``, ``server_addr``, ``socket``, or ``is_readable``.

        ``is_readable`` is true once the connection has data or an end waiting, received
        or still in the socket (polled, as httpcore's own backends do): an idle
        connection the server closed, which httpcore then drops from its pool.
        """
        if info == "is_readable":
            protocol = self._protocol
            return bool(protocol.chunks) or protocol.eof or _socket_readable(self._transport)
        name = _TRANSPORT_INFO.get(info)
        return self._transport.get_extra_info(name) if name is not None else None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens :class:`AsyncioStream` TCP connections (asyncio only: the caller chooses).

    No Unix sockets: the transport never asks for one (httpcore's base class refuses).
    """

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A TCP connection to ``host:port``; ``httpcore.ConnectError`` / ``ConnectTimeout``."""
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeout):
                sock = await _connected_socket(host, port, local_address)
                try:
                    for option in socket_options or ():
                        sock.setsockopt(*option)
                    transport, protocol = await loop.create_connection(
                        _ReceivingProtocol, sock=sock
                    )
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            message = f"no connection to {host}:{port} in {timeout} s"
            raise httpcore.ConnectTimeout(message) from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected_socket(host: str, port: int, local_address: str | None) -> socket.socket:
    """A non-blocking socket connected to ``host:port`` (see the module docstring).

    Raises the ``OSError`` of the only address tried, or one naming every failure.
    """
    targets = await _addresses(host, port)
    if local_address:  # only the addresses it can reach
        local_family = _family(ipaddress.ip_address(local_address))
        targets = [target for target in targets if target[0] == local_family] or targets
    winner: socket.socket | None = None
    failures: list[OSError] = []

    async def attempt(family: int, address: tuple[Any, ...], failed: anyio.Event) -> None:
        nonlocal winner
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # out of file descriptors, say
            failures.append(_named(exc, address))
            failed.set()
            return
        try:
            sock.setblocking(False)
            if local_address:
                sock.bind((local_address, 0))
            await asyncio.get_running_loop().sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failures.append(_named(exc, address))
            failed.set()
            return
        except BaseException:
            sock.close()
            raise
        if winner is not None:  # pragma: no cover - two attempts done in one iteration
            sock.close()
            return
        winner = sock
        group.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            for family, address in targets:
                failed = anyio.Event()
                group.start_soon(attempt, family, address, failed)
                with anyio.move_on_after(HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    if winner is not None:
        return winner
    if len(failures) == 1:
        raise failures[0]
    raise OSError(f"every address of {host} failed: " + "; ".join(map(str, failures)))


def _named(error: OSError, address: tuple[Any, ...]) -> OSError:
    """``error`` saying what failed and where ("Connection refused: 10.0.0.5:8042").

    asyncio's own message ("Connect call failed ('10.0.0.5', 8042)") hides the reason.
    """
    if not error.errno:
        return error
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    reason = os.strerror(error.errno) if error.errno > 0 else error.strerror or str(error)
    named = type(error)(error.errno, f"{reason}: {host}:{address[1]}")
    named.__cause__ = error
    return named


async def _addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """``(family, socket address)`` to try, IPv6 and IPv4 alternating as RFC 8305 asks."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [(_family(literal), (str(literal), port))]
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    by_family: dict[int, list[tuple[int, tuple[Any, ...]]]] = {}
    for family, _, _, _, address in found:
        by_family.setdefault(family, []).append((family, address))
    queues = list(by_family.values())
    ordered: list[tuple[int, tuple[Any, ...]]] = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


def _family(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _inner_tls_errors_are_lost() -> bool:
    """Whether this CPython has gh-113214 (see :func:`_pass_inner_tls_errors_on`)."""
    if not hasattr(sslproto, "SSLProtocolState"):
        return False  # before 3.11: start_tls refuses a TLS transport anyway
    abort = getattr(getattr(sslproto, "SSLProtocol", None), "_abort", None)
    code = getattr(abort, "__code__", None)
    return getattr(code, "co_argcount", 2) == 1  # fixed versions' _abort takes the error


_INNER_TLS_ERRORS_ARE_LOST = _inner_tls_errors_are_lost()


def _pass_inner_tls_errors_on(outer: asyncio.Transport) -> None:
    """Let a TLS failure inside ``outer``'s TLS reach ``start_tls``, on the Pythons where it cannot.

    In CPython 3.11.0-3.11.7 and 3.12.0-3.12.1 (gh-113214; fixed by python/cpython#113334
    in 3.11.8 and 3.12.2), a TLS layer wrapped in another reports its fatal errors (a
    certificate the client does not trust, a failed handshake, a shutdown timeout) through
    the outer TLS transport's ``_force_close(exc)``, which passes ``exc`` to a method that
    takes none. The TypeError this raises comes out of the inner layer's error handling
    before the handshake's waiter is told: ``start_tls`` failed with that TypeError (which
    reads as a loop that cannot do TLS inside TLS), the loop's exception handler got the
    errors, and the certificate error was never shown
    (``test_an_untrusted_server_behind_an_https_proxy_is_a_certificate_error`` fails so
    without this). On those versions, this connection's own outer transport (an https://
    proxy's TLS, nothing shared) gets the ``_force_close`` of the fixed versions: the outer
    layer is unwrapped and its socket closed with the error. The inner layer's error
    handling then goes on to hand the error to the waiter, and ``start_tls`` raises it.
    The replacement holds its transport weakly, so the transport stays free of cycles.
    """
    if not _INNER_TLS_ERRORS_ARE_LOST or not isinstance(outer, sslproto._SSLProtocolTransport):
        return
    internals: Any = sslproto  # typeshed's stubs predate these internals
    weak_outer = weakref.ref(outer)

    def force_close(exc: BaseException | None) -> None:  # 3.11.8's, with its _abort(exc)
        transport: Any = weak_outer()
        if transport is None:
            return
        transport._closed = True
        layer = transport._ssl_protocol
        if layer is not None:
            layer._set_state(internals.SSLProtocolState.UNWRAPPED)
            if layer._transport is not None:
                layer._transport._force_close(exc)

    patched: Any = outer  # this transport only, not its class
    patched._force_close = force_close


def _peek_socket(transport: asyncio.Transport) -> bytes | None:
    """The socket's next unread byte, ``b""`` at its end, ``None`` if nothing is waiting.

    Looks without taking (``MSG_PEEK``), on a duplicate of the descriptor: asyncio's
    socket wrapper deprecates ``recv``. A reset counts as the end.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return b""
    with socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno())) as twin:
        try:
            return twin.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            return b""


def _socket_readable(transport: asyncio.Transport) -> bool:
    """Whether the connection's socket has bytes or an end the loop has not yet handed over."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))
