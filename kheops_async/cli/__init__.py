"""The ``kheops-async`` command line (click): ``list`` and ``download``, like kheops-client.

Modules, one job each:

- :mod:`~kheops_async.cli.app`: the click commands and the root group (entry point).
- :mod:`~kheops_async.cli.options`: shared options and parameter types.
- :mod:`~kheops_async.cli.settings`: option values as settings; the client they make.
- :mod:`~kheops_async.cli.selection`: UIDs and filters; the QIDO expansion for ``list``.
- :mod:`~kheops_async.cli.listing` / :mod:`~kheops_async.cli.downloading`: the commands' work.
- :mod:`~kheops_async.cli.tables`: table building, CSV/JSON, files.
- :mod:`~kheops_async.cli.table_view`: tables on stdout for people (rich, lazily imported).
- :mod:`~kheops_async.cli.progress`: download progress on stderr (live, or plain lines).
- :mod:`~kheops_async.cli.snapshot`: what the progress display shows at one moment.
- :mod:`~kheops_async.cli.live_view`: the live display on a terminal (rich, lazily imported).
- :mod:`~kheops_async.cli.summary`: the lines at the end of a download.
- :mod:`~kheops_async.cli.humanize`: sizes, durations, shortened UIDs, server text as data.
- :mod:`~kheops_async.cli.echo`: one-line errors; whether a stream is a terminal.
- :mod:`~kheops_async.cli.logging_setup`: log levels and redaction of secrets.
- :mod:`~kheops_async.cli.runner`: the edge where errors become one line and an exit status.
- :mod:`~kheops_async.cli.exit_codes`: the documented exit statuses.

``main(args, standalone_mode=False)`` returns the exit status instead of exiting.
"""

from kheops_async.cli.app import console_main, main
from kheops_async.cli.exit_codes import ExitCode

__all__ = ["ExitCode", "console_main", "main"]
