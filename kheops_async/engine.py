"""The download engine: targets in, a complete and verified output tree out.

``await download(client, targets, dest)`` expands the targets into series (QIDO),
retrieves the series concurrently through a bounded pool of workers, streams every
part to a temporary file and renames it into place, verifies each series against
the server's instance count, retries what failed, and returns a
:class:`~kheops_async.report.DownloadReport`. It runs under asyncio and trio and
can be cancelled at any point: temporary files are removed, finished files stay.

Every HTTP request the engine makes (QIDO pages, retrieves) holds one slot of a
:class:`anyio.CapacityLimiter`, so ``concurrency`` bounds the requests in flight.
Memory is bounded by ``concurrency`` x (one network chunk + the header probe).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kheops_async.client import DicomWebClient
from kheops_async.dicomjson import DicomRecord
from kheops_async.errors import (
    AuthenticationError,
    ConfigurationError,
    IncompleteSeriesError,
    InvalidDicomError,
    KheopsAsyncError,
    StorageError,
)
from kheops_async.layout import DEFAULT_LAYOUT, Layout, sanitize_component
from kheops_async.report import (
    DownloadProgress,
    DownloadReport,
    InstanceRecord,
    InstanceStatus,
    ProgressCallback,
    SeriesFailure,
)
from kheops_async.retry import RetryPolicy, is_retryable, retry_call
from kheops_async.streaming import MultipartReader
from kheops_async.targets import SERIES_INCLUDEFIELDS, SeriesPlan, Targets
from kheops_async.uids import is_valid_uid
from kheops_async.writer import (
    REPORT_KEYWORDS,
    PartBody,
    PartialFiles,
    ReceivedPart,
    finish_body,
    receive_body,
)

__all__ = ["DEFAULT_CONCURRENCY", "MetadataMode", "download"]

log = logging.getLogger("kheops_async")

DEFAULT_CONCURRENCY = 8
"""Requests in flight by default, chosen by measurement (benchmarks/RESULTS.md, sweep):
on loopback -j 2 to 16 are alike (CPU-bound); through 40 ms of latency -j 8 is 10-17 %
faster than -j 4, and -j 16 adds 7-11 % for a larger load on the server."""
WRITE_AHEAD_PARTS = 2
"""Received parts a series may hold in memory while earlier ones are being written."""
MAX_PLANNERS = 4
"""Tasks expanding studies into series at once (each holds a request slot while it asks)."""
PLANNER_BUFFER = 16
"""Studies queued for the planners: bounded, so a huge study list costs no memory here."""
RESUME_ONE_BY_ONE_RATIO = 3
"""On resume, a series with at most 1 missing instance per 3 present is completed
instance by instance instead of retrieving the whole series again."""
"""Series retrieved at once by default; see benchmarks/RESULTS.md for the measurement."""

MetadataMode = Literal["series", "instance"]
T = TypeVar("T")


def _retryable_or_short(exc: BaseException) -> bool:
    return is_retryable(exc) or isinstance(exc, IncompleteSeriesError)


@dataclass(frozen=True)
class _StudyJob:
    """A study to expand into series: all of them, or the ``wanted`` ones."""

    study_uid: str
    wanted: set[str] | None
    expected_series: int | None = None


@dataclass
class _SeriesState:
    """What one series has so far: the instances done, by SOPInstanceUID."""

    plan: SeriesPlan
    done: dict[str, InstanceRecord] = field(default_factory=dict)
    failed_parts: dict[str, InstanceRecord] = field(default_factory=dict)
    fresh: bool = False
    """Nothing of this series was on disk when it started: no per-file existence check."""

    def shortfall(self) -> int:
        expected = self.plan.expected_instances
        return 0 if expected is None else max(0, expected - len(self.done))


class _Download:
    """One run of :func:`download` (its settings, shared counters and the pool)."""

    def __init__(
        self,
        client: DicomWebClient,
        targets: Targets,
        destination: Path,
        *,
        concurrency: int,
        layout: Layout,
        force: bool,
        fsync: bool,
        dry_run: bool,
        metadata_only: MetadataMode | None,
        transfer_syntax: str,
        retry: RetryPolicy,
        progress: DownloadProgress,
    ) -> None:
        self.client = client
        self.targets = targets
        self.root = destination.expanduser().resolve()
        self.concurrency = concurrency
        self.layout = layout
        self.force = force
        self.fsync = fsync
        self.dry_run = dry_run
        self.metadata_only = metadata_only
        self.transfer_syntax = transfer_syntax
        self.retry = retry
        self.progress = progress
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.partial = PartialFiles(self.root)
        self.keywords = tuple(dict.fromkeys([*REPORT_KEYWORDS, *layout.fields]))
        self.report = DownloadReport(dry_run=dry_run)
        self._seen_series: set[tuple[str, str]] = set()

    # -- the run -------------------------------------------------------------------

    async def run(self) -> DownloadReport:
        started = time.monotonic()
        if not self.dry_run:
            self._prepare_destination()
        send, receive = anyio.create_memory_object_stream[SeriesPlan](self.concurrency * 2)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._plan_all, send)
                for _ in range(self.concurrency):
                    group.start_soon(self._worker, receive.clone())
                receive.close()
        except Exception as exc:
            # A fatal error in one task (bad token, disk full) arrives wrapped in an
            # exception group; the caller gets the error itself.
            raise _first_fatal(exc) from None
        finally:
            self.report.seconds = time.monotonic() - started
            if not self.dry_run:
                self.partial.remove_if_empty()
        self.report.instances.sort(key=lambda r: (r.study_uid, r.series_uid, r.path, r.sop_uid))
        return self.report

    def _prepare_destination(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.report.stale_partials_removed = self.partial.prepare()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write to the output directory {self.root}: {exc.strerror}"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ConfigurationError(f"the output directory {self.root} is not writable")

    async def _limited(self, operation: Callable[[], Awaitable[T]]) -> T:
        async with self.limiter:
            return await operation()

    # -- planning ------------------------------------------------------------------

    async def _plan_all(self, send: MemoryObjectSendStream[SeriesPlan]) -> None:
        """Expand the targets into series plans and feed them to the workers.

        Studies are expanded by a few planner tasks fed through a small buffer, so
        downloads start with the first series and memory does not grow with the
        number of studies.
        """
        async with send:
            by_study: dict[str, set[str] | None] = {}
            for study_uid, series_uid in self.targets.series:
                wanted = by_study.setdefault(study_uid, set())
                if wanted is not None:
                    wanted.add(series_uid)
            for study_uid in self.targets.studies:
                by_study[study_uid] = None
            study_send, study_receive = anyio.create_memory_object_stream[_StudyJob](PLANNER_BUFFER)
            async with anyio.create_task_group() as group:
                for _ in range(max(1, min(MAX_PLANNERS, self.concurrency // 2))):
                    group.start_soon(self._planner, study_receive.clone(), send.clone())
                study_receive.close()
                async with study_send:
                    for study_uid, wanted in by_study.items():
                        await study_send.send(_StudyJob(study_uid, wanted))
                    if self.targets.query is not None:
                        for job in await self._query_studies(set(by_study)):
                            await study_send.send(job)
        for series_uid in sorted(self.targets.only_series - {s for _, s in self._seen_series}):
            self._fail(SeriesFailure("", series_uid, "series not found in the given studies"))
        self.progress.planning_done = True
        self.progress.notify()

    async def _query_studies(self, known: set[str]) -> list[_StudyJob]:
        """The studies of the targets' query, minus ``known``; flags a truncated list."""
        assert self.targets.query is not None
        pager = self.client.iter_studies(
            self.targets.query, limit=self.targets.limit, offset=self.targets.offset
        )
        async with self.limiter:  # never held while sending: no deadlock at concurrency 1
            studies = [record async for record in pager]
        if pager.result.truncated:
            self._fail(
                SeriesFailure("", "", f"the study list is incomplete: {pager.result.warning}")
            )
        jobs = []
        for record in studies:
            uid = record.study_uid
            if uid and not is_valid_uid(uid):
                self._fail(SeriesFailure(uid, "", "the server listed a malformed StudyInstanceUID"))
            elif uid and uid not in known:
                known.add(uid)
                jobs.append(_StudyJob(uid, None, record.number_of_study_related_series))
        return jobs

    async def _planner(
        self, studies: ObjectReceiveStream[_StudyJob], send: ObjectSendStream[SeriesPlan]
    ) -> None:
        async with studies, send:
            async for job in studies:
                await self._plan_study(send, job)

    async def _plan_study(self, send: ObjectSendStream[SeriesPlan], job: _StudyJob) -> None:
        """Queue the series of one study (all, or the ``wanted`` ones)."""
        study_uid, wanted = job.study_uid, job.wanted
        try:
            records = await self._limited(
                lambda: self.client.search_series(
                    self.targets.series_filters,
                    study_uid=study_uid,
                    includefield=SERIES_INCLUDEFIELDS,
                )
            )
        except KheopsAsyncError as exc:
            if _is_fatal(exc):
                raise
            self._fail(SeriesFailure(study_uid, "", f"listing the study's series failed: {exc}"))
            return
        if records.truncated:
            self._fail(
                SeriesFailure(study_uid, "", f"the series list is incomplete: {records.warning}")
            )
        found = set()
        only = self.targets.only_series
        for record in records.records:
            plan = SeriesPlan.from_record(study_uid, record)
            if not plan.series_uid or (wanted is not None and plan.series_uid not in wanted):
                continue
            if not is_valid_uid(plan.series_uid):
                self._fail(
                    SeriesFailure(
                        study_uid,
                        plan.series_uid,
                        f"the server listed a malformed SeriesInstanceUID {plan.series_uid!r}; "
                        "it is not retrieved",
                    )
                )
                continue
            if wanted is None and only and plan.series_uid not in only:
                continue
            found.add(plan.series_uid)
            key = (plan.study_uid, plan.series_uid)
            if key in self._seen_series:
                continue
            self._seen_series.add(key)
            self.progress.series_total += 1
            self.report.series_total += 1
            self.progress.instances_expected += plan.expected_instances or 0
            await send.send(plan)
        for series_uid in sorted((wanted or set()) - found):
            self._fail(SeriesFailure(study_uid, series_uid, "series not found on the server"))
        unfiltered = wanted is None and not self.targets.series_filters and not only
        if unfiltered and not found:
            self._fail(SeriesFailure(study_uid, "", "study not found on the server (no series)"))
        elif (
            unfiltered
            and job.expected_series is not None
            and len(records.records) < job.expected_series
        ):
            self._fail(
                SeriesFailure(
                    study_uid,
                    "",
                    f"the server lists {len(records.records)} series of the "
                    f"{job.expected_series} its study record counts",
                )
            )

    # -- workers -------------------------------------------------------------------

    async def _worker(self, receive: ObjectReceiveStream[SeriesPlan]) -> None:
        async with receive:
            async for plan in receive:
                state = _SeriesState(plan)
                try:
                    await self._series(state)
                except OSError as exc:
                    raise StorageError(
                        f"writing to {self.root} failed: {exc.strerror or exc}"
                    ) from exc
                except KheopsAsyncError as exc:
                    if _is_fatal(exc):
                        raise
                    self._fail_series(state, str(exc))
                else:
                    self.report.series_completed += 1
                finally:
                    self.report.instances.extend(state.failed_parts.values())
                    self.progress.series_done += 1
                    self.progress.notify()

    async def _series(self, state: _SeriesState) -> None:
        """Bring one series to completion (or raise with what is missing)."""
        if self.dry_run:
            await self._plan_instances(state)
            return
        if self.metadata_only:
            await self._series_metadata(state)
            return
        state.fresh = self.force or not self._series_may_exist(state.plan)
        if not state.fresh:
            listing = await self._skip_existing(state)
            if state.shortfall() == 0:
                return
            if state.shortfall() * RESUME_ONE_BY_ONE_RATIO <= len(state.done):
                # Mostly there already (an interrupted run): fetch just the missing ones.
                await self._fetch_missing_one_by_one(state, None, listing)
                return
        try:
            # A broken transfer is retried whole; a clean answer that lacks instances
            # is not (it would come short again): the missing ones are asked one by one.
            await retry_call(
                self.retry,
                lambda: self._stream_series(state),
                describe=f"series {state.plan.series_uid}",
            )
        except KheopsAsyncError as exc:
            if not _retryable_or_short(exc):
                raise
            log.info(
                "series %s: %s; fetching missing instances one by one", state.plan.series_uid, exc
            )
            await self._fetch_missing_one_by_one(state, exc)

    async def _stream_series(self, state: _SeriesState) -> None:
        """One attempt: retrieve the whole series and store every part not yet done."""
        plan = state.plan
        async with (
            self.limiter,
            self.client.retrieve(
                plan.study_uid, plan.series_uid, transfer_syntax=self.transfer_syntax
            ) as reader,
        ):
            await self._store_parts(reader, state)
        if state.plan.expected_instances is None:
            # The server gave no NumberOfSeriesRelatedInstances: count its instance list.
            listing = await self._list_instances(plan)
            state.plan = _with_expected(plan, len(listing))
        if state.shortfall():
            plan = state.plan
            raise IncompleteSeriesError(
                f"series {plan.series_uid}: received {len(state.done)} of "
                f"{plan.expected_instances} instances"
            )

    async def _store_parts(self, reader: MultipartReader, state: _SeriesState) -> None:
        """Receive parts and finish their files in a two-stage pipeline.

        The event loop receives part n+1 while a worker thread checks and writes part
        n (file creation is slow on many file systems). At most
        :data:`WRITE_AHEAD_PARTS` received parts wait for their turn. If the answer
        breaks off, the parts already received are still finished before the error
        is raised (a retry then skips them).
        """
        send, receive = anyio.create_memory_object_stream[PartBody](WRITE_AHEAD_PARTS)
        errors: list[Exception] = []

        async def finish_all() -> None:
            try:
                async for body in receive:
                    await self._finish(body, state)
            except Exception as exc:  # stop receiving: this failure ends the attempt
                errors.append(exc)
                group.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(finish_all)
                try:
                    async with send:
                        async for part in reader:
                            body = await receive_body(part, self.partial, self.progress)
                            try:
                                await send.send(body)
                            except BaseException:
                                body.discard()
                                raise
                except Exception as exc:  # the writer finishes what came before the failure
                    errors.append(exc)
        finally:
            _discard_queued(receive)  # parts left by a failure or a cancellation
            receive.close()
        if errors:
            raise errors[0]

    async def _finish(self, body: PartBody, state: _SeriesState) -> None:
        """Check one received part and put it in place (its blocking work in a thread)."""
        try:
            received = await anyio.to_thread.run_sync(finish_body, body, self.keywords)
        except InvalidDicomError as exc:
            self._record_failed_part(state, f"part {body.index}: {exc}")
            return
        except BaseException:
            body.discard()
            raise
        await self._commit(received, state)

    async def _commit(self, received: ReceivedPart, state: _SeriesState) -> None:
        """Put a received part in its final place, or skip it if it is already there."""
        values = {**state.plan.known_values, **{k: v for k, v in received.values.items() if v}}
        sop_uid = values["SOPInstanceUID"]
        if sop_uid in state.done:
            received.discard()
            return
        final = self.layout.resolve(self.root, values)
        if not self.force and not state.fresh and _is_complete_file(final):
            received.discard()
            record = self._record(values, final, InstanceStatus.SKIPPED, final.stat().st_size)
        else:
            if self.fsync:  # fsync blocks for milliseconds: keep it off the event loop
                await anyio.to_thread.run_sync(lambda: received.commit(final, fsync=True))
            else:
                received.commit(final)
            self.report.bytes_written += received.size
            record = self._record(values, final, InstanceStatus.WRITTEN, received.size)
        state.done[sop_uid] = record
        self.report.instances.append(record)
        self.progress.instances_done += 1
        self.progress.notify()

    def _record(
        self, values: dict[str, str], path: Path, status: InstanceStatus, size: int | None
    ) -> InstanceRecord:
        return InstanceRecord(
            study_uid=values.get("StudyInstanceUID", ""),
            series_uid=values.get("SeriesInstanceUID", ""),
            sop_uid=values.get("SOPInstanceUID", ""),
            patient_id=values.get("PatientID", ""),
            modality=values.get("Modality", ""),
            series_date=values.get("SeriesDate", ""),
            series_time=values.get("SeriesTime", ""),
            file_size=size,
            path=str(path),
            status=status,
        )

    def _record_failed_part(self, state: _SeriesState, error: str) -> None:
        plan = state.plan
        log.warning("series %s: %s (not saved)", plan.series_uid, error)
        record = InstanceRecord(
            plan.study_uid,
            plan.series_uid,
            "",
            patient_id=plan.patient_id,
            modality=plan.modality,
            status=InstanceStatus.FAILED,
            error=error,
        )
        state.failed_parts.setdefault(error, record)

    # -- resume and repair ---------------------------------------------------------

    def _series_may_exist(self, plan: SeriesPlan) -> bool:
        """Whether files of this series may already be on disk (else skip the check)."""
        known = plan.known_values
        missing = [f for f in self.layout.fields if f != "SOPInstanceUID" and f not in known]
        if missing:
            return True
        directory = self.layout.resolve(self.root, {**known, "SOPInstanceUID": "x"}).parent
        return directory.exists()

    async def _list_instances(self, plan: SeriesPlan) -> list[DicomRecord]:
        result = await self._limited(
            lambda: self.client.search_instances(
                study_uid=plan.study_uid,
                series_uid=plan.series_uid,
                includefield=[f for f in self.layout.fields if f not in plan.known_values],
            )
        )
        return [r for r in result.records if r.sop_uid]

    def _values_from_listing(self, plan: SeriesPlan, record: DicomRecord) -> dict[str, str]:
        values = dict(plan.known_values)
        for keyword in (*self.layout.fields, "SOPInstanceUID"):
            value = record.get_value(keyword)
            if value is not None and keyword not in values:
                values[keyword] = str(value)
        values["SOPInstanceUID"] = record.sop_uid or ""
        return values

    async def _skip_existing(self, state: _SeriesState) -> list[DicomRecord]:
        """Mark instances whose final file exists as skipped; return the instance list."""
        listing = await self._list_instances(state.plan)
        if state.plan.expected_instances is None:
            state.plan = _with_expected(state.plan, len(listing))
        for record in listing:
            values = self._values_from_listing(state.plan, record)
            final = self.layout.resolve(self.root, values)
            if _is_complete_file(final) and values["SOPInstanceUID"] not in state.done:
                entry = self._record(values, final, InstanceStatus.SKIPPED, final.stat().st_size)
                state.done[values["SOPInstanceUID"]] = entry
                self.report.instances.append(entry)
                self.progress.instances_done += 1
        return listing

    async def _fetch_missing_one_by_one(
        self,
        state: _SeriesState,
        cause: BaseException | None,
        listing: list[DicomRecord] | None = None,
    ) -> None:
        """Retrieve each missing instance on its own (resume, or a series that stays short)."""
        plan = state.plan
        if listing is None:
            listing = await self._list_instances(plan)
        missing = [r.sop_uid for r in listing if r.sop_uid and r.sop_uid not in state.done]
        for sop_uid in missing:

            async def attempt(sop_uid: str = sop_uid) -> None:
                async with (
                    self.limiter,
                    self.client.retrieve(
                        plan.study_uid,
                        plan.series_uid,
                        sop_uid,
                        transfer_syntax=self.transfer_syntax,
                    ) as reader,
                ):
                    await self._store_parts(reader, state)
                if sop_uid not in state.done:
                    raise IncompleteSeriesError(f"instance {sop_uid} was not in the answer")

            try:
                await retry_call(
                    self.retry,
                    attempt,
                    describe=f"instance {sop_uid}",
                    retryable=_retryable_or_short,
                )
            except KheopsAsyncError as exc:
                if _is_fatal(exc):
                    raise
                log.warning("instance %s failed: %s", sop_uid, exc)
        still_missing = [s for s in missing if s not in state.done]
        expected = max(plan.expected_instances or 0, len(listing))
        if still_missing or len(state.done) < expected:
            raise IncompleteSeriesError(
                f"series {plan.series_uid} stays incomplete: {len(state.done)} of {expected} "
                f"instances after retries ({cause or 'instance retrieves failed'}); "
                f"missing: {', '.join(still_missing) or 'unknown'}"
            )

    # -- dry run and metadata ------------------------------------------------------

    async def _plan_instances(self, state: _SeriesState) -> None:
        """Dry run: list the instances that would be written; retrieve no bulk data."""
        for record in await self._list_instances(state.plan):
            values = self._values_from_listing(state.plan, record)
            final = self.layout.resolve(self.root, values)
            exists = _is_complete_file(final) and not self.force
            status = InstanceStatus.SKIPPED if exists else InstanceStatus.PLANNED
            entry = self._record(values, final, status, final.stat().st_size if exists else None)
            self.report.instances.append(entry)
            self.progress.instances_done += 1

    async def _series_metadata(self, state: _SeriesState) -> None:
        """Save the series' WADO-RS metadata as DICOM JSON (per series or per instance)."""
        plan = state.plan
        items = await self._limited(
            lambda: self.client.retrieve_metadata(plan.study_uid, plan.series_uid)
        )
        json_layout = self.layout.with_suffix(".json")
        for item in items:
            record = DicomRecord(item)
            values = {**plan.known_values, **self._header_values(record)}
            if not values.get("SOPInstanceUID"):
                continue
            final = json_layout.resolve(self.root, values)
            if self.metadata_only == "instance":
                size = self._write_json(final, item)
            else:
                final = final.parent / self._series_metadata_name(plan)
                size = None
            entry = self._record(values, final, InstanceStatus.METADATA, size)
            state.done[values["SOPInstanceUID"]] = entry
            self.report.instances.append(entry)
        if self.metadata_only == "series" and state.done:
            first = next(iter(state.done.values()))
            self._write_json(Path(first.path), items)
        expected = plan.expected_instances
        if expected is not None and len(state.done) < expected:
            raise IncompleteSeriesError(
                f"series {plan.series_uid}: metadata for {len(state.done)} of {expected} instances"
            )

    def _header_values(self, record: DicomRecord) -> dict[str, str]:
        values: dict[str, str] = {}
        for keyword in self.keywords:
            value = record.get_value(keyword)
            if value is not None:
                values[keyword] = str(value)
        return values

    def _series_metadata_name(self, plan: SeriesPlan) -> str:
        """``series_metadata.json`` when the layout gives each series its own directory."""
        directory = self.layout.template.rpartition("/")[0]
        if "{SeriesInstanceUID}" in directory:
            return "series_metadata.json"
        return f"series_metadata_{sanitize_component(plan.series_uid)}.json"

    def _write_json(self, final: Path, payload: object) -> int:
        """Write JSON atomically (temporary file, then rename); skip if present."""
        if final.exists() and not self.force:
            return final.stat().st_size
        data = json.dumps(payload, indent=1).encode()
        temp = self.partial.new_path()
        temp.write_bytes(data)
        ReceivedPart(temp, len(data), {}).commit(final, fsync=self.fsync)
        self.report.bytes_written += len(data)
        return len(data)

    # -- failures ------------------------------------------------------------------

    def _fail(self, failure: SeriesFailure) -> None:
        log.error("%s %s: %s", failure.study_uid, failure.series_uid, failure.error)
        self.report.failures.append(failure)
        self.progress.failures += 1
        self.progress.notify()

    def _fail_series(self, state: _SeriesState, error: str) -> None:
        plan = state.plan
        self._fail(
            SeriesFailure(
                plan.study_uid,
                plan.series_uid,
                error,
                expected=plan.expected_instances,
                received=len(state.done),
            )
        )


def _discard_queued(receive: MemoryObjectReceiveStream[PartBody]) -> None:
    """Delete the temporary files of parts still queued (after a failure or cancel)."""
    while True:
        try:
            receive.receive_nowait().discard()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return


def _with_expected(plan: SeriesPlan, count: int) -> SeriesPlan:
    return SeriesPlan(
        plan.study_uid,
        plan.series_uid,
        count,
        plan.patient_id,
        plan.modality,
        plan.series_date,
        plan.series_time,
    )


MIN_PART10_SIZE = 132
"""A DICOM Part-10 file is at least its 128-byte preamble and ``DICM``."""


def _is_complete_file(path: Path) -> bool:
    """Whether a final file is there and not an empty leftover of a crash.

    Files are renamed into place only when complete, but without ``fsync`` a power
    loss can leave a zero-length file at the final name: that one is fetched again.
    """
    try:
        return path.stat().st_size >= MIN_PART10_SIZE
    except OSError:
        return False


def _first_fatal(exc: Exception) -> Exception:
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


def _is_fatal(exc: BaseException) -> bool:
    """Errors that doom every series alike (bad token, bad settings): stop the run."""
    return isinstance(exc, AuthenticationError | ConfigurationError | StorageError)


async def download(
    client: DicomWebClient,
    targets: Targets,
    destination: str | os.PathLike[str],
    *,
    concurrency: int | None = None,
    layout: str | Layout = DEFAULT_LAYOUT,
    force: bool = False,
    fsync: bool = False,
    dry_run: bool = False,
    metadata_only: MetadataMode | None = None,
    transfer_syntax: str = "*",
    retry: RetryPolicy | None = None,
    progress: DownloadProgress | ProgressCallback | None = None,
) -> DownloadReport:
    """Download ``targets`` into ``destination``; return the report of every instance.

    - ``concurrency``: requests in flight at most (default: the client's setting).
    - ``layout``: path template of each file (default
      ``{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``).
    - ``force``: rewrite files that exist (default: skip them, so reruns resume).
    - ``fsync``: flush each file to stable storage before its rename.
    - ``dry_run``: plan and list only; nothing is written, no bulk data retrieved.
    - ``metadata_only``: save WADO-RS metadata as DICOM JSON instead of instances,
      one ``series_metadata.json`` per series (``"series"``) or one ``.json`` per
      instance at the layout's path (``"instance"``).
    - ``progress``: a :class:`DownloadProgress` to update, or a callback.

    A failing series never stops the others: failures are in ``report.failures``.
    A bad token (401) or a bad setting stops the run with its exception.
    """
    if isinstance(progress, DownloadProgress):
        tracker = progress
    else:
        tracker = DownloadProgress(callback=progress)
    run = _Download(
        client,
        targets,
        Path(destination),
        concurrency=concurrency or client.concurrency,
        layout=layout if isinstance(layout, Layout) else Layout(layout),
        force=force,
        fsync=fsync,
        dry_run=dry_run,
        metadata_only=metadata_only,
        transfer_syntax=transfer_syntax,
        retry=retry or client.retry,
        progress=tracker,
    )
    return await run.run()
