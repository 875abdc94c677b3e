"""The end of a download on stderr: the failures, the summary, where the table and journal are.

The same lines on a terminal (once the live display is removed) and off it, and
also when an error stopped the run (what was done, then the error). Each failure is
one line, at most :data:`MAX_FAILURES_SHOWN`, then a count of the rest: every one
is in the instance table. Text from the server is shown as data (control
characters replaced).
"""

from __future__ import annotations

from kheops_async.cli.echo import one_line
from kheops_async.cli.humanize import printable
from kheops_async.report import DownloadReport, SeriesFailure

__all__ = ["MAX_FAILURES_SHOWN", "failure_lines", "summary_lines"]

MAX_FAILURES_SHOWN = 20
"""Failure lines printed at the end; the rest are counted (all are in the table)."""


def _series_failure(failure: SeriesFailure) -> str:
    where = " ".join(
        part
        for part in (
            f"study {failure.study_uid}" if failure.study_uid else "",
            f"series {failure.series_uid}" if failure.series_uid else "",
        )
        if part
    )
    return f"failed: {where}: {failure.error}"


def failure_lines(report: DownloadReport) -> list[str]:
    """One line per failure kept by the report (at most :data:`MAX_FAILURES_SHOWN`), then
    ``failed: ... and N more (see the table)`` for the others."""
    lines = [_series_failure(f) for f in report.failures]
    lines += [
        f"failed: instance {r.sop_uid + ' ' if r.sop_uid else ''}of series "
        f"{r.series_uid}: {r.error}"
        for r in report.failed_instances
    ]
    shown = [printable(one_line(line)) for line in lines[:MAX_FAILURES_SHOWN]]
    hidden = len(lines) - len(shown) + report.failures_not_kept
    if hidden > 0:
        shown.append(f"failed: ... and {hidden} more (see the table)")
    return shown


def summary_lines(report: DownloadReport, *, stopped: bool = False) -> list[str]:
    """``done:`` (or ``stopped:``) with the counts, MB, time and mean rate (a sync that
    found nothing new says so instead), the ``sync:`` line of a sync; the table; the
    journal."""
    if report.sync is not None and not report.series_total and report.ok and not stopped:
        # a sync with nothing new: "0/0 series, 0 written" would read as if it did nothing
        lines = [
            f"done: nothing new; {report.skipped} instances already in place, checked in "
            f"{report.seconds:.1f}s"
        ]
    else:
        lines = [f"{'stopped' if stopped else 'done'}: {report.summary()}"]
    if report.sync is not None:
        lines.append(f"sync: {report.sync.summary(report)}")
    if report.table_path is not None:
        lines.append(f"saved the list of instances to {report.table_path}")
    if report.journal_path is not None:
        lines.append(f"journal: {report.journal_path}")
    return lines
