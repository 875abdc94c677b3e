"""The series strategy: bring one series to completion, fetching only what is missing.

1. **Resume.** Instances the journal knows are trusted when their file has the
   recorded size and modification time. A file with the right size but another time
   (touched, or copied without its times) is compared with its recorded sha256 when
   the journal has one (``checksum``), else checked as whole DICOM (see below): a
   same-size change inside the pixel data is found only with ``checksum``. A series
   the journal records as complete, with the server's count unchanged and every file
   trusted, costs no request at all.
   Files on disk that the journal does not know (an older tree, a kheops-client tree,
   a crash between a rename and the journal's commit) are trusted only when
   :func:`~kheops_async.dicomfile.is_complete_part10` finds a whole Part-10 file of
   the expected SOPInstanceUID; anything else is fetched again and replaced.
   ``force`` trusts nothing.
2. **Whole series**, streamed through the two-stage pipeline (:meth:`SeriesJob._retrieve`:
   the event loop receives while the sink checks and writes, one sink call per batch
   of parts, on the loop or in a worker thread: :mod:`~kheops_async.engine.placement`).
   A broken transfer keeps every part already finished. It is retried whole only when
   that can help: the failure came before any part arrived (a 503, a refused
   connection), or the attempt made progress.
3. **Instance by instance** for what is still missing: when the series keeps
   breaking at the same place, when a clean answer lacks instances, or when most of
   the series is already there (for a sync, whenever any of it is: a sync never
   transfers again what the tree holds, at the cost of one request per instance).
   :data:`MAX_INSTANCE_FAILURES_IN_A_ROW` instances failing one after the other end
   the series.

Every failed attempt is counted by the run's breaker, every committed part resets it.
"""

from __future__ import annotations

import logging
import os

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kheops_async.dicomfile import is_complete_part10
from kheops_async.dicomjson import DicomRecord
from kheops_async.engine.checksums import file_sha256
from kheops_async.engine.context import RunContext, is_fatal
from kheops_async.engine.journal import JournalEntry
from kheops_async.engine.receiving import PartBody, receive_body
from kheops_async.engine.sink import Outcome, SeriesRequest
from kheops_async.errors import IncompleteSeriesError, KheopsAsyncError, StorageError
from kheops_async.records import Record
from kheops_async.report import InstanceRecord, InstanceStatus
from kheops_async.retry import is_retryable, retry_call
from kheops_async.streaming import MultipartReader
from kheops_async.targets import SeriesPlan
from kheops_async.uids import is_valid_uid

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_PARTS",
    "MAX_INSTANCE_FAILURES_IN_A_ROW",
    "RESUME_ONE_BY_ONE_RATIO",
    "SeriesJob",
]

log = logging.getLogger("kheops_async")

RESUME_ONE_BY_ONE_RATIO = 3
"""A series with at most 1 missing instance per 3 present is completed instance by
instance instead of retrieving the whole series again."""
MAX_INSTANCE_FAILURES_IN_A_ROW = 3
"""Instances of one series failing after all their retries, one after the other, before
the series gives up (the rest is reported missing)."""
BATCH_MAX_PARTS = 64
"""Parts placed in one sink call at most."""
BATCH_MAX_BYTES = 2 * 1024 * 1024
"""Bytes of small parts gathered for one sink call at most."""
IDLE_BATCH_MIN_PARTS = 8
"""Small parts gathered before a batch goes to an idle sink (or the bytes below).

A sink call costs a round trip through the event loop whatever the batch holds;
handing each part over as soon as the sink was idle made S2 (4,000 parts of 76 KB)
cost one call per part. Gathering a few first: S2's engine 2.71 -> 2.53 s (median of 4,
interleaved, with the sink in a worker thread). The end of the answer (or its failure)
hands over what is pending.
"""
IDLE_BATCH_MIN_BYTES = 512 * 1024
"""Bytes of small parts that go to an idle sink even before IDLE_BATCH_MIN_PARTS."""


class _Checked(Record):
    """What a look at the files on disk found, in a worker thread."""

    __slots__ = ("suspects", "trusted")

    def __init__(self, trusted: dict[str, JournalEntry], suspects: set[str]) -> None:
        self.trusted = trusted
        self.suspects = suspects


class SeriesJob:
    """One series of a run, from resume to its journal record."""

    def __init__(self, run: RunContext, plan: SeriesPlan) -> None:
        self.run = run
        self.plan = plan
        self.expected = plan.expected_instances
        self.request = SeriesRequest(plan.study_uid, plan.series_uid, plan.known_values)
        self._listing: list[DicomRecord] | None = None
        self._failed_parts: dict[str, InstanceRecord] = {}
        self._progressed = False
        self._stream_started = False
        self._attempt_failed_parts = 0
        self.resumed = 0
        """Instances already in place when the job began (from the journals or the tree)."""
        self.written = 0
        """Instances this job wrote (repairs included)."""

    @property
    def received(self) -> int:
        """Instances of the series in place so far."""
        return len(self.request.done)

    # -- the whole job -------------------------------------------------------------

    async def complete(self) -> None:
        """Bring the series to completion, or raise with what is missing."""
        settings = self.run.settings
        if settings.dry_run:
            await self._plan_only()
            return
        if not settings.force:
            await self._resume()
            self.resumed = self.received
        if self.expected is not None and self._shortfall() == 0 and not self._listed_missing():
            await self._finish()
            return
        if (
            self.request.done
            and self._listing is not None
            and (
                settings.incremental or self._shortfall() * RESUME_ONE_BY_ONE_RATIO <= self.received
            )
        ):
            await self._one_by_one(None)
        else:
            await self._whole_series()
        await self._finish()

    def report_failed_parts(self) -> None:
        """Record the parts that failed their checks (once each), at the series' end."""
        for record in self._failed_parts.values():
            self.run.recorder.instance(record)
        self._failed_parts.clear()

    async def record_in_journal(self) -> None:
        """Record the series' counts (and whether it is complete) in the journal."""
        await self._finish()

    async def _finish(self) -> None:
        journal = self.run.journal
        if journal is not None:
            await self.run.placement.call(
                lambda: journal.finish_series(
                    self.plan.study_uid,
                    self.plan.series_uid,
                    expected=self.expected,
                    received=self.received,
                )
            )

    def _listed_missing(self) -> bool:
        """Whether the instance list (when asked) names an instance not in place."""
        listing = self._listing
        return listing is not None and any(r.sop_uid not in self.request.done for r in listing)

    def _shortfall(self) -> int:
        return 0 if self.expected is None else max(0, self.expected - self.received)

    # -- resume --------------------------------------------------------------------

    async def _resume(self) -> None:
        """Mark what is already in place (journal first, then untracked files)."""
        journal = self.run.journal
        plan = self.plan
        if journal is not None:
            entries = await self.run.placement.call(
                lambda: journal.series_entries(plan.study_uid, plan.series_uid)
            )
            if entries and self.run.deletions is not None:
                entries = await self._without_unlisted(entries)
            if entries:
                checked = await self.run.placement.in_thread(
                    lambda: self._check_journal_entries(entries)
                )
                self._adopt(checked)
        if self.expected is not None and self._shortfall() == 0 and not self.run.settings.deep:
            return  # every instance the server counts is in place: no request at all
        if not self._series_may_have_files():
            return
        listing = await self._instance_list()
        if self.expected is None:
            self.expected = len(listing)
        candidates = {
            r.sop_uid: self._path_from_listing(r)
            for r in listing
            if r.sop_uid and r.sop_uid not in self.request.done | self.request.suspects
        }
        if candidates:
            checked = await self.run.placement.in_thread(lambda: self._check_untracked(candidates))
            self._adopt(checked)

    async def _without_unlisted(self, entries: dict[str, JournalEntry]) -> dict[str, JournalEntry]:
        """``--delete``: plan the removal of recorded instances the server no longer lists.

        Asked only when the journals hold more of the series than the server counts
        (an instance list costs a request); the rest is returned.
        """
        deep = self.run.settings.deep
        if not deep and (self.expected is None or len(entries) <= self.expected):
            return entries
        listed = {record.sop_uid for record in await self._instance_list()}
        gone = [entry for sop_uid, entry in entries.items() if sop_uid not in listed]
        journal, deletions = self.run.journal, self.run.deletions
        if gone and journal is not None and deletions is not None:
            await self.run.placement.in_thread(
                lambda: deletions.add_found(
                    journal.family, gone, "instance no longer listed by the server"
                )
            )
        return {sop_uid: entry for sop_uid, entry in entries.items() if sop_uid in listed}

    def _check_journal_entries(self, entries: dict[str, JournalEntry]) -> _Checked:
        """Trusted: the recorded size and time; same size, other time: a DICOM check."""
        trusted: dict[str, JournalEntry] = {}
        suspects: set[str] = set()
        root = self.run.root
        for sop_uid, entry in entries.items():
            path = root / entry.path
            try:
                stat = os.stat(path)
            except OSError:
                suspects.add(sop_uid)  # gone: fetched again, and counted as a repair
                continue
            if stat.st_size == entry.size and stat.st_mtime_ns == entry.mtime_ns:
                trusted[sop_uid] = entry
            elif stat.st_size == entry.size and (
                file_sha256(path) == entry.sha256
                if entry.sha256
                else is_complete_part10(path, sop_uid)
            ):
                trusted[sop_uid] = self._record_adopted(entry.path, sop_uid, path, entry.sha256)
            else:
                suspects.add(sop_uid)
        return _Checked(trusted, suspects)

    def _check_untracked(self, candidates: dict[str, str]) -> _Checked:
        """Files the journal does not know: trusted only as whole DICOM of the right SOP."""
        trusted: dict[str, JournalEntry] = {}
        suspects: set[str] = set()
        root = self.run.root
        for sop_uid, relative in candidates.items():
            path = root / relative
            if not os.path.lexists(path):
                continue
            if is_complete_part10(path, sop_uid):
                trusted[sop_uid] = self._record_adopted(relative, sop_uid, path)
            else:
                suspects.add(sop_uid)
        return _Checked(trusted, suspects)

    def _record_adopted(
        self, relative: str, sop_uid: str, path: os.PathLike[str], sha256: str | None = None
    ) -> JournalEntry:
        """A verified file enters the journal as it is (worker thread)."""
        stat = os.stat(path)
        entry = JournalEntry(
            relative,
            sop_uid,
            self.plan.study_uid,
            self.plan.series_uid,
            stat.st_size,
            stat.st_mtime_ns,
            sha256,
        )
        if self.run.journal is not None and not self.run.journal.readonly:
            self.run.journal.add_instance(entry)
        return entry

    def _adopt(self, checked: _Checked) -> None:
        """Count trusted files as skipped; remember the suspects to repair."""
        for sop_uid, entry in checked.trusted.items():
            if sop_uid in self.request.done:
                continue
            self.request.done.add(sop_uid)
            self.run.recorder.instance(
                self._record(
                    sop_uid, str(self.run.root / entry.path), InstanceStatus.SKIPPED, entry.size
                )
            )
        self.request.suspects |= checked.suspects - set(checked.trusted)

    def _series_may_have_files(self) -> bool:
        """Whether files of this series may be on disk (else no listing is needed)."""
        known = self.plan.known_values
        layout = self.run.layout
        if any(f != "SOPInstanceUID" and f not in known for f in layout.fields):
            return True
        probe = layout.render({**known, "SOPInstanceUID": "0"})
        return os.path.isdir(os.path.dirname(os.path.join(self.run.root, probe)))

    # -- listing -------------------------------------------------------------------

    async def _instance_list(self) -> list[DicomRecord]:
        """The series' instances as the server lists them (asked once per job)."""
        if self._listing is not None:
            return self._listing
        plan, layout = self.plan, self.run.layout
        result = await self.run.limited(
            lambda: self.run.client.search_instances(
                study_uid=plan.study_uid,
                series_uid=plan.series_uid,
                includefield=[f for f in layout.fields if f not in plan.known_values],
            )
        )
        if result.truncated:  # a count or a deletion trusted to a partial list: never
            raise IncompleteSeriesError(
                f"the instance list of series {plan.series_uid} is incomplete: {result.warning}"
            )
        listing = []
        for record in result.records:
            sop_uid = record.sop_uid or ""
            if is_valid_uid(sop_uid):
                listing.append(record)
            elif sop_uid:
                self._failed_part(f"the server listed a malformed SOPInstanceUID {sop_uid[:80]!r}")
            else:
                self._failed_part("the server listed an instance without a SOPInstanceUID")
        self._listing = listing
        return listing

    def _path_from_listing(self, record: DicomRecord) -> str:
        values = dict(self.plan.known_values)
        for keyword in self.run.layout.fields:
            value = record.get_value(keyword)
            if value is not None and keyword not in values:
                values[keyword] = str(value)
        values["SOPInstanceUID"] = record.sop_uid or ""
        return self.run.layout.render(values)

    # -- retrieving ----------------------------------------------------------------

    async def _whole_series(self) -> None:
        """Retrieve the whole series; then instance by instance for what stays missing."""
        plan = self.plan

        async def attempt() -> None:
            self._progressed = self._stream_started = False
            await self._retrieve(None)
            if self.expected is None:  # no count from the server: count its list
                self.expected = len(await self._instance_list())
            if self._shortfall():
                raise IncompleteSeriesError(
                    f"series {plan.series_uid}: received {self.received} of "
                    f"{self.expected} instances"
                )

        def worth_retrying_whole(exc: BaseException) -> bool:
            return is_retryable(exc) and (self._progressed or not self._stream_started)

        try:
            await retry_call(
                self.run.retry,
                attempt,
                describe=f"series {plan.series_uid}",
                retryable=worth_retrying_whole,
            )
        except KheopsAsyncError as exc:
            if is_fatal(exc) or not (is_retryable(exc) or isinstance(exc, IncompleteSeriesError)):
                raise
            log.info("series %s: %s; fetching missing instances one by one", plan.series_uid, exc)
            await self._one_by_one(exc)

    async def _one_by_one(self, cause: BaseException | None) -> None:
        """Retrieve each missing instance on its own."""
        plan = self.plan
        listing = await self._instance_list()
        self.expected = max(self.expected or 0, len(listing))
        missing = [r.sop_uid for r in listing if r.sop_uid and r.sop_uid not in self.request.done]
        failures_in_a_row = 0
        for sop_uid in missing:
            if failures_in_a_row >= MAX_INSTANCE_FAILURES_IN_A_ROW:
                break

            async def attempt(sop_uid: str = sop_uid) -> None:
                self._attempt_failed_parts = 0
                await self._retrieve(sop_uid)
                if sop_uid not in self.request.done and not self._attempt_failed_parts:
                    raise IncompleteSeriesError(f"instance {sop_uid} was not in the answer")

            try:
                await retry_call(
                    self.run.retry,
                    attempt,
                    describe=f"instance {sop_uid}",
                    retryable=lambda e: is_retryable(e) or isinstance(e, IncompleteSeriesError),
                )
            except KheopsAsyncError as exc:
                if is_fatal(exc):
                    raise
                log.warning("instance %s failed: %s", sop_uid, exc)
            failures_in_a_row = 0 if sop_uid in self.request.done else failures_in_a_row + 1
        still_missing = [s for s in missing if s not in self.request.done]
        if still_missing or self.received < self.expected:
            shown = ", ".join(still_missing[:20]) + (" ..." if len(still_missing) > 20 else "")
            raise IncompleteSeriesError(
                f"series {plan.series_uid} stays incomplete: {self.received} of "
                f"{self.expected} instances after retries "
                f"({cause or 'instance retrieves failed'}); missing: {shown or 'unknown'}"
            )

    async def _retrieve(self, sop_uid: str | None) -> None:
        """One retrieve (the series, or one instance) through a two-stage pipeline.

        One task receives parts while another has them placed (on the event loop, or
        in a worker thread: :mod:`~kheops_async.engine.placement`). The request slot
        is held while the answer is received, not while its last batches are placed:
        through 40 ms of round trip (benchmark case S3, 200 series of 1.5 MB), placing
        what was still pending after the last byte held each slot a mean 10 ms, 8 % of
        the retrieves' slot time (S3, the command, 8 interleaved pairs: 3.87 -> 3.74 s).
        If the answer breaks off, the parts already received are still placed before
        the error is raised; if placing fails, receiving stops.
        """
        plan, run = self.plan, self.run
        request = self.request if sop_uid is None else self.request.for_instance(sop_uid)
        send, receive = anyio.create_memory_object_stream[list[PartBody]](0)
        errors: list[Exception] = []

        async def place_all() -> None:
            try:
                async for batch in receive:
                    await self._place(batch, request)
            except Exception as exc:  # stop receiving: this failure ends the attempt
                errors.append(exc)
                group.cancel_scope.cancel()

        async def stream() -> None:
            async with run.client.retrieve(
                plan.study_uid,
                plan.series_uid,
                sop_uid,
                transfer_syntax=run.settings.transfer_syntax,
            ) as reader:
                await self._receive_parts(reader, send)

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(place_all)
                async with send:
                    try:
                        await run.limited(stream)
                    except Exception as exc:  # the parts that came before are still placed
                        errors.append(exc)
        finally:
            _discard_queued(receive)
            receive.close()
        if errors:
            raise errors[0]

    async def _receive_parts(
        self, reader: MultipartReader, send: MemoryObjectSendStream[list[PartBody]]
    ) -> None:
        """Receive the answer's parts and hand them to the placing task in batches.

        Parts that arrive while placement is busy are gathered into one batch (at most
        :data:`BATCH_MAX_PARTS` parts or :data:`BATCH_MAX_BYTES` of small parts), so
        there is one sink call per batch, and at most two batches in memory; an idle
        sink gets a batch once :data:`IDLE_BATCH_MIN_PARTS` parts or
        :data:`IDLE_BATCH_MIN_BYTES` are pending (a large part goes at once). If the
        answer breaks off, what was received is handed over before the error is raised.
        """
        run = self.run
        pending: list[PartBody] = []
        pending_bytes = 0
        try:
            async for part in reader:
                self._stream_started = True
                body = await receive_body(
                    part,
                    run.temp.new_path(),
                    on_bytes=run.recorder.bytes_received,
                    checksum=run.settings.checksum,
                )
                pending.append(body)
                pending_bytes += body.size if body.in_memory else 0
                if (
                    not body.in_memory
                    or len(pending) >= BATCH_MAX_PARTS
                    or pending_bytes >= BATCH_MAX_BYTES
                ):
                    batch, pending, pending_bytes = pending, [], 0
                    await _hand_over(send, batch)
                elif len(pending) >= IDLE_BATCH_MIN_PARTS or pending_bytes >= IDLE_BATCH_MIN_BYTES:
                    try:
                        send.send_nowait(pending)  # the sink is idle: go now
                    except anyio.WouldBlock:
                        continue
                    pending, pending_bytes = [], 0
        except Exception:  # what came before the failure is placed too
            batch, pending = pending, []
            await _hand_over(send, batch)
            raise
        else:
            batch, pending = pending, []
            await _hand_over(send, batch)
        finally:  # cancelled: nothing more is placed
            for body in pending:
                body.discard()

    async def _place(self, batch: list[PartBody], request: SeriesRequest) -> None:
        """Have one batch placed (:mod:`~kheops_async.engine.placement`); record each part.

        Once a batch is handed over, its files and their records land together, even
        when the run is being cancelled.
        """
        try:  # the sink removes the temporary files of whatever it does not place
            outcomes = await self.run.placement.commit(batch, request)
        except OSError as exc:
            raise StorageError(f"writing to {self.run.root} failed: {exc.strerror or exc}") from exc
        for outcome in outcomes:
            self._record_outcome(outcome)
        await anyio.lowlevel.checkpoint()

    def _record_outcome(self, outcome: Outcome) -> None:
        recorder = self.run.recorder
        if outcome.status == "failed":
            self._attempt_failed_parts += 1
            self._failed_part(outcome.error, outcome.values.get("SOPInstanceUID", ""))
            return
        self.run.breaker.succeeded()
        if outcome.status == "written":
            self._progressed = True
            self.written += 1
            sop_uid = outcome.values["SOPInstanceUID"]
            self.request.suspects.discard(sop_uid)
            recorder.instance(
                self._record(
                    sop_uid,
                    str(outcome.path),
                    InstanceStatus.WRITTEN,
                    outcome.size,
                    outcome.values,
                ),
                repaired=outcome.repaired,
            )

    # -- records -------------------------------------------------------------------

    def _record(
        self,
        sop_uid: str,
        path: str,
        status: InstanceStatus,
        size: int | None,
        values: dict[str, str] | None = None,
    ) -> InstanceRecord:
        plan = self.plan
        values = values or {}
        return InstanceRecord(
            study_uid=plan.study_uid,
            series_uid=plan.series_uid,
            sop_uid=sop_uid,
            patient_id=values.get("PatientID") or plan.patient_id,
            modality=values.get("Modality") or plan.modality,
            series_date=values.get("SeriesDate") or plan.series_date,
            series_time=values.get("SeriesTime") or plan.series_time,
            file_size=size,
            path=path,
            status=status,
        )

    def _failed_part(self, error: str, sop_uid: str = "") -> None:
        plan = self.plan
        self._failed_parts.setdefault(
            error,
            InstanceRecord(
                plan.study_uid,
                plan.series_uid,
                sop_uid,
                patient_id=plan.patient_id,
                modality=plan.modality,
                status=InstanceStatus.FAILED,
                error=error,
            ),
        )

    # -- dry run -------------------------------------------------------------------

    async def _plan_only(self) -> None:
        """Dry run: what is already there (skipped) and what would be downloaded.

        The same resume checks as a real run (the journal is open read-only), then one
        planned row per listed instance still missing; no bulk data is retrieved.
        """
        listing = await self._instance_list()
        if not self.run.settings.force:
            await self._resume()
        for record in listing:
            sop_uid = record.sop_uid or ""
            if sop_uid not in self.request.done:
                path = self.run.root / self._path_from_listing(record)
                self.run.recorder.instance(
                    self._record(sop_uid, str(path), InstanceStatus.PLANNED, None)
                )


async def _hand_over(send: MemoryObjectSendStream[list[PartBody]], batch: list[PartBody]) -> None:
    """Give a batch to the placing task; if that fails, delete its temporary files."""
    if not batch:
        return
    try:
        await send.send(batch)
    except BaseException:
        for body in batch:
            body.discard()
        raise


def _discard_queued(receive: MemoryObjectReceiveStream[list[PartBody]]) -> None:
    """Delete the temporary files of batches still queued (after a failure or cancel)."""
    while True:
        try:
            batch = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return
        for body in batch:
            body.discard()
