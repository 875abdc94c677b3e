""":class:`FakeDicomWebServer`: threads, routing, authentication, QIDO and WADO-RS answers.

Every request is recorded as a :class:`RequestRecord`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hmac
import json
import secrets
import selectors
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .archive import FakeArchive, FakeInstance
from .faults import (
    CloseAfter,
    Delay,
    Fault,
    Framing,
    NotDicomPart,
    OmitInstances,
    ResetAfter,
    StallAfter,
    Status,
    TruncateAfter,
    _check_framing,
)
from .matching import (
    _TAG_KEYWORDS,
    _instance_values,
    _matches,
    _media_range,
    _series_values,
    _split_outside_quotes,
    _StudyRow,
)
from .wire import (
    MAX_HEADER_BYTES,
    FramingName,
    Segment,
    _BadRequest,
    _BodyWriter,
    _reason,
    _Request,
    _RequestReader,
    _Response,
)

#: Upper bound of any :class:`Delay` or :class:`StallAfter`, so a typo cannot hang a test.
MAX_DELAY_SECONDS = 30.0
#: Socket timeout while a request is being read or an answer written.
IO_TIMEOUT_SECONDS = 30.0
#: How long ``close()`` waits for all threads in total.
SHUTDOWN_TIMEOUT_SECONDS = 5.0
#: How often the accept loop checks for shutdown (``close()`` also wakes it at once).
ACCEPT_POLL_SECONDS = 0.5
#: After a graceful close, how long the server waits for the client's FIN (lingering close).
LINGER_SECONDS = 0.2


WARNING_TEMPLATE = "299 {+service}: There are %d additional results that can be requested"


@dataclass
class RequestRecord:
    """One request as the server saw it.

    ``path`` is the raw, still percent-encoded path (no query); ``target`` the whole request
    target; ``query`` maps each key to all its values; ``headers`` has lower-cased names
    (repeated headers joined with ``", "``). ``status`` is set once the answer is chosen
    (``None`` while delayed, or if the server shut down first). ``fault`` is the fault this
    request consumed, if any. ``connection`` numbers the TCP connection (1, 2, ... in
    accept order): equal numbers mean a kept-alive connection was reused.
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    connection: int
    status: int | None = None
    fault: Fault | None = None

    @property
    def accept(self) -> str | None:
        """The ``Accept`` header, or ``None``."""
        return self.headers.get("accept")

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header, or ``None`` (assert this when no credential)."""
        return self.headers.get("authorization")

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or ``None``."""
        values = self.query.get(name)
        return values[0] if values else None


# --------------------------------------------------------------------------- HTTP plumbing


# --------------------------------------------------------------------------- answer helpers


def _element(vr: str, *values: Any) -> dict[str, Any]:
    kept = [value for value in values if value is not None and value != ""]
    if not kept:
        return {"vr": vr}
    if vr == "PN":
        kept = [{"Alphabetic": str(value)} for value in kept]
    return {"vr": vr, "Value": kept}


def _fix_bulk_uris(node: Any, prefix: str) -> None:
    if isinstance(node, dict):
        uri = node.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith("bulkdata/"):
            node["BulkDataURI"] = prefix + uri
        for value in node.values():
            _fix_bulk_uris(value, prefix)
    elif isinstance(node, list):
        for value in node:
            _fix_bulk_uris(value, prefix)


# --------------------------------------------------------------------------- the server


@dataclass
class _Context:
    """What routing needs to know about one request."""

    request: _Request
    record: RequestRecord
    segments: list[str]
    base: str  # absolute base for URLs in answers (link form in link mode)


@dataclass
class _FaultEntry:
    match: str
    fault: Fault
    remaining: int


_RESERVED_QUERY_KEYS = {"limit", "offset", "includefield", "fuzzymatching", "album", "inbox"}


class FakeDicomWebServer:
    """A threaded, fault-injecting, Kheops-like DICOMweb server on ``127.0.0.1``.

    Args:
        archive: what QIDO and WADO answer with (empty by default); may be mutated live.
        token: the accepted credential, as Bearer, Basic password or link token; ``None``
            serves everyone (and still records each ``Authorization`` header).
        forbidden_albums: ``album=<id>`` values answered with 403 (an album token asking
            for another album).
        albums: ``album id -> study UIDs``: a study query with ``album=<id>`` lists only
            those studies (as Kheops does); an album not listed here holds every study.
        max_results: server cap on QIDO answers (``None``: no cap, like Kheops). When the cap
            (not the client's ``limit``) cut the answer short, a ``Warning`` header says
            ``There are N additional results``, N counting every match after this page.
        ignore_offset: answer the first page whatever ``offset`` says (a broken server).
        series_count_override: ``series_uid -> count`` to lie about
            NumberOfSeriesRelatedInstances (0020,1209) in series-level QIDO.
        framing: WADO-RS multipart framing: ``"chunked"`` (Kheops), ``"eof"`` (Orthanc:
            ``Connection: close``, body ended by EOF) or ``"length"`` (``Content-Length``).
        quote_boundary: write ``boundary="..."`` instead of ``boundary=...``.
        preamble: multipart preamble text (the required CRLF is added by the server).
        epilogue: bytes sent after the closing delimiter line.
        chunk_size: bytes per socket write (per chunk with chunked framing).
        boundary: a fixed multipart boundary; ``None`` draws a new 70-character one per answer.
        require_transfer_syntax_star: 406 unless ``Accept`` says ``transfer-syntax=*`` (Azure).
        keepalive_timeout: idle seconds before a keep-alive connection is closed
            (Orthanc: about 1 s).

    The options are plain attributes and may be changed between requests.
    """

    def __init__(
        self,
        archive: FakeArchive | None = None,
        *,
        token: str | None = None,
        forbidden_albums: Iterable[str] = (),
        albums: Mapping[str, Iterable[str]] | None = None,
        max_results: int | None = None,
        ignore_offset: bool = False,
        series_count_override: Mapping[str, int] | None = None,
        framing: FramingName = "chunked",
        quote_boundary: bool = False,
        preamble: bytes = b"",
        epilogue: bytes = b"",
        chunk_size: int = 64 * 1024,
        boundary: str | None = None,
        require_transfer_syntax_star: bool = False,
        keepalive_timeout: float = 10.0,
    ) -> None:
        _check_framing(framing)
        if max_results is not None and max_results < 1:
            raise ValueError("max_results must be >= 1 or None")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.archive = archive if archive is not None else FakeArchive()
        self.token = token
        self.forbidden_albums = set(forbidden_albums)
        self.albums = {album: set(uids) for album, uids in (albums or {}).items()}
        self.max_results = max_results
        self.ignore_offset = ignore_offset
        self.series_count_override = dict(series_count_override or {})
        self.framing: FramingName = framing
        self.quote_boundary = quote_boundary
        self.preamble = preamble
        self.epilogue = epilogue
        self.chunk_size = chunk_size
        self.boundary = boundary
        self.require_transfer_syntax_star = require_transfer_syntax_star
        self.keepalive_timeout = keepalive_timeout

        self._lock = threading.Lock()
        self._faults: list[_FaultEntry] = []
        self._requests: list[RequestRecord] = []
        self._errors: list[str] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._port: int | None = None
        self._connection_count = 0

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeDicomWebServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and start serving in a background thread."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._wakeup = socket.socketpair()
        self._port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"fakeserver-accept-{self._port}", daemon=True
        )
        self._accept_thread.start()

    def close(self) -> None:
        """Stop serving: wake delays, shut down connections, join threads (bounded)."""
        if self._listener is None or self._stopping.is_set():
            return
        self._stopping.set()
        assert self._wakeup is not None
        with contextlib.suppress(OSError):
            self._wakeup[1].send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        self._listener.close()
        for end in self._wakeup:
            end.close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ----------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The TCP port (after ``start()``)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/api``, the DICOMweb root (Kheops layout)."""
        return f"{self.origin}/api"

    def link_url(self, token: str | None = None) -> str:
        """The link-form root ``.../api/link/<token>`` (default: the server's token)."""
        chosen = token if token is not None else self.token
        if chosen is None:
            raise ValueError("no token: pass one")
        return f"{self.base_url}/link/{quote(chosen, safe='')}"

    # ----------------------------------------------------------------- faults and stats

    def add_fault(self, match: str, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` requests whose target contains ``match``.

        ``match`` is looked for in the raw request target (path and query) and in the
        percent-decoded path; ``""`` matches everything. Faults are tried in the order they
        were added; a request consumes at most one (the first with a remaining count).
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if not isinstance(fault, Fault):
            raise TypeError(f"not a Fault: {fault!r}")
        with self._lock:
            self._faults.append(_FaultEntry(match, fault, times))

    def pending_faults(self) -> list[tuple[str, Fault, int]]:
        """Faults not yet used up, as ``(match, fault, remaining)``."""
        with self._lock:
            return [(e.match, e.fault, e.remaining) for e in self._faults if e.remaining > 0]

    def clear_faults(self) -> None:
        """Forget every scripted fault."""
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_matching(self, match: str) -> list[RequestRecord]:
        """The recorded requests whose target contains ``match``."""
        return [record for record in self.requests if match in record.target]

    @property
    def errors(self) -> list[str]:
        """Tracebacks of unexpected server-side exceptions (should stay empty)."""
        with self._lock:
            return list(self._errors)

    @property
    def in_flight(self) -> int:
        """Requests being served right now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Highest number of requests served at once since start or :meth:`reset_stats`.

        A request counts from the moment its head is parsed (before any :class:`Delay`)
        until its answer is fully sent: the count drops just before the last byte (or the
        reset) leaves, so once a client has read a whole answer the request no longer
        counts, and a client that never runs more than N requests at once never shows
        more than N here.
        """
        with self._lock:
            return self._max_in_flight

    def reset_stats(self) -> None:
        """Clear the request log and restart ``max_in_flight`` from the current count."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight

    # ----------------------------------------------------------------- connections

    def _accept_loop(self) -> None:
        try:
            self._accept_connections()
        except Exception:
            with self._lock:
                self._errors.append(traceback.format_exc())

    def _accept_connections(self) -> None:
        assert self._listener is not None
        assert self._wakeup is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wakeup[0], selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = selector.select(ACCEPT_POLL_SECONDS)
                if not any(key.fileobj is self._listener for key, _ in ready):
                    continue
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    continue
                self._spawn(conn)

    def _spawn(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the client already gave up
            conn.close()
            return
        self._connection_count += 1  # only the accept thread writes it
        thread = threading.Thread(
            target=self._serve_connection,
            args=(conn, self._connection_count),
            name=f"fakeserver-conn-{self._port}",
            daemon=True,
        )
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            self._connections.add(conn)
            self._threads.add(thread)
        thread.start()

    def _serve_connection(self, conn: socket.socket, number: int) -> None:
        how = "close"
        reader = _RequestReader(conn)
        try:
            while not self._stopping.is_set():
                conn.settimeout(self.keepalive_timeout)
                try:
                    request = reader.read_request()
                except _BadRequest as exc:
                    conn.settimeout(IO_TIMEOUT_SECONDS)
                    self._send_bad_request(conn, exc)
                    break
                if request is None:
                    break
                conn.settimeout(IO_TIMEOUT_SECONDS)
                how = self._handle(conn, request, number)
                if how != "keep":
                    break
        except OSError:
            pass  # the client went away, timed out, or close() shut the socket down
        except Exception:
            with self._lock:
                self._errors.append(traceback.format_exc())
        finally:
            self._release(conn, reset=how == "reset")
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _release(self, conn: socket.socket, *, reset: bool) -> None:
        with self._lock:
            self._connections.discard(conn)
        try:
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif not self._stopping.is_set():
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(LINGER_SECONDS)
                drained = 0
                while drained < MAX_HEADER_BYTES:
                    data = conn.recv(4096)
                    if not data:
                        break
                    drained += len(data)
        except OSError:
            pass
        finally:
            conn.close()

    # ----------------------------------------------------------------- request handling

    def _handle(self, conn: socket.socket, request: _Request, number: int) -> str:
        """Answer one request; return ``"keep"``, ``"close"`` or ``"reset"``."""
        split = urlsplit(request.target)
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = RequestRecord(
            method=request.method,
            target=request.target,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            connection=number,
        )
        fault = self._take_fault(request.target, unquote(split.path))
        record.fault = fault
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        counted = True

        def answered() -> None:
            nonlocal counted
            if counted:
                counted = False
                with self._lock:
                    self._in_flight -= 1

        try:
            if isinstance(fault, Delay):
                self._stopping.wait(min(fault.seconds, MAX_DELAY_SECONDS))
                if self._stopping.is_set():
                    return "close"
            response = self._answer(request, record, split.path, fault)
            record.status = response.status
            return self._send(conn, request, response, fault, answered)
        finally:
            answered()

    def _take_fault(self, target: str, decoded_path: str) -> Fault | None:
        with self._lock:
            for entry in self._faults:
                if entry.remaining > 0 and (entry.match in target or entry.match in decoded_path):
                    entry.remaining -= 1
                    return entry.fault
        return None

    def _answer(
        self, request: _Request, record: RequestRecord, raw_path: str, fault: Fault | None
    ) -> _Response:
        if isinstance(fault, Status):
            return self._status_fault(fault)
        if request.method != "GET":
            return self._plain(405, b"only GET is served", [("Allow", "GET")])
        raw = raw_path.split("/")
        if len(raw) < 2 or raw[0] != "" or raw[1] != "api":
            return self._plain(404, b"not under /api")
        rest = raw[2:]
        link_token: str | None = None
        base = self.base_url
        if rest[:1] == ["link"]:
            if len(rest) < 2:
                return self._plain(404, b"link without token")
            link_token = unquote(rest[1])
            base = f"{self.base_url}/link/{rest[1]}"
            rest = rest[2:]
        while rest and rest[-1] == "":
            rest.pop()
        if not self._authorized(link_token, request.header("authorization")):
            return self._plain(
                401, b"missing or bad token", [("WWW-Authenticate", 'Bearer realm="kheops"')]
            )
        album = record.param("album")
        if album is not None and (record.param("inbox") or "").lower() == "true":
            return self._plain(400, b"album and inbox=true are mutually exclusive")
        if album is not None and album in self.forbidden_albums:
            return self._plain(403, b"this token does not grant that album")
        context = _Context(request, record, [unquote(piece) for piece in rest], base)
        try:
            return self._route(context, fault)
        except _BadRequest as exc:
            return self._plain(exc.status, str(exc).encode())

    def _authorized(self, link_token: str | None, authorization: str | None) -> bool:
        """Kheops: a link token alone decides; else Bearer, or Basic with the token as password."""
        if self.token is None:
            return True
        expected = self.token.encode()
        if link_token is not None:
            return hmac.compare_digest(link_token.encode(), expected)
        if not authorization:
            return False
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer":
            return hmac.compare_digest(credential.encode(), expected)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True)
            except (binascii.Error, ValueError):
                return False
            _, sep, password = decoded.partition(b":")
            return bool(sep) and hmac.compare_digest(password, expected)
        return False

    def _route(self, ctx: _Context, fault: Fault | None) -> _Response:
        seg = ctx.segments
        n = len(seg)
        if n == 0 or seg[0] != "studies":
            # Kheops has no root /series or /instances QIDO resource.
            return self._plain(404, b"no such resource")
        if n == 1:
            return self._qido_studies(ctx)
        study = seg[1]
        if n == 2:
            return self._wado(ctx, study, None, None, fault)
        if n == 3 and seg[2] == "metadata":
            return self._metadata(ctx, study, None, None)
        if n == 3 and seg[2] == "series":
            return self._qido_series(ctx, study)
        if n == 3 and seg[2] == "instances":
            return self._qido_instances(ctx, study, None)
        if n >= 4 and seg[2] == "series":
            series = seg[3]
            if n == 4:
                return self._wado(ctx, study, series, None, fault)
            if n == 5 and seg[4] == "metadata":
                return self._metadata(ctx, study, series, None)
            if n == 5 and seg[4] == "instances":
                return self._qido_instances(ctx, study, series)
            if n >= 6 and seg[4] == "instances":
                sop = seg[5]
                if n == 6:
                    return self._wado(ctx, study, series, sop, fault)
                if n == 7 and seg[6] == "metadata":
                    return self._metadata(ctx, study, series, sop)
        return self._plain(404, b"no such resource")

    # ----------------------------------------------------------------- QIDO-RS

    def _paging(self, ctx: _Context) -> tuple[int | None, int]:
        def number(name: str, minimum: int) -> int | None:
            text = ctx.record.param(name)
            if text is None:
                return None
            try:
                value = int(text)
            except ValueError as exc:
                raise _BadRequest(400, f"{name} must be an integer") from exc
            if value < minimum:
                raise _BadRequest(400, f"{name} must be >= {minimum}")
            return value

        limit = number("limit", 1)
        offset = number("offset", 0) or 0
        return limit, 0 if self.ignore_offset else offset

    def _filters(self, ctx: _Context) -> list[tuple[str, str]]:
        filters = []
        for key, values in ctx.record.query.items():
            if key in _RESERVED_QUERY_KEYS or not values:
                continue
            keyword = _TAG_KEYWORDS.get(key.upper(), key)
            filters.append((keyword, values[-1]))
        return filters

    def _fuzzy(self, ctx: _Context) -> bool:
        return (ctx.record.param("fuzzymatching") or "").lower() == "true"

    def _qido_answer(
        self, ctx: _Context, matches: list[dict[str, Any]], *, study_level: bool
    ) -> _Response:
        """Page ``matches`` (Kheops: X-Total-Count, 204 when empty, Warning when capped)."""
        limit, offset = self._paging(ctx)
        total = len(matches)
        size = limit
        capped = self.max_results is not None and (limit is None or limit > self.max_results)
        if capped:
            size = self.max_results
        page = matches[offset:] if size is None else matches[offset : offset + size]
        headers = [("X-Total-Count", str(total))]
        remaining = total - offset - len(page)
        if capped and remaining > 0:
            value = WARNING_TEMPLATE % remaining
            headers.append(("Warning", f"Warning: {value}" if study_level else value))
        if not page:
            return _Response(204, headers)
        body = json.dumps(page).encode()
        headers.append(("Content-Type", "application/dicom+json"))
        return _Response(200, headers, [body])

    def _qido_studies(self, ctx: _Context) -> _Response:
        """Study-level QIDO; filters Kheops does not honour here are ignored."""
        filters = self._filters(ctx)
        fuzzy = self._fuzzy(ctx)
        album = self.albums.get(ctx.record.param("album") or "")
        rows = []
        for study_uid, by_series in self.archive.tree().items():
            if album is not None and study_uid not in album:
                continue
            instances = [item for items in by_series.values() for item in items]
            if not instances:
                continue
            row = _StudyRow(study_uid, instances[0], by_series)
            if all(
                values is None or _matches(key, pattern, values, fuzzy=fuzzy)
                for key, pattern in filters
                for values in [row.values(key)]
            ):
                rows.append(self._study_json(ctx, row))
        return self._qido_answer(ctx, rows, study_level=True)

    def _study_json(self, ctx: _Context, row: _StudyRow) -> dict[str, Any]:
        first = row.first
        return {
            "00080020": _element("DA", first.study_date),
            "00080030": _element("TM", first.study_time),
            "00080050": _element("SH", first.accession_number),
            "00080061": _element("CS", *row.modalities),
            "00081030": _element("LO", first.study_description),
            "00081190": _element("UR", self._url(ctx.base, row.uid)),
            "00100010": _element("PN", first.patient_name),
            "00100020": _element("LO", first.patient_id),
            "0020000D": _element("UI", row.uid),
            "00201206": _element("IS", len(row.series)),
            "00201208": _element("IS", row.instance_count),
        }

    def _study_or_404(self, study_uid: str) -> dict[str, list[FakeInstance]]:
        by_series = self.archive.tree().get(study_uid)
        if not by_series:
            # Kheops checks access to the study first: unknown means 404 (Orthanc: 200 []).
            raise _BadRequest(404, "study not found")
        return by_series

    def _qido_series(self, ctx: _Context, study_uid: str) -> _Response:
        """Series-level QIDO under one study; unknown filter keys are ignored."""
        by_series = self._study_or_404(study_uid)
        filters = self._filters(ctx)
        fuzzy = self._fuzzy(ctx)
        rows = []
        for series_uid, items in by_series.items():
            if not items:
                continue
            first = items[0]
            if not all(
                values is None or _matches(key, pattern, values, fuzzy=fuzzy)
                for key, pattern in filters
                for values in [_series_values(series_uid, first, key)]
            ):
                continue
            count = self.series_count_override.get(series_uid, len(items))
            rows.append(
                {
                    "00080021": _element("DA", first.series_date),
                    "00080031": _element("TM", first.series_time),
                    "00080060": _element("CS", first.modality),
                    "0008103E": _element("LO", first.series_description),
                    "00081190": _element("UR", self._url(ctx.base, study_uid, series_uid)),
                    "00100020": _element("LO", first.patient_id),
                    "0020000D": _element("UI", study_uid),
                    "0020000E": _element("UI", series_uid),
                    "00200011": _element("IS", first.series_number),
                    "00201209": _element("IS", count),
                }
            )
        return self._qido_answer(ctx, rows, study_level=False)

    def _qido_instances(self, ctx: _Context, study_uid: str, series_uid: str | None) -> _Response:
        """Instance-level QIDO under a series, or under a whole study."""
        by_series = self._study_or_404(study_uid)
        if series_uid is not None and series_uid not in by_series:
            raise _BadRequest(404, "series not found")
        chosen = [series_uid] if series_uid is not None else list(by_series)
        filters = self._filters(ctx)
        rows = []
        for uid in chosen:
            for item in by_series[uid]:
                if not all(
                    values is None or _matches(key, pattern, values, fuzzy=False)
                    for key, pattern in filters
                    for values in [_instance_values(item, key)]
                ):
                    continue
                url = self._url(ctx.base, study_uid, uid, item.sop_uid)
                rows.append(
                    {
                        "00080016": _element("UI", item.sop_class_uid),
                        "00080018": _element("UI", item.sop_uid),
                        "00081190": _element("UR", url),
                        "0020000D": _element("UI", study_uid),
                        "0020000E": _element("UI", uid),
                        "00200013": _element("IS", item.instance_number),
                    }
                )
        return self._qido_answer(ctx, rows, study_level=False)

    @staticmethod
    def _url(base: str, study: str, series: str | None = None, sop: str | None = None) -> str:
        url = f"{base}/studies/{quote(study, safe='')}"
        if series is not None:
            url += f"/series/{quote(series, safe='')}"
        if sop is not None:
            url += f"/instances/{quote(sop, safe='')}"
        return url

    # ----------------------------------------------------------------- WADO-RS

    def _select(
        self, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> list[tuple[str, list[FakeInstance]]]:
        """The (series UID, instances) a retrieve covers, in archive order; 404 if unknown."""
        by_series = self._study_or_404(study_uid)
        if series_uid is None:
            return list(by_series.items())
        if series_uid not in by_series:
            raise _BadRequest(404, "series not found")
        items = by_series[series_uid]
        if sop_uid is None:
            return [(series_uid, items)]
        for item in items:
            if item.sop_uid == sop_uid:
                return [(series_uid, [item])]
        raise _BadRequest(404, "instance not found")

    def _check_accept(self, accept: str | None) -> str | None:
        """Why ``accept`` gets a 406 (Kheops/Orthanc want exactly one dicom media range)."""
        if accept is None or accept.strip() in ("", "*/*"):
            return None
        ranges = _split_outside_quotes(accept, ",")
        if len(ranges) > 1:
            return "several media ranges in Accept"
        media_type, params = _media_range(ranges[0])
        if media_type != "multipart/related":
            return f"{media_type} is not served, ask for multipart/related"
        if params.get("type", "application/dicom").lower() != "application/dicom":
            return f"type={params['type']} is not served"
        if self.require_transfer_syntax_star and params.get("transfer-syntax") != "*":
            return "transcoding refused: ask for transfer-syntax=*"
        return None

    def _wado(
        self,
        ctx: _Context,
        study_uid: str,
        series_uid: str | None,
        sop_uid: str | None,
        fault: Fault | None,
    ) -> _Response:
        """A multipart/related retrieve, one application/dicom part per instance."""
        refusal = self._check_accept(ctx.request.header("accept"))
        if refusal is not None:
            return self._plain(406, refusal.encode())
        selection = self._select(study_uid, series_uid, sop_uid)
        parts: list[tuple[FakeInstance, str]] = []
        for uid, items in selection:
            kept = items
            if isinstance(fault, OmitInstances) and fault.series_uid in (None, uid):
                kept = items[: max(0, len(items) - fault.count)]
            parts.extend((item, uid) for item in kept)

        options = fault if isinstance(fault, Framing) else Framing()
        framing = options.framing or self.framing
        if framing == "chunked" and ctx.request.version != "HTTP/1.1":
            framing = "eof"
        quoted = self.quote_boundary if options.quote_boundary is None else options.quote_boundary
        preamble = self.preamble if options.preamble is None else options.preamble
        epilogue = self.epilogue if options.epilogue is None else options.epilogue
        boundary = options.boundary or self.boundary or secrets.token_hex(35)
        encoded = boundary.encode("latin-1")

        segments: list[Segment] = []
        if preamble:
            segments.append(preamble + b"\r\n")
        for index, (item, uid) in enumerate(parts):
            payload = item.data
            if isinstance(fault, NotDicomPart) and fault.index == index:
                payload = fault.payload
            location = self._url(ctx.base, study_uid, uid, item.sop_uid)
            head = [
                b"--" + encoded if index == 0 else b"\r\n--" + encoded,
                b"Content-Type: application/dicom",
                b"Content-Length: %d" % len(payload),
                b"Content-Location: " + location.encode("latin-1"),
                b"X-Part-Index: %d" % index,
                b"MIME-Version: 1.0",
                b"",
                b"",
            ]
            segments.extend((b"\r\n".join(head), payload))
        tail = (b"\r\n--" if parts else b"--") + encoded + b"--\r\n" + epilogue
        segments.append(tail)
        shown = f'"{boundary}"' if quoted else boundary
        content_type = f'multipart/related; type="application/dicom"; boundary={shown}'
        return _Response(
            200,
            [("Content-Type", content_type)],
            segments,
            framing=framing,
            chunk_size=options.chunk_size or self.chunk_size,
            tail_len=len(tail),
        )

    def _metadata(
        self, ctx: _Context, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> _Response:
        """WADO-RS metadata: a DICOM JSON array, bulk data as absolute ``BulkDataURI``."""
        answer = []
        for uid, items in self._select(study_uid, series_uid, sop_uid):
            for item in items:
                url = self._url(ctx.base, study_uid, uid, item.sop_uid)
                if item.metadata is None:
                    answer.append(
                        {
                            "00080018": _element("UI", item.sop_uid),
                            "0020000D": _element("UI", study_uid),
                            "0020000E": _element("UI", uid),
                        }
                    )
                    continue
                entry = copy.deepcopy(dict(item.metadata))
                _fix_bulk_uris(entry, url + "/")
                answer.append(entry)
        body = json.dumps(answer).encode()
        return _Response(200, [("Content-Type", "application/dicom+json")], [body])

    # ----------------------------------------------------------------- writing answers

    def _plain(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (),
        content_type: str = "text/plain; charset=utf-8",
    ) -> _Response:
        all_headers = list(headers)
        if body:
            all_headers.append(("Content-Type", content_type))
        return _Response(status, all_headers, [body] if body else [])

    def _status_fault(self, fault: Status) -> _Response:
        headers: list[tuple[str, str]] = []
        if fault.retry_after is not None:
            value = fault.retry_after
            headers.append(("Retry-After", value if isinstance(value, str) else f"{value:g}"))
        if fault.code == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="kheops"'))
        return self._plain(fault.code, fault.body, headers, fault.content_type)

    def _send_bad_request(self, conn: socket.socket, error: _BadRequest) -> None:
        response = self._plain(error.status, str(error).encode())
        closing = _Request("GET", "/", "HTTP/1.1", [("Connection", "close")])
        self._send(conn, closing, response, None, lambda: None)

    def _send(
        self,
        conn: socket.socket,
        request: _Request,
        response: _Response,
        fault: Fault | None,
        before_last_byte: Callable[[], None],
    ) -> str:
        """Frame and write ``response``, applying a body fault; return the connection's fate.

        ``before_last_byte`` runs just before the answer's last byte is written (or before
        the reset/close that ends it), so a client that has the whole answer never sees
        the request still counted in flight.
        """
        total = response.content_length
        has_body = response.status not in (204, 304) and response.status >= 200
        cut = total
        if isinstance(fault, TruncateAfter):
            cut = min(fault.nbytes, total - response.tail_len)
        elif isinstance(fault, (ResetAfter, CloseAfter)):
            cut = min(fault.nbytes, total)
        keep_alive = request.keep_alive and response.framing != "eof"

        lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        lines.append("Server: kheops-async-fakeserver")
        if has_body:
            if response.framing == "length":
                announced = cut if isinstance(fault, TruncateAfter) else total
                lines.append(f"Content-Length: {announced}")
            elif response.framing == "chunked":
                lines.append("Transfer-Encoding: chunked")
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not has_body:
            before_last_byte()
            conn.sendall(head)
            if isinstance(fault, ResetAfter):
                return "reset"
            return "keep" if keep_alive else "close"
        conn.sendall(head)

        writer = _BodyWriter(
            conn, chunked=response.framing == "chunked", chunk_size=response.chunk_size
        )
        if isinstance(fault, StallAfter) and fault.nbytes < cut:
            writer.write_range(response.segments, 0, fault.nbytes)
            writer.flush()
            self._stopping.wait(min(fault.seconds, MAX_DELAY_SECONDS))
            if self._stopping.is_set():
                return "close"
            writer.write_range(response.segments, fault.nbytes, cut)
        else:
            writer.write_range(response.segments, 0, cut)
        broken = isinstance(fault, (ResetAfter, CloseAfter))
        writer.finish(before_last_byte, terminate=not broken)
        if isinstance(fault, ResetAfter):
            return "reset"
        if broken:
            return "close"
        return "keep" if keep_alive else "close"
