"""Exit statuses of ``kheops-async`` and the mapping from errors to them.

Library errors become exit statuses here, at the command line's edge, and nowhere
else. The table is part of the command line's contract (scripts test ``$?``):

====  ===========  ===============================================================
code  name         meaning
====  ===========  ===============================================================
0     OK           everything asked for was listed or downloaded
1     INCOMPLETE   the download finished but some series or instances failed, or the
                   server cut a list short (list or download)
2     USAGE        bad option or input: usage error, bad URL, malformed UID, unknown
                   filter key, bad layout, unreadable ``--in-file``; an output
                   directory that cannot be written (unwritable, full)
3     AUTH         authentication or permission refused (HTTP 401 or 403)
4     SERVER       server, network or protocol failure (unreachable, timeout,
                   HTTP 4xx/5xx, a malformed answer)
70    SOFTWARE     an unexpected internal error (a bug: please report it)
130   INTERRUPTED  interrupted by Ctrl-C (SIGINT)
====  ===========  ===============================================================
"""

from __future__ import annotations

from enum import IntEnum

import click

from kheops_async.errors import (
    AuthenticationError,
    ConfigurationError,
    IncompleteSeriesError,
    KheopsAsyncError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    TimeoutError_,
    TransportError,
)

__all__ = ["ExitCode", "exit_code_for", "hint_for", "leaf_exceptions", "primary_error"]


class ExitCode(IntEnum):
    """The exit statuses of ``kheops-async`` (see the module's table)."""

    OK = 0
    INCOMPLETE = 1
    USAGE = 2
    AUTH = 3
    SERVER = 4
    SOFTWARE = 70
    INTERRUPTED = 130


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``: itself, or the leaves of an exception group.

    Task groups (anyio, the download engine) raise ``ExceptionGroup``; the command
    line reports what is inside. Duck-typed, so it works with the Python 3.10 backport.
    """
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple) and inner and all(isinstance(e, BaseException) for e in inner):
        return [leaf for child in inner for leaf in leaf_exceptions(child)]
    return [exc]


_SEVERITY: tuple[type[BaseException], ...] = (
    KeyboardInterrupt,
    AuthenticationError,
    PermissionDeniedError,
    ConfigurationError,
    StorageError,
    KheopsAsyncError,
    OSError,
)


def primary_error(exc: BaseException) -> BaseException:
    """The one error to report for ``exc`` (the most telling leaf of a group)."""
    leaves = leaf_exceptions(exc)
    for kind in _SEVERITY:
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit status for an error that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, click.exceptions.Abort):
        return ExitCode.INTERRUPTED
    if isinstance(exc, click.ClickException):
        return ExitCode.USAGE
    passed_on = getattr(exc, "exit_code", None)  # a worker's error (cli.workers)
    if isinstance(exc, KheopsAsyncError) and isinstance(passed_on, int):
        return ExitCode(passed_on)
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        return ExitCode.AUTH
    if isinstance(exc, ConfigurationError | StorageError):
        return ExitCode.USAGE
    if isinstance(exc, IncompleteSeriesError):
        return ExitCode.INCOMPLETE
    if isinstance(exc, KheopsAsyncError):
        return ExitCode.SERVER
    if isinstance(exc, OSError):
        return ExitCode.USAGE  # local files: an unwritable output directory, a full disk
    return ExitCode.SOFTWARE


def hint_for(exc: BaseException) -> str:
    """A short hint to append to an error message, or ``""``."""
    if isinstance(exc, NotFoundError):
        return (
            " (is --url the DICOMweb root, e.g. https://host/api for Kheops or "
            "http://host:8042/dicom-web for Orthanc?)"
        )
    if isinstance(exc, TimeoutError_):
        return " (the server is slow or unreachable; --timeout waits longer)"
    if isinstance(exc, TransportError):
        return " (is the server running, and are --url and its port right?)"
    return ""
