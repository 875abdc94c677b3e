"""Incremental, no-I/O parser for ``multipart/related`` bodies (RFC 2046), as sent by WADO-RS.

The parser follows the h11 pattern: bytes in, events out. :meth:`MultipartParser.feed`
takes whatever chunk the transport delivered and returns the events it completed;
:meth:`MultipartParser.close` says the input has ended, and raises
:class:`~kheops_async.errors.TruncatedBodyError` if the closing delimiter never came
(Kheops signals an upstream failure after the ``200`` exactly that way). An async
adapter drives it from ``response.aiter_bytes()``; nothing here touches a socket or a file.

Events, in order, for each part::

    PartStart(headers)  PartData(data) ...  PartEnd()

Design
------
* The delimiter is ``CRLF--boundary``. The body is scanned as if a CRLF preceded it, so a
  body that starts directly with ``--boundary`` and one that starts with a preamble are the
  same case. The preamble and the epilogue are discarded without being buffered.
* Part bodies are searched with ``bytes.find`` from where the last search stopped. When a
  chunk holds no delimiter, only a tail that can still begin one is carried into the next
  chunk: the boundary may not contain CR, so that tail starts at the last ``\\r`` among the
  chunk's last ``len(delimiter) - 1`` bytes and must be a prefix of the delimiter. Anything
  before it is emitted at once. Parsing is therefore linear in the body size and no byte is
  scanned twice (beyond the ``len(delimiter) - 1`` bytes of a carried tail).
* No copies in the common case: a chunk that lies inside a part body and does not end in a
  possible partial delimiter is emitted as the very ``bytes`` object that was fed. Chunks
  that hold a delimiter are sliced once. ``PartData`` events may therefore have any size
  (never zero), unrelated to part boundaries or to the size of the fed chunks.
* Every buffer is bounded by a named constant: the carried tail by
  :data:`MAX_BOUNDARY_LENGTH` + 3, the delimiter line by :data:`MAX_TRANSPORT_PADDING` + 2,
  a part's header block by :data:`MAX_HEADER_BYTES` + 2. :attr:`MultipartParser.buffered_bytes`
  reports the current total.
* Header lines are strict ``name: value`` lines ending in CRLF, decoded as Latin-1;
  obsolete line folding is unfolded when present. Part bodies may hold any bytes.
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias

from kheops_async.errors import MultipartError, TruncatedBodyError
from kheops_async.records import Record

__all__ = [
    "MAX_BOUNDARY_LENGTH",
    "MAX_HEADER_BYTES",
    "MAX_TRANSPORT_PADDING",
    "Event",
    "MultipartParser",
    "PartData",
    "PartEnd",
    "PartStart",
    "boundary_from_content_type",
    "parse_content_type",
]

MAX_HEADER_BYTES: Final = 16 * 1024
"""Largest header block of one part, in bytes: its header lines with their CRLFs plus the
CRLF of the empty line that ends it. A larger block raises :class:`MultipartError`."""

MAX_BOUNDARY_LENGTH: Final = 256
"""Longest accepted boundary, in bytes. RFC 2046 allows 70; real servers sometimes exceed
it, so the limit is lenient while still bounding the carried partial delimiter."""

VIEW_MAX_OVERHEAD: Final = 4
"""A part's slice of a fed chunk is handed out as a view of the chunk (not a copy) when the
chunk is at most this many times larger, so that a view never keeps alive more than that
many times the bytes it holds (a 1 MiB chunk for a part of 76 KB); small slices are cheap
to copy."""

MAX_TRANSPORT_PADDING: Final = 1024
"""Most spaces and tabs accepted between a delimiter and its CRLF (RFC 2046 "transport
padding"). Real bodies have none; the bound keeps a malformed body from being buffered."""


class PartStart(Record):
    """A part begins. ``headers`` holds its header lines in order: names as received,
    values stripped of surrounding whitespace."""

    __slots__ = ("headers",)

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the value of the first header called ``name`` (case-insensitive),
        or ``default`` if the part has no such header."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default


class PartData(Record):
    """The next bytes of the current part's body (never empty).

    ``data`` is the fed chunk itself when all of it belongs to the part, else the slice
    that does: a ``memoryview`` of the chunk (not a copy: it keeps the chunk alive) when
    the slice is at least 1 / :data:`VIEW_MAX_OVERHEAD` of it, else a copy.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"PartData(<{len(self.data)} bytes>)"


class PartEnd(Record):
    """The current part is complete: its delimiter has been seen."""

    __slots__ = ()


Event: TypeAlias = PartStart | PartData | PartEnd
"""What :meth:`MultipartParser.feed` returns, in body order."""

_PART_END: Final = PartEnd()

# Parser states.
_PREAMBLE: Final = 0  # searching for the first delimiter, discarding bytes
_DELIMITER_LINE: Final = 1  # after a delimiter: expecting "--" or padding + CRLF
_HEADERS: Final = 2  # reading a part's header block
_BODY: Final = 3  # searching for the delimiter that ends the part, emitting bytes
_EPILOGUE: Final = 4  # closing delimiter seen; the rest is ignored

_DELIMITER_LINE_END: Final = re.compile(rb"[ \t]*\r\n")
_DELIMITER_LINE_PREFIX: Final = re.compile(rb"-|[ \t]*\r?")
_HEADER_BLOCK_END: Final = b"\r\n\r\n"


class MultipartParser:
    """Incremental parser of one ``multipart/related`` body.

    Feed it the body in chunks of any size with :meth:`feed`, then call :meth:`close`.
    Raises :class:`MultipartError` (from the constructor) if ``boundary`` is empty, longer
    than :data:`MAX_BOUNDARY_LENGTH` or not printable ASCII.
    """

    __slots__ = (
        "_carry",
        "_closed",
        "_delimiter",
        "_error",
        "_head",
        "_line",
        "_part_bytes",
        "_parts_completed",
        "_received",
        "_state",
    )

    def __init__(self, boundary: bytes | str) -> None:
        self._delimiter = b"\r\n--" + _validate_boundary(boundary)
        # Scanning starts as if a CRLF preceded the body, so that a body beginning with
        # "--boundary" matches the delimiter at once.
        self._carry = b"\r\n"
        self._state = _PREAMBLE
        self._line = bytearray()  # delimiter line being read (after "--boundary")
        self._head = bytearray()  # "\r\n" + header block being read
        self._parts_completed = 0
        self._part_bytes = 0  # body bytes emitted for the current part
        self._received = 0  # total bytes fed
        self._closed = False
        self._error: MultipartError | None = None

    @property
    def finished(self) -> bool:
        """Whether the closing delimiter (``--boundary--``) has been seen."""
        return self._state == _EPILOGUE

    @property
    def parts_completed(self) -> int:
        """How many parts have ended (one ``PartEnd`` each)."""
        return self._parts_completed

    @property
    def buffered_bytes(self) -> int:
        """Bytes the parser currently holds back from fed chunks (never a part body)."""
        return len(self._carry) + len(self._line) + len(self._head)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse the next chunk of the body and return the events it completed.

        Bytes after the closing delimiter (the epilogue) are ignored.
        Raises :class:`MultipartError` if the body is malformed (the parser then refuses
        further input) and :class:`RuntimeError` if called after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("MultipartParser.feed() called after close()")
        if self._error is not None:
            raise MultipartError(f"the parser already failed: {self._error}")
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        self._received += size
        events: list[Event] = []
        pos = 0
        try:
            while pos < size:
                state = self._state
                if state in (_BODY, _PREAMBLE):
                    pos = self._scan(data, pos, events)
                elif state == _HEADERS:
                    pos = self._read_headers(data, pos, events)
                elif state == _DELIMITER_LINE:
                    pos = self._read_delimiter_line(data, pos)
                else:  # _EPILOGUE: ignored, never buffered
                    break
        except MultipartError as exc:
            self._error = exc
            raise
        return events

    def close(self) -> list[Event]:
        """Signal the end of the body and return any final events (there are none).

        Raises :class:`TruncatedBodyError` if the closing delimiter has not been seen,
        saying where the body stopped, and :class:`MultipartError` if the parser failed
        earlier. Calling it again repeats the outcome.
        """
        self._closed = True
        if self._error is not None:
            raise MultipartError(f"the parser already failed: {self._error}")
        if self._state == _EPILOGUE:
            return []
        closing = (self._delimiter[2:] + b"--").decode("ascii")
        raise TruncatedBodyError(
            f"multipart body truncated after {self._received} bytes: it ended "
            f"{self._position()}, without the closing delimiter {closing!r}"
        )

    # -- states -----------------------------------------------------------------------

    def _scan(self, data: bytes, pos: int, events: list[Event]) -> int:
        """Search ``data[pos:]`` for the next delimiter (preamble or part body)."""
        delimiter = self._delimiter
        carry = self._carry
        if carry:
            # Resolve the carried tail: any delimiter starting in it ends within the next
            # len(delimiter) - 1 bytes, so only that much of the chunk is copied.
            probe = carry + data[pos : pos + len(delimiter) - 1]
            found = probe.find(delimiter)
            if found >= 0:
                self._carry = b""
                if found:
                    self._emit(probe, 0, found, events)
                return self._end_of_delimiter(pos + found + len(delimiter) - len(carry), events)
            if len(data) - pos < len(delimiter) - 1:
                # The chunk is too short to decide: keep the still-possible tail.
                self._carry = b""
                self._emit_up_to_tail(probe, 0, events)
                return len(data)
            self._carry = b""
            self._emit(carry, 0, len(carry), events)
        found = data.find(delimiter, pos)
        if found >= 0:
            if found > pos:
                self._emit(data, pos, found, events)
            return self._end_of_delimiter(found + len(delimiter), events)
        self._emit_up_to_tail(data, pos, events)
        return len(data)

    def _emit_up_to_tail(self, data: bytes, pos: int, events: list[Event]) -> None:
        """Emit ``data[pos:]`` (known to hold no whole delimiter) except a tail that can
        still begin one, which is carried into the next chunk."""
        size = len(data)
        end = size
        # The boundary holds no CR, so a partial delimiter starts at the last CR.
        cr = data.rfind(b"\r", max(pos, size - len(self._delimiter) + 1))
        if cr >= 0:
            tail = data[cr:]
            if self._delimiter.startswith(tail):
                self._carry = tail
                end = cr
        if end > pos:
            self._emit(data, pos, end, events)

    def _emit(self, data: bytes, start: int, end: int, events: list[Event]) -> None:
        """Emit ``data[start:end]`` as part body bytes; discard preamble bytes.

        A slice of at least 1 / :data:`VIEW_MAX_OVERHEAD` of ``data`` is emitted as a
        ``memoryview`` of it, not copied: slicing bytes copies them, and on a series of
        525 KB parts read 1 MiB at a time nearly every byte is in a chunk that also holds
        a delimiter, so slices copied the whole body once more (11 % of the command's
        instructions, cachegrind). A shorter slice is copied, so that a view never keeps
        alive more than that many times the bytes it holds.
        """
        if self._state == _BODY:
            self._part_bytes += end - start
            if start == 0 and end == len(data):
                events.append(PartData(data))
            elif (end - start) * VIEW_MAX_OVERHEAD >= len(data):
                events.append(PartData(memoryview(data)[start:end]))
            else:
                events.append(PartData(data[start:end]))

    def _end_of_delimiter(self, pos: int, events: list[Event]) -> int:
        """A delimiter ended at ``pos``: close the current part, if any."""
        if self._state == _BODY:
            self._parts_completed += 1
            events.append(_PART_END)
        self._state = _DELIMITER_LINE
        return pos

    def _read_delimiter_line(self, data: bytes, pos: int) -> int:
        """Read what follows a delimiter: ``--`` (close) or transport padding and CRLF."""
        line = self._line
        start = len(line)
        limit = MAX_TRANSPORT_PADDING + 2
        line += data[pos : pos + limit - start]
        if line.startswith(b"--"):
            line.clear()
            self._state = _EPILOGUE
            return len(data)
        match = _DELIMITER_LINE_END.match(line)
        if match is not None:
            consumed = match.end() - start
            line.clear()
            self._head += b"\r\n"
            self._state = _HEADERS
            return pos + consumed
        if _DELIMITER_LINE_PREFIX.fullmatch(line) is not None:
            if len(line) < limit:
                return len(data)  # all of it was taken into ``line``
            raise MultipartError(
                f"malformed multipart body: more than {MAX_TRANSPORT_PADDING} bytes of "
                f"transport padding (MAX_TRANSPORT_PADDING) after the delimiter "
                f"{self._where_delimiter()}"
            )
        raise MultipartError(
            f"malformed multipart body: after the delimiter {self._where_delimiter()} "
            f"expected '--' or CRLF, got {bytes(line[:40])!r}"
        )

    def _read_headers(self, data: bytes, pos: int, events: list[Event]) -> int:
        """Accumulate the part's header block until the empty line."""
        head = self._head  # starts with the CRLF that ended the delimiter line
        start = len(head)
        limit = MAX_HEADER_BYTES + 2
        # Take up to the empty line when it is in this chunk, else all that may still
        # be headers (an empty line across the chunks is found in ``head``), as one copy.
        taken = data.find(_HEADER_BLOCK_END, pos, pos + limit - start)
        taken = limit - start if taken < 0 else taken + len(_HEADER_BLOCK_END) - pos
        head += memoryview(data)[pos : pos + taken]
        end = head.find(_HEADER_BLOCK_END, max(0, start - 3))
        if end < 0:
            if len(head) >= limit:
                raise MultipartError(
                    f"malformed multipart body: the header block of part "
                    f"{self._parts_completed + 1} exceeds {MAX_HEADER_BYTES} bytes "
                    "(MAX_HEADER_BYTES) without an empty line"
                )
            return len(data)
        headers = _parse_header_block(head[2:end].decode("latin-1"), self._parts_completed + 1)
        consumed = end + len(_HEADER_BLOCK_END) - start
        head.clear()
        self._part_bytes = 0
        self._state = _BODY
        events.append(PartStart(headers))
        return pos + consumed

    # -- messages ---------------------------------------------------------------------

    def _where_delimiter(self) -> str:
        if self._parts_completed:
            return f"that ended part {self._parts_completed}"
        return "that opens the body"

    def _position(self) -> str:
        part = self._parts_completed + 1
        if self._state == _PREAMBLE:
            return "in the preamble, before the first delimiter"
        if self._state == _DELIMITER_LINE:
            return (
                f"right after the delimiter {self._where_delimiter()} "
                "(no '--' to close the body, no CRLF to start a part)"
            )
        if self._state == _HEADERS:
            return f"inside the headers of part {part}"
        received = self._part_bytes + len(self._carry)
        return f"inside the body of part {part}, {received} bytes into it"


def _parse_header_block(block: str, part: int) -> list[tuple[str, str]]:
    """Split a header block (CRLF-separated lines, no final CRLF) into (name, value)."""
    headers: list[tuple[str, str]] = []
    if not block:
        return headers
    for line in block.split("\r\n"):
        if "\r" in line or "\n" in line:
            raise MultipartError(
                f"malformed header line in part {part}: lines must end with CRLF: {line[:80]!r}"
            )
        if line[:1] in (" ", "\t"):
            if not headers:
                raise MultipartError(
                    f"malformed header block in part {part}: it starts with a continuation "
                    f"line: {line[:80]!r}"
                )
            name, value = headers[-1]
            continued = line.strip(" \t")
            headers[-1] = (name, f"{value} {continued}" if value else continued)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not name:
            raise MultipartError(
                f"malformed header line in part {part}: expected 'name: value', got {line[:80]!r}"
            )
        headers.append((name, value.strip(" \t")))
    return headers


def _validate_boundary(boundary: bytes | str) -> bytes:
    """Return the boundary as bytes; raise :class:`MultipartError` if it is unusable."""
    if isinstance(boundary, str):
        if not boundary.isascii():
            raise MultipartError(f"multipart boundary is not ASCII: {boundary!r}")
        boundary = boundary.encode("ascii")
    if not boundary:
        raise MultipartError("multipart boundary is empty")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise MultipartError(
            f"multipart boundary is {len(boundary)} bytes long, more than "
            f"{MAX_BOUNDARY_LENGTH} (MAX_BOUNDARY_LENGTH)"
        )
    if not all(0x20 <= byte <= 0x7E for byte in boundary):
        # The parser relies on the boundary holding no CR; control bytes never belong.
        raise MultipartError(f"multipart boundary holds non-printable bytes: {boundary!r}")
    return boundary


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type`` value into its media type and parameters.

    The media type is lowercased and stripped; parameter names are lowercased; quoted
    values are unquoted (``\\"`` and ``\\\\`` escapes, ``;`` inside quotes). When a
    parameter repeats, the first one wins; parameters without ``=`` are ignored.
    Never raises: an unterminated quoted value runs to the end of the string.
    """
    media_type, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    size = len(rest)
    while pos < size:
        # Parameter name, up to "=" or the next ";".
        eq = rest.find("=", pos)
        semi = rest.find(";", pos)
        if eq < 0 or 0 <= semi < eq:
            pos = size if semi < 0 else semi + 1
            continue
        name = rest[pos:eq].strip(" \t").lower()
        pos = eq + 1
        while pos < size and rest[pos] in " \t":
            pos += 1
        if pos < size and rest[pos] == '"':
            pos += 1
            chars: list[str] = []
            while pos < size and rest[pos] != '"':
                if rest[pos] == "\\" and pos + 1 < size:
                    pos += 1
                chars.append(rest[pos])
                pos += 1
            param = "".join(chars)
            semi = rest.find(";", pos)  # skip the closing quote and anything after it
            pos = size if semi < 0 else semi + 1
        else:
            semi = rest.find(";", pos)
            end = size if semi < 0 else semi
            param = rest[pos:end].strip(" \t")
            pos = end + 1
        if name and name not in params:
            params[name] = param
    return media_type.strip(" \t").lower(), params


def boundary_from_content_type(value: str) -> bytes:
    """Return the boundary of a ``multipart/*`` ``Content-Type`` value, as bytes.

    Raises :class:`MultipartError` if the media type is not multipart or the boundary is
    missing, empty, longer than :data:`MAX_BOUNDARY_LENGTH` or not printable ASCII.
    """
    media_type, params = parse_content_type(value)
    if not media_type.startswith("multipart/"):
        raise MultipartError(f"expected a multipart Content-Type, got {value!r}")
    boundary = params.get("boundary")
    if boundary is None:
        raise MultipartError(f"multipart Content-Type without a boundary: {value!r}")
    return _validate_boundary(boundary)
