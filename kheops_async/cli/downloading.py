"""``kheops-async download studies|series``: plan, download with progress, report.

The selection becomes :class:`~kheops_async.Targets`: explicit UIDs are passed on as
they are (so that the engine reports a study that does not exist; study-level filters
are checked by the engine, study by study), a study query (filters, ``--fuzzy``,
``--limit``/``--offset``) is paged by the engine as it downloads. The
engine streams the table ``downloaded_<kind>_instances_<timestamp>.csv`` row by row; a
background task shows its progress (:mod:`~kheops_async.cli.progress`). At the end,
even when an error stops the run: the failures, the summary, where the table and the
journal are (:mod:`~kheops_async.cli.summary`). A dry run prints the plan (per
series: instances planned and skipped) and writes nothing.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import anyio
import click

from kheops_async.cli.echo import is_terminal
from kheops_async.cli.exit_codes import ExitCode
from kheops_async.cli.humanize import printable
from kheops_async.cli.logging_setup import CliLogHandler
from kheops_async.cli.progress import DEFAULT_LOG_INTERVAL, ProgressDisplay
from kheops_async.cli.selection import Selection
from kheops_async.cli.settings import ConnectionSettings, OutputSettings
from kheops_async.cli.summary import failure_lines, summary_lines
from kheops_async.cli.tables import PlanTable, timestamp
from kheops_async.client import DicomWebClient
from kheops_async.engine import DownloadSettings, download
from kheops_async.engine.deletion import Deleted
from kheops_async.errors import KheopsAsyncError
from kheops_async.records import Record
from kheops_async.report import DownloadProgress, DownloadReport
from kheops_async.shards import Shard
from kheops_async.targets import Targets

__all__ = ["DownloadJob"]

log = logging.getLogger("kheops_async.cli")


def _show_would_delete(deleted: Deleted) -> None:
    """A dry run of ``sync --delete``: one line per instance that would be removed."""
    click.echo(
        printable(
            f"would delete: {deleted.path} (SOPInstanceUID {deleted.sop_uid}): {deleted.reason}"
        )
    )


class DownloadJob(Record):
    """One ``download`` run: the selection, the engine's settings and the output.

    ``workers``: Shard processes (:mod:`~kheops_async.cli.workers`); 1: this process downloads.
    ``connection``: What each worker connects with (needed when ``workers > 1``).
    """

    __slots__ = (
        "connection",
        "kind",
        "output",
        "progress_interval",
        "selection",
        "settings",
        "workers",
    )
    _hidden_in_repr = ("connection",)

    def __init__(
        self,
        kind: Literal["studies", "series", "sync"],
        selection: Selection,
        output: OutputSettings,
        settings: DownloadSettings | None = None,
        progress_interval: float = DEFAULT_LOG_INTERVAL,
        workers: int = 1,
        connection: ConnectionSettings | None = None,
    ) -> None:
        self.kind = kind
        self.selection = selection
        self.output = output
        self.settings: DownloadSettings = DownloadSettings() if settings is None else settings
        self.progress_interval = progress_interval
        self.workers = workers
        self.connection = connection

    @property
    def table_name(self) -> str:
        """The instance table's file name (kheops-client's for downloads), per shard."""
        return self._table_name(self.settings.shard, timestamp())

    def _table_name(self, shard: Shard | None, when: str) -> str:
        if self.kind == "sync":
            stem = f"synced_instances_{when}"
        else:
            stem = f"downloaded_{'study' if self.kind == 'studies' else 'series'}_instances_{when}"
        if shard is not None and shard.count > 1:
            stem += f"_{shard.name}"
        return f"{stem}.csv"

    async def run(self, client: DicomWebClient, handler: CliLogHandler) -> ExitCode:
        """Download (or plan) everything selected; return the exit status."""
        if not self.output.dry_run:
            self.output.prepare_out_dir()
        targets = self._targets()
        plan = PlanTable()
        settings = self.settings.with_options(
            dry_run=self.output.dry_run,
            table=None if self.output.dry_run else self.output.out_dir / self.table_name,
            on_instance=plan.add if self.output.dry_run else None,
            on_deleted=_show_would_delete if self.output.dry_run else None,
        )
        try:
            report = await self._download(client, targets, settings, handler)
        except KheopsAsyncError as exc:
            partial = exc.partial_report
            if isinstance(partial, DownloadReport) and partial.series_total:
                self._finish(partial, plan, stopped=True)  # what was done, then the error
            raise
        return self._finish(report, plan)

    def _targets(self) -> Targets:
        """What the engine downloads: a study query it pages itself, or explicit UIDs."""
        series_level = self.kind != "studies"
        selection = self.selection
        if selection.needs_study_query:
            return selection.to_query_targets(series_level=series_level)
        if selection.limit is not None or selection.offset:
            log.warning("--limit/--offset page the study query: no effect on explicit UIDs")
        return selection.to_targets(None, series_level=series_level)

    async def _download(
        self,
        client: DicomWebClient,
        targets: Targets,
        settings: DownloadSettings,
        handler: CliLogHandler,
    ) -> DownloadReport:
        progress = DownloadProgress()
        display = ProgressDisplay(
            progress,
            sys.stderr,
            live=is_terminal(sys.stderr),
            enabled=not self.output.quiet,
            interval=self.progress_interval,
            per_series=self.output.verbosity >= 1,
            handler=handler,
            concurrency=(settings.concurrency or client.concurrency) * self.workers,
        )
        report: DownloadReport | None = None
        stopped_by: KheopsAsyncError | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(display.run)
                try:
                    if self.workers > 1:
                        report = await self._download_in_workers(targets, settings, progress)
                    else:
                        report = await download(
                            client, targets, self.output.out_dir, settings, progress=progress
                        )
                except KheopsAsyncError as exc:  # raised below, not wrapped in a group
                    stopped_by = exc
                finally:
                    group.cancel_scope.cancel()
        finally:
            display.finish()
        if stopped_by is not None:
            raise stopped_by
        if report is None:  # pragma: no cover - the task group re-raises the failure
            raise RuntimeError("the download ended without a report")
        return report

    async def _download_in_workers(
        self, targets: Targets, settings: DownloadSettings, progress: DownloadProgress
    ) -> DownloadReport:
        """``--workers N``: N shard processes, their progress summed into ``progress``."""
        from kheops_async.cli.logging_setup import TRACEBACK_VERBOSITY, level_for
        from kheops_async.cli.workers import run_workers, worker_tasks

        assert self.connection is not None
        when = timestamp()
        tasks = worker_tasks(
            self.workers,
            self.connection,
            targets,
            self.output.out_dir,
            settings,
            lambda shard: self.output.out_dir / self._table_name(shard, when),
            level_for(self.output.verbosity, self.output.quiet),
            http_logs=self.output.verbosity >= TRACEBACK_VERBOSITY,
        )
        return await run_workers(tasks, progress)

    def _finish(
        self, report: DownloadReport, plan: PlanTable, *, stopped: bool = False
    ) -> ExitCode:
        """Summary, failures, plan or table; the exit status."""
        quiet = self.output.quiet
        for line in failure_lines(report):
            click.echo(line, err=True)
        if self.output.dry_run:
            from kheops_async.cli.table_view import print_table

            print_table(plan.table(), wide=self.output.wide)
            if not quiet:
                deleted = report.sync.deleted if report.sync is not None else 0
                click.echo(
                    f"dry run: {report.planned} instances of {report.series_total} series would "
                    f"be downloaded, {report.skipped} are already present"
                    + (f", {deleted} would be deleted" if deleted else "")
                    + "; nothing was written",
                    err=True,
                )
        elif not quiet:
            for line in summary_lines(report, stopped=stopped):
                click.echo(line, err=True)
            if self.workers > 1:
                click.echo(
                    f"workers: {self.workers} processes, each with its own table and journal "
                    f"(shard-I-of-{self.workers} in their names)",
                    err=True,
                )
        if stopped:
            return ExitCode.INCOMPLETE  # the caller re-raises the error that stopped the run
        if report.ok:
            return ExitCode.OK
        count = report.series_failed + report.failed
        click.echo(f"error: the download is incomplete ({count} failures, listed above)", err=True)
        return ExitCode.INCOMPLETE
