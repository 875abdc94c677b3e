"""Paging rules of QIDO-RS, driven by a scripted fetch_page (no network)."""

from __future__ import annotations

import pytest

from kheops_async.dicomjson import DicomRecord
from kheops_async.errors import ConfigurationError, OffsetIgnoredError
from kheops_async.qido import (
    Page,
    QueryResult,
    build_query_params,
    normalize_filters,
    paginate,
    parse_additional_results,
    record_matches,
)

pytestmark = pytest.mark.anyio


def study(n: int) -> DicomRecord:
    return DicomRecord({"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]}})


class Server:
    """A scripted server: ``total`` records, an optional cap, optional offset-blindness."""

    def __init__(
        self,
        total: int,
        *,
        cap: int | None = None,
        ignore_offset: bool = False,
        warning: str = "299 {+service}: There are {n} additional results that can be requested",
        send_total: bool = True,
    ) -> None:
        self.records = [study(n) for n in range(total)]
        self.cap = cap
        self.ignore_offset = ignore_offset
        self.warning = warning
        self.send_total = send_total
        self.calls: list[tuple[int | None, int]] = []

    async def fetch(self, limit: int | None, offset: int) -> Page:
        self.calls.append((limit, offset))
        start = 0 if self.ignore_offset else offset
        size = min(x for x in (limit, self.cap, len(self.records)) if x is not None)
        page = self.records[start : start + size]
        more = len(self.records) - start - len(page)
        capped = self.cap is not None and more > 0 and (limit is None or len(page) < limit)
        return Page(
            records=page,
            total_count=len(self.records) if self.send_total else None,
            warning=self.warning.replace("{n}", str(more)) if capped else None,
        )


async def collect(
    server: Server, *, limit: int | None = None, offset: int = 0, page_size: int | None = 10
) -> tuple[list[str | None], QueryResult]:
    result = QueryResult()
    uids = [
        r.study_uid
        async for r in paginate(
            server.fetch,
            limit=limit,
            offset=offset,
            page_size=page_size,
            result=result,
            describe="test",
        )
    ]
    return uids, result


async def test_pages_until_a_short_page() -> None:
    server = Server(25)
    uids, result = await collect(server)
    assert uids == [f"1.2.{n}" for n in range(25)]
    assert server.calls == [(10, 0), (10, 10), (10, 20)]
    assert not result.truncated
    assert result.total_count == 25


async def test_exact_multiple_ends_on_an_empty_page() -> None:
    server = Server(20)
    uids, result = await collect(server)
    assert len(uids) == 20
    assert server.calls[-1] == (10, 20)
    assert not result.truncated


async def test_empty_result() -> None:
    uids, result = await collect(Server(0))
    assert uids == []
    assert not result.truncated


async def test_caller_limit_is_a_total_not_a_page() -> None:
    server = Server(100)
    uids, result = await collect(server, limit=25, offset=5)
    assert uids == [f"1.2.{n}" for n in range(5, 30)]
    assert server.calls == [(10, 5), (10, 15), (5, 25)]
    assert not result.truncated


async def test_server_cap_below_page_size_is_paged_through() -> None:
    server = Server(23, cap=4)
    uids, result = await collect(server, page_size=10)
    assert uids == [f"1.2.{n}" for n in range(23)]
    assert not result.truncated


async def test_kheops_warning_form_is_read_leniently() -> None:
    server = Server(
        9,
        cap=4,
        warning="Warning: 299 {+service}: There are {n} additional results that can be requested",
        send_total=False,
    )
    uids, _ = await collect(server, page_size=10)
    assert len(uids) == 9


async def test_single_request_truncation_is_flagged(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(9, cap=4)
    uids, result = await collect(server, page_size=None)
    assert len(uids) == 4
    assert result.truncated
    assert result.warning is not None and "5 more results" in result.warning
    assert any("incomplete" in r.getMessage() for r in caplog.records)


async def test_total_count_larger_than_what_came_is_flagged() -> None:
    server = Server(9, cap=4, warning="")
    _, result = await collect(server, page_size=None)
    assert result.truncated


async def test_requested_limit_is_not_a_truncation() -> None:
    server = Server(50)
    uids, result = await collect(server, limit=5, page_size=None)
    assert len(uids) == 5
    assert not result.truncated


async def test_server_ignoring_offset_is_detected() -> None:
    server = Server(30, ignore_offset=True)
    with pytest.raises(OffsetIgnoredError, match="ignores 'offset'"):
        await collect(server)
    assert len(server.calls) == 2


async def test_bad_limit_and_offset() -> None:
    with pytest.raises(ConfigurationError):
        await collect(Server(1), limit=0)
    with pytest.raises(ConfigurationError):
        await collect(Server(1), offset=-1)


def test_parse_additional_results() -> None:
    assert (
        parse_additional_results(
            "299 {+service}: There are 12 additional results that can be requested"
        )
        == 12
    )
    assert (
        parse_additional_results(
            "Warning: 299 {+service}: There are 3 additional results that can be requested"
        )
        == 3
    )
    assert parse_additional_results("299 x: additional results exist") == -1
    assert parse_additional_results("110 - Response is stale") is None
    assert parse_additional_results(None) is None


def test_filters_and_params() -> None:
    filters = normalize_filters({"Modality": "CT", "00100020": "P1"}, level="studies")
    assert filters == {"ModalitiesInStudy": "CT", "00100020": "P1"}
    params = build_query_params(
        filters=filters, includefield=["StudyDescription"], fuzzymatching=True, album="A1"
    )
    assert ("includefield", "StudyDescription") in params
    assert ("includefield", "ModalitiesInStudy") in params
    assert ("fuzzymatching", "true") in params
    assert ("album", "A1") in params
    with pytest.raises(ConfigurationError, match="album and inbox"):
        build_query_params(filters={}, album="A", inbox=True)
    with pytest.raises(ConfigurationError, match="unknown DICOM attribute"):
        normalize_filters({"Modalty": "CT"}, level="series")


def test_record_matches_catches_an_ignored_filter() -> None:
    record = DicomRecord(
        {
            "00080060": {"vr": "CS", "Value": ["MR"]},
            "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00080020": {"vr": "DA", "Value": ["20240115"]},
        }
    )
    assert not record_matches(record, {"Modality": "CT"})
    assert record_matches(record, {"ModalitiesInStudy": "ct"})
    assert record_matches(record, {"PatientName": "doe*"})
    assert record_matches(record, {"StudyDate": "20240101-20240131"})
    assert not record_matches(record, {"StudyDate": "20240201-"})
    assert record_matches(record, {"PatientID": "absent-is-kept"})


async def test_empty_page_after_an_announcement_is_a_truncation() -> None:
    """Page 1 says more are coming, page 2 is empty: the list is incomplete."""
    calls = 0

    async def fetch(limit: int | None, offset: int) -> Page:
        nonlocal calls
        calls += 1
        if offset == 0:
            return Page(
                [study(0), study(1)], total_count=3, warning="299 x: There are 1 additional results"
            )
        return Page([], total_count=None)

    result = QueryResult()
    uids = [
        r.study_uid
        async for r in paginate(
            fetch, limit=None, offset=0, page_size=10, result=result, describe="t"
        )
    ]
    assert len(uids) == 2
    assert calls == 2
    assert result.truncated


def test_filter_check_keeps_exact_matches_of_any_text() -> None:
    """Regression: '2024-001' is no date range and '[' is no pattern outside dates."""
    record = DicomRecord(
        {
            "00100020": {"vr": "LO", "Value": ["2024-001"]},
            "00081030": {"vr": "LO", "Value": ["ABC[1]"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        }
    )
    assert record_matches(record, {"PatientID": "2024-001"})
    assert record_matches(record, {"StudyDescription": "ABC[1]"})
    assert not record_matches(record, {"StudyDescription": "ABC1"})
    assert record_matches(record, {"PatientName": "john"}, fuzzy=True)
    assert not record_matches(record, {"PatientName": "john"})
    assert record_matches(record, {"StudyInstanceUID": "9.9,1.2.3"})


async def test_unstable_order_with_ignored_offset_is_detected() -> None:
    """A server that ignores offset and shuffles pages still cannot loop forever."""
    pages = [[study(0), study(1)], [study(1), study(0)], [study(0), study(1)]]
    calls = 0

    async def fetch(limit: int | None, offset: int) -> Page:
        nonlocal calls
        calls += 1
        return Page(pages[min(calls - 1, 2)], total_count=100)

    with pytest.raises(OffsetIgnoredError):
        await collect_from(fetch)
    assert calls == 2


async def collect_from(fetch: object) -> list[str | None]:
    result = QueryResult()
    return [
        r.study_uid
        async for r in paginate(
            fetch,
            limit=None,
            offset=0,
            page_size=2,  # type: ignore[arg-type]
            result=result,
            describe="t",
        )
    ]
