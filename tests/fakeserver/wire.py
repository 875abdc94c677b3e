"""HTTP/1.1 plumbing of the fake server: request reading, responses, body writing, sockets.

Nothing here knows about DICOMweb; :mod:`fakeserver.server` frames its answers with it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

FramingName = Literal["eof", "chunked", "length"]


#: Largest request head (request line + headers) accepted; larger gets 431.
MAX_HEADER_BYTES = 64 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name]
        return ", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        return self.version == "HTTP/1.1" and "close" not in tokens


class _RequestReader:
    """Reads request heads from one connection, keeping pipelined bytes for the next."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def read_request(self) -> _Request | None:
        """Return the next request, or ``None`` on a clean EOF between requests."""
        while True:
            while self._buffer.startswith(b"\r\n"):
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                request = self._parse_head(head)
                self._discard_body(request)
                return request
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise _BadRequest(431, "request head too large")
            data = self._sock.recv(65536)
            if not data:
                if self._buffer:
                    raise _BadRequest(400, "connection closed inside a request head")
                return None
            self._buffer += data

    @staticmethod
    def _parse_head(head: bytes) -> _Request:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, f"bad request line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, f"bad header line {line!r}")
            headers.append((name, value.strip()))
        return _Request(method=parts[0], target=parts[1], version=parts[2], headers=headers)

    def _discard_body(self, request: _Request) -> None:
        if request.header("transfer-encoding") is not None:
            raise _BadRequest(501, "request bodies with Transfer-Encoding are not supported")
        try:
            remaining = int(request.header("content-length") or "0")
        except ValueError as exc:
            raise _BadRequest(400, "bad Content-Length") from exc
        while remaining > 0:
            if not self._buffer:
                data = self._sock.recv(min(remaining, 65536))
                if not data:
                    raise _BadRequest(400, "connection closed inside a request body")
                self._buffer += data
            taken = min(remaining, len(self._buffer))
            del self._buffer[:taken]
            remaining -= taken


Segment = bytes | bytearray | memoryview


@dataclass
class _Response:
    """An answer before framing: ``segments`` concatenated form the content.

    ``tail_len`` is the length of the multipart closing delimiter plus epilogue at the end
    of the content (0 for other answers); truncation never reaches into it.
    """

    status: int
    headers: list[tuple[str, str]]
    segments: list[Segment] = field(default_factory=list)
    framing: FramingName = "length"
    chunk_size: int = 64 * 1024
    tail_len: int = 0

    @property
    def content_length(self) -> int:
        return sum(len(segment) for segment in self.segments)


def _send_buffers(sock: socket.socket, buffers: Sequence[Segment]) -> None:
    """``sendall`` for several buffers at once, without joining them."""
    views = [memoryview(buffer) for buffer in buffers if len(buffer)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


class _BodyWriter:
    """Writes content bytes in pieces of ``chunk_size``, as chunks when ``chunked``.

    Large segments are sent as slices, without copying; small ones are gathered. The
    latest piece is held back until the next one is ready, so that :meth:`finish` can run
    a callback just before the very last byte leaves (see ``max_in_flight``).
    """

    def __init__(self, sock: socket.socket, *, chunked: bool, chunk_size: int) -> None:
        self._sock = sock
        self._chunked = chunked
        self._chunk_size = max(1, chunk_size)
        self._held: list[Segment] = []

    def write_range(self, segments: Sequence[Segment], begin: int, end: int) -> None:
        """Send content bytes ``[begin, end)`` (the last piece may still be held back)."""
        size = self._chunk_size
        buffer = bytearray()
        offset = 0
        for segment in segments:
            start, offset = offset, offset + len(segment)
            if offset <= begin:
                continue
            if start >= end:
                break
            view = memoryview(segment)[max(begin - start, 0) : min(end, offset) - start]
            while view:
                if not buffer and len(view) >= size:
                    self._hold(view[:size])
                    view = view[size:]
                    continue
                room = size - len(buffer)
                buffer += view[:room]
                view = view[room:]
                if len(buffer) >= size:
                    self._hold(buffer)
                    buffer = bytearray()
        if buffer:
            self._hold(buffer)

    def flush(self) -> None:
        """Send the held-back piece."""
        held, self._held = self._held, []
        _send_buffers(self._sock, held)

    def finish(self, before_last_byte: Callable[[], None], *, terminate: bool) -> None:
        """Call ``before_last_byte``, then send the held-back piece (and the last chunk)."""
        before_last_byte()
        if terminate and self._chunked:
            self._held.append(b"0\r\n\r\n")
        self.flush()

    def _hold(self, data: Segment) -> None:
        self.flush()
        self._held = [b"%x\r\n" % len(data), data, b"\r\n"] if self._chunked else [data]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
