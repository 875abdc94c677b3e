"""Planning: targets into series plans, streamed to the workers as they are found.

Explicit studies (checked against the targets' study filters, if any) and the
studies of the targets' query (paged as it goes, never collected) are expanded into
their series by a few planner tasks fed through a small buffer, so downloads start
with the first series and memory does not grow with the number of studies. Every
listing request holds one of the run's request slots. Listings the server cut short,
UIDs it listed malformed, and studies or series that do not exist become failures of
the run (a run that silently did less is not complete).

A sharded run (``settings.shard``) keeps only its shard's studies, explicit or listed.
A sync (``settings.incremental``) checks the listed studies against the journals in
batches (:mod:`~kheops_async.engine.study_check`) and plans only those that are new
or changed: a study already whole costs no request beyond its page of the list.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from kheops_async.dicomjson import DicomRecord
from kheops_async.engine.context import RunContext, is_fatal
from kheops_async.engine.study_check import STUDY_CHECK_BATCH, check_studies
from kheops_async.errors import KheopsAsyncError
from kheops_async.records import Record
from kheops_async.report import SeriesFailure
from kheops_async.targets import SERIES_INCLUDEFIELDS, SeriesPlan, Targets
from kheops_async.uids import is_valid_uid

__all__ = ["MAX_PLANNERS", "PLANNER_BUFFER", "STUDY_COUNT_FIELDS", "plan_series"]

log = logging.getLogger("kheops_async")

MAX_PLANNERS = 8
"""Tasks expanding studies into series at once, at most one per request slot (each holds
a slot while it asks). As many as the slots: the series of the first studies are all
asked for at once, so every worker has a series one round trip after the study list
(with half as many, at 40 ms of round trip, the 560-instance archive's last study was
listed 0.28 s into a 0.85 s run)."""
PLANNER_BUFFER = 16
"""Studies queued for the planners: bounded, so a huge study list costs no memory here."""
STUDY_COUNT_FIELDS = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
"""Asked of the study query (Kheops sends them anyway, Orthanc only when asked)."""


class _StudyJob(Record):
    """A study to expand into series: all of them, or the ``wanted`` ones.

    ``explicit``: named by the targets (not found by their query), so checked against
    ``study_filters``.
    """

    __slots__ = ("expected_series", "explicit", "study_uid", "wanted")

    def __init__(
        self,
        study_uid: str,
        wanted: frozenset[str] | None,
        expected_series: int | None = None,
        explicit: bool = False,
    ) -> None:
        self.study_uid = study_uid
        self.wanted = wanted
        self.expected_series = expected_series
        self.explicit = explicit


class _SeenSeries:
    """Series already planned in this run: a journal claim, else a set (dry runs)."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.keys: set[tuple[str, str]] = set()

    async def first_time(self, plan: SeriesPlan) -> bool:
        journal = self.run.journal
        if journal is not None and not journal.readonly:
            return await self.run.placement.call(
                lambda: journal.claim_series(plan.study_uid, plan.series_uid)
            )
        key = (plan.study_uid, plan.series_uid)
        if key in self.keys:
            return False
        self.keys.add(key)
        return True


async def plan_series(
    run: RunContext, targets: Targets, send: MemoryObjectSendStream[SeriesPlan]
) -> None:
    """Feed every series of ``targets`` to ``send``; report what cannot be planned."""
    seen = _SeenSeries(run)
    found_series: set[str] = set()
    async with send:
        by_study: dict[str, frozenset[str] | None] = {}
        shard = run.settings.shard
        for study_uid, series_uid in targets.series:
            wanted = by_study.get(study_uid, frozenset())
            if wanted is not None:
                by_study[study_uid] = wanted | {series_uid}
        for study_uid in targets.studies:
            by_study[study_uid] = None
        if shard is not None:
            by_study = {uid: wanted for uid, wanted in by_study.items() if shard.contains(uid)}
        study_send, study_receive = anyio.create_memory_object_stream[_StudyJob](PLANNER_BUFFER)
        concurrency = run.limiter.total_tokens
        async with anyio.create_task_group() as group:
            for _ in range(max(1, min(MAX_PLANNERS, int(concurrency)))):
                group.start_soon(
                    _planner, run, targets, seen, found_series, study_receive.clone(), send.clone()
                )
            study_receive.close()
            async with study_send:
                for study_uid, wanted in by_study.items():
                    await study_send.send(_StudyJob(study_uid, wanted, explicit=True))
                if targets.query is not None:
                    await _queue_query_studies(run, targets, set(by_study), study_send)
    if shard is not None and shard.count > 1:
        found_series = set(targets.only_series)  # in other shards' studies, maybe: not known here
    for series_uid in sorted(targets.only_series - found_series):
        run.recorder.failure(SeriesFailure("", series_uid, "series not found in the given studies"))
    run.recorder.planning_done()


async def _queue_query_studies(
    run: RunContext, targets: Targets, explicit: set[str], send: ObjectSendStream[_StudyJob]
) -> None:
    """Queue the studies of the targets' query as its pages arrive; flag a cut list."""
    assert targets.query is not None
    pager = run.client.iter_studies(
        targets.query,
        limit=targets.limit,
        offset=targets.offset,
        fuzzymatching=True if targets.fuzzy else None,
        includefield=STUDY_COUNT_FIELDS,
        limiter=run.limiter,
    )
    shard = run.settings.shard
    batching = run.settings.incremental and run.journal is not None
    batch: list[DicomRecord] = []
    async with contextlib.aclosing(pager):
        async for record in pager:
            uid = record.study_uid
            if run.deletions is not None:
                run.deletions.server_listed += 1
            if shard is not None and uid and is_valid_uid(uid) and not shard.contains(uid):
                continue
            if not batching:
                await _queue_study(run, record, explicit, send)
                continue
            batch.append(record)
            if len(batch) >= STUDY_CHECK_BATCH:
                await _queue_changed_studies(run, targets, batch, explicit, send)
                batch = []
    if batch:
        await _queue_changed_studies(run, targets, batch, explicit, send)
    if pager.result.truncated:
        run.recorder.failure(
            SeriesFailure("", "", f"the study list is incomplete: {pager.result.warning}")
        )


def _skippable(run: RunContext, targets: Targets) -> bool:
    """Whether listed studies may be skipped on their counts (a sync of whole studies)."""
    settings = run.settings
    return (
        settings.incremental
        and not settings.force
        and not settings.deep
        and run.journal is not None
        and not targets.series_filters
        and not targets.only_series
    )


async def _queue_changed_studies(
    run: RunContext,
    targets: Targets,
    records: list[DicomRecord],
    explicit: set[str],
    send: ObjectSendStream[_StudyJob],
) -> None:
    """Check a batch of listed studies against the journals; queue the new and changed."""
    journal = run.journal
    assert journal is not None
    listed = [
        (r.study_uid, r.number_of_study_related_instances)
        for r in records
        if r.study_uid and is_valid_uid(r.study_uid) and r.study_uid not in explicit
    ]
    deletions = run.deletions
    if deletions is not None:
        await run.placement.in_thread(lambda: deletions.listed.add([uid for uid, _ in listed]))
    if not _skippable(run, targets):
        for record in records:
            await _queue_study(run, record, explicit, send)
        return
    states = await run.placement.in_thread(lambda: check_studies(journal, run.root, listed))
    unchanged: set[str] = set()
    for state in states:
        run.recorder.study_checked(state)
        if state.status == "unchanged":
            unchanged.add(state.study_uid)
    for record in records:
        if record.study_uid not in unchanged:
            await _queue_study(run, record, explicit, send)


async def _queue_study(
    run: RunContext, record: DicomRecord, explicit: set[str], send: ObjectSendStream[_StudyJob]
) -> None:
    """Queue one listed study, unless it is malformed or already queued as explicit."""
    uid = record.study_uid
    if not uid:  # a record the list counts but that names no study: the list is not whole
        run.recorder.failure(
            SeriesFailure("", "", "the server listed a study without a StudyInstanceUID")
        )
    elif not is_valid_uid(uid):
        run.recorder.failure(
            SeriesFailure(uid[:80], "", "the server listed a malformed StudyInstanceUID")
        )
    elif uid not in explicit:
        await send.send(_StudyJob(uid, None, record.number_of_study_related_series))


async def _matches_filters(run: RunContext, targets: Targets, job: _StudyJob) -> bool:
    """Whether an explicit study matches the targets' study filters (one study query)."""
    try:
        found = await run.limited(
            lambda: run.client.search_studies(
                {**targets.study_filters, "StudyInstanceUID": job.study_uid},
                fuzzymatching=True if targets.fuzzy else None,
            )
        )
    except KheopsAsyncError as exc:
        if is_fatal(exc):
            raise
        run.recorder.failure(SeriesFailure(job.study_uid, "", f"checking the study failed: {exc}"))
        return False
    return any(record.study_uid == job.study_uid for record in found.records)


async def _planner(
    run: RunContext,
    targets: Targets,
    seen: _SeenSeries,
    found_series: set[str],
    studies: ObjectReceiveStream[_StudyJob],
    send: ObjectSendStream[SeriesPlan],
) -> None:
    async with studies, send:
        async for job in studies:
            await _plan_study(run, targets, seen, found_series, send, job)


async def _plan_study(
    run: RunContext,
    targets: Targets,
    seen: _SeenSeries,
    found_series: set[str],
    send: ObjectSendStream[SeriesPlan],
    job: _StudyJob,
) -> None:
    """Queue the series of one study (all, or the ``wanted`` ones)."""
    study_uid, wanted = job.study_uid, job.wanted
    if job.explicit and targets.study_filters and not await _matches_filters(run, targets, job):
        log.warning("study %s does not match the filters (or is not on the server)", study_uid)
        return
    try:
        records = await run.limited(
            lambda: run.client.search_series(
                targets.series_filters, study_uid=study_uid, includefield=SERIES_INCLUDEFIELDS
            )
        )
    except KheopsAsyncError as exc:
        if is_fatal(exc):
            raise
        run.recorder.failure(
            SeriesFailure(study_uid, "", f"listing the study's series failed: {exc}")
        )
        return
    if records.truncated:
        run.recorder.failure(
            SeriesFailure(study_uid, "", f"the series list is incomplete: {records.warning}")
        )
    found: set[str] = set()
    only = targets.only_series
    for record in records.records:
        plan = SeriesPlan.from_record(study_uid, record)
        if not plan.series_uid:
            run.recorder.failure(
                SeriesFailure(
                    study_uid, "", "the server listed a series without a SeriesInstanceUID"
                )
            )
            continue
        if wanted is not None and plan.series_uid not in wanted:
            continue
        if not is_valid_uid(plan.series_uid):
            run.recorder.failure(
                SeriesFailure(
                    study_uid,
                    plan.series_uid[:80],
                    f"the server listed a malformed SeriesInstanceUID {plan.series_uid[:80]!r}; "
                    "it is not retrieved",
                )
            )
            continue
        if wanted is None and only and plan.series_uid not in only:
            continue
        found.add(plan.series_uid)
        if only:
            found_series.add(plan.series_uid)
        if not await seen.first_time(plan):
            continue
        run.recorder.series_planned(plan.expected_instances)
        await send.send(plan)
    if run.deletions is not None and wanted is None and not records.truncated:
        listed = {record.series_uid for record in records.records}
        await run.placement.in_thread(lambda: _plan_series_deletions(run, study_uid, listed))
    for series_uid in sorted((wanted or frozenset()) - found):
        run.recorder.failure(SeriesFailure(study_uid, series_uid, "series not found on the server"))
    unfiltered = wanted is None and not targets.series_filters and not only
    if unfiltered and not found:
        run.recorder.failure(
            SeriesFailure(study_uid, "", "study not found on the server (no series)")
        )
    elif (
        unfiltered
        and job.expected_series is not None
        and len(records.records) < job.expected_series
    ):
        run.recorder.failure(
            SeriesFailure(
                study_uid,
                "",
                f"the server lists {len(records.records)} series of the "
                f"{job.expected_series} its study record counts",
            )
        )


def _plan_series_deletions(run: RunContext, study_uid: str, listed: set[str | None]) -> None:
    """``--delete``: the study's series in the journals that its series list lacks."""
    journal, deletions = run.journal, run.deletions
    if journal is None or deletions is None:
        return  # a dry run of a destination with no journal: nothing is recorded
    gone = [e for e in journal.study_entries(study_uid).values() if e.series_uid not in listed]
    if gone:
        deletions.add_found(journal.family, gone, "series no longer listed by the server")
