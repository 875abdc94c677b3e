"""kheops-async: an async, high-throughput DICOMweb client and bulk downloader.

Public API (everything else is internal)::

    from kheops_async import DicomWebClient, Targets, download

    async with DicomWebClient(url, token=token) as client:
        report = await download(client, Targets(studies=[uid]), "downloads")
"""

from kheops_async._version import __version__
from kheops_async.auth import Credentials
from kheops_async.client import DicomWebClient, QueryPager
from kheops_async.dicomjson import DicomRecord
from kheops_async.engine import DEFAULT_CONCURRENCY, DownloadSettings, download, journal_path
from kheops_async.errors import (
    AuthenticationError,
    ConfigurationError,
    HTTPStatusError,
    IncompleteSeriesError,
    InvalidDicomError,
    KheopsAsyncError,
    MultipartError,
    NotFoundError,
    NotMultipartError,
    OffsetIgnoredError,
    PermissionDeniedError,
    ProtocolError,
    ServerUnavailableError,
    StorageError,
    TimeoutError_,
    TransportError,
    TruncatedBodyError,
)
from kheops_async.layout import DEFAULT_LAYOUT, KHEOPS_CLIENT_LAYOUT, Layout
from kheops_async.qido import QueryResult
from kheops_async.report import (
    DownloadProgress,
    DownloadReport,
    InstanceRecord,
    InstanceStatus,
    SeriesFailure,
)
from kheops_async.retry import RetryPolicy
from kheops_async.streaming import MultipartReader, RetrievedPart
from kheops_async.targets import SeriesPlan, Targets

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LAYOUT",
    "KHEOPS_CLIENT_LAYOUT",
    "AuthenticationError",
    "ConfigurationError",
    "Credentials",
    "DicomRecord",
    "DicomWebClient",
    "DownloadProgress",
    "DownloadReport",
    "DownloadSettings",
    "HTTPStatusError",
    "IncompleteSeriesError",
    "InstanceRecord",
    "InstanceStatus",
    "InvalidDicomError",
    "KheopsAsyncError",
    "Layout",
    "MultipartError",
    "MultipartReader",
    "NotFoundError",
    "NotMultipartError",
    "OffsetIgnoredError",
    "PermissionDeniedError",
    "ProtocolError",
    "QueryPager",
    "QueryResult",
    "RetrievedPart",
    "RetryPolicy",
    "SeriesFailure",
    "SeriesPlan",
    "ServerUnavailableError",
    "StorageError",
    "Targets",
    "TimeoutError_",
    "TransportError",
    "TruncatedBodyError",
    "__version__",
    "download",
    "journal_path",
]
