"""QIDO-RS query building, Warning/X-Total-Count reading, filter checks and paging.

No I/O here: :func:`paginate` drives a ``fetch_page(limit, offset)`` coroutine the
client supplies, so the paging rules (short page, ``204``, ``200 []``, a server cap,
a server that ignores ``offset``) are testable without a network.
"""

from __future__ import annotations

import logging
import re
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from functools import lru_cache

from kheops_async.defaults import DEFAULT_PAGE_SIZE
from kheops_async.dicomjson import DicomRecord, tag_hex
from kheops_async.errors import ConfigurationError, OffsetIgnoredError
from kheops_async.records import PublicRecord, Record

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "STUDY_LEVEL_KEYS",
    "Page",
    "QueryResult",
    "build_query_params",
    "paginate",
    "parse_additional_results",
    "record_matches",
]

log = logging.getLogger("kheops_async")


STUDY_LEVEL_KEYS = frozenset(
    tag_hex(k)
    for k in (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "StudyDescription",
        "InstitutionName",
    )
)
"""Attributes a study-level query can match (the set Kheops honours, and a few more)."""

_MODALITY = tag_hex("Modality")
_MODALITIES_IN_STUDY = tag_hex("ModalitiesInStudy")
_ADDITIONAL_RE = re.compile(r"(\d+)\s+additional\s+result", re.IGNORECASE)


def parse_additional_results(warning: str | None) -> int | None:
    """How many more results a ``Warning`` header announces, or ``None``.

    Lenient: reads ``299 agent: There are N additional results ...`` as well as
    Kheops's study-level value that itself begins with ``Warning: ``. A Warning
    that mentions additional results without a number gives ``-1`` (unknown count).
    """
    if not warning:
        return None
    match = _ADDITIONAL_RE.search(warning)
    if match:
        return int(match.group(1))
    if "additional result" in warning.lower():
        return -1
    return None


def normalize_filters(
    filters: Mapping[str, str] | Iterable[tuple[str, str]] | None, *, level: str
) -> dict[str, str]:
    """Validate filter keys (keyword or tag) and return ``{keyword-or-tag: value}``.

    At study level ``Modality`` becomes ``ModalitiesInStudy``: Kheops silently
    ignores ``Modality`` there and Orthanc matches nothing.
    """
    items = filters.items() if isinstance(filters, Mapping) else (filters or ())
    result: dict[str, str] = {}
    for key, value in items:
        tag = tag_hex(key)  # raises ConfigurationError for unknown keywords
        if level == "studies" and tag == _MODALITY:
            key = "ModalitiesInStudy"
        if not isinstance(value, str):
            raise ConfigurationError(f"filter {key!r} needs a text value")
        result[key.strip()] = value
    return result


def build_query_params(
    *,
    filters: Mapping[str, str],
    includefield: Sequence[str] = (),
    fuzzymatching: bool | None = None,
    album: str | None = None,
    inbox: bool = False,
) -> list[tuple[str, str]]:
    """The query string items of a QIDO request, without limit and offset."""
    if album and inbox:
        raise ConfigurationError("album and inbox cannot be combined (Kheops answers 400)")
    params: list[tuple[str, str]] = list(filters.items())
    wanted = list(includefield)
    for key in filters:  # ask for the filtered attributes so the result can be checked
        if key not in wanted and "all" not in wanted:
            wanted.append(key)
    params.extend(("includefield", field) for field in wanted)
    if fuzzymatching is not None:
        params.append(("fuzzymatching", "true" if fuzzymatching else "false"))
    if album:
        params.append(("album", album))
    if inbox:
        params.append(("inbox", "true"))
    return params


_RANGE_VRS = frozenset({"DA", "TM", "DT"})


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern[str]:
    """A case-insensitive regex for a QIDO pattern: only ``*`` and ``?`` are special."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL)


def _value_matches(value: object, pattern: str, vr: str) -> bool:
    if isinstance(value, Mapping):
        value = value.get("Alphabetic", "")
    text = str(value).strip()
    wanted = pattern.strip()
    if vr in _RANGE_VRS and "-" in wanted:  # a date, time or datetime range
        low, _, high = wanted.partition("-")
        return (not low or text[: len(low)] >= low) and (not high or text[: len(high)] <= high)
    if vr == "UI" and ("\\" in wanted or "," in wanted):  # a list of UIDs
        return any(_value_matches(text, p, vr) for p in re.split(r"[\\,]", wanted) if p)
    return bool(_wildcard(wanted).match(text))


def record_matches(record: DicomRecord, filters: Mapping[str, str], *, fuzzy: bool = False) -> bool:
    """Whether the record satisfies every filter it carries an attribute for.

    Used to catch a server that silently ignored a filter: a record whose attribute
    contradicts the filter is dropped. A record without the attribute is kept, and so
    is a person name under fuzzy matching (the server's rules are its own).
    """
    for key, pattern in filters.items():
        if not pattern:
            continue
        element = record.raw.get(tag_hex(key))
        if not isinstance(element, Mapping) or "Value" not in element:
            continue
        vr = str(element.get("vr", ""))
        if fuzzy and vr == "PN":
            continue
        values = element.get("Value") or []
        if not any(_value_matches(v, pattern, vr) for v in values):
            return False
    return True


class Page(Record):
    """One QIDO answer: its records and the paging headers."""

    __slots__ = ("records", "total_count", "warning")

    def __init__(
        self,
        records: list[DicomRecord],
        total_count: int | None = None,
        warning: str | None = None,
    ) -> None:
        self.records = records
        self.total_count = total_count
        self.warning = warning


@dataclass(init=False, repr=False, eq=False)
class QueryResult(PublicRecord):
    """Every record a query returned, with what the server said about completeness.

    ``truncated`` is True when the server held back results the caller did not ask
    to skip (a server cap that paging could not get past); ``warning`` says why.
    """

    records: list[DicomRecord] = field(default_factory=list)
    total_count: int | None = None
    truncated: bool = False
    warning: str | None = None
    dropped_by_filter_check: int = 0

    def __init__(
        self,
        records: list[DicomRecord] | None = None,
        total_count: int | None = None,
        truncated: bool = False,
        warning: str | None = None,
        dropped_by_filter_check: int = 0,
    ) -> None:
        self.records = [] if records is None else records
        self.total_count = total_count
        self.truncated = truncated
        self.warning = warning
        self.dropped_by_filter_check = dropped_by_filter_check

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[DicomRecord]:
        return iter(self.records)


def _keys(records: Sequence[DicomRecord]) -> set[tuple[str | None, ...]]:
    """Identities of records (their UIDs, else their whole content)."""
    return {
        (r.study_uid, r.series_uid, r.sop_uid)
        if (r.study_uid or r.series_uid or r.sop_uid)
        else (repr(sorted(r.raw.items())),)
        for r in records
    }


async def paginate(
    fetch_page: Callable[[int | None, int], Awaitable[Page]],
    *,
    limit: int | None,
    offset: int,
    page_size: int | None,
    result: QueryResult,
    describe: str,
) -> AsyncGenerator[DicomRecord, None]:
    """Yield every matching record, paging with limit/offset; fill ``result``'s flags.

    ``limit`` is the caller's "at most this many in total" (``None``: all);
    ``page_size`` the records asked per request (``None``: a single request, no
    paging). Stops on an empty or short page; raises :class:`OffsetIgnoredError` when
    a new offset brings the same page again.
    """
    if limit is not None and limit < 1:
        raise ConfigurationError("limit must be >= 1")
    if offset < 0:
        raise ConfigurationError("offset must be >= 0")
    position, returned = offset, 0
    previous: set[tuple[str | None, ...]] = set()  # the last page's keys only: bounded
    announced: int | None = None  # what the last non-empty page said was still to come
    while True:
        remaining = None if limit is None else limit - returned
        ask = remaining if page_size is None else min(page_size, remaining or page_size)
        page = await fetch_page(ask, position)
        if page.total_count is not None:
            result.total_count = page.total_count
        if not page.records:
            # An empty page after one that announced more is a truncation too.
            announced = parse_additional_results(page.warning) or announced
            _finish(result, announced, returned, offset, limit, describe)
            return
        keys = _keys(page.records)
        if previous and previous.issuperset(keys):
            raise OffsetIgnoredError(
                f"{describe}: the server returned only records already seen for offset "
                f"{position}; it ignores 'offset', so paging cannot continue. Ask for "
                "everything in one request (--page-size 0), or narrow the query."
            )
        previous = keys
        records = page.records if remaining is None else page.records[:remaining]
        for record in records:
            yield record
        returned += len(records)
        position += len(page.records)
        announced = parse_additional_results(page.warning)
        if limit is not None and returned >= limit:
            return  # the caller's limit, not a truncation
        short = ask is not None and len(page.records) < ask
        total_says_more = result.total_count is not None and result.total_count > position
        if page_size is None or (short and not announced and not total_says_more):
            _finish(result, announced, returned, offset, limit, describe)
            return


def _finish(
    result: QueryResult,
    announced: int | None,
    returned: int,
    offset: int,
    limit: int | None,
    describe: str,
) -> None:
    """Flag a truncation nobody asked for: the server announced or counted more.

    ``announced`` is the count of a ``Warning`` header; ``result.total_count`` the
    largest ``X-Total-Count`` seen.
    """
    expected = None if result.total_count is None else result.total_count - offset
    missing_by_count = expected is not None and expected > returned
    if not announced and not missing_by_count:
        return
    if limit is not None and returned >= limit:
        return
    result.truncated = True
    if announced and announced > 0:
        detail = f"{announced} more results"
    elif missing_by_count and expected is not None:
        detail = f"{expected - returned} more results"
    else:
        detail = "more results"
    result.warning = (
        f"{describe}: the server returned {returned} results and holds back {detail} "
        "(a server cap); the list is incomplete: narrow the query or page with "
        "--limit/--offset"
    )
    log.warning("%s", result.warning)
