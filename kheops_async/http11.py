"""HTTP/1.1 connections whose response bodies are read past h11, direct or via a proxy.

Why it exists: on the 200 x 525 KB series, with the stream of
:mod:`~kheops_async.asyncio_stream` under it, h11's receive buffer and events and
httpcore's generators, traces and exception mapping around each chunk took about a
third of the engine's CPU (py-spy, ``benchmarks/RESULTS.md``). Here h11 still writes
the request and parses the status line and the headers, which is where HTTP's rules
are subtle; then a body framed by ``Content-Length``, or by the end of the connection
(Orthanc's WADO-RS answers), is handed over as the network stream's own chunks, with
no copy and one generator. Everything else (chunked bodies, ``HEAD``, 204, 304) still
goes through h11, event by event, as in httpcore.

:class:`DirectConnectionPool` is httpcore's pool with :meth:`create_connection`
returning :class:`Http11Connection`: the pool's queueing, limits, keep-alive expiry
and error handling are httpcore's. Behind an HTTP proxy, :class:`TunnelConnectionPool`
does the same for ``https://`` origins, each :class:`TunnelConnection` opening a
``CONNECT`` tunnel and running an :class:`Http11Connection` inside it, and
:class:`ForwardConnectionPool` for ``http://`` origins, each :class:`ForwardConnection`
sending its requests to the proxy in absolute form. No HTTP/2, no upgrades, no
``trace`` extension.

A connection is reused only after a complete answer with keep-alive (HTTP/1.1, no
``Connection: close`` either way, RFC 9112 section 9.3), with its request fully
sent and no byte beyond the answer; any other end closes it.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import anyio
import h11
import httpcore

__all__ = [
    "DirectConnectionPool",
    "ForwardConnection",
    "ForwardConnectionPool",
    "Http11Connection",
    "ProxyConnectionPool",
    "TunnelConnection",
    "TunnelConnectionPool",
]

READ_BYTES = 64 * 1024
"""Asked of the network stream per read, as httpcore asks: the transport's stream
reads its own ``read_size`` (1 MiB) whatever is asked, and gives what it has."""

MAX_HEAD_BYTES = 100 * 1024
"""The longest status line and headers accepted (httpcore's limit)."""

_NEW, _ACTIVE, _IDLE, _CLOSED = range(4)
_STATE_NAMES = ("NEW", "ACTIVE", "IDLE", "CLOSED")


class DirectConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's connection pool, its connections :class:`Http11Connection` s."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        keepalive_expiry: float | None,
        network_backend: httpcore.AsyncNetworkBackend,
        max_connections: int | None,
        max_keepalive_connections: int | None,
    ) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=network_backend,
        )
        self._connection_settings = (ssl_context, keepalive_expiry, network_backend)

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        ssl_context, keepalive_expiry, backend = self._connection_settings
        return Http11Connection(origin, backend, ssl_context, keepalive_expiry)


class ProxyConnectionPool(DirectConnectionPool):
    """httpcore's pool for origins behind an HTTP proxy: what the two kinds below share.

    ``proxy_url``: the proxy (``http://`` or ``https://``, then ``proxy_ssl_context``);
    ``proxy_headers``: sent to the proxy (``Proxy-Authorization``);
    ``pool_settings``: as :class:`DirectConnectionPool`'s.
    """

    def __init__(
        self,
        *,
        proxy_url: httpcore.URL,
        proxy_headers: list[tuple[bytes, bytes]],
        proxy_ssl_context: ssl.SSLContext | None,
        **pool_settings: Any,
    ) -> None:
        super().__init__(**pool_settings)
        self._route = _Proxy(proxy_url.origin, proxy_headers, proxy_ssl_context)


class TunnelConnectionPool(ProxyConnectionPool):
    """For ``https://`` origins: :class:`TunnelConnection` s (the headers go with each
    ``CONNECT``)."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        ssl_context, keepalive_expiry, backend = self._connection_settings
        return TunnelConnection(origin, self._route, backend, ssl_context, keepalive_expiry)


class ForwardConnectionPool(ProxyConnectionPool):
    """For ``http://`` origins: :class:`ForwardConnection` s (the headers go with every
    request)."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        _ssl_context, keepalive_expiry, backend = self._connection_settings
        return ForwardConnection(origin, self._route, backend, keepalive_expiry)


class _Proxy:
    """A proxy as its connections need it: its origin, its headers, its TLS context."""

    __slots__ = ("headers", "origin", "ssl_context")

    def __init__(
        self,
        origin: httpcore.Origin,
        headers: list[tuple[bytes, bytes]],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.origin = origin
        self.headers = headers
        self.ssl_context = ssl_context


class TunnelConnection(httpcore.AsyncConnectionInterface):
    """An :class:`Http11Connection` to ``origin`` inside a proxy's ``CONNECT`` tunnel.

    The first request opens the tunnel (RFC 9110 section 9.3.6: ``CONNECT host:port``,
    a 2xx answer, then TLS with the origin end to end through it); a refusal is an
    ``httpcore.ProxyError`` naming the proxy's status, as httpcore's own tunnel says.
    Closed while its tunnel is being opened (its pool closed), it still answers that
    request, as a direct connection does, then closes.
    """

    def __init__(
        self,
        origin: httpcore.Origin,
        proxy: _Proxy,
        backend: httpcore.AsyncNetworkBackend,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float | None = None,
    ) -> None:
        self._origin = origin
        self._proxy = proxy
        self._backend = backend
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._connection: Http11Connection | None = None
        self._opening = False
        self._failed = False
        self._closed = False
        """Whether :meth:`aclose` was called (perhaps while the tunnel was being opened)."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if self._connection is None:
            if self._opening or self._failed or self._closed:
                raise httpcore.ConnectionNotAvailable()
            self._opening = True
            try:
                stream = await self._open_tunnel(request)
            except BaseException:
                self._failed = True
                raise
            finally:
                self._opening = False
            self._connection = Http11Connection(
                self._origin, self._backend, self._ssl_context, self._keepalive_expiry, stream
            )
        response = await self._connection.handle_async_request(request)
        if self._closed:  # closed while the tunnel opened: nobody would close it later
            self._connection.close_after_answer()
        return response

    async def _open_tunnel(self, request: httpcore.Request) -> httpcore.AsyncNetworkStream:
        """Connect to the proxy, have it open the tunnel, and start TLS with the origin."""
        timeouts = request.extensions.get("timeout", {})
        timeout = timeouts.get("connect")
        proxy = self._proxy
        proxy_host = proxy.origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(proxy_host, proxy.origin.port, timeout=timeout)
        try:
            if proxy.origin.scheme == b"https":
                stream = await _start_tls(stream, proxy.ssl_context, proxy_host, timeout)
            target = _authority(self._origin)
            http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
            headers = [(b"Host", target), (b"Accept", b"*/*"), *proxy.headers]
            connect = h11.Request(method=b"CONNECT", target=target, headers=headers)
            await stream.write(http.send(connect) or b"", timeouts.get("write"))
            head = await _receive_head(stream, http, timeouts.get("read"))
            if not 200 <= head.status_code < 300:
                reason = head.reason.decode("ascii", errors="replace")
                raise httpcore.ProxyError(f"{head.status_code} {reason}")
            if http.trailing_data[0]:  # the origin's TLS cannot speak before we do
                raise httpcore.ProxyError("the proxy sent bytes into the tunnel before TLS")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        host = self._origin.host.decode("ascii")
        server_hostname = request.extensions.get("sni_hostname") or host
        return await _start_tls(stream, self._ssl_context, server_hostname, timeout)

    async def aclose(self) -> None:
        self._closed = True
        if self._connection is not None:
            await self._connection.aclose()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._origin

    def is_available(self) -> bool:
        return self._connection is not None and self._connection.is_available()

    def has_expired(self) -> bool:
        return self._connection.has_expired() if self._connection else self._failed

    def is_idle(self) -> bool:
        return self._connection.is_idle() if self._connection else self._failed

    def is_closed(self) -> bool:
        if self._connection is None:
            return self._failed or (self._closed and not self._opening)
        return self._connection.is_closed()

    def info(self) -> str:
        if self._connection is None:
            return "CONNECTION FAILED" if self._failed else "CONNECTING"
        return f"{self._connection.info()}, through {self._proxy.origin}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{self.info()}]>"


class ForwardConnection(httpcore.AsyncConnectionInterface):
    """Requests for ``origin`` sent to a forwarding proxy, over an :class:`Http11Connection`.

    Each request goes in absolute form (RFC 9112 section 3.2.2: ``GET http://host/path``)
    with the proxy's headers, those the request has itself left out, as httpcore's own
    forwarding connection does; the proxy's answer is the request's.
    """

    def __init__(
        self,
        origin: httpcore.Origin,
        proxy: _Proxy,
        backend: httpcore.AsyncNetworkBackend,
        keepalive_expiry: float | None = None,
    ) -> None:
        self._origin = origin
        self._proxy = proxy
        self._connection = Http11Connection(
            proxy.origin, backend, proxy.ssl_context, keepalive_expiry
        )

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        proxy = self._proxy.origin
        own = {name.lower() for name, _ in request.headers}
        headers = [(n, v) for n, v in self._proxy.headers if n.lower() not in own]
        url = request.url  # absolute, an IPv6 address in brackets (httpcore's bytes(url) has none)
        absolute = b"%b://%b%b" % (url.scheme, _authority(url.origin), url.target)
        forwarded = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=proxy.scheme, host=proxy.host, port=proxy.port, target=absolute
            ),
            headers=[*headers, *request.headers],
            content=request.stream,
            extensions=request.extensions,
        )
        return await self._connection.handle_async_request(forwarded)

    async def aclose(self) -> None:
        await self._connection.aclose()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._origin

    def is_available(self) -> bool:
        return self._connection.is_available()

    def has_expired(self) -> bool:
        return self._connection.has_expired()

    def is_idle(self) -> bool:
        return self._connection.is_idle()

    def is_closed(self) -> bool:
        return self._connection.is_closed()

    def info(self) -> str:
        return f"{self._connection.info()}, for {self._origin}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{self.info()}]>"


class Http11Connection(httpcore.AsyncConnectionInterface):
    """One HTTP/1.1 connection to ``origin``, opened by its first request."""

    def __init__(
        self,
        origin: httpcore.Origin,
        backend: httpcore.AsyncNetworkBackend,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float | None = None,
        stream: httpcore.AsyncNetworkStream | None = None,
    ) -> None:
        self._origin = origin
        self._backend = backend
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._stream = stream
        """The connection's stream, once open (given already open inside a tunnel)."""
        self._state = _NEW
        self._expire_at: float | None = None
        self._request_count = 0
        self._reusable = False
        """Whether the answer being read may leave the connection open (decided at its head)."""
        self._complete = False
        """Whether the answer being read has been read to its end."""

    # -- a request -------------------------------------------------------------------

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if request.url.origin != self._origin:
            raise RuntimeError(
                f"a request to {request.url.origin} on a connection to {self._origin}"
            )
        if self._state not in (_NEW, _IDLE):
            raise httpcore.ConnectionNotAvailable()
        self._state = _ACTIVE
        self._expire_at = None
        self._request_count += 1
        self._complete = False
        timeouts = request.extensions.get("timeout", {})
        try:
            stream = self._stream
            if stream is None:
                stream = self._stream = await self._connect(request, timeouts.get("connect"))
            http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
            sent = await _send_request(stream, http, request, timeouts.get("write"))
            head = await _receive_head(stream, http, timeouts.get("read"))
            body = self._body(stream, http, request, head, sent, timeouts.get("read"))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        return httpcore.Response(
            status=head.status_code,
            headers=head.headers.raw_items(),
            content=body,
            extensions={
                "http_version": b"HTTP/" + head.http_version,
                "reason_phrase": head.reason,
                "network_stream": stream,
            },
        )

    async def _connect(
        self, request: httpcore.Request, timeout: float | None
    ) -> httpcore.AsyncNetworkStream:
        host = self._origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, self._origin.port, timeout=timeout)
        if self._origin.scheme != b"https":
            return stream
        server_hostname = request.extensions.get("sni_hostname") or host
        return await _start_tls(stream, self._ssl_context, server_hostname, timeout)

    def _body(
        self,
        stream: httpcore.AsyncNetworkStream,
        http: h11.Connection,
        request: httpcore.Request,
        head: h11.Response,
        sent: bool,
        timeout: float | None,
    ) -> _ResponseBody:
        """The answer's body, framed as RFC 9112 section 6.3 says.

        ``sent``: whether the whole request was written (else the connection is not
        reused: h11 counts what it was given, not what the socket took).
        """
        keep_alive = sent and http.our_state is h11.DONE and _keeps_alive(request.headers, head)
        headers = head.headers
        if (
            request.method == b"HEAD"
            or head.status_code in (204, 304)
            or any(key == b"transfer-encoding" for key, _ in headers)
        ):
            self._reusable = keep_alive
            return _H11Body(self, stream, timeout, http)
        leftover, _ = http.trailing_data
        length = _content_length(headers)
        if length is None:  # the body ends with the connection
            self._reusable = False
            return _ToTheEndBody(self, stream, timeout, leftover)
        self._reusable = keep_alive
        return _LengthBody(self, stream, timeout, leftover, length)

    async def _response_closed(self) -> None:
        """The answer is done with: keep the connection for the next request, or close it."""
        if self._state == _ACTIVE and self._complete and self._reusable:
            self._state = _IDLE
            if self._keepalive_expiry is not None:
                self._expire_at = time.monotonic() + self._keepalive_expiry
        else:
            await self.aclose()

    def close_after_answer(self) -> None:
        """Close the connection once the answer being read is done with, not keep it."""
        self._reusable = False

    # -- what the pool asks ------------------------------------------------------------

    async def aclose(self) -> None:
        self._state = _CLOSED
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._origin

    def is_available(self) -> bool:
        return self._state == _IDLE

    def has_expired(self) -> bool:
        if self._state == _IDLE and self._stream is not None:
            if self._expire_at is not None and time.monotonic() > self._expire_at:
                return True
            return bool(self._stream.get_extra_info("is_readable"))  # the server closed it
        return False

    def is_idle(self) -> bool:
        return self._state == _IDLE

    def is_closed(self) -> bool:
        return self._state == _CLOSED

    def info(self) -> str:
        return (
            f"{str(self._origin)!r}, HTTP/1.1, {_STATE_NAMES[self._state]}, "
            f"Request Count: {self._request_count}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{self.info()}]>"


class _ResponseBody:
    """One answer's body chunks; closing it hands the connection back or closes it.

    Iterated only inside httpcore's pool, whose stream closes the body (shielded)
    on any error or cancellation: a body not read to its end closes the connection.
    """

    def __init__(
        self,
        connection: Http11Connection,
        stream: httpcore.AsyncNetworkStream,
        timeout: float | None,
        leftover: bytes = b"",
    ) -> None:
        self._connection = connection
        self._stream = stream
        self._timeout = timeout
        self._leftover = leftover
        """Body bytes that came with the head."""
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:  # pragma: no cover - each kind has its own
        raise NotImplementedError

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._connection._response_closed()


class _LengthBody(_ResponseBody):
    """``Content-Length`` bytes: what came with the head, then the stream's chunks as they are."""

    def __init__(
        self,
        connection: Http11Connection,
        stream: httpcore.AsyncNetworkStream,
        timeout: float | None,
        leftover: bytes,
        length: int,
    ) -> None:
        super().__init__(connection, stream, timeout, leftover)
        self._length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        length, chunk = self._length, self._leftover
        remaining = length
        read, timeout = self._stream.read, self._timeout
        while True:
            if len(chunk) >= remaining:
                if len(chunk) > remaining:  # bytes beyond the answer: not reused
                    self._connection._reusable = False
                    chunk = chunk[:remaining]
                if chunk:
                    yield chunk
                self._connection._complete = True
                return
            if chunk:
                remaining -= len(chunk)
                yield chunk
            chunk = await read(READ_BYTES, timeout)
            if not chunk:
                raise httpcore.RemoteProtocolError(
                    "peer closed connection without sending complete message body: "
                    f"received {length - remaining} bytes, expected {length}"
                )


class _ToTheEndBody(_ResponseBody):
    """Everything until the server closes the connection (RFC 9112 section 6.3, rule 8)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._leftover:
            yield self._leftover
        read, timeout = self._stream.read, self._timeout
        while chunk := await read(READ_BYTES, timeout):
            yield chunk
        self._connection._complete = True


class _H11Body(_ResponseBody):
    """The body as h11 frames it (chunked, or none): its data events, to the end."""

    def __init__(
        self,
        connection: Http11Connection,
        stream: httpcore.AsyncNetworkStream,
        timeout: float | None,
        http: h11.Connection,
    ) -> None:
        super().__init__(connection, stream, timeout)
        self._http = http

    async def __aiter__(self) -> AsyncIterator[bytes]:
        http = self._http
        while True:
            event = _next_event(http)
            if event is h11.NEED_DATA:
                http.receive_data(await self._stream.read(READ_BYTES, self._timeout))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if http.their_state is not h11.DONE or http.trailing_data[0]:
                    self._connection._reusable = False  # more than the answer came
                self._connection._complete = True
                return
            else:  # pragma: no cover - h11 raises before any other event here
                raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__} in the body")


async def _send_request(
    stream: httpcore.AsyncNetworkStream,
    http: h11.Connection,
    request: httpcore.Request,
    timeout: float | None,
) -> bool:
    """Write the request, each piece as it comes (as httpcore does); whether all went.

    A write error is let pass, as in httpcore: a server may close its side after an
    early answer (a 413, a 401), which is then read; the connection is not reused.
    A GET is one write: its empty body adds no bytes.
    """
    try:
        event = h11.Request(
            method=request.method, target=request.url.target, headers=request.headers
        )
        await stream.write(http.send(event) or b"", timeout)
        body = request.stream
        assert isinstance(body, AsyncIterable)  # httpx's request streams are
        async for chunk in body:
            data = http.send(h11.Data(data=chunk))
            if data:
                await stream.write(data, timeout)
        end = http.send(h11.EndOfMessage())
        if end:
            await stream.write(end, timeout)
    except h11.LocalProtocolError as exc:
        raise httpcore.LocalProtocolError(str(exc)) from exc
    except httpcore.WriteError:
        return False
    return True


def _authority(origin: httpcore.Origin) -> bytes:
    """``host:port`` of ``origin`` for a ``CONNECT`` (RFC 9112 section 3.2.3): an IPv6
    address in brackets (RFC 3986 section 3.2.2), as httpx gives it without them."""
    host = b"[%b]" % origin.host if b":" in origin.host else origin.host
    return b"%b:%d" % (host, origin.port)


async def _start_tls(
    stream: httpcore.AsyncNetworkStream,
    context: ssl.SSLContext | None,
    server_hostname: str,
    timeout: float | None,
) -> httpcore.AsyncNetworkStream:
    """``stream`` wrapped in TLS, offering HTTP/1.1 (ALPN); closed if the handshake fails."""
    context = context or httpcore.default_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    try:
        return await stream.start_tls(context, server_hostname, timeout=timeout)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise


async def _receive_head(
    stream: httpcore.AsyncNetworkStream, http: h11.Connection, timeout: float | None
) -> h11.Response:
    """The status line and headers (informational answers skipped)."""
    while True:
        event = _next_event(http)
        if event is h11.NEED_DATA:
            data = await stream.read(READ_BYTES, timeout)
            if not data and http.their_state is h11.SEND_RESPONSE:
                raise httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
            http.receive_data(data)
        elif isinstance(event, h11.Response):
            return event
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            raise httpcore.RemoteProtocolError(
                "upgrades (101 Switching Protocols) are not supported"
            )
        elif not isinstance(event, h11.InformationalResponse):
            raise httpcore.RemoteProtocolError(
                f"unexpected {type(event).__name__} before the answer"
            )


def _next_event(http: h11.Connection) -> Any:
    """h11's next event (or ``NEED_DATA``), its protocol errors as httpcore's."""
    try:
        return http.next_event()
    except h11.RemoteProtocolError as exc:
        raise httpcore.RemoteProtocolError(str(exc)) from exc


def _keeps_alive(request_headers: Iterable[tuple[bytes, bytes]], head: h11.Response) -> bool:
    """Whether both sides allow the connection to stay open (RFC 9112 section 9.3)."""
    if head.http_version < b"1.1" or b"close" in _tokens(head.headers, b"connection"):
        return False
    return b"close" not in _tokens(request_headers, b"connection")


def _tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated, lowercased values of every ``name`` header."""
    found: set[bytes] = set()
    for key, value in headers:
        if key.lower() == name:
            found.update(token.strip().lower() for token in value.split(b","))
    return found


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The validated ``Content-Length`` (h11 keeps one value of digits), or ``None``."""
    for key, value in headers:
        if key == b"content-length":
            return int(value)
    return None
