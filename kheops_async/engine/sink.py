"""The sink: received parts into final files, one synchronous call per batch.

For each part of a batch, :meth:`PartSink.commit_batch` checks, then places it:

1. the part's Content-Type is ``application/dicom`` and its header reads as DICOM;
2. its SOPInstanceUID is a valid UID, and its Study and Series UIDs are those of the
   request (and the SOP UID too, for an instance request). **The rule:** a part that
   names another study or series, or an invalid UID, is never written: it is a failed
   instance of the requested series, which stays incomplete and is reported. Writing
   it where its header says would overwrite another series' files, and counting it
   for the requested series would call an incomplete series complete;
3. its path comes from the layout (values from its own header, sanitised), and the
   journal is asked who is recorded at that path: a different instance there is a
   collision, reported with both UIDs, and nothing is overwritten;
4. its bytes go to a temporary file (small parts are written here in one write; large
   ones already streamed), optionally flushed (``fsync``), then renamed into place
   (atomic), the directory flushed too with ``fsync``;
5. the journal records it (path, UIDs, size, modification time, sha256).

Whatever goes wrong, the part's temporary file is removed before the exception
leaves. Everything here blocks; the engine calls it through
:class:`~kheops_async.engine.placement.Placement`, on the event loop or in a worker
thread, one call at a time for the whole run (so the collision check and the journal
row of a path cannot interleave with another call's). One at a time is also the faster
choice, measured: with concurrent thread calls the threads fight over the GIL and a
50,000 instance download cost 0.49 ms of CPU per instance, against 0.27 ms serialised
(``benchmarks/bench_memory.py --sizes 500,50000``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from kheops_async.dicomfile import read_header_values, scan_header_values
from kheops_async.engine.journal import Journal, JournalEntry
from kheops_async.engine.receiving import HEADER_PROBE_BYTES, PartBody, write_all
from kheops_async.errors import InvalidDicomError
from kheops_async.layout import Layout
from kheops_async.records import Record
from kheops_async.uids import is_valid_uid

__all__ = ["REPORT_KEYWORDS", "Outcome", "PartSink", "SeriesRequest"]

REPORT_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "Modality",
    "SeriesDate",
    "SeriesTime",
)
"""Header values every part is read for: the checks and the instance table's columns."""

SMALL_HEADER_PROBE_BYTES = 8 * 1024
"""The first bytes of a small part copied to read its header from, before a larger probe:
most headers end well within them (copying 64 KiB of each 76 KB part of the benchmark's
archive cost 36 M instructions, 3 % of the command's)."""


class SeriesRequest(Record):
    """What a retrieve asked for, and what of it is already done.

    ``done`` holds the SOPInstanceUIDs of the series already in place (parts for them
    are dropped); ``suspects`` those whose file is on disk but not trusted (a part
    for them repairs it). Both are only changed on the event loop between batches.
    """

    __slots__ = ("done", "known_values", "series_uid", "sop_uid", "study_uid", "suspects")

    def __init__(
        self,
        study_uid: str,
        series_uid: str,
        known_values: dict[str, str],
        sop_uid: str | None = None,
        done: set[str] | None = None,
        suspects: set[str] | None = None,
    ) -> None:
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.known_values = known_values
        self.sop_uid = sop_uid
        self.done: set[str] = set() if done is None else done
        self.suspects: set[str] = set() if suspects is None else suspects

    def for_instance(self, sop_uid: str) -> SeriesRequest:
        """The same series, asking for one instance (sharing ``done``)."""
        return SeriesRequest(
            self.study_uid,
            self.series_uid,
            self.known_values,
            sop_uid,
            self.done,
            self.suspects,
        )


class Outcome(Record):
    """What became of one part: ``status`` is "written", "duplicate" (already done) or "failed"."""

    __slots__ = ("error", "path", "repaired", "size", "status", "values")

    def __init__(
        self,
        status: str,
        values: dict[str, str],
        path: str | None = None,
        size: int = 0,
        error: str = "",
        repaired: bool = False,
    ) -> None:
        self.status = status
        self.values = values
        self.path = path
        self.size = size
        self.error = error
        self.repaired = repaired


class PartSink:
    """Places checked parts under ``root`` with ``layout`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        layout: Layout,
        journal: Journal | None,
        *,
        fsync: bool = False,
        checksum: bool = False,
    ) -> None:
        self.root = root
        self._root_prefix = f"{root}{os.sep}"
        self.layout = layout
        self.journal = journal
        self.fsync = fsync
        self.checksum = checksum
        self.keywords = tuple(dict.fromkeys([*REPORT_KEYWORDS, *layout.fields]))

    def commit_batch(self, bodies: Sequence[PartBody], request: SeriesRequest) -> list[Outcome]:
        """Check and place every part of a batch (blocking). Raises OSError on disk errors.

        Invalid parts become ``failed`` outcomes; any other exception removes the
        temporary files of the parts not yet placed before it propagates.
        """
        outcomes: list[Outcome] = []
        try:
            for body in bodies:
                outcomes.append(self._commit_one(body, request))
        finally:
            for body in bodies[len(outcomes) :]:
                body.discard()
        return outcomes

    def _commit_one(self, body: PartBody, request: SeriesRequest) -> Outcome:
        try:
            values = self._checked_values(body, request)
        except InvalidDicomError as exc:
            body.discard()
            return Outcome("failed", {}, error=f"part {body.index}: {exc}")
        except BaseException:
            body.discard()
            raise
        sop_uid = values["SOPInstanceUID"]
        if sop_uid in request.done:
            body.discard()
            return Outcome("duplicate", values, size=body.size)
        identity = (sop_uid, request.series_uid, request.study_uid)
        try:
            key = self.layout.render({**request.known_values, **values})
            owner = self.journal.owner(key) if self.journal is not None else None
            if owner is not None and owner != identity:
                body.discard()
                return Outcome(
                    "failed",
                    values,
                    error=(
                        f"path collision at {key}: instance {sop_uid} of series "
                        f"{request.series_uid} would replace instance {owner[0]} of "
                        f"series {owner[1]} (study {owner[2]}); not written"
                    ),
                )
            final = self._root_prefix + key
            sha256 = self._place(body, final)
            if self.journal is not None:
                stat = os.stat(final)
                self.journal.add_instance(
                    JournalEntry(
                        key,
                        sop_uid,
                        request.study_uid,
                        request.series_uid,
                        stat.st_size,
                        stat.st_mtime_ns,
                        sha256,
                    )
                )
        except BaseException:
            body.discard()
            raise
        request.done.add(sop_uid)
        return Outcome("written", values, final, body.size, repaired=sop_uid in request.suspects)

    def _checked_values(self, body: PartBody, request: SeriesRequest) -> dict[str, str]:
        """The part's header values, after the checks of the rule (module docstring)."""
        if body.content_type != "application/dicom":
            raise InvalidDicomError(f"Content-Type {body.content_type!r}, not DICOM")
        if body.chunks is not None:
            values = _read_small_part_header(body.chunks, self.keywords)
        else:
            values = _read_large_part_header(body.head, body.temp_path, self.keywords)
        sop_uid = values["SOPInstanceUID"]
        if not is_valid_uid(sop_uid):
            raise InvalidDicomError(f"malformed SOPInstanceUID {sop_uid[:80]!r} in its header")
        for keyword, wanted in (
            ("StudyInstanceUID", request.study_uid),
            ("SeriesInstanceUID", request.series_uid),
            ("SOPInstanceUID", request.sop_uid),
        ):
            found = values.get(keyword, "")
            if wanted is not None and found != wanted:
                raise InvalidDicomError(
                    f"its header names {keyword} {found[:80]!r}, not the requested "
                    f"{wanted} (instance {sop_uid[:80]}); not written"
                )
        return values

    def _place(self, body: PartBody, final: str) -> str | None:
        """Write (small parts), flush, rename into place; return the sha256 if asked."""
        sha256 = body.sha256
        if body.chunks is not None:
            fd = os.open(body.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, body.chunks)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.checksum:
                digest = hashlib.sha256()
                for chunk in body.chunks:
                    digest.update(chunk)
                sha256 = digest.hexdigest()
            body.chunks = None
        elif self.fsync:
            _fsync_path(body.temp_path)
        try:
            os.replace(body.temp_path, final)
        except FileNotFoundError:  # the first file of its directory: make it, once
            if not os.path.exists(body.temp_path):
                raise
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(body.temp_path, final)
        if self.fsync:
            _fsync_path(os.path.dirname(final))
        return sha256


def _fsync_path(path: str) -> None:
    """Flush a file's (or a directory's) data and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_small_part_header(
    chunks: list[bytes | memoryview], keywords: Sequence[str]
) -> dict[str, str]:
    """Header of a small part: from its first bytes when they hold the whole header.

    Those are the first chunk whole when it is all of the part as ``bytes``, else a
    copy of its first :data:`SMALL_HEADER_PROBE_BYTES`, then of its first
    :data:`HEADER_PROBE_BYTES`, read by the fast scan alone (which gives up on a header
    cut short: :func:`~kheops_async.dicomfile.scan_header_values`); the whole part is
    joined and read when neither answers.
    """
    first = chunks[0] if chunks else b""
    if type(first) is bytes and len(chunks) == 1:
        return read_header_values(first, keywords)
    for size in (SMALL_HEADER_PROBE_BYTES, HEADER_PROBE_BYTES):
        probe = bytes(first[:size])
        values = scan_header_values(probe, keywords)
        if values is not None:
            return values
        if len(probe) < size:
            break
    return read_header_values(b"".join(chunks), keywords)


def _read_large_part_header(head: bytes, temp_path: str, keywords: Sequence[str]) -> dict[str, str]:
    """Header of a part larger than the probe: from its head, else from the file."""
    if head[128:132] != b"DICM":
        raise InvalidDicomError("not a DICOM Part-10 file: no 'DICM' prefix at byte 128")
    values = scan_header_values(head, keywords)
    return values if values is not None else read_header_values(Path(temp_path), keywords)
