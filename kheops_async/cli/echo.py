"""One-line messages on stderr (the only way the command line reports an error), and
whether a stream is a terminal that can draw a display.

Kept apart from :mod:`~kheops_async.cli.runner` (which needs anyio and the client) so
that usage errors and ``--help`` cost only click.
"""

from __future__ import annotations

import os
from typing import TextIO

import click

__all__ = ["echo_error", "is_terminal", "one_line"]


def one_line(text: str) -> str:
    """``text`` on a single line (newlines and runs of blanks collapsed)."""
    return " ".join(text.split())


def echo_error(message: str) -> None:
    """Write ``error: message`` as one line on stderr."""
    click.echo(f"error: {one_line(message)}", err=True)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that understands escape codes (not ``TERM=dumb``).

    Decided here, not by rich's own detection, so that ``FORCE_COLOR`` in a CI
    environment never puts escape codes into a pipe or a log file.
    """
    try:
        tty = stream.isatty()
    except ValueError:  # closed
        return False
    return tty and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")
