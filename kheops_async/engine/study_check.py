"""Sync's look at a listed study: is it already whole in the tree, with no request?

A study is left alone (*unchanged*) when the journals hold exactly as many of its
instances as the server counts (``NumberOfStudyRelatedInstances``) and every one of
their files is on disk with the size and modification time recorded: one ``stat``
per file, nothing read. Anything else (a count that differs, a file gone, shrunk or
touched since it was written) sends the study to the usual planning, where only the
missing or damaged instances are fetched. A study whose count the server does not
give is always planned (its series counts then decide, series by series).

The check runs in a worker thread, for a batch of studies per call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from kheops_async.engine.journal import Journal
from kheops_async.records import Record

__all__ = ["STUDY_CHECK_BATCH", "StudyState", "check_studies"]

STUDY_CHECK_BATCH = 100
"""Listed studies checked in one worker-thread call at most."""

StudyStatus = Literal["unchanged", "changed", "new"]


class StudyState(Record):
    """What the journals and the tree say about one listed study.

    ``instances``: instances of the study the journals know.
    """

    __slots__ = ("instances", "status", "study_uid")

    def __init__(self, study_uid: str, status: StudyStatus, instances: int) -> None:
        self.study_uid = study_uid
        self.status = status
        self.instances = instances


def check_studies(
    journal: Journal, root: Path, studies: list[tuple[str, int | None]]
) -> list[StudyState]:
    """The state of each ``(StudyInstanceUID, server's instance count)``."""
    prefix = str(root).rstrip(os.sep) + os.sep
    return [_check(journal, prefix, uid, count) for uid, count in studies]


def _check(journal: Journal, prefix: str, study_uid: str, count: int | None) -> StudyState:
    entries = journal.study_entries(study_uid)
    if not entries:
        return StudyState(study_uid, "new", 0)
    if count is None or len(entries) != count:
        return StudyState(study_uid, "changed", len(entries))
    for entry in entries.values():
        try:
            stat = os.stat(prefix + entry.path)
        except OSError:
            return StudyState(study_uid, "changed", len(entries))
        if stat.st_size != entry.size or stat.st_mtime_ns != entry.mtime_ns:
            return StudyState(study_uid, "changed", len(entries))
    return StudyState(study_uid, "unchanged", len(entries))
