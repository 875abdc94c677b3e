"""The one exception hierarchy of kheops-async.

Every error the library raises derives from :class:`KheopsAsyncError`; httpx and
pydicom errors are translated where they enter (``raise ... from exc``), so a caller
never needs to import either to handle a failure. No message ever contains a
credential: URLs are redacted before they reach an exception.

::

    KheopsAsyncError
    ├── ConfigurationError          bad base URL, bad option value, bad UID, bad template
    ├── TransportError              the connection failed (connect, read, reset, timeout)
    │   └── TimeoutError_           a connect/read/write/pool timeout expired
    ├── HTTPStatusError             the server answered with an error status
    │   ├── AuthenticationError     401: missing or bad token
    │   ├── PermissionDeniedError   403: the token does not grant this resource
    │   └── NotFoundError           404 / 410
    ├── ProtocolError               the server's answer breaks DICOMweb rules
    │   ├── MultipartError          the multipart body is malformed
    │   │   └── TruncatedBodyError  the body ended before the closing delimiter
    │   ├── OffsetIgnoredError      paging: the server returned the same page again
    │   ├── NotMultipartError       a 200 retrieve answer that is not multipart/related
    │   └── InvalidDicomError       a part is not a DICOM Part-10 file
    ├── IncompleteSeriesError       fewer instances than the server's count, after retries
    ├── ServerUnavailableError      the run stopped: failure after failure, no progress
    └── StorageError                writing to the output directory failed (disk full, ...)

An error that ends a download carries what was done so far in ``partial_report``
(a :class:`~kheops_async.report.DownloadReport`; ``None`` elsewhere).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "HTTPStatusError",
    "IncompleteSeriesError",
    "InvalidDicomError",
    "KheopsAsyncError",
    "MultipartError",
    "NotFoundError",
    "NotMultipartError",
    "OffsetIgnoredError",
    "PermissionDeniedError",
    "ProtocolError",
    "ServerUnavailableError",
    "StorageError",
    "TimeoutError_",
    "TransportError",
    "TruncatedBodyError",
]


class KheopsAsyncError(Exception):
    """Root of every error raised by kheops-async.

    ``partial_report``: set on an error that ended a download, the report of what the
    run did before it (its instance table and journal are complete up to there).
    """

    partial_report: Any = None


class ConfigurationError(KheopsAsyncError, ValueError):
    """An argument is invalid before any request is made (URL, UID, option, template)."""


class TransportError(KheopsAsyncError):
    """The connection to the server failed: refused, reset, closed early or timed out.

    Retryable: the request may succeed on another attempt.
    """


class TimeoutError_(TransportError):
    """A connect, read, write or pool timeout expired."""


class HTTPStatusError(KheopsAsyncError):
    """The server answered with an error status code.

    ``status_code`` is the HTTP status; ``url`` is the request URL with any token
    removed; ``retry_after`` is the server's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        url: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable (to cross a process boundary: ``--workers``), keywords and all."""
        return (
            _rebuild_status_error,
            (type(self), str(self), self.status_code, self.url, self.retry_after),
        )


def _rebuild_status_error(
    kind: type[HTTPStatusError],
    message: str,
    status_code: int,
    url: str,
    retry_after: float | None,
) -> HTTPStatusError:
    return kind(message, status_code=status_code, url=url, retry_after=retry_after)


class AuthenticationError(HTTPStatusError):
    """401: the server wants a (valid) token or password."""


class PermissionDeniedError(HTTPStatusError):
    """403: the credential is valid but does not grant this resource (album, study)."""


class NotFoundError(HTTPStatusError):
    """404 or 410: the resource does not exist (or no longer does)."""


class ProtocolError(KheopsAsyncError):
    """The server's answer does not follow DICOMweb / HTTP rules well enough to use it."""


class MultipartError(ProtocolError):
    """A ``multipart/related`` body is malformed (bad boundary, oversized headers, ...)."""


class TruncatedBodyError(MultipartError):
    """The body ended before the closing multipart delimiter.

    Kheops sends this when an upstream error happens after the ``200`` has started;
    the retrieve should be retried.
    """


class OffsetIgnoredError(ProtocolError):
    """Paging stopped: the server returned the same page for a new ``offset``.

    Without this check a client would page forever against such a server.
    """


class NotMultipartError(ProtocolError):
    """A retrieve answered ``200`` with a body that is not ``multipart/related``.

    A proxy's or load balancer's maintenance page does this; retried like a ``503``.
    """


class InvalidDicomError(ProtocolError):
    """A retrieved part is not a readable DICOM Part-10 file; it is not saved."""


class IncompleteSeriesError(KheopsAsyncError):
    """A series stayed short of the server's instance count after every retry."""


class ServerUnavailableError(TransportError):
    """The run stopped: attempt after attempt failed with no progress anywhere.

    Raised by the download engine's breaker (see ``DownloadSettings.outage_threshold``)
    so that an outage ends the run instead of retrying every series to its limit.
    """


class StorageError(KheopsAsyncError):
    """Writing to the output directory failed (disk full, permission, read-only).

    Stops the run: every other series would fail the same way. Files already
    complete stay in place; temporary files are removed.
    """
