"""One-line messages on stderr: the only way the command line reports an error.

Kept apart from :mod:`~kheops_async.cli.runner` (which needs anyio and the client) so
that usage errors and ``--help`` cost only click.
"""

from __future__ import annotations

import click

__all__ = ["echo_error", "one_line"]


def one_line(text: str) -> str:
    """``text`` on a single line (newlines and runs of blanks collapsed)."""
    return " ".join(text.split())


def echo_error(message: str) -> None:
    """Write ``error: message`` as one line on stderr."""
    click.echo(f"error: {one_line(message)}", err=True)
