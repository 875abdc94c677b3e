"""Logging for one command-line run: levels from ``-v``, stderr output, no secrets.

Levels: default WARNING (the library's warnings, such as a truncated query, must be
seen), ``-v`` INFO, ``-vv`` DEBUG, ``-vvv`` DEBUG plus the HTTP libraries (httpx,
httpcore) and tracebacks; ``--quiet`` ERROR. The handler carries a
:class:`RedactingFilter`: httpx logs request URLs, and a Kheops link URL holds the
token, so every record is redacted before it is written.

:func:`configured_logging` undoes everything on exit (levels, handlers), so several
runs in one process (tests, the demo) do not pile up handlers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TextIO

from kheops_async.auth import Redactor

__all__ = [
    "CliLogHandler",
    "LiveDisplay",
    "RedactingFilter",
    "configured_logging",
    "level_for",
]

LIBRARY_LOGGER = "kheops_async"
HTTP_LOGGERS = ("httpx", "httpcore")
TRACEBACK_VERBOSITY = 3


def level_for(verbosity: int, quiet: bool) -> int:
    """The level of the ``kheops_async`` logger for ``-v`` count and ``--quiet``."""
    if quiet:
        return logging.ERROR
    if verbosity <= 0:
        return logging.WARNING
    if verbosity == 1:
        return logging.INFO
    return logging.DEBUG


class RedactingFilter(logging.Filter):
    """Removes secrets from a record's final message, exception text and stack."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


class LiveDisplay(Protocol):
    """A display redrawn in place (the progress display on a terminal)."""

    def print_above(self, line: str) -> None:
        """Print ``line`` above the display, which stays below it."""


if TYPE_CHECKING:
    _TextStreamHandler = logging.StreamHandler[TextIO]
else:  # not subscriptable at run time before Python 3.11
    _TextStreamHandler = logging.StreamHandler


class CliLogHandler(_TextStreamHandler):
    """Writes records to stderr, or above the live progress display while one is shown."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.live: LiveDisplay | None = None

    def emit(self, record: logging.LogRecord) -> None:
        live = self.live
        if live is None:
            super().emit(record)
            return
        try:
            live.print_above(self.format(record))
        except Exception:
            self.handleError(record)


class _CliFormatter(logging.Formatter):
    """``warning: message``; with ``detailed``, time and logger name first (``-vv``)."""

    def __init__(self, *, detailed: bool) -> None:
        super().__init__("%(message)s")
        self.detailed = detailed

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {super().format(record)}"
        if self.detailed:
            stamp = self.formatTime(record, "%H:%M:%S")
            text = f"{stamp}.{int(record.msecs):03d} {record.name} {text}"
        return text


@contextmanager
def configured_logging(
    verbosity: int, *, quiet: bool, redactor: Redactor, stream: TextIO | None = None
) -> Iterator[CliLogHandler]:
    """Route ``kheops_async`` (and at ``-vvv`` httpx/httpcore) logs to stderr, redacted.

    Yields the handler (the progress display registers itself on it). Levels and
    handlers are restored on exit.
    """
    handler = CliLogHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter(redactor))
    handler.setFormatter(_CliFormatter(detailed=verbosity >= 2 and not quiet))
    level = level_for(verbosity, quiet)
    names = [LIBRARY_LOGGER]
    if verbosity >= TRACEBACK_VERBOSITY and not quiet:
        names += HTTP_LOGGERS
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, old_level in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
        handler.close()
