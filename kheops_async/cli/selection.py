"""What the user selected (UIDs, filters, paging) and its expansion by QIDO queries.

``--search-filter`` keys are split by level: study-level keys
(:data:`~kheops_async.qido.STUDY_LEVEL_KEYS`) narrow the study query, every other key
narrows each study's series query. ``Modality`` does both: at study level the library
turns it into ``ModalitiesInStudy`` (Kheops ignores ``Modality`` there, Orthanc matches
nothing), at series level it keeps only the series of that modality.

:class:`Finder` runs the queries the ``list`` commands need: the studies (one query, or
one per ``--study-uid``), then the series of every study, then the instances of every
series, each level fanned out over at most ``concurrency`` workers. Kheops has no root
``/series``, so series are always listed study by study.

``--limit``/``--offset`` page one query level (see :func:`paging_level`): the listed
level when its parents are explicit UIDs, otherwise the study query (as kheops-client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import anyio

from kheops_async.client import DicomWebClient, QueryPager
from kheops_async.dicomjson import DicomRecord, tag_hex
from kheops_async.errors import ConfigurationError, KheopsAsyncError
from kheops_async.qido import STUDY_LEVEL_KEYS
from kheops_async.records import Record
from kheops_async.targets import Targets, read_uid_table

__all__ = [
    "Finder",
    "InstanceRow",
    "Level",
    "Selection",
    "SeriesRow",
    "paging_level",
    "split_filters",
]

Level = Literal["studies", "series", "instances"]
T = TypeVar("T")
R = TypeVar("R")

MODALITY_TAG = tag_hex("Modality")

STUDY_FIELDS = (
    "StudyInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",
)
"""Attributes asked for in study queries (``includefield``): the study table's columns."""

SERIES_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
"""Attributes asked for in series queries."""

INSTANCE_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
)
"""Attributes asked for in instance queries (the series' values fill the rest)."""


def split_filters(
    pairs: Iterable[tuple[str, str]], *, series_level: bool
) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``--search-filter`` pairs into ``(study_filters, series_filters)``.

    With ``series_level=False`` (``list studies``, ``download studies``) a series-level
    key other than ``Modality`` raises :class:`ConfigurationError`: a study query cannot
    honour it and a silently ignored filter would select everything.
    """
    study: dict[str, str] = {}
    series: dict[str, str] = {}
    for key, value in pairs:
        tag = tag_hex(key)
        if tag in STUDY_LEVEL_KEYS:
            study[key] = value
        elif tag == MODALITY_TAG:
            study[key] = value  # the library sends it as ModalitiesInStudy
            if series_level:
                series[key] = value
        elif series_level:
            series[key] = value
        else:
            raise ConfigurationError(
                f"--search-filter {key} is a series-level attribute; a study query cannot "
                "match it (use the 'series' command, e.g. 'list series' or 'download series')"
            )
    return study, series


class Selection(Record):
    """The studies, series and filters a command works on.

    ``studies`` maps each explicit StudyInstanceUID to the series wanted in it
    (``None``: every series); empty means "every study the study query finds".
    ``series_uids`` keeps only these series among the studies found (``--series-uid``
    without ``--study-uid``).
    """

    __slots__ = (
        "fuzzy",
        "in_file",
        "limit",
        "offset",
        "series_filters",
        "series_uids",
        "studies",
        "study_filters",
    )

    def __init__(
        self,
        studies: Mapping[str, frozenset[str] | None] | None = None,
        series_uids: frozenset[str] = frozenset(),
        study_filters: Mapping[str, str] | None = None,
        series_filters: Mapping[str, str] | None = None,
        fuzzy: bool = False,
        limit: int | None = None,
        offset: int = 0,
        in_file: Path | None = None,
    ) -> None:
        self.studies: Mapping[str, frozenset[str] | None] = {} if studies is None else studies
        self.series_uids = series_uids
        self.study_filters: Mapping[str, str] = {} if study_filters is None else study_filters
        self.series_filters: Mapping[str, str] = (
            dict() if series_filters is None else series_filters
        )
        self.fuzzy = fuzzy
        self.limit = limit
        self.offset = offset
        self.in_file = in_file

    @classmethod
    def build(
        cls,
        *,
        study_uids: Sequence[str],
        series_uids: Sequence[str],
        filters: Iterable[tuple[str, str]],
        series_level: bool,
        fuzzy: bool = False,
        limit: int | None = None,
        offset: int = 0,
        in_file: Path | None = None,
    ) -> Selection:
        """Check the combination of options and build the selection.

        Raises :class:`ConfigurationError` for combinations that cannot mean what they
        say (``--in-file`` with UIDs, series UIDs for a study command, study-level filters
        with ``--in-file``).
        """
        study_filters, series_filters = split_filters(filters, series_level=series_level)
        if series_uids and not series_level:
            raise ConfigurationError(
                "--series-uid selects series: use the 'series' command "
                "('list series' or 'download series')"
            )
        studies: dict[str, frozenset[str] | None] = {}
        if in_file is not None:
            if study_uids or series_uids:
                raise ConfigurationError(
                    "--in-file cannot be combined with --study-uid/--series-uid"
                )
            if study_filters:
                raise ConfigurationError(
                    f"--in-file names the studies; the study-level filter(s) "
                    f"{', '.join(study_filters)} cannot apply (series-level ones can)"
                )
            for study_uid, series_uid in read_uid_table(in_file):
                wanted = studies.get(study_uid, frozenset())
                if series_uid is None or wanted is None:
                    studies[study_uid] = None
                else:
                    studies[study_uid] = wanted | {series_uid}
            if not studies:
                raise ConfigurationError(f"{in_file}: the table lists no StudyInstanceUID")
        wanted_series = frozenset(series_uids)
        for study_uid in study_uids:
            studies[study_uid] = wanted_series or None
        return cls(
            studies=studies,
            series_uids=frozenset() if study_uids else wanted_series,
            study_filters=study_filters,
            series_filters=series_filters,
            fuzzy=fuzzy,
            limit=limit,
            offset=offset,
            in_file=in_file,
        )

    def wanted_series(self, study_uid: str) -> frozenset[str] | None:
        """The series to keep in ``study_uid`` (``None``: all of them)."""
        if self.studies:
            return self.studies.get(study_uid)
        return self.series_uids or None

    def to_targets(self, study_uids: Sequence[str] | None, *, series_level: bool) -> Targets:
        """The download targets: explicit UIDs, or the studies the CLI's query found.

        ``study_uids`` are studies found by a query (``None``: the selection's explicit
        studies, passed on as they are so that the engine reports a study that does not
        exist as a failure, and checks each against the study-level filters).
        """
        series_filters = dict(self.series_filters) if series_level else {}
        if study_uids is not None:
            wanted = [self.wanted_series(uid) for uid in study_uids]
            only = frozenset().union(*(w for w in wanted if w)) if any(wanted) else frozenset()
            return Targets(
                studies=list(study_uids), series_filters=series_filters, only_series=only
            )
        whole = [uid for uid, wanted in self.studies.items() if wanted is None]
        pairs = [(uid, s) for uid, wanted in self.studies.items() if wanted for s in sorted(wanted)]
        study_filters = dict(self.study_filters)  # checked by the engine, study by study
        if self.in_file is None and len(self.studies) > 1 and pairs:
            # --study-uid A --study-uid B --series-uid R: R may be in either study.
            return Targets(
                studies=list(self.studies),
                series_filters=series_filters,
                only_series=frozenset(s for _, s in pairs),
                study_filters=study_filters,
                fuzzy=self.fuzzy,
            )
        return Targets(
            studies=whole,
            series=pairs,
            series_filters=series_filters,
            study_filters=study_filters,
            fuzzy=self.fuzzy,
        )

    def to_query_targets(self, *, series_level: bool) -> Targets:
        """The targets of a study query the engine runs itself (no explicit studies)."""
        return Targets(
            query=dict(self.study_filters),
            series_filters=dict(self.series_filters) if series_level else {},
            limit=self.limit,
            offset=self.offset,
            fuzzy=self.fuzzy,
            only_series=self.series_uids,
        )

    @property
    def needs_study_query(self) -> bool:
        """Whether the selection is a study query (no explicit studies) rather than UIDs."""
        return not self.studies


def paging_level(level: Level, selection: Selection) -> Level:
    """The query level ``--limit``/``--offset`` apply to when listing ``level``."""
    if level == "instances" and selection.studies and any(selection.studies.values()):
        return "instances"
    if level in ("series", "instances") and selection.studies:
        return "series"
    return "studies"


class SeriesRow(Record):
    """A series with the study it belongs to."""

    __slots__ = ("series", "study")

    def __init__(self, study: DicomRecord, series: DicomRecord) -> None:
        self.study = study
        self.series = series


class InstanceRow(Record):
    """An instance with its series and study."""

    __slots__ = ("instance", "series", "study")

    def __init__(self, study: DicomRecord, series: DicomRecord, instance: DicomRecord) -> None:
        self.study = study
        self.series = series
        self.instance = instance


class Finder:
    """Runs the QIDO queries of a selection, ``concurrency`` requests at most.

    ``incomplete`` collects the warnings of queries the server cut short;
    ``not_found`` the explicit UIDs that matched nothing.
    """

    def __init__(
        self,
        client: DicomWebClient,
        selection: Selection,
        *,
        level: Level,
        concurrency: int,
    ) -> None:
        self.client = client
        self.selection = selection
        self.paging = paging_level(level, selection)
        self.concurrency = concurrency
        self.incomplete: list[str] = []
        self.not_found: list[str] = []

    def _limit(self, level: Level) -> int | None:
        return self.selection.limit if level == self.paging else None

    def _offset(self, level: Level) -> int:
        return self.selection.offset if level == self.paging else 0

    @property
    def _fuzzy(self) -> bool | None:
        return True if self.selection.fuzzy else None

    async def _collect(self, pager: QueryPager) -> list[DicomRecord]:
        result = await pager.collect()
        if result.truncated:
            self.incomplete.append(result.warning or "a query was cut short by the server")
        return result.records

    async def studies(self) -> list[DicomRecord]:
        """The matching studies: explicit UIDs (each checked with the filters) or a query."""
        filters = dict(self.selection.study_filters)
        if not self.selection.studies:
            return await self._collect(
                self.client.iter_studies(
                    filters,
                    includefield=STUDY_FIELDS,
                    fuzzymatching=self._fuzzy,
                    limit=self._limit("studies"),
                    offset=self._offset("studies"),
                )
            )

        async def one(study_uid: str) -> list[DicomRecord]:
            found = await self._collect(
                self.client.iter_studies(
                    {**filters, "StudyInstanceUID": study_uid},
                    includefield=STUDY_FIELDS,
                    fuzzymatching=self._fuzzy,
                )
            )
            found = [r for r in found if r.study_uid == study_uid]
            if not found:
                self.not_found.append(f"study {study_uid}")
            return found[:1]

        per_study = await map_concurrently(list(self.selection.studies), one, self.concurrency)
        return [record for records in per_study for record in records]

    async def series(self, studies: Sequence[DicomRecord] | None = None) -> list[SeriesRow]:
        """The matching series of the given (or the matching) studies."""
        if studies is None:
            studies = await self.studies()

        async def one(study: DicomRecord) -> list[SeriesRow]:
            study_uid = study.study_uid or ""
            records = await self._collect(
                self.client.iter_series(
                    dict(self.selection.series_filters),
                    study_uid=study_uid,
                    includefield=SERIES_FIELDS,
                    fuzzymatching=self._fuzzy,
                    limit=self._limit("series"),
                    offset=self._offset("series"),
                )
            )
            wanted = self.selection.wanted_series(study_uid)
            rows = [
                SeriesRow(study, record)
                for record in records
                if record.series_uid and (wanted is None or record.series_uid in wanted)
            ]
            if wanted is not None and self.selection.studies:
                found = {row.series.series_uid for row in rows}
                self.not_found += [
                    f"series {uid} in study {study_uid}" for uid in sorted(wanted - found)
                ]
            return rows

        per_study = await map_concurrently(list(studies), one, self.concurrency)
        rows = [row for rows in per_study for row in rows]
        if self.selection.series_uids:
            found = {row.series.series_uid for row in rows}
            self.not_found += [
                f"series {uid}" for uid in sorted(self.selection.series_uids - found)
            ]
        return rows

    async def instances(self) -> list[InstanceRow]:
        """The instances of every matching series."""
        series_rows = await self.series()

        async def one(row: SeriesRow) -> list[InstanceRow]:
            records = await self._collect(
                self.client.iter_instances(
                    study_uid=row.study.study_uid or "",
                    series_uid=row.series.series_uid or "",
                    includefield=INSTANCE_FIELDS,
                    limit=self._limit("instances"),
                    offset=self._offset("instances"),
                )
            )
            return [InstanceRow(row.study, row.series, record) for record in records]

        per_series = await map_concurrently(series_rows, one, self.concurrency)
        return [row for rows in per_series for row in rows]


async def map_concurrently(
    items: Sequence[T], operation: Callable[[T], Awaitable[R]], concurrency: int
) -> list[R]:
    """``[await operation(item) for item in items]``, ``concurrency`` at a time, in order.

    A pool of at most ``concurrency`` workers takes the items one by one (never a task
    per item). The first :class:`KheopsAsyncError` cancels the others and is raised as
    itself, not wrapped in an exception group.
    """
    results: dict[int, R] = {}
    failures: list[KheopsAsyncError] = []
    pending = iter(enumerate(items))

    async def worker(scope: anyio.CancelScope) -> None:
        for index, item in pending:  # shared iterator: each item is taken once
            try:
                results[index] = await operation(item)
            except KheopsAsyncError as exc:
                failures.append(exc)
                scope.cancel()
                return

    async with anyio.create_task_group() as group:
        for _ in range(max(1, min(concurrency, len(items)))):
            group.start_soon(worker, group.cancel_scope)
    if failures:
        raise failures[0]
    return [results[index] for index in range(len(items))]
