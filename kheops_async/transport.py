"""The HTTP transport: httpcore connection pools whose sockets are read in large blocks.

Why it exists: httpcore asks its network stream for 64 KiB per read, so a multipart
answer of hundreds of MB costs thousands of reads, each with its share of event-loop
and h11 work. Measured on the 200 x 525 KB series (loopback, bytes thrown away):
httpx's default transport reaches about 300 MB/s, the same pool reading up to 1 MiB
per call about 590 MB/s under asyncio and 900 MB/s under trio
(``benchmarks/RESULTS.md``).

Under asyncio the connections are :mod:`~kheops_async.asyncio_stream`'s, on asyncio's
own transports: anyio's stream in between cost about a tenth of a download's CPU.
Requests go over :mod:`~kheops_async.http11`'s HTTP/1.1 connections, whose bodies
skip h11's receive buffer and httpcore's per-chunk layers: direct ones, ``https://``
ones through a proxy's ``CONNECT`` tunnel, and ``http://`` ones forwarded by a proxy.

Nothing global is changed: :class:`LargeReadBackend` is an httpcore
``AsyncNetworkBackend`` given to pools built here, and :class:`KheopsTransport`
wraps those pools as an ``httpx.AsyncBaseTransport``, so other users of httpx in the
same process are untouched. The transport also owns what httpx does only for its own
transport:

- proxies, explicit (``proxy=``) or from the environment (``HTTPS_PROXY``,
  ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, upper or lower case), decided for each
  request's origin: ``http://`` targets go through a forwarding proxy, ``https://``
  ones through a ``CONNECT`` tunnel;
- TLS: the SSL context (verification on unless ``verify=False``, or a CA bundle) is
  made when the first ``https://`` request needs it, never for an ``http://`` server.

- connections opened ahead of need (:meth:`KheopsTransport.connections_ahead`), for
  servers that close each connection after its answer
  (:mod:`~kheops_async.connect_ahead`).

Redirects are the client's business (``follow_redirects=False``): the transport sends
one request and returns its answer.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpcore
import httpx

from kheops_async.asyncio_stream import AsyncioBackend
from kheops_async.connect_ahead import ConnectionsAhead
from kheops_async.http11 import (
    DirectConnectionPool,
    ForwardConnectionPool,
    TunnelConnectionPool,
)
from kheops_async.records import Record

__all__ = [
    "READ_SIZE",
    "KheopsTransport",
    "LargeReadBackend",
    "bypasses_proxy",
    "proxy_for_url",
]

READ_SIZE = 1 << 20
"""Bytes asked of the socket per read (httpcore asks 64 KiB)."""

_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    # Most specific first: the first match wins.
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise httpcore's errors as the httpx errors the client handles."""
    try:
        yield
    except httpcore.ConnectionNotAvailable:  # pragma: no cover - retried by httpcore
        raise
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(_message(exc)) from exc
        raise


def _message(exc: BaseException) -> str:
    """The first non-empty message along ``exc``'s causes.

    Under trio, a refused certificate arrives as an empty ``ConnectError`` caused by
    ``BrokenResourceError`` caused by the ``SSLCertVerificationError`` that says why.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return ""


class LargeReadStream(httpcore.AsyncNetworkStream):
    """A network stream that reads up to ``read_size`` bytes whatever httpcore asks."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, read_size: int) -> None:
        self._inner = inner
        self._read_size = read_size

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, self._read_size), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return LargeReadStream(tls, self._read_size)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _running_under_trio() -> bool:
    """Whether the current task is a trio task (trio imported and running here)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend or our asyncio one, chosen per call, with :class:`LargeReadStream`.

    trio's backend reads the socket directly (``recv`` of ``read_size``); under asyncio,
    :class:`~kheops_async.asyncio_stream.AsyncioStream` hands over what the event loop
    has received (without anyio's stream in between: see that module for why).
    """

    def __init__(self, read_size: int = READ_SIZE) -> None:
        self._read_size = read_size
        self._asyncio: httpcore.AsyncNetworkBackend | None = None
        self._trio: httpcore.AsyncNetworkBackend | None = None
        self.ahead: ConnectionsAhead | None = None
        """While set, connections come from it first and each one used is replaced."""

    def _backend(self) -> httpcore.AsyncNetworkBackend:
        if _running_under_trio():
            if self._trio is None:
                self._trio = httpcore.TrioBackend()
            return self._trio
        if self._asyncio is None:
            self._asyncio = AsyncioBackend()
        return self._asyncio

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        ahead = self.ahead if local_address is None and socket_options is None else None
        stream = await ahead.take(host, port) if ahead is not None else None
        if stream is None:
            stream = await self._backend().connect_tcp(
                host,
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            )
        if ahead is not None:
            ahead.replace(host, port, timeout)
        return LargeReadStream(stream, self._read_size)

    async def connect_plain(
        self, host: str, port: int, timeout: float | None
    ) -> httpcore.AsyncNetworkStream:
        """A TCP connection as httpcore's own backend opens it (for :class:`ConnectionsAhead`)."""
        return await self._backend().connect_tcp(host, port, timeout=timeout)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - no Unix-socket URLs here
        stream = await self._backend().connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return LargeReadStream(stream, self._read_size)

    async def sleep(self, seconds: float) -> None:
        await self._backend().sleep(seconds)


def proxy_for_url(
    url: httpx.URL,
    explicit: str | None,
    trust_env: bool,
    environment: dict[str, str] | None = None,
) -> str | None:
    """The proxy URL for a request to ``url``, or ``None`` to connect directly.

    ``explicit`` wins over the environment (as with curl's ``--proxy``). From the
    environment (when ``trust_env``): ``NO_PROXY`` hosts go direct, then the
    scheme's variable (``HTTPS_PROXY`` / ``HTTP_PROXY``), then ``ALL_PROXY``; both
    cases of each name are read, as curl and the standard library do.
    ``environment``: those variables as already read (else they are read now).
    """
    if explicit:
        return explicit
    if not trust_env:
        return None
    proxies = urllib.request.getproxies_environment() if environment is None else environment
    chosen = proxies.get(url.scheme) or proxies.get("all")
    port = url.port or (443 if url.scheme == "https" else 80)
    if not chosen or bypasses_proxy(url.host, port, proxies.get("no", "")):
        return None
    return chosen if "://" in chosen else f"http://{chosen}"


def bypasses_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma-separated, as curl reads it) exempts ``host``.

    Entries: ``*`` (every host); a domain, with or without a leading ``.`` or ``*.``,
    matching itself and its subdomains; ``host:port`` (that port only); an IP address
    or a CIDR network (``10.0.0.0/8``, ``::1``).
    """
    host = host.strip("[]").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if entry_port and port is not None and entry_port != str(port):
            continue
        entry_host = entry_host.strip("[]")
        if address is not None:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(entry_host, strict=False):
                    return True
            continue
        domain = entry_host.removeprefix("*").lstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False


def _has_port(entry: str) -> bool:
    """Whether a NO_PROXY entry ends in ``:port`` (``[::1]:8042``, ``host:443``)."""
    head, sep, tail = entry.rpartition(":")
    return bool(sep) and tail.isdigit() and (head.endswith("]") or ":" not in head)


class _PoolKey(Record):
    """What one pool serves: a scheme, and the proxy URL (its credentials kept out of repr)."""

    __slots__ = ("proxy", "scheme")

    def __init__(self, scheme: str, proxy: str | None) -> None:
        self.scheme = scheme
        self.proxy = proxy

    def __repr__(self) -> str:
        return f"_PoolKey(scheme={self.scheme!r})"


def _proxy_authorization(auth: tuple[str, str] | None) -> list[tuple[bytes, bytes]]:
    """The ``Proxy-Authorization`` header for a proxy's credentials (Basic, RFC 7617)."""
    if auth is None:
        return []
    user_pass = f"{auth[0]}:{auth[1]}".encode()
    return [(b"Proxy-Authorization", b"Basic " + base64.b64encode(user_pass))]


class _ResponseStream(httpx.AsyncByteStream):
    """The body of an httpcore response, its errors raised as httpx errors."""

    def __init__(self, body: Any) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._body:
                yield chunk

    async def aclose(self) -> None:
        with _httpx_errors():
            await self._body.aclose()


class KheopsTransport(httpx.AsyncBaseTransport):
    """An httpx transport over httpcore pools with large reads, proxies and lazy TLS.

    ``verify``: ``True`` (httpx's default trust store: certifi, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` with ``trust_env``), ``False`` (no verification), a CA bundle
    path, or an ``ssl.SSLContext``. ``proxy``: a proxy
    URL for every request; without it, ``trust_env`` reads the environment. ``limits``
    sizes each pool (one pool per scheme and proxy, made on first use).
    """

    def __init__(
        self,
        *,
        verify: bool | str | ssl.SSLContext = True,
        proxy: str | None = None,
        trust_env: bool = True,
        limits: httpx.Limits | None = None,
        read_size: int = READ_SIZE,
    ) -> None:
        self._verify = verify
        self._proxy = proxy
        self._trust_env = trust_env
        self._limits = limits or httpx.Limits()
        self._backend = LargeReadBackend(read_size)
        self._ssl_context: ssl.SSLContext | None = None
        self._pools: dict[_PoolKey, httpcore.AsyncConnectionPool] = {}
        self._environment: dict[str, str] | None = None
        self._routes: dict[tuple[str, str, int | None], str | None] = {}
        """The proxy (or ``None``) of each origin, decided once (as httpx does per client)."""

    def ssl_context(self) -> ssl.SSLContext:
        """The SSL context for ``https://`` origins, made on first call."""
        if self._ssl_context is None:
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl_context = self._verify
            elif isinstance(self._verify, str):  # a CA bundle file, or a directory of them
                if os.path.isdir(self._verify):
                    self._ssl_context = ssl.create_default_context(capath=self._verify)
                else:
                    self._ssl_context = ssl.create_default_context(cafile=self._verify)
            else:
                self._ssl_context = httpx.create_ssl_context(
                    verify=self._verify, trust_env=self._trust_env
                )
        return self._ssl_context

    def _route(self, url: httpx.URL) -> str | None:
        """The proxy for ``url``'s origin: the environment is read at the first request."""
        origin = (url.scheme, url.host, url.port)
        if origin not in self._routes:
            if self._environment is None and self._trust_env and not self._proxy:
                self._environment = urllib.request.getproxies_environment()
            self._routes[origin] = proxy_for_url(
                url, self._proxy, self._trust_env, self._environment
            )
        return self._routes[origin]

    def _pool(self, url: httpx.URL) -> httpcore.AsyncConnectionPool:
        key = _PoolKey(url.scheme, self._route(url))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._make_pool(key)
            self._pools[key] = pool
        return pool

    def _make_pool(self, key: _PoolKey) -> httpcore.AsyncConnectionPool:
        """:mod:`~kheops_async.http11`'s connections: direct, through a proxy's ``CONNECT``
        tunnel (``https://``) or forwarded by it (``http://``)."""
        tls = self.ssl_context() if key.scheme == "https" else None
        sizes: dict[str, Any] = {
            "max_connections": self._limits.max_connections,
            "max_keepalive_connections": self._limits.max_keepalive_connections,
            "keepalive_expiry": self._limits.keepalive_expiry,
            "network_backend": self._backend,
        }
        if key.proxy is None:
            return DirectConnectionPool(ssl_context=tls, **sizes)
        proxy = httpx.URL(key.proxy)
        if proxy.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"proxy scheme {proxy.scheme!r} is not supported (use an http:// proxy)"
            )
        auth = (proxy.username, proxy.password) if proxy.username else None
        # https://: a CONNECT tunnel; http://: requests forwarded by the proxy
        pool = TunnelConnectionPool if key.scheme == "https" else ForwardConnectionPool
        return pool(
            proxy_url=httpcore.URL(
                scheme=proxy.raw_scheme, host=proxy.raw_host, port=proxy.port, target=proxy.raw_path
            ),
            proxy_headers=_proxy_authorization(auth),
            proxy_ssl_context=self.ssl_context() if proxy.scheme == "https" else None,
            ssl_context=tls,
            **sizes,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            pool = self._pool(request.url)
            response = await pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    @asynccontextmanager
    async def connections_ahead(self, count: int) -> AsyncIterator[ConnectionsAhead]:
        """Within the block, keep up to ``count`` connections opened ahead of need.

        For servers that close each connection after its answer (see
        :mod:`~kheops_async.connect_ahead`): each connection a request opens or takes
        is replaced in the background. An error of the block is raised as it is, not
        wrapped in an exception group. A block entered while another is active (two
        downloads sharing a client) uses that one's connections, for as long as it lasts.
        """
        if self._backend.ahead is not None:
            yield self._backend.ahead
            return
        ahead = ConnectionsAhead(self._backend.connect_plain, count)
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as group:
                ahead.start(group)
                self._backend.ahead = ahead
                try:
                    yield ahead
                except (anyio.get_cancelled_exc_class(), GeneratorExit):
                    raise  # the task group's business, or the generator's
                except BaseException as exc:  # KeyboardInterrupt too: raised below, unwrapped
                    error = exc
                finally:
                    self._backend.ahead = None
                    group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await ahead.aclose()
        if error is not None:
            raise error

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()
