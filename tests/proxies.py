"""Loopback helpers for the transport tests: an HTTP proxy and a TLS front.

:class:`LoopbackProxy` is a small HTTP proxy of the two kinds hospital networks run:

- ``CONNECT host:port``: a tunnel (how ``https://`` servers are reached);
- a request in absolute form (``GET http://host:port/path``): forwarded (how
  ``http://`` servers are reached).

Either way, once the first request of a client connection names its upstream, the
proxy relays bytes both ways until one side closes (every later request of that
connection goes to the same upstream, which is all the tests need). It only connects
to 127.0.0.1 or ::1. It records the first request line and its ``Proxy-Authorization``
of every connection, and with ``credentials`` answers ``407`` to any other.

:class:`TlsFront` terminates TLS with a certificate from ``trustme`` and relays to a
plain-HTTP server, so the fake Kheops server can be reached as ``https://``.
"""

from __future__ import annotations

import base64
import contextlib
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import trustme

__all__ = ["LoopbackProxy", "ProxiedConnection", "TlsFront", "https_front"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProxiedConnection:
    """The first request of one client connection, as the proxy saw it."""

    method: str
    target: str
    proxy_authorization: str | None
    host: str | None = None


def _relay(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from ``source`` to ``sink`` until EOF or an error, then half-close."""
    try:
        while data := source.recv(256 * 1024):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _pump(client: socket.socket, upstream: socket.socket, first: bytes = b"") -> None:
    """Relay both ways until both directions ended; ``first`` goes upstream first."""
    try:
        if first:
            upstream.sendall(first)
        back = threading.Thread(target=_relay, args=(upstream, client), daemon=True)
        back.start()
        _relay(client, upstream)
        back.join(_TIMEOUT)
    finally:
        upstream.close()
        client.close()


def _pump_tls(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Relay both ways from one thread, as :func:`_pump` does with two.

    An ``SSLSocket`` must not be read in one thread while written in another (OpenSSL's
    connection state is not shared safely): TLS records then come out corrupted, which
    showed as a peer's "decode error" alert when TLS ran inside this relay's TLS.
    """
    with selectors.DefaultSelector() as selector:
        for sock in (tls, upstream):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        reading = {tls, upstream}
        try:
            while reading and (events := selector.select(_TIMEOUT)):
                for key, _ in events:
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    sink = upstream if source is tls else tls
                    if not _relay_ready(source, sink):
                        reading.discard(source)
                        selector.unregister(source)
                        with contextlib.suppress(OSError):
                            sink.shutdown(socket.SHUT_WR)
        finally:
            upstream.close()
            tls.close()


def _relay_ready(source: socket.socket, sink: socket.socket) -> bool:
    """Copy what ``source`` has ready (a TLS socket: every decrypted byte) to ``sink``.

    Returns False at ``source``'s end (or an error).
    """
    while True:
        try:
            data = source.recv(256 * 1024)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True
        except OSError:
            return False
        if not data:
            return False
        sink.settimeout(_TIMEOUT)
        try:
            sink.sendall(data)
        except OSError:
            return False
        finally:
            sink.setblocking(False)
        if not isinstance(source, ssl.SSLSocket) or not source.pending():
            return True


class _Listener:
    """A loopback listener that serves each connection in a daemon thread."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> _Listener:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(_TIMEOUT)
        self._server.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if self._stopping.is_set():
                conn.close()
                return
            conn.settimeout(_TIMEOUT)
            threading.Thread(target=self._serve_safely, args=(conn,), daemon=True).start()

    def _serve_safely(self, conn: socket.socket) -> None:
        try:
            self.serve(conn)
        except OSError:
            conn.close()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class LoopbackProxy(_Listener):
    """An HTTP proxy on loopback (``CONNECT`` tunnels and forwarding); see the module."""

    def __init__(
        self, credentials: tuple[str, str] | None = None, *, connect_delay: float = 0.0
    ) -> None:
        super().__init__()
        self.credentials = credentials
        self.connect_delay = connect_delay
        """Seconds a ``CONNECT`` waits before its answer (a slow proxy)."""
        self.connections: list[ProxiedConnection] = []
        self.tunnels_ended = 0
        """Tunnels both of whose sides have closed."""
        self._lock = threading.Lock()

    def __enter__(self) -> LoopbackProxy:
        super().__enter__()
        return self

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data or len(head) > 65536:
                conn.close()
                return
            head += data
        request_line, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        authorization = headers.get("proxy-authorization")
        with self._lock:
            self.connections.append(
                ProxiedConnection(method, target, authorization, headers.get("host"))
            )
        if self.credentials is not None and authorization != self._expected_authorization():
            conn.sendall(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            conn.close()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = self._connect(host.strip("[]"), int(port))
            time.sleep(self.connect_delay)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pump(conn, upstream, head.split(b"\r\n\r\n", 1)[1])
            with self._lock:
                self.tunnels_ended += 1
            return
        parts = urlsplit(target)
        upstream = self._connect(parts.hostname or "", parts.port or 80)
        _pump(conn, upstream, head)

    def _expected_authorization(self) -> str:
        assert self.credentials is not None
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    @staticmethod
    def _connect(host: str, port: int) -> socket.socket:
        if host not in _LOOPBACK:
            raise OSError(f"the test proxy only connects to loopback, not {host!r}")
        return socket.create_connection((host, port), timeout=_TIMEOUT)


class TlsFront(_Listener):
    """TLS on ``127.0.0.1:port`` in front of a plain HTTP server on ``backend_port``."""

    def __init__(self, backend_port: int, context: ssl.SSLContext) -> None:
        super().__init__()
        self.backend_port = backend_port
        self._context = context

    def __enter__(self) -> TlsFront:
        super().__enter__()
        return self

    def serve(self, conn: socket.socket) -> None:
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):  # a client that refused our certificate
            conn.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.backend_port), timeout=_TIMEOUT)
        _pump_tls(tls, upstream)


def https_front(backend_port: int, authority: trustme.CA) -> TlsFront:
    """A :class:`TlsFront` for ``backend_port`` whose certificate ``authority`` issued.

    The certificate names ``127.0.0.1`` and ``localhost``; enter it to serve.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return TlsFront(backend_port, context)
