"""Async adapter from a byte stream to the parts of a multipart WADO-RS answer.

The :class:`~kheops_async.multipart.MultipartParser` does no I/O; this module pulls
bytes from a ``receive()`` coroutine (the HTTP body) only when the consumer asks
for more, so at most one network chunk is held at a time, whatever the size of a
part or of the whole answer::

    async for part in reader:          # RetrievedPart, headers first
        async for chunk in part:       # its body, chunk by chunk
            sink.write(chunk)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from kheops_async.errors import MultipartError
from kheops_async.multipart import Event, MultipartParser, PartData, PartEnd, PartStart

__all__ = ["MultipartReader", "RetrievedPart"]


class RetrievedPart:
    """One part of a multipart answer: its headers now, its body as it arrives.

    Iterate the part (``async for chunk in part``) to read its body; a part left
    unread is skipped when the next part is requested.
    """

    __slots__ = ("_done", "_reader", "headers", "index")

    def __init__(self, reader: MultipartReader, start: PartStart, index: int) -> None:
        self._reader = reader
        self._done = False
        self.headers: list[tuple[str, str]] = start.headers
        self.index = index

    def header(self, name: str) -> str | None:
        """A part header by case-insensitive name, or ``None``."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    @property
    def content_type(self) -> str | None:
        """The part's ``Content-Type`` (``application/dicom`` for WADO-RS instances)."""
        return self.header("Content-Type")

    @property
    def content_length(self) -> int | None:
        """The part's declared ``Content-Length``, if any and valid."""
        value = self.header("Content-Length")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        async for buffer in self.buffers():
            yield buffer if type(buffer) is bytes else bytes(buffer)

    async def buffers(self) -> AsyncIterator[bytes | memoryview]:
        """The body as the parser gives it: network chunks, and ``memoryview`` slices of
        those shared with the neighbouring parts, never copied.

        For writers that take any buffer (``os.writev``, ``hashlib``): iterating the
        part itself yields ``bytes``, copying the slices.
        """
        while not self._done:
            event = await self._reader._next_event()
            if isinstance(event, PartData):
                yield event.data
            elif isinstance(event, PartEnd):
                self._done = True
            else:
                raise MultipartError(f"part {self.index} ended without its end event")

    async def read(self) -> bytes:
        """The whole body at once: for small parts only (metadata, tests)."""
        return b"".join([chunk async for chunk in self])

    async def _skip_rest(self) -> None:
        async for _ in self:
            pass


class MultipartReader:
    """Async iterator over the parts of one multipart body.

    ``receive`` returns the next body chunk, ``b""`` at the end. A body that ends
    before the closing delimiter raises :class:`~kheops_async.errors.TruncatedBodyError`.
    """

    def __init__(self, receive: Callable[[], Awaitable[bytes]], boundary: bytes | str) -> None:
        self._receive = receive
        self._parser = MultipartParser(boundary)
        self._events: list[Event] = []
        self._position = 0
        self._current: RetrievedPart | None = None
        self._eof = False
        self.bytes_received = 0
        self.parts_started = 0

    async def _next_event(self) -> Event | None:
        while self._position >= len(self._events):
            if self._eof:
                return None
            chunk = await self._receive()
            if chunk:
                self.bytes_received += len(chunk)
                self._events = self._parser.feed(chunk)
            else:
                self._eof = True
                self._events = self._parser.close()
            self._position = 0
        event = self._events[self._position]
        self._position += 1
        return event

    def __aiter__(self) -> MultipartReader:
        return self

    async def __anext__(self) -> RetrievedPart:
        if self._current is not None and not self._current._done:
            await self._current._skip_rest()
        self._current = None
        event = await self._next_event()
        if event is None:
            raise StopAsyncIteration
        if not isinstance(event, PartStart):
            raise MultipartError(f"expected the start of a part, got {type(event).__name__}")
        self._current = RetrievedPart(self, event, self.parts_started)
        self.parts_started += 1
        return self._current
