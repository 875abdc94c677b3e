"""``kheops-async list studies|series|instances``: query, print, save the table.

The table goes to stdout (drawn for reading, fitted to a terminal's width unless
``--wide``; or CSV/JSON with ``--format``) and, unless
``--dry-run``, to ``available_<level>_<timestamp>.csv`` in the output directory, as
kheops-client did. A list the server cut short, or explicit UIDs that matched
nothing, give a ``warning:`` line on stderr even at the default verbosity.
"""

from __future__ import annotations

import logging

import click

from kheops_async.cli.exit_codes import ExitCode
from kheops_async.cli.logging_setup import CliLogHandler
from kheops_async.cli.selection import Finder, Level, Selection
from kheops_async.cli.settings import OutputSettings
from kheops_async.cli.tables import (
    OutputFormat,
    Table,
    instance_table,
    render,
    series_table,
    study_table,
    timestamp,
    write_csv_file,
)
from kheops_async.client import DicomWebClient
from kheops_async.engine import DEFAULT_CONCURRENCY
from kheops_async.records import Record

__all__ = ["ListJob"]

log = logging.getLogger("kheops_async.cli")


class ListJob(Record):
    """One ``list`` run: what to list, how to select it, where the table goes."""

    __slots__ = ("concurrency", "level", "output", "output_format", "selection")

    def __init__(
        self,
        level: Level,
        selection: Selection,
        output: OutputSettings,
        output_format: OutputFormat = "table",
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.level = level
        self.selection = selection
        self.output = output
        self.output_format = output_format
        self.concurrency = concurrency

    async def run(self, client: DicomWebClient, handler: CliLogHandler) -> ExitCode:
        """Query, print and save; return the exit status."""
        if not self.output.dry_run:
            self.output.prepare_out_dir()
        finder = Finder(client, self.selection, level=self.level, concurrency=self.concurrency)
        table = await self._table(finder, client)
        if self.output_format == "table":
            from kheops_async.cli.table_view import print_table

            print_table(table, wide=self.output.wide)
        else:
            click.echo(render(table, self.output_format), nl=False)
        self._warn(finder)
        if not self.output.dry_run:
            path = write_csv_file(table, self.output.out_dir, timestamp())
            if not self.output.quiet:
                click.echo(f"saved {len(table)} {table.noun} to {path}", err=True)
        return ExitCode.INCOMPLETE if finder.incomplete else ExitCode.OK

    async def _table(self, finder: Finder, client: DicomWebClient) -> Table:
        log.info("listing %s from %s", self.level, client.safe(client.base_url))
        if self.level == "studies":
            return study_table(await finder.studies())
        if self.level == "series":
            return series_table(await finder.series(), safe=client.safe)
        return instance_table(await finder.instances(), safe=client.safe)

    def _warn(self, finder: Finder) -> None:
        """Warnings that must be seen even without ``-v`` (and with ``--quiet``)."""
        for what in finder.not_found:
            click.echo(f"warning: {what} not found (or it does not match the filters)", err=True)
        if finder.incomplete:
            count = len(finder.incomplete)
            queries = "query was" if count == 1 else "queries were"
            click.echo(
                f"warning: the list is incomplete: {count} {queries} cut short by the server "
                "(narrow the query with --search-filter, or page with --limit/--offset)",
                err=True,
            )
