"""A fault-injecting, Kheops-like DICOMweb server for tests Orthanc cannot cover.

The server speaks real HTTP/1.1 over a real TCP socket on ``127.0.0.1`` (never any
other interface), from background threads, so the same instance serves asyncio and
trio tests, plain ``httpx`` tests and CLI subprocesses alike::

    archive = FakeArchive([...])
    with FakeDicomWebServer(archive, token="secret") as srv:
        srv.add_fault("/series/1.2.3", Status(503, retry_after=0.1), times=2)
        ...  # talk to srv.base_url == "http://127.0.0.1:PORT/api"
        assert srv.max_in_flight <= 4

What it imitates, and where it departs from a real server:

- **Kheops** (the default): base path ``/api``; Bearer, Basic (token as password) and
  ``/api/link/<token>/...`` credentials; ``album``/``inbox`` narrowing with 400/403;
  QIDO at ``/studies``, ``/studies/{S}/series``, ``/studies/{S}/series/{R}/instances`` and
  ``/studies/{S}/instances`` only (root ``/series`` and ``/instances`` are 404);
  ``X-Total-Count`` on every QIDO answer; ``204`` for an empty page; ``limit >= 1`` and
  ``offset >= 0`` or 400; unknown study-level filter keys (``Modality``) silently ignored;
  the two spellings of the truncation ``Warning`` header; ``RetrieveURL`` carrying the
  link token in link mode; chunked WADO-RS answers (``framing="chunked"``).
- **Orthanc** WADO-RS framing on request: ``framing="eof"`` answers with
  ``Connection: close``, no ``Content-Length``, no chunking, body ended by EOF, and an
  unquoted 70-character boundary; ``keepalive_timeout=1.0`` mimics its idle-connection
  closing.
- **dcm4chee / Google / Azure** paging: ``max_results`` caps every QIDO answer and adds the
  ``Warning: 299`` header; ``ignore_offset`` imitates a broken server that always answers
  the first page; ``require_transfer_syntax_star`` imitates Azure's 406.

Everything a real server would validate is deliberately left unvalidated: QIDO and WADO
answer with whatever UIDs the archive holds (``../../evil`` included), and a part's bytes
are sent as stored even when they are not DICOM.

Faults (:class:`Status`, :class:`ResetAfter`, :class:`TruncateAfter`, :class:`CloseAfter`,
:class:`StallAfter`, :class:`Delay`, :class:`NotDicomPart`, :class:`OmitInstances`,
:class:`Framing`) are scripted with :meth:`FakeDicomWebServer.add_fault`; each request
consumes at most one fault. Every request is recorded (:attr:`FakeDicomWebServer.requests`)
and concurrency is measured (:attr:`FakeDicomWebServer.max_in_flight`).

Shutdown (``close()`` / leaving the ``with`` block) is bounded: delays and stalls wake up,
every open connection is shut down, every thread is joined and every socket is closed, so
tests running with ``-W error`` see no ``ResourceWarning``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import io
import json
import random
import re
import secrets
import selectors
import socket
import struct
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

__all__ = [
    "CloseAfter",
    "Delay",
    "FakeArchive",
    "FakeDicomWebServer",
    "FakeInstance",
    "Fault",
    "Framing",
    "InstanceLike",
    "NotDicomPart",
    "OmitInstances",
    "RequestRecord",
    "ResetAfter",
    "StallAfter",
    "Status",
    "TruncateAfter",
    "make_instance",
    "make_tree_archive",
    "parse_part10",
]

FramingName = Literal["eof", "chunked", "length"]

#: Largest request head (request line + headers) accepted; larger gets 431.
MAX_HEADER_BYTES = 64 * 1024
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
#: Binary elements larger than this are given as ``BulkDataURI`` in metadata answers.
BULK_DATA_THRESHOLD = 1024

WARNING_TEMPLATE = "299 {+service}: There are %d additional results that can be requested"

_SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"


# --------------------------------------------------------------------------- data model


class InstanceLike(Protocol):
    """What :class:`FakeArchive` accepts besides :class:`FakeInstance` (e.g. a test fixture)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    modality: str
    data: bytes


@dataclass(frozen=True, eq=False)
class FakeInstance:
    """One stored instance: its UIDs, its Part-10 bytes, and the attributes QIDO reports.

    Nothing is validated: UIDs may be any string and ``data`` need not be DICOM.
    ``metadata`` is the instance's DICOM JSON (``None`` when ``data`` could not be parsed;
    the server then answers with the UIDs only). Study attributes of a study come from its
    first instance, series attributes from the series' first instance.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    modality: str = ""
    series_date: str = ""
    series_time: str = ""
    series_number: int | None = None
    series_description: str = ""
    sop_class_uid: str = ""
    instance_number: int | None = None
    metadata: Mapping[str, Any] | None = field(default=None, repr=False)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _integer(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _relative_bulk_uri(element: DataElement) -> str:
    return f"bulkdata/{element.tag:08X}"


def parse_part10(data: bytes, **overrides: Any) -> FakeInstance:
    """Build a :class:`FakeInstance` from Part-10 bytes, reading its attributes with pydicom.

    ``overrides`` (any :class:`FakeInstance` field) win over what the file says. Invalid
    values do not warn (warnings are silenced here, in the calling thread). If ``data`` is
    not DICOM, ``study_uid``, ``series_uid`` and ``sop_uid`` must be given as overrides.

    Raises:
        ValueError: ``data`` is not DICOM and a UID override is missing.
    """
    attrs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(io.BytesIO(data))
        except Exception:  # not DICOM at all: only the overrides describe it
            ds = None
        if ds is not None:
            attrs = {
                "study_uid": _text(ds.get("StudyInstanceUID")),
                "series_uid": _text(ds.get("SeriesInstanceUID")),
                "sop_uid": _text(ds.get("SOPInstanceUID")),
                "patient_id": _text(ds.get("PatientID")),
                "patient_name": _text(ds.get("PatientName")),
                "study_date": _text(ds.get("StudyDate")),
                "study_time": _text(ds.get("StudyTime")),
                "study_description": _text(ds.get("StudyDescription")),
                "accession_number": _text(ds.get("AccessionNumber")),
                "modality": _text(ds.get("Modality")),
                "series_date": _text(ds.get("SeriesDate")),
                "series_time": _text(ds.get("SeriesTime")),
                "series_number": _integer(ds.get("SeriesNumber")),
                "series_description": _text(ds.get("SeriesDescription")),
                "sop_class_uid": _text(ds.get("SOPClassUID")),
                "instance_number": _integer(ds.get("InstanceNumber")),
            }
            try:
                attrs["metadata"] = ds.to_json_dict(
                    bulk_data_threshold=BULK_DATA_THRESHOLD,
                    bulk_data_element_handler=_relative_bulk_uri,
                    suppress_invalid_tags=True,
                )
            except Exception:  # metadata of a hostile file: fall back to UIDs only
                attrs["metadata"] = None
    attrs.update(overrides)
    missing = [key for key in ("study_uid", "series_uid", "sop_uid") if key not in attrs]
    if missing:
        raise ValueError(f"data is not DICOM: give {', '.join(missing)} explicitly")
    return FakeInstance(data=data, **attrs)


class FakeArchive:
    """Studies -> series -> instances, in insertion order, safe to mutate while served.

    Build it from :class:`FakeInstance` objects or from any objects with ``study_uid``,
    ``series_uid``, ``sop_uid``, ``patient_id``, ``modality`` and ``data`` attributes (the
    other QIDO attributes are read from ``data`` with pydicom). :meth:`add_raw` inserts
    hostile entries verbatim. A series may hold the same SOP Instance UID twice; WADO of a
    single instance then returns the first.
    """

    def __init__(self, items: Iterable[InstanceLike | FakeInstance] = ()) -> None:
        self._lock = threading.RLock()
        self._studies: dict[str, dict[str, list[FakeInstance]]] = {}
        for item in items:
            self.add(item)

    @classmethod
    def from_objects(cls, items: Iterable[InstanceLike | FakeInstance]) -> FakeArchive:
        """Same as ``FakeArchive(items)``."""
        return cls(items)

    def add(self, item: InstanceLike | FakeInstance) -> FakeInstance:
        """Store ``item``; an :class:`InstanceLike` is parsed (its own attributes win)."""
        if isinstance(item, FakeInstance):
            return self.add_instance(item)
        return self.add_part10(
            item.data,
            study_uid=item.study_uid,
            series_uid=item.series_uid,
            sop_uid=item.sop_uid,
            patient_id=item.patient_id,
            modality=item.modality,
        )

    def add_part10(self, data: bytes, **overrides: Any) -> FakeInstance:
        """Parse ``data`` (see :func:`parse_part10`) and store the result."""
        return self.add_instance(parse_part10(data, **overrides))

    def add_raw(
        self, study_uid: str, series_uid: str, sop_uid: str, data: bytes, **attrs: Any
    ) -> FakeInstance:
        """Store an entry verbatim: no parsing, no validation (hostile UIDs, non-DICOM data)."""
        return self.add_instance(
            FakeInstance(
                study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, data=data, **attrs
            )
        )

    def add_instance(self, instance: FakeInstance) -> FakeInstance:
        """Store a ready-made :class:`FakeInstance`."""
        with self._lock:
            series = self._studies.setdefault(instance.study_uid, {})
            series.setdefault(instance.series_uid, []).append(instance)
        return instance

    def tree(self) -> dict[str, dict[str, list[FakeInstance]]]:
        """A consistent copy of the whole hierarchy."""
        with self._lock:
            return {
                study: {series: list(items) for series, items in by_series.items()}
                for study, by_series in self._studies.items()
            }

    def study_uids(self) -> list[str]:
        """The study UIDs, in insertion order."""
        with self._lock:
            return list(self._studies)

    def series_uids(self, study_uid: str) -> list[str]:
        """The series UIDs of one study (empty if unknown)."""
        with self._lock:
            return list(self._studies.get(study_uid, {}))

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[FakeInstance]:
        """The instances of a series, or of a whole study when ``series_uid`` is ``None``."""
        with self._lock:
            by_series = self._studies.get(study_uid, {})
            if series_uid is not None:
                return list(by_series.get(series_uid, []))
            return [item for items in by_series.values() for item in items]

    def all_instances(self) -> list[FakeInstance]:
        """Every instance, study by study, series by series."""
        with self._lock:
            return [
                item
                for by_series in self._studies.values()
                for items in by_series.values()
                for item in items
            ]

    def __len__(self) -> int:
        return len(self.all_instances())


def make_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    patient_id: str = "P1",
    modality: str = "CT",
    seed: int = 0,
    size: int = 1024,
    patient_name: str | None = None,
    study_date: str = "20240102",
    study_time: str = "101500",
    series_number: int = 1,
    series_description: str = "",
    instance_number: int = 1,
) -> bytes:
    """Return a small, valid, deterministic DICOM Part-10 file (Explicit VR Little Endian).

    The same arguments always give the same bytes. ``size`` is the approximate number of
    pixel bytes (8-bit monochrome, rounded up to whole rows of at most 1024 columns); the
    pixel values are pseudo-random from ``seed`` and the UIDs. Hostile UID strings
    (``../../evil``, over-long values) are written as given: pydicom's validation warnings
    are silenced in the calling thread.
    """
    columns = max(2, min(1024, size + size % 2))
    rows = max(1, -(-size // columns))
    digest = hashlib.sha256(f"{seed}|{study_uid}|{series_uid}|{sop_uid}".encode()).digest()
    pixels = random.Random(int.from_bytes(digest[:8], "big")).randbytes(rows * columns)
    sop_class = _SOP_CLASS_BY_MODALITY.get(modality.upper(), _SECONDARY_CAPTURE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(_IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = "FAKESERVER_1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = study_date
        ds.SeriesDate = study_date
        ds.StudyTime = study_time
        ds.SeriesTime = study_time
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.StudyDescription = "Fake study"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name if patient_name is not None else f"Patient^{patient_id}"
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_number
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.add(DataElement(0x7FE00010, "OB", pixels))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- faults


class Fault:
    """Base of every scripted fault; see :meth:`FakeDicomWebServer.add_fault`."""


@dataclass(frozen=True)
class Status(Fault):
    """Answer ``code`` instead of the real answer (before authentication and routing).

    ``retry_after`` adds ``Retry-After`` (a number is written as ``%g``: fractions allowed,
    so retry tests stay fast; a string is sent verbatim, e.g. an HTTP date). A 401 also
    carries ``WWW-Authenticate``. The connection is kept alive. Imitates a busy gateway
    (503, 429 storms with ``times=N``), a crashing server (500), a vanished resource, or
    a proxy's maintenance page (``200`` with ``content_type="text/html"`` and a body).
    """

    code: int
    retry_after: float | str | None = None
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class ResetAfter(Fault):
    """Send the status line, the headers and ``nbytes`` of the body, then a TCP RST.

    The RST comes from closing with ``SO_LINGER`` on and a zero timeout (a crashed proxy).
    A client sees ``ConnectionResetError`` (httpx: ``ReadError``/``RemoteProtocolError``).
    """

    nbytes: int

    def __post_init__(self) -> None:
        _check_non_negative("nbytes", self.nbytes)


@dataclass(frozen=True)
class TruncateAfter(Fault):
    """Cut the content after ``nbytes`` while keeping the HTTP message itself complete.

    For a multipart answer the closing delimiter is never sent (``nbytes`` is capped just
    before it). ``eof`` framing: clean EOF; ``chunked``: the stream ends with a proper
    zero-size chunk; ``length``: ``Content-Length`` announces the truncated size. Only the
    multipart layer can tell: this is how Kheops reports an upstream failure after the 200
    of a study retrieve has started.
    """

    nbytes: int

    def __post_init__(self) -> None:
        _check_non_negative("nbytes", self.nbytes)


@dataclass(frozen=True)
class CloseAfter(Fault):
    """Send ``nbytes`` of the body, then close cleanly (FIN) with the HTTP message unfinished.

    Unlike :class:`TruncateAfter` the HTTP framing is broken: ``Content-Length`` or the
    chunked stream promised more (httpx: ``RemoteProtocolError``). With ``eof`` framing it
    is a clean EOF mid-part.
    """

    nbytes: int

    def __post_init__(self) -> None:
        _check_non_negative("nbytes", self.nbytes)


@dataclass(frozen=True)
class StallAfter(Fault):
    """Send ``nbytes`` of the body, go silent for ``seconds``, then finish normally.

    For read-timeout tests; the pause is capped by ``MAX_DELAY_SECONDS`` and cut short by
    shutdown.
    """

    nbytes: int
    seconds: float

    def __post_init__(self) -> None:
        _check_non_negative("nbytes", self.nbytes)
        _check_non_negative("seconds", self.seconds)


@dataclass(frozen=True)
class Delay(Fault):
    """Sleep ``seconds`` before answering (counted in flight), then answer normally.

    Capped by ``MAX_DELAY_SECONDS`` and cut short by shutdown (the request is then
    dropped without an answer).
    """

    seconds: float

    def __post_init__(self) -> None:
        _check_non_negative("seconds", self.seconds)


@dataclass(frozen=True)
class NotDicomPart(Fault):
    """Replace the payload of part ``index`` (0-based) with ``payload``.

    The part still says ``Content-Type: application/dicom`` (an error page slipped into
    the stream by a proxy). Only WADO-RS multipart answers are affected.
    """

    index: int = 0
    payload: bytes = b"<html>oops</html>"


@dataclass(frozen=True)
class OmitInstances(Fault):
    """Leave out the last ``count`` instances of each series of a WADO-RS answer.

    QIDO still reports them (Kheops' study retrieve losing a series half-way).
    ``series_uid`` restricts the omission to one series.
    """

    count: int = 1
    series_uid: str | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be >= 1")


@dataclass(frozen=True)
class Framing(Fault):
    """Override the server's multipart framing options for one WADO-RS answer.

    Each field left ``None`` keeps the server-wide value.
    """

    framing: FramingName | None = None
    quote_boundary: bool | None = None
    preamble: bytes | None = None
    epilogue: bytes | None = None
    chunk_size: int | None = None
    boundary: str | None = None

    def __post_init__(self) -> None:
        if self.framing is not None:
            _check_framing(self.framing)


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_framing(value: str) -> None:
    if value not in ("eof", "chunked", "length"):
        raise ValueError(f"framing must be 'eof', 'chunked' or 'length', got {value!r}")


# --------------------------------------------------------------------------- records


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


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def _media_range(text: str) -> tuple[str, dict[str, str]]:
    pieces = _split_outside_quotes(text, ";")
    params = {}
    for piece in pieces[1:]:
        key, _, value = piece.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return pieces[0].strip().lower(), params


# --------------------------------------------------------------------------- QIDO matching

_TAG_KEYWORDS = {
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00100020": "PatientID",
    "00100010": "PatientName",
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00080050": "AccessionNumber",
    "00080061": "ModalitiesInStudy",
    "00081030": "StudyDescription",
    "00080090": "ReferringPhysicianName",
    "00200010": "StudyID",
    "00080060": "Modality",
    "00200011": "SeriesNumber",
    "0008103E": "SeriesDescription",
    "00080021": "SeriesDate",
    "00080031": "SeriesTime",
    "00200013": "InstanceNumber",
}
_UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
_RANGE_KEYS = {"StudyDate", "StudyTime", "SeriesDate", "SeriesTime"}


def _wildcard_match(pattern: str, value: str) -> bool:
    if pattern in ("", "*"):
        return True
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, value, flags=re.IGNORECASE | re.DOTALL) is not None


def _matches(key: str, pattern: str, values: list[str], *, fuzzy: bool) -> bool:
    """Does any of ``values`` match the QIDO ``pattern`` for attribute ``key``?"""
    if pattern in ("", "*"):
        return True
    if key in _UID_KEYS:
        wanted = [uid for uid in re.split(r"[\\,]", pattern) if uid]
        return any(_wildcard_match(uid, value) for uid in wanted for value in values)
    if key in _RANGE_KEYS and "-" in pattern:
        low, _, high = pattern.partition("-")
        return any(value and (low or value) <= value <= (high or value) for value in values)
    if key == "PatientName" and fuzzy:
        needle = pattern.replace("*", "").lower()
        return any(needle in value.lower() for value in values)
    alternatives = pattern.split("\\") if key == "ModalitiesInStudy" else [pattern]
    return any(_wildcard_match(alt, value) for alt in alternatives for value in values)


@dataclass
class _StudyRow:
    uid: str
    first: FakeInstance
    series: dict[str, list[FakeInstance]]

    @property
    def modalities(self) -> list[str]:
        found = {items[0].modality for items in self.series.values() if items}
        return sorted(m for m in found if m)

    @property
    def instance_count(self) -> int:
        return sum(len(items) for items in self.series.values())

    def values(self, key: str) -> list[str] | None:
        first = self.first
        table: dict[str, list[str]] = {
            "StudyInstanceUID": [self.uid],
            "PatientID": [first.patient_id],
            "PatientName": [first.patient_name],
            "StudyDate": [first.study_date],
            "StudyTime": [first.study_time],
            "AccessionNumber": [first.accession_number],
            "StudyDescription": [first.study_description],
            "ModalitiesInStudy": self.modalities,
            "ReferringPhysicianName": [""],
            "StudyID": [""],
        }
        return table.get(key)


def _series_values(series_uid: str, first: FakeInstance, key: str) -> list[str] | None:
    table = {
        "SeriesInstanceUID": [series_uid],
        "Modality": [first.modality],
        "SeriesNumber": [_text(first.series_number)],
        "SeriesDescription": [first.series_description],
        "SeriesDate": [first.series_date],
        "SeriesTime": [first.series_time],
    }
    return table.get(key)


def _instance_values(instance: FakeInstance, key: str) -> list[str] | None:
    table = {
        "SOPInstanceUID": [instance.sop_uid],
        "SeriesInstanceUID": [instance.series_uid],
        "SOPClassUID": [instance.sop_class_uid],
        "InstanceNumber": [_text(instance.instance_number)],
    }
    return table.get(key)


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
        rows = []
        for study_uid, by_series in self.archive.tree().items():
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


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def make_tree_archive(
    study_uids: Sequence[str],
    *,
    series_per_study: int,
    instances_per_series: int,
    size: int = 1024,
    size_step: int = 0,
    patients: int | None = None,
) -> FakeArchive:
    """A regular archive: series ``<study>.<r>`` and instances ``<series>.<i>`` (1-based).

    Patient ``P<k>`` owns study ``k`` (modulo ``patients`` when given); instance ``i``
    has ``size + i * size_step`` pixel bytes. Deterministic.
    """
    archive = FakeArchive()
    for s, study in enumerate(study_uids):
        for r in range(series_per_study):
            series = f"{study}.{r + 1}"
            for i in range(instances_per_series):
                archive.add_part10(
                    make_instance(
                        study,
                        series,
                        f"{series}.{i + 1}",
                        patient_id=f"P{s % patients if patients else s}",
                        seed=s * 100 + r * 10 + i,
                        size=size + size_step * i,
                    )
                )
    return archive
