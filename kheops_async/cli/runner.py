"""The command line's edge: run a command's async body, turn any error into one line.

:func:`run_command` sets up logging (redacted), opens the client, runs the body under
anyio and maps whatever ends it to an :class:`~kheops_async.cli.exit_codes.ExitCode`:
one ``error: ...`` line on stderr, credentials removed, and the traceback only at
``-vvv``.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable

import anyio
import click

from kheops_async.auth import Redactor
from kheops_async.cli.echo import echo_error, one_line
from kheops_async.cli.exit_codes import ExitCode, exit_code_for, hint_for, primary_error
from kheops_async.cli.logging_setup import TRACEBACK_VERBOSITY, CliLogHandler, configured_logging
from kheops_async.cli.settings import ConnectionSettings, OutputSettings
from kheops_async.client import DicomWebClient

__all__ = ["CommandBody", "LocalBody", "echo_error", "one_line", "report_error", "run_command"]

CommandBody = Callable[[DicomWebClient, CliLogHandler], Awaitable[ExitCode]]
LocalBody = Callable[[DicomWebClient | None, CliLogHandler], Awaitable[ExitCode]]
"""A body that may run with no server (``client`` is then ``None``)."""


def report_error(exc: BaseException, *, redactor: Redactor, verbosity: int) -> ExitCode:
    """Tell the user what ended the command (one line) and return its exit status."""
    error = primary_error(exc)
    code = exit_code_for(error)
    if verbosity >= TRACEBACK_VERBOSITY:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        click.echo(redactor.redact(trace).rstrip(), err=True)
    if code is ExitCode.INTERRUPTED:
        echo_error("interrupted")
    elif code is ExitCode.SOFTWARE:
        echo_error(
            f"internal error: {type(error).__name__}: {redactor.redact(str(error))} "
            "(please report it; -vvv shows the traceback)"
        )
    else:
        message = str(error) or type(error).__name__
        if isinstance(error, OSError) and error.strerror and error.filename:
            message = f"{error.strerror}: {error.filename}"
        echo_error(redactor.redact(message) + hint_for(error))
    return code


def run_command(
    connection: ConnectionSettings | None,
    output: OutputSettings,
    body: CommandBody | LocalBody,
) -> ExitCode:
    """Run ``body`` with a client for ``connection``; return the exit status.

    Without a connection (``verify`` with no ``--url``), ``body`` is a
    :data:`LocalBody`: it gets no client.
    """
    redactor = connection.redactor() if connection is not None else Redactor.for_secrets([])
    with configured_logging(
        output.verbosity, quiet=output.quiet, redactor=redactor, stream=sys.stderr
    ) as handler:
        try:
            return anyio.run(_with_client, connection, handler, body)
        except BaseException as exc:  # the edge: every error ends here, as one line
            if isinstance(exc, SystemExit | GeneratorExit | BrokenPipeError):
                raise  # a closed stdout (`| head`): click ends quietly
            if _interrupted_under_python_310(exc):
                exc = KeyboardInterrupt()
            return report_error(exc, redactor=redactor, verbosity=output.verbosity)


def _interrupted_under_python_310(exc: BaseException) -> bool:
    """Whether ``exc`` is how a Ctrl-C ends ``anyio.run`` on Python 3.10.

    The event loop's runner cancels the main task on SIGINT; from Python 3.11 it then
    raises ``KeyboardInterrupt``, but on 3.10 (no ``Task.uncancel`` to tell that cancel
    from another) the main task's ``CancelledError`` comes out instead. Outside the
    loop nothing else cancels the main task.
    """
    return sys.version_info < (3, 11) and isinstance(exc, asyncio.CancelledError)


async def _with_client(
    connection: ConnectionSettings | None,
    handler: CliLogHandler,
    body: CommandBody | LocalBody,
) -> ExitCode:
    if connection is None:
        return await body(None, handler)  # type: ignore[arg-type]
    async with connection.client() as client:
        return await body(client, handler)
