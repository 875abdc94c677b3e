"""One run of :func:`download`: the destination prepared, planners and workers, the end.

The run takes the destination's lock, opens its journal, sweeps temporary files of
dead runs, then plans series (:mod:`~kheops_async.engine.planning`) and completes
each in a bounded pool of workers (:mod:`~kheops_async.engine.series`). However it
ends (done, a fatal error, cancellation), the end is the same: the instance table
is flushed and closed, the journal committed and closed, this process's temporary
files removed, the lock released. An error that ends the run carries the partial
report (``exc.partial_report``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import anyio

from kheops_async.client import DicomWebClient
from kheops_async.connect_ahead import default_count
from kheops_async.engine.breaker import OutageBreaker
from kheops_async.engine.context import RunContext, is_fatal
from kheops_async.engine.deletion import Deleted, DeletionPlan, apply_deletions
from kheops_async.engine.journal import Journal, journal_name, journal_paths
from kheops_async.engine.metadata import save_series_metadata
from kheops_async.engine.placement import Placement
from kheops_async.engine.planning import plan_series
from kheops_async.engine.recorder import InstanceTable, Recorder
from kheops_async.engine.scheduling import LargestFirst
from kheops_async.engine.series import SeriesJob
from kheops_async.engine.settings import DownloadSettings
from kheops_async.engine.sink import PartSink
from kheops_async.engine.state_dir import DestinationLock, TempArea, state_dir
from kheops_async.errors import ConfigurationError, KheopsAsyncError, StorageError
from kheops_async.report import (
    DownloadProgress,
    DownloadReport,
    ProgressCallback,
    SeriesFailure,
    SyncTotals,
)
from kheops_async.shards import Shard
from kheops_async.targets import SeriesPlan, Targets

__all__ = ["download", "journal_path", "sync"]

log = logging.getLogger("kheops_async")


def journal_path(destination: str | os.PathLike[str], shard: Shard | None = None) -> Path:
    """Where a destination's journal lives: ``<dest>/.kheops-async/journal.sqlite``.

    A shard's is ``journal.shard-I-of-N.sqlite`` beside it (1 shard of 1 is unsharded).
    """
    root = Path(destination).expanduser().resolve()
    return state_dir(root) / journal_name(_shard_name(shard))


def _shard_name(shard: Shard | None) -> str | None:
    return shard.name if shard is not None and shard.count > 1 else None


async def download(
    client: DicomWebClient,
    targets: Targets,
    destination: str | os.PathLike[str],
    settings: DownloadSettings | None = None,
    *,
    progress: DownloadProgress | ProgressCallback | None = None,
    **options: Any,
) -> DownloadReport:
    """Download ``targets`` into ``destination``; return the totals of the run.

    ``settings`` (a :class:`DownloadSettings`) or its fields as keywords
    (``concurrency=8, layout=..., force=True``, ...) say how. ``progress`` is a
    :class:`DownloadProgress` to update, or a callback. Each instance's record goes
    to ``settings.table`` (CSV) and ``settings.on_instance`` as it is done.

    A failing series never stops the others: failures are counted in the report.
    A bad token (401), a bad setting, a storage error or an outage
    (:class:`~kheops_async.errors.ServerUnavailableError`) stops the run with its
    exception, whose ``partial_report`` holds what was done.
    """
    settings = (settings or DownloadSettings()).with_options(**options)
    tracker = (
        progress if isinstance(progress, DownloadProgress) else DownloadProgress(callback=progress)
    )
    root = Path(destination).expanduser().resolve()
    report = DownloadReport(
        dry_run=settings.dry_run, sync=SyncTotals() if settings.incremental else None
    )
    started = time.monotonic()
    concurrency = settings.concurrency or client.concurrency
    temp = TempArea(root)
    lock: DestinationLock | None = None
    journal: Journal | None = None
    recorder: Recorder | None = None
    deletions: DeletionPlan | None = None
    outcome = "failed"
    own_journal = journal_path(root, settings.shard)
    try:
        if settings.delete:
            _check_delete_targets(targets)
            deletions = DeletionPlan(settings.shard)
        consulted = journal_paths(state_dir(root), sibling_of=_shard_name(settings.shard))
        if settings.dry_run:  # read-only: this run's journal, else any other to start from
            journal = Journal.open_readonly(own_journal)
            if journal is None and consulted:
                journal = Journal.open_readonly(consulted[0])
        else:
            _prepare_destination(root)
            taken = DestinationLock(own_journal.with_suffix(".lock"))
            taken.acquire()
            lock = taken  # from here on, this run owns the destination's temporary area
            report.stale_partials_removed = temp.prepare()
            journal = await anyio.to_thread.run_sync(Journal.open, own_journal)
            report.journal_path = journal.path
        if journal is not None:
            await anyio.to_thread.run_sync(journal.consult, consulted)
        table = None
        if settings.table is not None and not settings.dry_run:
            table = InstanceTable(settings.table, root)
            table.open()
        recorder = Recorder(report, tracker, table=table, on_instance=settings.on_instance)
        run = RunContext(
            client=client,
            settings=settings,
            root=root,
            limiter=anyio.CapacityLimiter(concurrency),
            recorder=recorder,
            breaker=OutageBreaker(settings.outage_threshold),
            retry=settings.retry or client.retry,
            temp=temp,
            placement=Placement(
                PartSink(
                    root, settings.layout, journal, fsync=settings.fsync, checksum=settings.checksum
                ),
                on_loop=False if settings.sink_in_thread else None,
            ),
            journal=journal,
            deletions=deletions,
        )
        ahead = settings.connections_ahead
        async with client.connections_ahead(default_count(concurrency) if ahead is None else ahead):
            await _plan_and_complete(run, targets, concurrency)
        if deletions is not None:
            await _delete_unlisted(run, deletions, report)
        outcome = "complete" if report.ok else "incomplete"
    except Exception as exc:
        # A fatal error in one task arrives wrapped in an exception group; the caller
        # gets the error itself, with the report of what was done.
        error = _first_library_error(exc)
        if isinstance(error, KheopsAsyncError) and recorder is not None:
            error.partial_report = report  # the run had begun: there is something to report
        if error is exc:
            raise
        raise error from None
    except BaseException:
        outcome = "cancelled"
        raise
    finally:
        report.seconds = time.monotonic() - started
        with anyio.CancelScope(shield=True):
            if deletions is not None:
                deletions.close()
            try:
                await anyio.to_thread.run_sync(_close, recorder, journal, temp, lock, outcome)
            except (OSError, StorageError) as exc:
                if outcome in ("complete", "incomplete"):
                    raise  # the run went well until its end: this is its error
                log.error("closing the run after its error also failed: %s", exc)
    return report


async def sync(
    client: DicomWebClient,
    targets: Targets,
    destination: str | os.PathLike[str],
    settings: DownloadSettings | None = None,
    *,
    progress: DownloadProgress | ProgressCallback | None = None,
    **options: Any,
) -> DownloadReport:
    """Bring ``destination`` up to date with ``targets``: :func:`download`, incrementally.

    The studies of the targets' query are listed (paged) with their instance counts;
    a study whose count and files match the destination's journals costs no further
    request, the others are planned as :func:`download` plans them, so only missing
    or damaged instances are fetched. ``report.sync`` says what was new, changed and
    unchanged. A sync with nothing new makes no WADO-RS request at all.
    """
    settings = (settings or DownloadSettings()).with_options(incremental=True, **options)
    return await download(client, targets, destination, settings, progress=progress)


def _check_delete_targets(targets: Targets) -> None:
    """``delete`` needs the whole list of what the destination mirrors: a study query."""
    if targets.studies or targets.series or targets.query is None:
        raise ConfigurationError(
            "--delete removes what the server no longer lists: it needs a study query "
            "(the archive, an album, --search-filter), not --study-uid or --in-file"
        )
    if targets.series_filters or targets.only_series:
        raise ConfigurationError(
            "--delete works on whole studies: not with series-level filters or --series-uid"
        )
    if targets.limit is not None or targets.offset:
        raise ConfigurationError("--delete needs the whole study list: not with --limit/--offset")


async def _delete_unlisted(
    run: RunContext, deletions: DeletionPlan, report: DownloadReport
) -> None:
    """After a run with no failure, remove what the server no longer lists (see deletion)."""
    totals = report.sync
    assert totals is not None
    journal = run.journal
    if journal is None:
        return  # a dry run of a destination with no journal: nothing recorded to delete
    if not report.ok:
        failures = report.series_failed + report.failed
        totals.delete_skipped = f"the run had {failures} failure{'s' if failures != 1 else ''}"
    elif deletions.server_listed == 0:
        totals.delete_skipped = "the server listed no study (a wrong URL, album or filter?)"
    if totals.delete_skipped:
        log.warning("--delete: nothing deleted, because %s", totals.delete_skipped)
        return
    dry_run = run.settings.dry_run
    on_deleted = run.settings.on_deleted

    def deleted(item: Deleted) -> None:
        run.recorder.deleted(item, dry_run=dry_run)
        if on_deleted is not None:
            on_deleted(item)

    def delete() -> None:
        deletions.add_unlisted_studies(journal.family)
        apply_deletions(run.root, journal, deletions, dry_run=dry_run, on_deleted=deleted)

    with anyio.CancelScope(shield=True):  # files and rows go together
        await anyio.to_thread.run_sync(delete)


def _close(
    recorder: Recorder | None,
    journal: Journal | None,
    temp: TempArea,
    lock: DestinationLock | None,
    outcome: str,
) -> None:
    """The end of every run (worker thread): table, journal, temporary files, lock."""
    try:
        if recorder is not None:
            recorder.close()
        if journal is not None:
            journal.close(outcome)
    finally:
        if lock is not None:
            temp.remove()
            lock.release()


async def _plan_and_complete(run: RunContext, targets: Targets, concurrency: int) -> None:
    """Planners feed ``concurrency`` workers, each taking the largest series planned."""
    send, receive = anyio.create_memory_object_stream[SeriesPlan](concurrency * 2)
    chooser = LargestFirst(receive, capacity=concurrency * 2)
    async with receive, anyio.create_task_group() as group:
        group.start_soon(plan_series, run, targets, send)
        for _ in range(concurrency):
            group.start_soon(_worker, run, chooser)


async def _worker(run: RunContext, chooser: LargestFirst) -> None:
    while (plan := await chooser.next()) is not None:
        await _complete_series(run, plan)


async def _complete_series(run: RunContext, plan: SeriesPlan) -> None:
    """One series to its end; a non-fatal failure is recorded, a fatal one raised."""
    job = SeriesJob(run, plan)
    complete = False
    run.recorder.series_started(plan.study_uid, plan.series_uid, plan.expected_instances)
    try:
        if run.settings.metadata_only:
            await save_series_metadata(run, plan)
        else:
            await job.complete()
            if run.settings.incremental:
                run.recorder.series_synced(resumed=job.resumed, written=job.written)
        complete = True
    except OSError as exc:
        raise StorageError(f"writing to {run.root} failed: {exc.strerror or exc}") from exc
    except KheopsAsyncError as exc:
        if is_fatal(exc):
            raise
        run.recorder.failure(
            SeriesFailure(
                plan.study_uid,
                plan.series_uid,
                str(exc),
                expected=job.expected,
                received=job.received,
            )
        )
        if not run.settings.dry_run and not run.settings.metadata_only:
            await job.record_in_journal()  # incomplete, with the counts verify will show
    finally:
        job.report_failed_parts()
        run.recorder.series_finished(plan.series_uid, complete=complete)


def _prepare_destination(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write to the output directory {root}: {exc.strerror}"
        ) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigurationError(f"the output directory {root} is not writable")


def _first_library_error(exc: Exception) -> Exception:
    """The first library error inside (possibly nested) exception groups, else ``exc``."""
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        inner = getattr(current, "exceptions", None)
        if isinstance(inner, tuple):
            pending.extend(inner)
        elif isinstance(current, KheopsAsyncError):
            return current
    return exc
