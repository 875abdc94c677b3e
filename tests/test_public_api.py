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


def _examples() -> list[object]:
    """One instance of each public dataclass, with a value other than its default."""
    from pathlib import Path

    from kheops_async.report import SeriesActivity

    ka = kheops_async
    return [
        ka.Credentials(token="t0ken-secret"),
        ka.DownloadSettings(concurrency=3, table=Path("t.csv")),
        ka.SeriesPlan("1.2", "1.2.3", 4),
        ka.Targets(studies=["1.2"]),
        ka.Layout("{StudyInstanceUID}/{SOPInstanceUID}.dcm"),
        ka.RetryPolicy(attempts=2),
        ka.Shard(1, 3),
        ka.QueryResult(total_count=7),
        ka.InstanceRecord("1.2", "1.2.3", "1.2.3.4", file_size=9),
        ka.SeriesFailure("1.2", "1.2.3", "boom", missing=("1.2.3.5",)),
        ka.SyncTotals(studies_new=2),
        ka.DownloadReport(written=5),
        ka.DownloadProgress(series_total=4),
        SeriesActivity("1.2", "1.2.3", 0, done=2),
    ]


def test_public_types_keep_what_dataclasses_give() -> None:
    """Written-out __init__, repr and eq (records.py) behave as the generated ones did."""
    import dataclasses

    import pytest

    for example in _examples():
        cls = type(example)
        assert dataclasses.is_dataclass(cls)
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        if cls is not kheops_async.Credentials:  # its own repr (test below)
            shown = ", ".join(
                f"{f.name}={getattr(example, f.name)!r}"
                for f in dataclasses.fields(example)  # type: ignore[arg-type]
                if f.repr
            )
            assert repr(example) == f"{cls.__qualname__}({shown})"  # as dataclasses write it
        copy = dataclasses.replace(example)  # type: ignore[type-var]
        assert copy == example and copy is not example
        assert example != object()
        assert dataclasses.asdict(example) == dataclasses.asdict(copy)  # type: ignore[call-overload]
        name = dataclasses.fields(example)[0].name  # type: ignore[arg-type]
        if params.frozen:
            assert hash(copy) == hash(example)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(example, name, None)
        else:
            with pytest.raises(TypeError):
                hash(example)


def test_public_types_still_check_their_values_and_hide_secrets() -> None:
    import dataclasses

    import pytest

    with pytest.raises(errors.ConfigurationError):
        kheops_async.Shard(3, 2)
    with pytest.raises(ValueError, match="attempts"):
        kheops_async.RetryPolicy(attempts=0)
    with pytest.raises(errors.ConfigurationError):
        dataclasses.replace(kheops_async.DownloadSettings(), concurrency=0)
    assert isinstance(
        kheops_async.DownloadSettings(layout="{SOPInstanceUID}").layout, kheops_async.Layout
    )  # type: ignore[arg-type]
    credentials = kheops_async.Credentials(username="u", password="pa55word-secret")
    assert "pa55word-secret" not in repr(credentials)
    assert "t0ken-secret" not in repr(kheops_async.Credentials(token="t0ken-secret"))
    layout = kheops_async.Layout()
    assert layout == kheops_async.Layout() and hash(layout) == hash(kheops_async.Layout())
    assert layout != kheops_async.Layout("{SeriesInstanceUID}/{SOPInstanceUID}.dcm")
