"""kheops-async: an async, high-throughput DICOMweb client and bulk downloader.

Public API (everything else is internal)::

    from kheops_async import DicomWebClient, Targets, download

    async with DicomWebClient(url, token=token) as client:
        report = await download(client, Targets(studies=[uid]), "downloads")

Importing the package is cheap: each name is imported from its module on first use
(PEP 562), so ``kheops-async --version`` or ``--help`` loads neither httpx nor pydicom.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kheops_async._version import __version__

if TYPE_CHECKING:
    from kheops_async.auth import Credentials
    from kheops_async.client import DicomWebClient, QueryPager
    from kheops_async.dicomjson import DicomRecord
    from kheops_async.engine import (
        DEFAULT_CONCURRENCY,
        DownloadSettings,
        download,
        journal_path,
        sync,
    )
    from kheops_async.engine.verify import VerifyReport, verify
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
        SyncTotals,
    )
    from kheops_async.retry import RetryPolicy
    from kheops_async.shards import Shard
    from kheops_async.streaming import MultipartReader, RetrievedPart
    from kheops_async.targets import SeriesPlan, Targets

_LAZY: dict[str, str] = {
    "Credentials": "kheops_async.auth",
    "DicomWebClient": "kheops_async.client",
    "QueryPager": "kheops_async.client",
    "DicomRecord": "kheops_async.dicomjson",
    "DEFAULT_CONCURRENCY": "kheops_async.engine",
    "DownloadSettings": "kheops_async.engine",
    "download": "kheops_async.engine",
    "journal_path": "kheops_async.engine",
    "sync": "kheops_async.engine",
    "verify": "kheops_async.engine.verify",
    "VerifyReport": "kheops_async.engine.verify",
    "AuthenticationError": "kheops_async.errors",
    "ConfigurationError": "kheops_async.errors",
    "HTTPStatusError": "kheops_async.errors",
    "IncompleteSeriesError": "kheops_async.errors",
    "InvalidDicomError": "kheops_async.errors",
    "KheopsAsyncError": "kheops_async.errors",
    "MultipartError": "kheops_async.errors",
    "NotFoundError": "kheops_async.errors",
    "NotMultipartError": "kheops_async.errors",
    "OffsetIgnoredError": "kheops_async.errors",
    "PermissionDeniedError": "kheops_async.errors",
    "ProtocolError": "kheops_async.errors",
    "ServerUnavailableError": "kheops_async.errors",
    "StorageError": "kheops_async.errors",
    "TimeoutError_": "kheops_async.errors",
    "TransportError": "kheops_async.errors",
    "TruncatedBodyError": "kheops_async.errors",
    "DEFAULT_LAYOUT": "kheops_async.layout",
    "KHEOPS_CLIENT_LAYOUT": "kheops_async.layout",
    "Layout": "kheops_async.layout",
    "QueryResult": "kheops_async.qido",
    "DownloadProgress": "kheops_async.report",
    "DownloadReport": "kheops_async.report",
    "InstanceRecord": "kheops_async.report",
    "InstanceStatus": "kheops_async.report",
    "SeriesFailure": "kheops_async.report",
    "SyncTotals": "kheops_async.report",
    "Shard": "kheops_async.shards",
    "RetryPolicy": "kheops_async.retry",
    "MultipartReader": "kheops_async.streaming",
    "RetrievedPart": "kheops_async.streaming",
    "SeriesPlan": "kheops_async.targets",
    "Targets": "kheops_async.targets",
}
"""Public name -> the module that defines it."""

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
    "Shard",
    "StorageError",
    "SyncTotals",
    "Targets",
    "TimeoutError_",
    "TransportError",
    "TruncatedBodyError",
    "VerifyReport",
    "__version__",
    "download",
    "journal_path",
    "sync",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, then keep it here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kheops_async' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
