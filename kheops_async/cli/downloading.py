"""``kheops-async download studies|series``: plan, download with progress, report.

The selection becomes :class:`~kheops_async.Targets`: explicit UIDs are passed on as
they are (so that the engine reports a study that does not exist); otherwise the
CLI's own study query (filters, ``--fuzzy``, ``--limit``/``--offset``) picks the
studies. The engine downloads; a background task shows its progress. At the end: a
summary line, one line per failure, and the table
``downloaded_<kind>_instances_<timestamp>.csv``. A dry run prints the plan (per
series: instances planned and skipped) and writes nothing.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

import anyio
import click

from kheops_async.cli.exit_codes import ExitCode
from kheops_async.cli.logging_setup import CliLogHandler
from kheops_async.cli.progress import DEFAULT_LOG_INTERVAL, ProgressDisplay
from kheops_async.cli.selection import Finder, Selection
from kheops_async.cli.settings import OutputSettings
from kheops_async.cli.tables import (
    download_plan_table,
    download_table,
    render,
    timestamp,
    write_csv_file,
)
from kheops_async.client import DicomWebClient
from kheops_async.engine import DEFAULT_CONCURRENCY, MetadataMode, download
from kheops_async.layout import DEFAULT_LAYOUT
from kheops_async.report import DownloadProgress, DownloadReport, InstanceStatus
from kheops_async.targets import Targets

__all__ = ["DownloadJob"]

log = logging.getLogger("kheops_async.cli")


@dataclass(frozen=True)
class DownloadJob:
    """One ``download`` run: the selection, the engine's settings and the output."""

    kind: Literal["studies", "series"]
    selection: Selection
    output: OutputSettings
    concurrency: int = DEFAULT_CONCURRENCY
    layout: str = DEFAULT_LAYOUT
    force: bool = False
    fsync: bool = False
    metadata_only: MetadataMode | None = None
    transfer_syntax: str = "*"
    progress_interval: float = DEFAULT_LOG_INTERVAL
    incomplete_listings: list[str] = field(default_factory=list, compare=False)
    """Study queries the server cut short: the run is incomplete even if all went well."""

    @property
    def table_kind(self) -> str:
        """kheops-client's file name part: ``study`` or ``series``."""
        return "study" if self.kind == "studies" else "series"

    async def run(self, client: DicomWebClient, handler: CliLogHandler) -> ExitCode:
        """Download (or plan) everything selected; return the exit status."""
        if not self.output.dry_run:
            self.output.prepare_out_dir()
        targets = await self._targets(client)
        report = await self._download(client, targets, handler)
        return self._finish(report)

    async def _targets(self, client: DicomWebClient) -> Targets:
        series_level = self.kind == "series"
        selection = self.selection
        if not selection.needs_study_query:
            if selection.limit is not None or selection.offset:
                log.warning("--limit/--offset page the study query: no effect on explicit UIDs")
            return selection.to_targets(None, series_level=series_level)
        finder = Finder(client, selection, level="studies", concurrency=self.concurrency)
        studies = await finder.studies()
        for what in finder.not_found:
            click.echo(f"warning: {what} not found (or it does not match the filters)", err=True)
        for warning in finder.incomplete:
            click.echo(f"warning: the study list is incomplete: {warning}", err=True)
        self.incomplete_listings.extend(finder.incomplete)
        uids = list(dict.fromkeys(r.study_uid for r in studies if r.study_uid))
        if not uids:
            click.echo("warning: no study matches the selection: nothing to download", err=True)
        log.info("%d studies selected", len(uids))
        return selection.to_targets(uids, series_level=series_level)

    async def _download(
        self, client: DicomWebClient, targets: Targets, handler: CliLogHandler
    ) -> DownloadReport:
        progress = DownloadProgress()
        display = ProgressDisplay(
            progress,
            sys.stderr,
            live=sys.stderr.isatty(),
            enabled=not self.output.quiet,
            interval=self.progress_interval,
            per_series=self.output.verbosity >= 1,
            handler=handler,
        )
        report: DownloadReport | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(display.run)
                try:
                    report = await download(
                        client,
                        targets,
                        self.output.out_dir,
                        concurrency=self.concurrency,
                        layout=self.layout,
                        force=self.force,
                        fsync=self.fsync,
                        dry_run=self.output.dry_run,
                        metadata_only=self.metadata_only,
                        transfer_syntax=self.transfer_syntax,
                        progress=progress,
                    )
                finally:
                    group.cancel_scope.cancel()
        finally:
            display.finish()
        if report is None:  # pragma: no cover - the task group re-raises the failure
            raise RuntimeError("the download ended without a report")
        return report

    def _finish(self, report: DownloadReport) -> ExitCode:
        """Summary, failures, plan or table; the exit status."""
        quiet = self.output.quiet
        for failure in report.failures:
            where = " ".join(
                part
                for part in (
                    f"study {failure.study_uid}" if failure.study_uid else "",
                    f"series {failure.series_uid}" if failure.series_uid else "",
                )
                if part
            )
            click.echo(f"failed: {where}: {failure.error}", err=True)
        for record in report.instances:
            if record.status is InstanceStatus.FAILED:
                click.echo(
                    f"failed: instance of series {record.series_uid}: {record.error}", err=True
                )
        if self.output.dry_run:
            click.echo(render(download_plan_table(report), "table"), nl=False)
            if not quiet:
                planned = sum(1 for r in report.instances if r.status is InstanceStatus.PLANNED)
                click.echo(
                    f"dry run: {planned} instances of {report.series_total} series would be "
                    f"downloaded, {report.skipped} are already present; nothing was written",
                    err=True,
                )
        else:
            if not quiet:
                click.echo(f"done: {report.summary()}", err=True)
            table = download_table(report, kind=self.table_kind, root=self.output.out_dir)
            path = write_csv_file(table, self.output.out_dir, timestamp())
            if not quiet:
                click.echo(f"saved the list of {len(table)} instances to {path}", err=True)
        if report.ok and not self.incomplete_listings:
            return ExitCode.OK
        count = len(report.failures) + report.failed + len(self.incomplete_listings)
        click.echo(f"error: the download is incomplete ({count} failures, listed above)", err=True)
        return ExitCode.INCOMPLETE
