"""Verify: check a tree against its journals (and, optionally, the server's counts).

Every instance a journal of the destination records must be on disk with its
recorded size; with ``checksum``, its sha256 must be the one recorded when it was
written (instances written without ``--checksum`` have none: they are counted as
not checksummed, not as problems). Every series a journal records must be complete.
With a client, the server's lists are compared too: each study the server lists
must be in the tree with as many instances as the server counts, and each study in
the tree must still be on the server.

A destination may hold several journals (one per shard, and the unsharded one).
Each path is judged once, by the newest record of it in any journal, and a series
by its newest record. Problems are handed to ``on_problem`` as they are found (one
line each, with the path and SOPInstanceUID); the report keeps counters and the
first :data:`MAX_KEPT_PROBLEMS`, so memory stays flat whatever the size of the tree.
A ``sync`` afterwards repairs what verify found.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from kheops_async.client import DicomWebClient
from kheops_async.engine.checksums import file_sha256
from kheops_async.engine.journal import Journal, JournalEntry
from kheops_async.engine.planning import STUDY_COUNT_FIELDS
from kheops_async.engine.state_dir import state_dir
from kheops_async.engine.uid_set import UidSet
from kheops_async.errors import ConfigurationError, StorageError

__all__ = ["MAX_KEPT_PROBLEMS", "Problem", "VerifyReport", "verify"]

MAX_KEPT_PROBLEMS = 100
"""Problems kept in the report (every one goes to ``on_problem``)."""
SERVER_BATCH = 100
"""Listed studies compared with the journals in one worker-thread call."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the tree: ``kind`` is ``missing``, ``size``, ``checksum``,
    ``incomplete`` (a series), ``count`` (a study's count differs from the server's),
    ``absent`` (a study of the server not in the tree) or ``extra`` (a study of the
    tree the server no longer lists)."""

    kind: str
    detail: str
    path: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""

    def line(self) -> str:
        """The problem as one line: what, where (path and SOPInstanceUID, or the UIDs)."""
        if self.path:
            return f"{self.kind}: {self.path} (SOPInstanceUID {self.sop_uid}): {self.detail}"
        where = f"study {self.study_uid}" + (
            f" series {self.series_uid}" if self.series_uid else ""
        )
        return f"{self.kind}: {where}: {self.detail}"


ProblemCallback = Callable[[Problem], None]


@dataclass
class VerifyReport:
    """What a verify checked and found (counters, and the first problems)."""

    journals: int = 0
    instances: int = 0
    series: int = 0
    checksummed: int = 0
    not_checksummed: int = 0
    studies_compared: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def problem_count(self) -> int:
        """Every problem found."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """Nothing wrong."""
        return self.problem_count == 0

    def add(self, problem: Problem) -> None:
        """Count one problem; keep it while the list is not full."""
        self.counts[problem.kind] = self.counts.get(problem.kind, 0) + 1
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append(problem)

    def summary(self) -> str:
        """One line: what was checked, and the problems by kind."""
        checked = f"{self.instances} instances and {self.series} series in {self.journals} journal"
        checked += "s" if self.journals != 1 else ""
        if self.checksummed or self.not_checksummed:
            checked += f", {self.checksummed} sha256 compared"
            if self.not_checksummed:
                checked += f" ({self.not_checksummed} written without --checksum)"
        if self.studies_compared:
            checked += f", {self.studies_compared} studies compared with the server"
        if self.ok:
            return f"{checked}: no problem"
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.counts.items()))
        noun = "problem" if self.problem_count == 1 else "problems"
        return f"{checked}: {self.problem_count} {noun} ({kinds})"


async def verify(
    destination: str | os.PathLike[str],
    *,
    checksum: bool = False,
    client: DicomWebClient | None = None,
    query: Mapping[str, str] | None = None,
    on_problem: ProblemCallback | None = None,
) -> VerifyReport:
    """Check ``destination`` against its journals, and the server's lists with ``client``.

    ``query`` (study-level filters) narrows the server's list to what the tree
    mirrors. Raises :class:`ConfigurationError` when the destination has no journal.
    """
    root = Path(destination).expanduser().resolve()
    journal = Journal.open_destination(state_dir(root))
    if journal is None:
        raise ConfigurationError(
            f"{root} has no kheops-async journal (.kheops-async/journal*.sqlite): "
            "nothing to verify against"
        )
    report = VerifyReport(journals=len(journal.family))

    def found(problem: Problem) -> None:
        report.add(problem)
        if on_problem is not None:
            on_problem(problem)

    try:
        await anyio.to_thread.run_sync(_check_files, journal, root, checksum, report, found)
        await anyio.to_thread.run_sync(_check_series, journal, report, found)
        if client is not None:
            await _compare_with_server(client, journal, query or {}, report, found)
    finally:
        journal.close()
    return report


# -- files ------------------------------------------------------------------------------


def _superseded(
    family: list[Journal],
    index: int,
    stamp: float,
    stamp_in: Callable[[Journal], float | None],
) -> bool:
    """Whether a journal other than ``family[index]`` has a newer record of the same
    thing (``stamp_in(journal)``: its time there, or ``None``), or an equal one before it:
    each path and each series is judged once, by its newest record."""
    for other_index, other in enumerate(family):
        if other_index == index:
            continue
        elsewhere = stamp_in(other)
        if elsewhere is not None and (
            elsewhere > stamp or (elsewhere == stamp and other_index < index)
        ):
            return True
    return False


def _written_at(path: str) -> Callable[[Journal], float | None]:
    def stamp(journal: Journal) -> float | None:
        found = journal.entry_at(path)
        return None if found is None else found[1]

    return stamp


def _updated_at(study_uid: str, series_uid: str) -> Callable[[Journal], float | None]:
    def stamp(journal: Journal) -> float | None:
        found = journal.series_record(study_uid, series_uid)
        return None if found is None else found.updated_at

    return stamp


def _check_files(
    journal: Journal, root: Path, checksum: bool, report: VerifyReport, found: ProblemCallback
) -> None:
    family = journal.family
    prefix = str(root).rstrip(os.sep) + os.sep
    try:
        for index, member in enumerate(family):
            for entry, written_at in member.iter_entries():
                if len(family) > 1 and _superseded(
                    family, index, written_at, _written_at(entry.path)
                ):
                    continue
                report.instances += 1
                _check_file(prefix + entry.path, entry, checksum, report, found)
    except StorageError:
        raise
    except Exception as exc:  # sqlite3.Error while streaming
        raise StorageError(f"reading the journals of {root} failed: {exc}") from None


def _check_file(
    path: str, entry: JournalEntry, checksum: bool, report: VerifyReport, found: ProblemCallback
) -> None:
    def problem(kind: str, detail: str) -> None:
        found(Problem(kind, detail, entry.path, entry.sop_uid, entry.study_uid, entry.series_uid))

    try:
        stat = os.stat(path)
    except FileNotFoundError:
        problem("missing", "not on disk")
        return
    except OSError as exc:
        problem("missing", f"cannot be read: {exc.strerror}")
        return
    if stat.st_size != entry.size:
        problem("size", f"{stat.st_size} bytes, {entry.size} when written")
        return
    if not checksum:
        return
    if entry.sha256 is None:
        report.not_checksummed += 1
        return
    report.checksummed += 1
    try:
        digest = file_sha256(path)
    except OSError as exc:
        problem("missing", f"cannot be read: {exc.strerror}")
        return
    if digest != entry.sha256:
        problem("checksum", "its sha256 differs from the one recorded when it was written")


# -- series -----------------------------------------------------------------------------


def _check_series(journal: Journal, report: VerifyReport, found: ProblemCallback) -> None:
    family = journal.family
    for index, member in enumerate(family):
        for record in member.iter_series():
            stamp_in = _updated_at(record.study_uid, record.series_uid)
            if len(family) > 1 and _superseded(family, index, record.updated_at, stamp_in):
                continue
            report.series += 1
            if not record.complete:
                expected = "?" if record.expected is None else str(record.expected)
                found(
                    Problem(
                        "incomplete",
                        f"{record.received} of {expected} instances when it was last downloaded",
                        study_uid=record.study_uid,
                        series_uid=record.series_uid,
                    )
                )


# -- the server -------------------------------------------------------------------------


async def _compare_with_server(
    client: DicomWebClient,
    journal: Journal,
    query: Mapping[str, str],
    report: VerifyReport,
    found: ProblemCallback,
) -> None:
    """Each listed study in the tree with the server's count; each tree study listed."""
    listed = UidSet()
    try:
        pager = client.iter_studies(query, includefield=STUDY_COUNT_FIELDS)
        batch: list[tuple[str, int | None]] = []
        async with contextlib.aclosing(pager):
            async for record in pager:
                if record.study_uid:
                    batch.append((record.study_uid, record.number_of_study_related_instances))
                if len(batch) >= SERVER_BATCH:
                    await anyio.to_thread.run_sync(
                        _compare_counts, journal, listed, batch, report, found
                    )
                    batch = []
        if batch:
            await anyio.to_thread.run_sync(_compare_counts, journal, listed, batch, report, found)
        if pager.result.truncated:
            raise ConfigurationError(
                f"the server cut the study list short ({pager.result.warning}): "
                "the tree cannot be compared with it"
            )
        await anyio.to_thread.run_sync(_find_extra_studies, journal, listed, found)
    finally:
        listed.close()


def _compare_counts(
    journal: Journal,
    listed: UidSet,
    batch: list[tuple[str, int | None]],
    report: VerifyReport,
    found: ProblemCallback,
) -> None:
    listed.add(uid for uid, _ in batch)
    for study_uid, count in batch:
        report.studies_compared += 1
        held = len(journal.study_entries(study_uid))
        if held == 0:
            found(Problem("absent", "listed by the server, not in the tree", study_uid=study_uid))
        elif count is not None and held != count:
            found(
                Problem(
                    "count",
                    f"the server counts {count} instances, the tree holds {held}",
                    study_uid=study_uid,
                )
            )


def _find_extra_studies(journal: Journal, listed: UidSet, found: ProblemCallback) -> None:
    seen = UidSet()  # a study in several journals is reported once
    try:
        for member in journal.family:
            for study_uid in member.iter_study_uids():
                if study_uid in listed or study_uid in seen:
                    continue
                seen.add([study_uid])
                found(
                    Problem(
                        "extra", "in the tree, no longer listed by the server", study_uid=study_uid
                    )
                )
    finally:
        seen.close()
