"""Scripted faults of the fake server (see :meth:`FakeDicomWebServer.add_fault`).

Each fault is a frozen dataclass checked at construction; the server applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import FramingName


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
