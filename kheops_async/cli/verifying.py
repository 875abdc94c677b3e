"""``kheops-async verify``: check a tree against its journals, and optionally the server.

Each problem is one line on stdout (``missing: <path> (SOPInstanceUID <uid>): ...``),
printed as it is found; the summary goes to stderr. Exit 0 when the tree is clean,
1 when it is not (``kheops-async sync`` with the same options repairs it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from kheops_async.cli.exit_codes import ExitCode
from kheops_async.cli.humanize import printable
from kheops_async.cli.logging_setup import CliLogHandler
from kheops_async.client import DicomWebClient
from kheops_async.engine.verify import Problem, verify
from kheops_async.records import Record

__all__ = ["VerifyJob"]


class VerifyJob(Record):
    """One ``verify`` run."""

    __slots__ = ("checksum", "out_dir", "query", "quiet")

    def __init__(
        self,
        out_dir: Path,
        checksum: bool = False,
        query: Mapping[str, str] | None = None,
        quiet: bool = False,
    ) -> None:
        self.out_dir = out_dir
        self.checksum = checksum
        self.query: Mapping[str, str] = {} if query is None else query
        self.quiet = quiet

    async def run(self, client: DicomWebClient | None, handler: CliLogHandler) -> ExitCode:
        """Verify, print each problem as it is found, then the summary; the exit status."""

        def show(problem: Problem) -> None:
            click.echo(printable(problem.line()))

        report = await verify(
            self.out_dir, checksum=self.checksum, client=client, query=self.query, on_problem=show
        )
        if not self.quiet or not report.ok:
            click.echo(f"verify: {report.summary()}", err=True)
        if report.ok:
            return ExitCode.OK
        click.echo(
            f"error: {self.out_dir} has {report.problem_count} problem"
            f"{'' if report.problem_count == 1 else 's'} (listed above); "
            "'kheops-async sync' repairs them",
            err=True,
        )
        return ExitCode.INCOMPLETE
