"""The public namespace is deliberate: this test pins it."""

from __future__ import annotations

import kheops_async
from kheops_async import errors


def test_exported_names_are_pinned_and_sorted() -> None:
    assert kheops_async.__all__ == sorted(kheops_async.__all__, key=lambda n: (not n.isupper(), n))
    assert set(kheops_async.__all__) == {
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
    }
    for name in kheops_async.__all__:
        assert getattr(kheops_async, name) is not None


def test_every_error_derives_from_the_root() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.KheopsAsyncError)


def test_status_errors_survive_pickling_for_worker_processes() -> None:
    import pickle

    for kind in (errors.AuthenticationError, errors.NotFoundError, errors.HTTPStatusError):
        error = kind("HTTP 4xx from u", status_code=401, url="http://h/x", retry_after=2.0)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is kind
        assert (str(copy), copy.status_code, copy.url, copy.retry_after) == (
            "HTTP 4xx from u",
            401,
            "http://h/x",
            2.0,
        )
